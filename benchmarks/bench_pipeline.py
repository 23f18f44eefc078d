"""The run layer at scale: how close to the model a certification runs, and what it holds in memory.

Run: ``python -m benchmarks.bench_pipeline [--images 4000] [--threads 1] [--folder-images 20000]``.
Every figure is a ratio measured in one run; seconds on a shared machine are noise.

* **host ceiling**: a model that costs almost nothing (a 4x4 average pool and a linear layer on
  Fashion-MNIST) through the README's certify defaults (patch 3x3, replicated k = 1..6), one-round
  modes and recovery: passes per second of the whole run against the model's own pass rate (its
  forward on ready batches of the backend's batch size, no masking).
* **memory**: peak RSS of ``certmask certify`` on a generated folder of RGB 224x224 PNG images
  (written by the benchmark into a temporary folder, never committed) with the cheap model, on
  ``--folder-images`` images and on a tenth of them.
* **decode overlap**: on that folder, the end-to-end time of the run against the larger of the time
  to decode its images alone and the time of its model work alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHEAP_MODEL = "benchmarks.bench_pipeline:cheap_model"
README_KS = (1, 2, 3, 4, 5, 6)


def cheap_model(channels: int = 1, side: int = 28, classes: int = 10, images=None, labels=None):
    """A 4x4 average pool and a linear layer: a model that costs almost nothing (fixed seed).

    With ``images`` and ``labels`` the linear layer is fitted to them by least squares (one-hot
    targets), so that predictions agree with the labels as often as such a model can and recovery's
    second round has real work to do.
    """
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(channels * (side // 4) ** 2, classes))
    if images is not None:
        with torch.no_grad():
            features = model[1](model[0](torch.from_numpy(images))).double()
            features = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
            targets = torch.nn.functional.one_hot(torch.from_numpy(labels), classes).double()
            solution = torch.linalg.lstsq(features, targets).solution
            model[2].weight.copy_(solution[:-1].T)
            model[2].bias.copy_(solution[-1])
    return model


def cheap_rgb_model():
    """:func:`cheap_model` for 3 x 224 x 224 images (the ``module:factory`` spec the folder runs use)."""
    return cheap_model(3, 224, 10)


def counting_backend(batch_size: int):
    """A TorchBackend that counts the inputs its model is run on (``.passes``)."""
    from certmask_backends.pytorch import TorchBackend

    class Counting(TorchBackend):
        passes = 0

        def _forward(self, model, batch):
            self.passes += len(batch)
            return super()._forward(model, batch)

    return Counting(batch_size=batch_size)


def model_pass_rate(model, images, batch: int, seconds: float = 2.0) -> float:
    """Inputs per second of the model alone on ready batches of ``batch`` inputs (no masking)."""
    import torch
    x = torch.from_numpy(np.resize(images, (batch,) + images.shape[1:]))
    done, start = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            model(x)
            done += batch
    return done / (time.perf_counter() - start)


def host_ceiling(images, labels, modes, recovery_certificate="hitting_set", batch_size: int = 512,
                 ks=README_KS) -> dict:
    """Passes per second of a whole certification run (``modes``) over the model alone."""
    from certmask_core.run.config import RunConfig
    from certmask_core.run.experiment import ArrayData, CertificationRun
    backend, model = counting_backend(batch_size), cheap_model(images=images, labels=labels)
    config = RunConfig((3, 3), ks, ("replicated",), modes, recovery_certificate=recovery_certificate)
    run = CertificationRun(backend, model, ArrayData(images, labels), config, num_classes=10)
    alone = model_pass_rate(model, images, backend.batch_size)
    CertificationRun(backend, model, ArrayData(images[:64], labels[:64]), config).run(show_progress=False)
    backend.passes = 0  # the numba kernels are compiled (or loaded from their cache) above
    start = time.perf_counter()
    run.run(show_progress=False)
    seconds = time.perf_counter() - start
    passes = backend.passes
    accuracy = float((backend.predict(model, images) == labels).mean())
    return {"modes": list(modes), "model_accuracy": round(accuracy, 3),
            "certificate": recovery_certificate if "recovery" in modes else None,
            "images": len(images), "image_batch": run.image_batch, "seconds": round(seconds, 2),
            "passes": passes, "run_passes_per_second": round(passes / seconds),
            "model_alone_passes_per_second": round(alone), "ratio": round(passes / seconds / alone, 3)}


# ---------------------------------------------------------------------------------------------------- folder
def write_folder(root: Path, count: int, classes: int = 10, side: int = 224) -> None:
    """``count`` smooth RGB PNG images in ``classes`` class folders (smooth: small files, fast to write)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    low = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    for i in range(count):
        image = Image.fromarray(low[i]).resize((side, side), Image.BILINEAR)
        image.save(root / f"class{i % classes:02d}" / f"{i:06d}.png", compress_level=1)


def certify_rss(folder: Path, out: Path, limit: int | None = None, extra=()) -> dict:
    """Peak RSS (``/usr/bin/time``-free: the child's ru_maxrss) and seconds of one ``certmask certify``."""
    import resource
    args = [sys.executable, "-m", "certmask_core.run.cli", "certify", "--data", str(folder), "--model",
            "benchmarks.bench_pipeline:cheap_rgb_model", "--patch", "32", "32", "--k", "1", "--mode",
            "detection", "--out", str(out), "--quiet", "--no-plots", "--overwrite", *extra]
    if limit is not None:
        args += ["--limit", str(limit)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: runs go smallest first
    return {"images": limit, "peak_rss_mb": round(max(peak, before) / 1024, 1), "seconds": round(seconds, 1)}


def decode_overlap(folder: Path, count: int) -> dict:
    """End-to-end certify time on the folder against decode alone and model work alone."""
    from certmask_backends.pytorch import TorchBackend

    from certmask_core.run.config import RunConfig
    from certmask_core.run.experiment import ArrayData, CertificationRun
    from certmask_core.run.sources import open_data, prefetch
    data = open_data(str(folder), limit=count)
    config = RunConfig((32, 32), (1,), ("replicated",), ("detection",))
    backend, model = TorchBackend(), cheap_rgb_model()
    run = CertificationRun(backend, model, data, config, num_classes=10)
    step = run.image_batch
    batches = [np.arange(s, min(s + step, len(data))) for s in range(0, len(data), step)]
    start = time.perf_counter()
    images = np.concatenate([x for _, x in prefetch(data, batches)])
    decode = time.perf_counter() - start
    in_memory = CertificationRun(backend, model, ArrayData(images, data.labels), config, num_classes=10)
    start = time.perf_counter()
    in_memory.run(show_progress=False)
    model_work = time.perf_counter() - start
    start = time.perf_counter()
    run.run(show_progress=False)
    end_to_end = time.perf_counter() - start
    return {"images": count, "image_batch": run.image_batch, "decode_seconds": round(decode, 2),
            "model_seconds": round(model_work, 2), "end_to_end_seconds": round(end_to_end, 2),
            "ratio_to_larger": round(end_to_end / max(decode, model_work), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="Fashion-MNIST test images (host ceiling)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the model's pass rate too)")
    parser.add_argument("--folder-images", type=int, default=0,
                        help="generate a folder of this many RGB 224x224 images for the memory and decode "
                             "figures (0: skip them)")
    args = parser.parse_args(argv)
    import torch

    from certmask_core.run.datasets import load_data
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", limit=args.images)
    few_images, few_labels = data.images[:args.images // 4], data.labels[:args.images // 4]
    out = {"threads": args.threads, "host_ceiling": [
        host_ceiling(data.images, data.labels, ("detection", "plurality", "covering_consensus")),
        host_ceiling(few_images, few_labels, ("recovery",), ks=(1, 2)),
        host_ceiling(few_images, few_labels, ("recovery",), "all_pairs", ks=(1, 2))]}
    if args.folder_images:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            write_folder(folder, args.folder_images)
            small = certify_rss(folder, Path(tmp) / "small", args.folder_images // 10)
            large = certify_rss(folder, Path(tmp) / "large", args.folder_images)
            out["memory"] = {"small": small, "large": large,
                             "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)}
            out["decode_overlap"] = decode_overlap(folder, min(args.folder_images, 2000))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
