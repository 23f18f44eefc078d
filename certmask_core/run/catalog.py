"""The data specs and the files they name: which reader a spec names (:func:`data_kind`), where
Fashion-MNIST lies (the Debian package, a named folder or the subset bundled in the package) and its
stored arrays, and which files of an idx or CIFAR folder are read.

Both data readers, :mod:`certmask_core.run.sources` (streaming) and :mod:`certmask_core.run.datasets`
(whole), and the clips of :mod:`certmask_core.run.video` start here; this module imports none of them, so
that no two of them import each other in a circle. Its public names are those of
:mod:`certmask_core.run.datasets`, which imports them from here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CertMaskError
from .formats import check_labels, check_limit, idx_labels, read_idx_rows

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_SUBSET = "fashion_mnist_test_subset.npz"
BUNDLED_SUBSET_SOURCE = "bundled subset (1,000 test images)"


# --- Fashion-MNIST ---------------------------------------------------------------------------------------


def bundled_subset_path() -> Path:
    """The ``.npz`` of the Fashion-MNIST test images bundled in the package."""
    return Path(__file__).with_name("data") / _SUBSET


def fashion_mnist_files(split: str, root: str | os.PathLike | None = None, allow_subset: bool = True
                        ) -> tuple[Path, Path, Path] | None:
    """``(images file, labels file, folder)`` of Fashion-MNIST's ``split``, or None where the bundled
    subset stands in (see :func:`load_fashion_mnist`)."""
    if split not in ("test", "train"):
        raise CertMaskError(f"split must be 'test' or 'train', got {split!r}")
    prefix = "t10k" if split == "test" else "train"
    folder = Path(root) if root is not None else FASHION_MNIST_ROOT
    images_file = folder / f"{prefix}-images-idx3-ubyte.gz"
    if os.path.lexists(images_file):
        return images_file, folder / f"{prefix}-labels-idx1-ubyte.gz", folder
    if root is not None or not allow_subset or split != "test":
        raise CertMaskError(f"Fashion-MNIST {split} files not found in {str(folder)!r} "
                            "(install the Debian package dataset-fashion-mnist)")
    return None


def load_bundled_subset() -> tuple[np.ndarray, np.ndarray, str]:
    """The first 1,000 Fashion-MNIST test images, shipped in the package: ``(images, labels, source)``."""
    # the package's own file, not user data: numpy's reader (without pickles) is enough
    with np.load(bundled_subset_path(), allow_pickle=False) as z:
        return z["images"], z["labels"].astype(np.int64), BUNDLED_SUBSET_SOURCE


def _idx_pair(images_file: Path, labels_file: Path, limit: int | None, where: str):
    """Images and labels of two idx files, their counts compared (headers) before the images are read."""
    labels, check = idx_labels(labels_file, limit, where)
    images, _ = read_idx_rows(images_file, limit, lambda shape, dtype: check(shape, dtype, images_file))
    return images, check_labels(labels, len(images), f"{str(labels_file)!r}")


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None,
                       allow_subset: bool = True, *, limit: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
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
    limit : int, optional
        Read the first ``limit`` images only.

    Returns
    -------
    images : ndarray, shape (N, 28, 28), as stored (uint8 in the real files)
    labels : ndarray, shape (N,), int64
    source : str
        Where the data came from (printed by the CLI so that results name their data).
    """
    limit = check_limit(limit)
    files = fashion_mnist_files(split, root, allow_subset)
    if files is not None:
        images_file, labels_file, folder = files
        images, labels = _idx_pair(images_file, labels_file, limit, str(folder))
        return images, labels, str(folder)
    images, labels, source = load_bundled_subset()
    return images[:limit], labels[:limit], source


# --- folders of idx files and CIFAR batches --------------------------------------------------------------


def idx_files(folder: Path, split: str) -> tuple[Path, Path]:
    """``(images file, labels file)`` of ``split`` in an idx folder (the first of each, sorted)."""
    prefix = "t10k" if split == "test" else "train"
    found = {}
    for kind, ndim in (("images", 3), ("labels", 1)):
        candidates = sorted(folder.glob(f"{prefix}-{kind}-idx{ndim}-ubyte*"))
        if not candidates:
            raise CertMaskError(f"no {prefix}-{kind}-idx{ndim}-ubyte[.gz] file in {str(folder)!r}")
        found[kind] = candidates[0]
    return found["images"], found["labels"]


def cifar_batch_names(folder: Path, split: str) -> list[str]:
    """The batch files of ``split``: CIFAR-10's ``test_batch`` / ``data_batch_1..5``, else CIFAR-100's
    ``test`` / ``train``."""
    names = (["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)])
    return names if os.path.lexists(folder / names[0]) else [split]


# --- data specs ------------------------------------------------------------------------------------------


DATA_SPECS = ("fashion-mnist", "fashion-mnist-subset", "fashion-mnist-clips", "FILE.npz",
              "image folder (class subfolders)", "folder of idx files",
              "folder of CIFAR-10/100 python batches")


def data_kind(spec: str, path: Path) -> str:
    """Which reader a data spec names: one of the named data sets, ``"npz"``, ``"cifar"``, ``"idx"`` or
    ``"folder"``."""
    if spec in ("fashion-mnist", "fashion-mnist-subset", "fashion-mnist-clips"):
        return spec
    if spec.endswith(".npz"):
        return "npz"  # the reader says whether it is missing, a directory or not a regular file
    if path.is_dir():
        if any((path / name).is_file() for name in ("test_batch", "data_batch_1", "test", "train")):
            return "cifar"
        return "idx" if any(path.glob("*-idx3-ubyte*")) else "folder"
    if os.path.lexists(path):
        raise CertMaskError(f"unknown data {spec!r}: a data file must be an .npz holding 'images' and "
                            "'labels' (np.savez)")
    raise CertMaskError(f"unknown data {spec!r}: not one of {DATA_SPECS} (a named file or folder must exist)")
