"""Offline real data: Fashion-MNIST (the Debian package or the subset bundled in the wheel), moving
Fashion-MNIST clips, ``.npz`` files, image folders, idx files and CIFAR python batches, each read as
``(N, C, *spatial)`` float32 items in ``[0, 1]`` (``(N, C, H, W)`` images, ``(N, C, T, H, W)`` clips,
``(N, C, L)`` signals) and int64 labels.

:func:`load_data` decodes a whole data set into memory; :func:`certmask_core.run.sources.open_data` opens
the same data as a source whose labels are known at once and whose pixels are decoded per batch.
:func:`load_data` and the ``load_*`` readers here read every item of such a source in one batch, so a
source's batches equal the in-memory arrays byte for byte. :func:`read_idx` reads one idx file whole.

Every file is read as hostile data: a malformed one gets a one-line :class:`CertMaskError` naming the file
and the offending values, never a traceback, a hang or code execution. The file formats and their checks
are :mod:`certmask_core.run.formats` (whose docstring states the rules: pixel ranges, labels, sizes,
pickles, links); the data specs and the files they name, Fashion-MNIST's stored arrays included, are
:mod:`certmask_core.run.catalog`. This module is where callers import the public names of all three
(:data:`MAX_DECODED_BYTES`, :data:`LAYOUTS`, :func:`load_fashion_mnist`, :func:`data_kind`, ...).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CertMaskError
from .catalog import (  # noqa: F401 (re-exported: the data specs' public names)
    BUNDLED_SUBSET_SOURCE,
    DATA_SPECS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    bundled_subset_path,
    cifar_batch_names,
    data_kind,
    fashion_mnist_files,
    idx_files,
    load_bundled_subset,
    load_fashion_mnist,
)
from .formats import (  # noqa: F401 (LAYOUTS, MAX_DECODED_BYTES, idx_header, ...: re-exported)
    IMAGE_SUFFIXES,
    LAYOUTS,
    MAX_DECODED_BYTES,
    MAX_LABEL,
    channels_first,
    check_class_names,
    check_image_size,
    check_layout,
    check_limit,
    idx_header,
    idx_labels,
    open_regular_file,
    read_idx_rows,
    resize_images,
)
from .sources import open_cifar, open_data, open_idx_folder, open_image_folder, open_npz


def read_small_text(path: Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of a regular file that is small by its nature (a mask set, a class list): one
    larger than ``max_bytes`` is refused, never read whole nor cut short."""
    with open_regular_file(path, what) as f:
        try:
            raw = f.read(max_bytes + 1)
        except OSError as err:
            raise CertMaskError(f"cannot read the {what} {str(path)!r}: {err}") from None
    if len(raw) > max_bytes:
        raise CertMaskError(f"{what} {str(path)!r} is larger than {max_bytes} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CertMaskError(f"{what} {str(path)!r} is not UTF-8 text: {err}") from None


def _read_whole(data) -> tuple[np.ndarray, np.ndarray, str]:
    """``(every item in one read, labels, source)`` of a source just opened, which is closed after."""
    with data:
        return data.read(np.arange(len(data))), data.labels, data.source


# --- idx files -------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike, *, limit: int | None = None) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into an array of its stored shape and dtype.

    Parameters
    ----------
    path : path
        A regular file; ``.gz`` is decompressed.
    limit : int, optional
        Read the first ``limit`` rows (entries of the first axis) only.

    Returns
    -------
    ndarray
        1 to 4 dimensions. A header that declares more (or less) data than the file holds, or more than
        :data:`MAX_DECODED_BYTES`, is refused before the data is read.
    """
    return read_idx_rows(Path(path), check_limit(limit))[0]


def load_idx_folder(folder: str | os.PathLike, split: str = "test", *, limit: int | None = None):
    """MNIST-style idx files in ``folder`` (``t10k-*`` for test, ``train-*`` for train; gzip or not).

    Images are uint8 (divided by 255) or floating point in ``[0, 1]``; other idx types are refused.

    Parameters
    ----------
    folder : path
    split : {"test", "train"}
    limit : int, optional
        Read the first ``limit`` images and labels only.

    Returns
    -------
    images : ndarray, shape (N, 1, H, W), float32 in [0, 1]
    labels : ndarray, shape (N,), int64
    source : str
    """
    return _read_whole(open_idx_folder(folder, split, check_limit(limit)))


# --- .npz ------------------------------------------------------------------------------------------------


def load_npz(path: str | os.PathLike, *, limit: int | None = None, layout: str | None = None
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """Items and labels from an ``.npz`` holding arrays ``images`` (or ``clips``) and ``labels``.

    ``images`` may be ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` images, ``(N, C, T, H, W)`` or
    ``(N, T, H, W, C)`` clips, or with ``layout`` any of :data:`LAYOUTS`: a 4-D (5-D) array is read as
    channels-last when only its last axis could hold channels (1, 3 or 4 of them) and as channels-first
    when only its second could; otherwise ``layout`` must say which. Pixels are scaled by their dtype
    (uint8 / 255, uint16 / 65535, floating point must be finite and lie in ``[0, 1]``; other dtypes are
    refused); labels must be N integers in ``[0, MAX_LABEL]``. The members are read with zipfile and
    numpy's header parser: plain numbers only (no pickles, objects or structured dtypes), each header's
    byte count checked against the member's size before anything is allocated.

    Parameters
    ----------
    path : path
    limit : int, optional
        Read (and decompress) the first ``limit`` items and labels only.
    layout : str, optional
        One of :data:`LAYOUTS`, when the shape cannot tell (or is not images).

    Returns
    -------
    images : ndarray, shape (N, C, *spatial), float32 in [0, 1]
    labels : ndarray, shape (N,), int64
    source : str
        States the layout and the scaling applied.
    """
    return _read_whole(open_npz(path, check_limit(limit), check_layout(layout)))


# --- image folders ---------------------------------------------------------------------------------------


def load_image_folder(root: str | os.PathLike, image_size: tuple[int, int] | None = None, *,
                      classes: Sequence[str] | None = None, limit: int | None = None):
    """Images in the usual class-subfolder layout ``root/<class>/<image>`` (read with Pillow).

    Without ``classes``, the classes are the subfolder names in sorted order (label = position; an
    empty subfolder keeps its position). Images are the files with an image suffix below each class
    folder (links followed); each must be a regular file, and each real file and folder is counted once.
    8-bit images are divided by 255, 16-bit grayscale PNGs by 65535, each by its own depth; other modes
    whose range is not known are refused. All images must share one size unless ``image_size`` (H, W)
    resizes them (bilinear); grayscale and RGB may not be mixed.

    Parameters
    ----------
    root : path
    image_size : (int, int), optional
    classes : sequence of str, optional
        The class names in label order: label = position in this list, every subfolder must be named
        in it, and a listed class may have no folder (it keeps its label).
    limit : int, optional
        Decode the first ``limit`` images (in label, then path order) only.

    Returns
    -------
    images : ndarray, shape (N, C, H, W), float32 in [0, 1]
    labels : ndarray, shape (N,), int64
    ids : list of str
        Each image's path relative to ``root``.
    classes : list of str
    """
    with open_image_folder(root, check_image_size(image_size), check_class_names(classes),
                           check_limit(limit)) as data:
        return data.read(np.arange(len(data))), data.labels, data.ids, data.classes


# --- CIFAR python batches --------------------------------------------------------------------------------


def load_cifar(folder: str | os.PathLike, split: str = "test", *, limit: int | None = None):
    """CIFAR-10 or CIFAR-100 python batches (``data_batch_1..5`` / ``test_batch``, or ``train`` / ``test``).

    The batches are pickles, read by :func:`.restricted_pickle.load_plain_pickle`: it admits dicts,
    lists, str, bytes, numbers and numpy arrays of plain dtypes and refuses any other global by name,
    so a crafted batch cannot run code. ``data`` is an ``(N, 3072)`` array (scaled by its
    dtype) or a list of rows of integers 0-255; ``labels`` (or ``fine_labels``) holds N integers.

    Parameters
    ----------
    folder : path
    split : {"test", "train"}
    limit : int, optional
        Keep the first ``limit`` images (later batches are not read).

    Returns
    -------
    images : ndarray, shape (N, 3, 32, 32), float32 in [0, 1]
    labels : ndarray, shape (N,), int64
    source : str
    """
    return _read_whole(open_cifar(folder, split, check_limit(limit)))


# --- any data spec ---------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Images to certify or train on, each with an id that the results keep."""

    images: np.ndarray  # (N, C, *spatial) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    source: str
    ids: list | None = None  # per image: relative path (image folders); None means the index
    classes: list | None = None  # class names, when the data names them


def load_data(spec: str, root: str | None = None, limit: int | None = None, split: str = "test",
              image_size: tuple[int, int] | None = None, *, layout: str | None = None,
              classes: Sequence[str] | None = None) -> Dataset:
    """Load a data spec, one of :data:`DATA_SPECS`, into memory.

    A folder is read as CIFAR python batches when it holds ``test_batch``/``data_batch_1`` (CIFAR-10)
    or ``test``/``train`` files (CIFAR-100), as idx files when it holds ``*-idx3-ubyte*``, and
    otherwise as class subfolders of PNG/JPEG images (Pillow). ``fashion-mnist-clips`` are the moving
    Fashion-MNIST clips of :mod:`certmask_core.run.video`, ``(N, 1, 16, 28, 28)``.

    This reads every item of :func:`certmask_core.run.sources.open_data` (which takes the same
    arguments) in one batch: the arrays equal any source batch's byte for byte.

    Parameters
    ----------
    spec : str
    root : path, optional
        Fashion-MNIST's folder (``fashion-mnist``, ``fashion-mnist-clips``).
    limit : int, optional
        The first ``limit`` items; readers that can skip the rest do (npz, idx, CIFAR, image folders).
    split : {"test", "train"}
        The test or train part, where the data has both.
    image_size : (int, int), optional
        Resize every image to (H, W), bilinear (Pillow); sides at most
        :data:`~certmask_core.geometry.MAX_SIDE`. Items with other than two spatial axes are refused.
    layout : str, optional
        The layout of ``.npz`` arrays (one of :data:`LAYOUTS`), required where the shape cannot tell.
    classes : sequence of str, optional
        An image folder's class names in label order (see :func:`load_image_folder`).

    Returns
    -------
    Dataset
        ``images`` of shape (N, C, *spatial), at most :data:`MAX_DECODED_BYTES` of float32.
    """
    with open_data(spec, root, limit, split, image_size, layout=layout, classes=classes) as data:
        images = data.read(np.arange(len(data)))
    return Dataset(images, data.labels, data.source, data.ids, data.classes)


def load_dataset(name: str, root: str | None = None, limit: int | None = None, split: str = "test",
                 image_size: tuple[int, int] | None = None, *, layout: str | None = None,
                 classes: Sequence[str] | None = None):
    """``(images, labels, source)`` of a data spec (see :func:`load_data`)."""
    data = load_data(name, root, limit, split, image_size, layout=layout, classes=classes)
    return data.images, data.labels, data.source
