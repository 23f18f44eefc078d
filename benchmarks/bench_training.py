"""Cost of a training step under each augmentation, measured in one run on the same data and model.

Run: ``python -m benchmarks.bench_training [--steps 60] [--device cuda]``. Each recipe trains a fresh
bundled-architecture CNN for ``--steps`` steps of 128 Fashion-MNIST images (3x3 patch, 16 masks);
the figure to read is the ratio to plain training, seconds on a shared machine are noise.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from certmask_backends.pytorch import TorchBackend
from certmask_backends.pytorch.models import FashionCNN
from certmask_backends.pytorch.training import TrainConfig, train

from certmask_core import PatchThreat, make_maskset
from certmask_core.run.datasets import load_dataset

RECIPES = (("none", None), ("cutout", None),
           ("maskset", {"p_none": 0.2, "p_single": 0.4, "p_pair": 0.4}),
           ("greedy", {"samples": 2}), ("greedy", {"samples": 4}))


def measure(images, labels, steps: int, batch: int = 128, device: str = "cpu") -> list[dict]:
    masks = make_maskset(PatchThreat(images.shape[2:], 3), masks_per_axis=4)
    # warm-up: torch's first steps (allocator, kernels) would be charged to the first recipe
    train(FashionCNN(), images[:2 * batch], labels[:2 * batch], TrainConfig(epochs=1, batch_size=batch),
          backend=TorchBackend(device=device), show_progress=False, log=lambda _: None)
    rows = []
    for augmentation, options in RECIPES:
        torch.manual_seed(0)
        config = TrainConfig(epochs=1, batch_size=batch, augmentation=augmentation,
                             augmentation_options=options)
        start = time.perf_counter()
        record = train(FashionCNN(), images[:steps * batch], labels[:steps * batch], config, masksets=masks,
                       backend=TorchBackend(device=device), show_progress=False, log=lambda _: None)
        rows.append({"augmentation": augmentation, "options": options,
                     "seconds_per_step": (time.perf_counter() - start) / steps,
                     "scoring_passes_per_image": record.get("greedy_scoring_passes_per_image", 0.0)})
    for row in rows:
        row["ratio_to_none"] = row["seconds_per_step"] / rows[0]["seconds_per_step"]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        images, labels, _ = load_dataset("fashion-mnist", split="train", limit=args.steps * 128)
    except Exception:  # no Debian package: the bundled test subset, for a smoke run
        images, labels, _ = load_dataset("fashion-mnist-subset")
        args.steps = min(args.steps, len(images) // 128)
    rows = measure(images, np.asarray(labels), args.steps, device=args.device)
    print("| augmentation | options | s/step | ratio to none | scoring passes/image |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['augmentation']} | {r['options'] or ''} | {r['seconds_per_step']:.4f} | "
              f"{r['ratio_to_none']:.2f} | {r['scoring_passes_per_image']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
