"""Offline real data: Fashion-MNIST from the Debian package, or the subset bundled in the wheel.

The reader parses the idx format with numpy alone (no torchvision).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CertMaskError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_SUBSET = "fashion_mnist_test_subset.npz"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into an array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise CertMaskError(f"idx file not found: {str(path)!r}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CertMaskError(f"{str(path)!r} is not an idx file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise CertMaskError(f"{str(path)!r}: header says shape {shape}, found {data.size} values")
    return data.reshape(shape)


def bundled_subset_path() -> Path:
    return Path(__file__).with_name("data") / _SUBSET


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None,
                       allow_subset: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """Load Fashion-MNIST.

    Parameters
    ----------
    split : {"test", "train"}
    root : path, optional
        Folder holding the four ``*-idx?-ubyte.gz`` files. Defaults to the Debian package's folder.
        A root that was named explicitly and does not exist is an error.
    allow_subset : bool
        When no root is named and the Debian files are absent, fall back to the bundled test subset
        (1,000 images, MIT licence).

    Returns
    -------
    images : ndarray, shape (N, 28, 28), uint8
    labels : ndarray, shape (N,), int64
    source : str
        Where the data came from (printed by the CLI so that results name their data).
    """
    if split not in ("test", "train"):
        raise CertMaskError(f"split must be 'test' or 'train', got {split!r}")
    prefix = "t10k" if split == "test" else "train"
    folder = Path(root) if root is not None else FASHION_MNIST_ROOT
    images_file = folder / f"{prefix}-images-idx3-ubyte.gz"
    if images_file.is_file():
        images = read_idx(images_file)
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(images) != len(labels):
            raise CertMaskError(f"{len(images)} images but {len(labels)} labels in {str(folder)!r}")
        return images, labels, str(folder)
    if root is not None or not allow_subset or split != "test":
        raise CertMaskError(f"Fashion-MNIST {split} files not found in {str(folder)!r} "
                            "(install the Debian package dataset-fashion-mnist)")
    return load_bundled_subset()


def load_bundled_subset() -> tuple[np.ndarray, np.ndarray, str]:
    """The first 1,000 Fashion-MNIST test images, shipped in the package: ``(images, labels, source)``."""
    with np.load(bundled_subset_path()) as z:
        return z["images"], z["labels"].astype(np.int64), "bundled subset (1,000 test images)"


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """Images and labels from an ``.npz`` holding arrays ``images`` and ``labels``.

    ``images`` may be ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1, 3, 4 (the last
    axis is read as channels when it is that small and the second is not); uint8 is divided by 255,
    floating point must already lie in ``[0, 1]``. The layout found is stated in the returned source.

    Returns
    -------
    images : ndarray, shape (N, C, H, W), float32 in [0, 1]
    labels : ndarray, shape (N,), int64
    source : str
    """
    path = Path(path)
    if not path.is_file():
        raise CertMaskError(f"data file not found: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [key for key in ("images", "labels") if key not in z.files]
            if missing:
                raise CertMaskError(f"{str(path)!r} holds {z.files}; it needs arrays 'images' and 'labels'")
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError) as err:
        raise CertMaskError(f"cannot read {str(path)!r} as .npz: {err}") from None
    if images.ndim == 3:
        images, layout = images[:, None], "NHW"
    elif images.ndim == 4 and images.shape[3] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        images, layout = images.transpose(0, 3, 1, 2), "NHWC"
    elif images.ndim == 4:
        layout = "NCHW"
    else:
        raise CertMaskError(f"{str(path)!r}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got "
                            f"shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise CertMaskError(f"{str(path)!r}: labels must be {len(images)} integers, got shape {labels.shape} "
                            f"dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise CertMaskError(f"{str(path)!r}: labels must be >= 0, got {labels.min()}")
    if images.dtype == np.uint8:
        images, scale = images.astype(np.float32) / 255.0, "uint8 / 255"
    elif images.dtype.kind == "f":
        images, scale = images.astype(np.float32), "float"
        if images.size and not (np.isfinite(images).all() and 0.0 <= images.min() and images.max() <= 1.0):
            raise CertMaskError(f"{str(path)!r}: float images must be finite and lie in [0, 1], found "
                                f"[{np.nanmin(images)}, {np.nanmax(images)}]")
    else:
        raise CertMaskError(f"{str(path)!r}: images must be uint8 or float, got dtype {images.dtype}")
    return (np.ascontiguousarray(images), labels.astype(np.int64),
            f"{path} ({layout}, {scale}, {images.shape[1]} channel(s))")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(root: str | os.PathLike, image_size: tuple[int, int] | None = None):
    """Images in the usual class-subfolder layout ``root/<class>/<image>`` (read with Pillow).

    Classes are the subfolder names in sorted order (label = position). All images must share one size
    unless ``image_size`` (H, W) resizes them (bilinear); grayscale and RGB may not be mixed.

    Returns
    -------
    images : ndarray, shape (N, C, H, W), float32 in [0, 1]
    labels : ndarray, shape (N,), int64
    ids : list of str
        Each image's path relative to ``root``.
    classes : list of str
    """
    try:
        from PIL import Image
    except ImportError:
        raise CertMaskError("reading an image folder needs Pillow: pip install 'certmask[images]'") from None
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(label, path) for label, name in enumerate(classes)
             for path in sorted((root / name).rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise CertMaskError(f"{str(root)!r} holds no class subfolders with images "
                            f"({', '.join(IMAGE_SUFFIXES)})")
    arrays, modes = [], set()
    for _, path in files:
        try:
            with Image.open(path) as image:
                mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                image = image.convert(mode)
                if image_size is not None:
                    image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
                arrays.append(np.asarray(image))
                modes.add(mode)
        except OSError as err:
            raise CertMaskError(f"cannot read image {str(path)!r}: {err}") from None
    if len(modes) > 1:
        raise CertMaskError(f"{str(root)!r} mixes grayscale and RGB images; convert them to one mode")
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        raise CertMaskError(f"{str(root)!r} holds images of sizes {shapes[:5]}; pass --image-size H W")
    images = np.stack(arrays).astype(np.float32) / 255.0
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return (np.ascontiguousarray(images), np.array([label for label, _ in files], np.int64),
            [str(path.relative_to(root)) for _, path in files], classes)


def load_cifar(folder: str | os.PathLike, split: str = "test"):
    """CIFAR-10 or CIFAR-100 python batches (``data_batch_1..5`` / ``test_batch``, or ``train`` / ``test``).

    Returns ``(images (N, 3, 32, 32) float32 in [0, 1], labels int64, source)``. The batches are
    pickles: read only files you trust.
    """
    import pickle
    folder = Path(folder)
    names = (["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)])
    if not (folder / names[0]).is_file():
        names = [split]  # CIFAR-100 layout
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise CertMaskError(f"CIFAR batch {str(path)!r} not found")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), np.int64))
    return (np.concatenate(images).astype(np.float32) / 255.0, np.concatenate(labels),
            f"{folder} (CIFAR python batches, {split})")


def load_idx_folder(folder: str | os.PathLike, split: str = "test"):
    """MNIST-style idx files in ``folder`` (``t10k-*`` for test, ``train-*`` for train; gzip or not).

    Returns ``(images (N, 1, H, W) float32 in [0, 1], labels int64, source)``.
    """
    folder = Path(folder)
    prefix = "t10k" if split == "test" else "train"
    found = {}
    for kind, ndim in (("images", 3), ("labels", 1)):
        candidates = sorted(folder.glob(f"{prefix}-{kind}-idx{ndim}-ubyte*"))
        if not candidates:
            raise CertMaskError(f"no {prefix}-{kind}-idx{ndim}-ubyte[.gz] file in {str(folder)!r}")
        found[kind] = read_idx(candidates[0])
    images, labels = found["images"], found["labels"].astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise CertMaskError(f"{str(folder)!r}: idx images of shape {images.shape} and {len(labels)} labels")
    return images[:, None].astype(np.float32) / 255.0, labels, f"{folder} (idx files, {split})"


def resize_images(images: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N, C, H, W)`` float images in [0, 1] resized to ``image_size`` (H, W), bilinear (Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise CertMaskError("--image-size needs Pillow: pip install 'certmask[images]'") from None
    H, W = (int(v) for v in image_size)
    out = np.empty(images.shape[:2] + (H, W), np.float32)
    for i, image in enumerate(images):
        for c, plane in enumerate(image):
            out[i, c] = np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((W, H),
                                                                                            Image.BILINEAR))
    return np.clip(out, 0.0, 1.0)


@dataclass
class Dataset:
    """Images to certify or train on, each with an id that the results keep."""

    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    source: str
    ids: list | None = None  # per image: relative path (image folders); None means the index
    classes: list | None = None  # class names, when the data names them


DATA_SPECS = ("fashion-mnist", "fashion-mnist-subset", "FILE.npz", "image folder (class subfolders)",
              "folder of idx files", "folder of CIFAR-10/100 python batches")


def load_data(spec: str, root: str | None = None, limit: int | None = None, split: str = "test",
              image_size: tuple[int, int] | None = None) -> Dataset:
    """Load a data spec: one of :data:`DATA_SPECS`.

    A folder is read as CIFAR python batches when it holds ``test_batch``/``data_batch_1`` (CIFAR-10)
    or ``test``/``train`` files (CIFAR-100), as idx files when it holds ``*-idx3-ubyte*``, and
    otherwise as class subfolders of PNG/JPEG images (Pillow). ``image_size`` (H, W) resizes every
    image (bilinear, Pillow). ``split`` picks the test or train part where the data has both.
    """
    if limit is not None and limit < 1:
        raise CertMaskError(f"limit must be >= 1, got {limit}")
    if split not in ("test", "train"):
        raise CertMaskError(f"split must be 'test' or 'train', got {split!r}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise CertMaskError(f"image size must be two integers >= 1 (H, W), got {tuple(image_size)}")
    path = Path(spec)
    ids = classes = None
    resized = False
    if spec == "fashion-mnist":
        images, labels, source = load_fashion_mnist(split, root=root)
        images, classes = images[:, None].astype(np.float32) / 255.0, list(FASHION_MNIST_CLASSES)
    elif spec == "fashion-mnist-subset":
        if split != "test":
            raise CertMaskError(f"the bundled subset holds test images only, not split {split!r}")
        images, labels, source = load_bundled_subset()
        images, classes = images[:, None].astype(np.float32) / 255.0, list(FASHION_MNIST_CLASSES)
    elif spec.endswith(".npz"):
        images, labels, source = load_npz(spec)
    elif path.is_dir() and any((path / name).is_file() for name in ("test_batch", "data_batch_1", "test",
                                                                   "train")):
        images, labels, source = load_cifar(path, split)
    elif path.is_dir() and any(path.glob("*-idx3-ubyte*")):
        images, labels, source = load_idx_folder(path, split)
    elif path.is_dir():
        images, labels, ids, classes = load_image_folder(path, image_size)
        source, resized = f"{path} (image folder, {len(classes)} classes)", True
    else:
        raise CertMaskError(f"unknown data {spec!r}: not one of {DATA_SPECS} (a named file or folder "
                            f"must exist)")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
        ids = ids[:limit] if ids is not None else None
    if len(images) == 0:
        raise CertMaskError(f"data {spec!r} from {source} is empty")
    if image_size is not None and not resized and tuple(images.shape[2:]) != tuple(image_size):
        images = resize_images(images, image_size)
    if image_size is not None:
        source += f", resized to {image_size[0]}x{image_size[1]}"
    return Dataset(images, labels, source, ids, classes)


def load_dataset(name: str, root: str | None = None, limit: int | None = None, split: str = "test",
                 image_size: tuple[int, int] | None = None):
    """``(images, labels, source)`` of a data spec (see :func:`load_data`)."""
    data = load_data(name, root, limit, split, image_size)
    return data.images, data.labels, data.source
