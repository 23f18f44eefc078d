"""Train the first release's Fashion-MNIST CNN with Cutout-style random masks (model spec
``bundled-cutout``; the current ``bundled`` model is trained by ``experiments/train_bundled.sh``).

Reproduce the committed ``weights/fmnist_cnn_cutout.pt`` (about 4 minutes on 2 CPU cores)::

    python -m certmask_backends.pytorch.train_fmnist --epochs 7 --seed 0

Each training image gets zero, one or two random rectangles (sides 3..14 px) filled with 0.0,
the certification fill: the model must keep its label when one mask or two masks (double masking)
hide part of the image.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certmask_core.run.datasets import load_fashion_mnist

from .models import FashionCNN, bundled_weights_path


def random_masks(batch: torch.Tensor, generator: torch.Generator, max_masks: int = 2,
                 min_side: int = 3, max_side: int = 14) -> torch.Tensor:
    """Zero up to ``max_masks`` random rectangles per image of ``(B, 1, H, W)``."""
    b, _, h, w = batch.shape
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    keep = torch.ones(b, h, w, dtype=torch.bool)
    count = torch.randint(0, max_masks + 1, (b,), generator=generator)
    for m in range(max_masks):
        mh = torch.randint(min_side, max_side + 1, (b, 1, 1), generator=generator)
        mw = torch.randint(min_side, max_side + 1, (b, 1, 1), generator=generator)
        y0 = (torch.rand(b, 1, 1, generator=generator) * (h - mh + 1)).long()
        x0 = (torch.rand(b, 1, 1, generator=generator) * (w - mw + 1)).long()
        inside = (ys >= y0) & (ys < y0 + mh) & (xs >= x0) & (xs < x0 + mw)
        keep &= ~(inside & (count > m).view(b, 1, 1))
    return batch * keep.unsqueeze(1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return float((pred == labels).float().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=bundled_weights_path("fmnist_cnn_cutout.pt"))
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr, _ = load_fashion_mnist("train")
    xte, yte, _ = load_fashion_mnist("test", allow_subset=False)
    xtr = torch.from_numpy(xtr.astype(np.float32) / 255.0).unsqueeze(1)
    xte = torch.from_numpy(xte.astype(np.float32) / 255.0).unsqueeze(1)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    model = FashionCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * (len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(len(xtr) // args.batch_size):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = xtr[idx]
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = random_masks(x, gen)
            loss = loss_fn(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    acc = evaluate(model, xte, yte)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    record = {"command": "python -m certmask_backends.pytorch.train_fmnist "
                         f"--epochs {args.epochs} --seed {args.seed}",
              "test_accuracy": acc, "train_seconds": round(seconds, 1),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
