"""Certification throughput: masking overhead, one round vs double masking, memory vs batch size.

Run: ``python -m benchmarks.bench_inference [--device cuda --autocast bf16 --channels-last --resnet]``.
Every figure is a ratio (or a count) measured within one run; absolute seconds on a shared CPU are
noise and are printed only for orientation.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from certmask_backends.pytorch import TorchBackend
from certmask_backends.pytorch.models import ResNet18

from certmask_core import PatchThreat, certify, make_maskset
from certmask_core.reference import reference_patchcleanser
from certmask_core.run.datasets import load_dataset


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def masking_overhead(backend, model, images, ms, repeats=5) -> dict:
    """Masked images/s of the one-round path vs the same model on as many plain images."""
    n = len(ms)
    plain = np.repeat(images, n, axis=0)
    backend.masked_predictions(model, images[:4], ms)  # warm-up
    backend.predict(model, plain[: 4 * n])
    masked_t, plain_t = [], []
    for _ in range(repeats):  # interleaved so that machine noise hits both sides alike
        masked_t.append(_timed(lambda: backend.masked_predictions(model, images, ms), backend.device)[0])
        plain_t.append(_timed(lambda: backend.predict(model, plain), backend.device)[0])
    total = len(images) * n
    m, p = statistics.median(masked_t), statistics.median(plain_t)
    return {"masks": n, "images": len(images), "batch_size": backend.batch_size,
            "masked_per_s": total / m, "plain_per_s": total / p, "ratio": p / m,
            "ratios_each_repeat": [pt / mt for pt, mt in zip(plain_t, masked_t)]}


def one_round_vs_recovery(backend, model, images, labels, threat, configs) -> list[dict]:
    rows = []
    for name, ms in configs:
        t_det, det = _timed(lambda ms=ms: certify(backend.masked_predictions(model, images, ms), labels,
                                                  ms, "detection"), backend.device)

        def recovery(ms=ms):
            first = backend.masked_predictions(model, images, ms)
            return certify(first, labels, ms, "recovery", pair_chunk=backend.batch_size,
                           pair_predictor=backend.pair_predictor(model, images, ms))
        t_rec, rec = _timed(recovery, backend.device)
        row = {"set": name, "masks": len(ms), "images": len(images),
               "detection_passes": float(det.certificate_passes.mean()),
               "recovery_passes": float(rec.certificate_passes.mean()),
               "detection_s_per_image": t_det / len(images), "recovery_s_per_image": t_rec / len(images),
               "detection_certified": float(det.certified.mean()),
               "recovery_certified": float(rec.certified.mean())}
        row["one_round_speedup_time"] = t_rec / t_det
        row["one_round_speedup_passes"] = row["recovery_passes"] / row["detection_passes"]
        if len(ms) <= 64:
            t_ref, (ref_cert, ref_passes) = _timed(
                lambda ms=ms: reference_patchcleanser(backend, model, images, labels, ms), backend.device)
            assert (ref_cert == rec.certified).all(), "early exit changed a certificate"
            row.update(reference_passes=ref_passes / len(images), reference_s_per_image=t_ref / len(images),
                       early_exit_speedup=t_ref / t_rec)
        rows.append(row)
    return rows


MEMORY_PROBE = """
import resource, sys, json, numpy as np, torch
from certmask_backends.pytorch import TorchBackend
from certmask_backends.pytorch.models import load_model
from certmask_core import PatchThreat, make_maskset
batch, budget = int(sys.argv[1]), (float(sys.argv[2]) if sys.argv[2] != "none" else None)
torch.set_num_threads(1)
backend = TorchBackend(batch_size=batch, memory_budget_mb=budget)
model = load_model("bundled")
x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
ms = make_maskset(PatchThreat(28, 3), 1, "patchcleanser", masks_per_axis=6)
backend.predict(model, x[:1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
backend.masked_predictions(model, x, ms)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cap = backend.effective_batch(model, x)
print(json.dumps({"batch_size": batch, "budget_mb": budget, "effective_batch": cap,
                  "peak_increase_mb": (peak - base) / 1024}))
"""


def memory_vs_batch() -> list[dict]:
    rows = []
    for batch, budget in [(64, "none"), (256, "none"), (1024, "none"), (2304, "none"),
                          (2304, "8"), (2304, "32")]:
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(batch), budget],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--autocast", choices=["none", "bf16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--resnet", action="store_true", help="ResNet-18 on 32x32x3 (random weights)")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    backend = TorchBackend(device=args.device, batch_size=args.batch_size, channels_last=args.channels_last,
                           autocast_dtype=torch.bfloat16 if args.autocast == "bf16" else None)
    if args.resnet:
        model = ResNet18().eval().to(args.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        rng = np.random.default_rng(0)
        images = rng.random((args.images, 3, 32, 32), dtype=np.float32)
        labels = model(torch.as_tensor(images[:1], device=args.device)).argmax(1).cpu().numpy()
        labels = np.full(args.images, int(labels[0]))
    else:
        model = backend.load_model("bundled")
        images, labels, _ = load_dataset("fashion-mnist", limit=args.images)
    threat = PatchThreat(images.shape[2:], 3)
    n36 = make_maskset(threat, 1, "patchcleanser", masks_per_axis=6)
    configs = [("patchcleanser 6x6", n36)] + [
        (f"replicated k={k}", make_maskset(threat, k, "replicated", masks_per_axis=4)) for k in range(1, 7)]
    machine = (torch.cuda.get_device_name() if backend.device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    res = {"machine": machine, "device": args.device, "torch": torch.__version__,
           "model": "ResNet-18 (random init)" if args.resnet else "bundled FashionCNN",
           "autocast": args.autocast, "channels_last": args.channels_last,
           "overhead": masking_overhead(backend, model, images, n36),
           "one_round_vs_recovery": one_round_vs_recovery(backend, model, images, labels, threat, configs)}
    if not args.skip_memory and backend.device.type == "cpu" and not args.resnet:
        res["memory"] = memory_vs_batch()
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
