"""Masked throughput of the onnx backend against the torch backend on the CPU.

``python -m certmask_backends.onnx.bench`` exports the bundled Fashion-MNIST CNN to ONNX (in a temporary
folder), runs the one-mask predictions of the bundled subset through both backends with the same batch
size and prints masked passes per second and their ratio. A measurement, not a test: the ratio depends on
the machine, the thread counts and the model. Needs torch (for the export and the baseline) and
onnxruntime.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def export_bundled(path, fixed_batch: int | None = None, name: str = "bundled") -> Path:
    """The bundled torch model ``name`` as an ``.onnx`` file at ``path`` (the TorchScript exporter),
    with a free batch dimension unless ``fixed_batch``."""
    import torch
    from certmask_backends.pytorch.models import load_model
    model = load_model(name)
    example = torch.zeros(fixed_batch or 2, 1, 28, 28)
    dynamic = None if fixed_batch else {"x": {0: "N"}, "logits": {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes=dynamic)
    return Path(path)


def _best_seconds(call, repeats: int) -> float:
    call()  # warm-up: first-call allocations and graph preparation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def measure(images: int = 100, masks_per_axis: int = 4, patch: int = 3, batch_size: int = 512,
            repeats: int = 3, onnx_path=None) -> dict:
    """Masked passes per second of both backends on the CPU (best of ``repeats`` timed calls).

    Parameters
    ----------
    images : int
        The first ``images`` of the bundled Fashion-MNIST subset (at most 1,000).
    masks_per_axis, patch : int
        The replicated 1-fold mask set: ``masks_per_axis ** 2`` masks for a ``patch`` x ``patch`` patch.
    batch_size : int
        Masked inputs per forward pass, for both backends.
    repeats : int
        Timed calls of ``masked_predictions`` per backend (after one warm-up call).
    onnx_path : path, optional
        An export of the bundled model to use (default: exported here, into a temporary folder).

    Returns
    -------
    dict
        ``passes`` (per call), ``torch_passes_per_second``, ``onnx_passes_per_second``,
        ``onnx_over_torch`` (their ratio), ``torch_threads``, ``largest_logit_difference`` and versions.
    """
    import numpy as np
    import torch
    from certmask_backends.onnx import OnnxBackend
    from certmask_backends.pytorch import TorchBackend
    from certmask_backends.pytorch.models import load_model

    from certmask_core import PatchThreat, make_maskset
    from certmask_core.run.datasets import load_data

    data = load_data("fashion-mnist-subset", limit=images).images
    maskset = make_maskset(PatchThreat(data.shape[2:], patch), 1, "replicated", masks_per_axis=masks_per_axis)
    torch_backend = TorchBackend(device="cpu", batch_size=batch_size)
    onnx_backend = OnnxBackend(device="cpu", batch_size=batch_size)
    with tempfile.TemporaryDirectory() as folder:
        path = onnx_path or export_bundled(Path(folder) / "bundled.onnx")
        onnx_model = onnx_backend.load_model(str(path))
        torch_model = load_model("bundled")
        seconds = {}
        answers = {}
        runs = (("torch", torch_backend, torch_model), ("onnx", onnx_backend, onnx_model))
        for name, backend, model in runs:
            def call(backend=backend, model=model, name=name):
                answers[name] = backend.masked_predictions(model, data, maskset, return_logits=True)
            seconds[name] = _best_seconds(call, repeats)
    passes = len(data) * len(maskset)
    return {"passes": passes, "batch_size": batch_size,
            "torch_passes_per_second": passes / seconds["torch"],
            "onnx_passes_per_second": passes / seconds["onnx"],
            "onnx_over_torch": seconds["torch"] / seconds["onnx"],
            "largest_logit_difference": float(np.abs(answers["torch"] - answers["onnx"]).max()),
            "torch_threads": torch.get_num_threads(), **onnx_backend.versions(), "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certmask_backends.onnx.bench", description=__doc__)
    parser.add_argument("--images", type=int, default=100, help="images of the bundled subset")
    parser.add_argument("--masks-per-axis", type=int, default=4, help="masks per axis (replicated, k=1)")
    parser.add_argument("--batch-size", type=int, default=512, help="masked inputs per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per backend (best counts)")
    args = parser.parse_args(argv)
    figures = measure(args.images, args.masks_per_axis, batch_size=args.batch_size, repeats=args.repeats)
    print(f"{figures['passes']} masked passes per call, batch {figures['batch_size']}, CPU "
          f"(torch {figures['torch']}, {figures['torch_threads']} threads; onnxruntime "
          f"{figures['onnxruntime']})")
    print(f"torch {figures['torch_passes_per_second']:10.0f} passes/s")
    print(f"onnx  {figures['onnx_passes_per_second']:10.0f} passes/s")
    print(f"onnx / torch throughput: {figures['onnx_over_torch']:.2f}x "
          f"(largest logit difference {figures['largest_logit_difference']:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
