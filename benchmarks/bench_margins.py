"""How noisy are logits, and what does the margin tolerance cost? (reproducibility)

Run: ``python -m benchmarks.bench_margins [--device cuda] [--images 1000]``. On the bundled model and
Fashion-MNIST test images (the bundled subset when the Debian package is absent), with one k=2
replicated mask set, it measures in one run:

* the largest logit difference and the argmax flips between two runs that differ only in batch
  make-up (batch 512 vs 7), in float32 and under each autocast dtype, and between autocast and float32;
* per margin tolerance, the detection certified accuracy and the number of images whose certificate
  differs between the two batchings (a certificate that is not reproducible).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from certmask_backends.pytorch import TorchBackend

from certmask_core import PatchThreat, certify, make_maskset
from certmask_core.run.datasets import load_dataset

TOLERANCES = (0.0, 1e-3, 1e-2, 0.1, 0.25, 0.5)


def run(device: str = "cpu", images: int = 200) -> dict:
    x, y, source = load_dataset("fashion-mnist", limit=images)
    ms = make_maskset(PatchThreat(28, 3), 2, "replicated", masks_per_axis=4)
    model = TorchBackend(device=device).load_model("bundled")
    rows = {}
    for name, dtype in (("float32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            big, small = (TorchBackend(device=device, batch_size=b, autocast_dtype=dtype)
                          .masked_predictions(model, x, ms, return_logits=True) for b in (512, 7))
        except Exception as err:  # e.g. an autocast dtype this device lacks
            rows[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        row = {"batch_makeup_max_abs_diff": float(np.abs(big - small).max()),
               "batch_makeup_argmax_flips": int((big.argmax(2) != small.argmax(2)).sum()),
               "predictions": int(big.shape[0] * big.shape[1]), "tolerances": {}}
        if name != "float32":
            float32 = rows["float32"]["_logits"]
            diff = np.abs(big - float32)
            row.update(vs_float32_max_abs_diff=float(diff.max()),
                       vs_float32_p999_abs_diff=float(np.quantile(diff, 0.999)),
                       vs_float32_argmax_flips=int((big.argmax(2) != float32.argmax(2)).sum()))
        for tol in TOLERANCES:
            a, b = (certify(logits, y, ms, "detection", margin_tolerance=tol).certified
                    for logits in (big, small))
            row["tolerances"][str(tol)] = {"certified_accuracy": float(a.mean()),
                                           "certificates_differing_by_batching": int((a != b).sum())}
        row["_logits"] = big
        rows[name] = row
    for row in rows.values():
        row.pop("_logits", None)
    device_name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    return {"device": device_name, "torch": torch.__version__, "data": source, "images": len(x),
            "masks": len(ms), "runs": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args(argv)
    result = run(args.device, args.images)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
