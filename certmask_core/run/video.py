"""A real video task without a video data set: Fashion-MNIST items moving on a path.

Each clip shows one Fashion-MNIST item, shrunk to ``item x item`` pixels, travelling in a straight
line across a black ``size x size`` canvas for ``frames`` frames; its label is the item's class. The
path (start and end corner of the item) is drawn from a generator seeded by ``seed`` and the item's
index, so a clip depends on nothing but its image, its index and the seed. Clips of the test split
are made from test images only and clips of the train split from train images only, so no test image
appears in a training clip.

Run: ``python -m certmask_core.run.video --split test --out fmnist_clips_test.npz`` (arrays ``clips``
``(N, 1, T, H, W)`` uint8, ``labels``, ``source_index``, and the parameters), or read the data spec
``fashion-mnist-clips`` (:func:`certmask_core.run.sources.open_data`), which builds the clips of each
batch as it is read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import CertMaskError
from .catalog import load_fashion_mnist

CLIP_DEFAULTS = {"frames": 16, "size": 28, "item": 20, "seed": 0}


def shrink(images: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` images to ``(N, side, side)`` (pixel centres aligned), float32."""
    images = np.asarray(images, dtype=np.float32)
    out = images
    for axis in (1, 2):
        n = images.shape[axis]
        centres = (np.arange(side) + 0.5) * n / side - 0.5
        low = np.clip(np.floor(centres).astype(np.int64), 0, n - 1)
        high = np.clip(low + 1, 0, n - 1)
        frac = np.clip(centres - low, 0.0, 1.0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = side
        frac = frac.reshape(shape)
        out = np.take(out, low, axis=axis) * (1 - frac) + np.take(out, high, axis=axis) * frac
    return out


def clip_paths(indices: np.ndarray, frames: int, room: int, seed: int) -> np.ndarray:
    """Top-left corner of the item in every frame, ``(N, frames, 2)`` int: a straight line from a
    random start to a random end in ``[0, room]^2``, from a generator seeded by ``(seed, index)``."""
    paths = np.empty((len(indices), frames, 2), dtype=np.int64)
    steps = np.linspace(0.0, 1.0, frames)[:, None]
    for row, index in enumerate(np.asarray(indices).tolist()):
        rng = np.random.default_rng([seed, index])
        start, end = rng.integers(0, room + 1, size=(2, 2))
        paths[row] = np.rint(start + (end - start) * steps)
    return paths


def moving_clips(images: np.ndarray, indices, frames: int = 16, size: int = 28, item: int = 20,
                 seed: int = 0) -> np.ndarray:
    """Clips ``(N, 1, frames, size, size)`` uint8 of ``images[i]`` (``(M, h, w)`` uint8) for ``i`` in
    ``indices``, each item ``item x item`` moving on its :func:`clip_paths` line.

    Examples
    --------
    >>> x = np.zeros((3, 28, 28), np.uint8); x[:, 10:18, 10:18] = 255
    >>> clips = moving_clips(x, [0, 2], frames=4)
    >>> clips.shape, clips.dtype, bool((clips.reshape(2, 4, -1).max(-1) == 255).all())
    ((2, 1, 4, 28, 28), dtype('uint8'), True)
    """
    _check_clip_parameters(frames, size, item)
    images = np.asarray(images)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if images.ndim != 3 or (len(indices) and (indices.min() < 0 or indices.max() >= len(images))):
        raise CertMaskError(f"images must be (M, h, w) and indices in [0, M), got shape {images.shape} and "
                            f"indices from {indices.min(initial=0)} to {indices.max(initial=0)}")
    return moving_clips_of(images[indices], indices, frames, size, item, seed)


def _check_clip_parameters(frames, size, item) -> None:
    for name, value, low in (("frames", frames, 1), ("size", size, 1), ("item", item, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise CertMaskError(f"{name} must be an integer >= {low}, got {value!r}")
    if item > size:
        raise CertMaskError(f"item {item} is larger than the canvas {size}")


def moving_clips_of(selected: np.ndarray, indices, frames: int = 16, size: int = 28, item: int = 20,
                    seed: int = 0) -> np.ndarray:
    """The clips of :func:`moving_clips` from the images already selected: ``selected[j]`` is image
    ``indices[j]``, whose index seeds its path. A data source reads only the images of a batch and
    makes their clips, equal to the rows of the whole set's.

    Parameters
    ----------
    selected : ndarray, shape (n, h, w)
        uint8 images.
    indices : array of int, shape (n,)
        Their positions in the data set.

    Returns
    -------
    ndarray, shape (n, 1, frames, size, size), uint8
    """
    _check_clip_parameters(frames, size, item)
    selected = np.asarray(selected)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if selected.ndim != 3 or len(selected) != len(indices):
        raise CertMaskError(f"selected images must be (n, h, w), one per index, got shape {selected.shape} "
                            f"for {len(indices)} indices")
    items = np.rint(shrink(selected, item)).clip(0, 255).astype(np.uint8)
    paths = clip_paths(indices, frames, size - item, seed)
    clips = np.zeros((len(indices), 1, frames, size, size), dtype=np.uint8)
    for row in range(len(indices)):
        for t, (y, x) in enumerate(paths[row].tolist()):
            clips[row, 0, t, y:y + item, x:x + item] = items[row]
    return clips


def fashion_mnist_clips(split: str = "test", limit: int | None = None, root=None, **params):
    """``(clips, labels, source_index, source)`` from the ``split`` images of Fashion-MNIST (the first
    ``limit`` of them), clip ``i`` made from image ``i``."""
    images, labels, source = load_fashion_mnist(split, root=root)
    n = len(images) if limit is None else min(limit, len(images))
    index = np.arange(n)
    params = {**CLIP_DEFAULTS, **params}
    return moving_clips(images, index, **params), labels[:n].astype(np.int64), index, source


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--limit", type=int, help="first N images of the split")
    for name, value in CLIP_DEFAULTS.items():
        parser.add_argument(f"--{name}", type=int, default=value)
    parser.add_argument("--out", required=True, help="the .npz file to write")
    args = parser.parse_args(argv)
    params = {name: getattr(args, name) for name in CLIP_DEFAULTS}
    clips, labels, index, source = fashion_mnist_clips(args.split, args.limit, **params)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, clips=clips, labels=labels, source_index=index,
                        params=json.dumps({**params, "split": args.split, "source": source}))
    print(f"wrote {args.out}: {clips.shape} clips of {args.split} images from {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
