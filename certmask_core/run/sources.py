"""Data sources: every data spec opened with its labels, names and shapes known, its pixels decoded per batch.

:func:`open_data` takes the arguments of :func:`certmask_core.run.datasets.load_data` and returns a
:class:`DataSource`; opening reads labels, headers and folder listings, never the pixels, so memory follows
the batches read and not the data set. ``source.read(indices)`` equals ``load_data(...).images[indices]``
byte for byte (``load_data`` reads every item of the same source in one batch), and :func:`prefetch`
decodes the next batches in background threads while the current one is used.

What each kind of data costs:

- ``.npz`` members stored uncompressed (``np.savez``) are read by offset (``os.pread``): a batch reads its
  own rows and nothing else. Compressed members (``np.savez_compressed``) are decompressed in order from
  a cursor; a read before the cursor starts the member again, so reading in increasing order is cheap.
  Fortran-ordered members store every item scattered: the whole member is decoded once, at the first
  read (within :data:`~certmask_core.run.formats.MAX_DECODED_BYTES`).
- idx files: plain ones are read by offset, ``.gz`` ones from a cursor, as above.
- CIFAR python batches are pickles of 10,000 images: each is unpickled once when opened (its labels are
  needed then) and again when a read needs its pixels; at most two are kept decoded.
- Image folders are listed when opened (labels and names from the folders) and the first image's header
  gives the item shape; each image is decoded when read.
- ``fashion-mnist-clips`` reads the Fashion-MNIST images of a batch and makes only their clips.

The file formats themselves (``.npy`` headers, idx headers, CIFAR batches, image decoding) and their
checks are :mod:`certmask_core.run.formats`, which files a data spec names is
:mod:`certmask_core.run.catalog`, and the readers of a stored array's rows (by offset, from a cursor,
or whole) are :mod:`certmask_core.run.stored_rows`; this module makes sources of them, read per batch.
Everything here is framework-free (numpy; Pillow for images). Every file is read as hostile data, as
:mod:`certmask_core.run.formats` describes: a malformed one is a one-line :class:`CertMaskError` naming
it, whenever the defect is met (opening or reading).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import math
import operator
import os
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import CertMaskError
from .catalog import (
    BUNDLED_SUBSET_SOURCE,
    FASHION_MNIST_CLASSES,
    bundled_subset_path,
    cifar_batch_names,
    data_kind,
    fashion_mnist_files,
    idx_files,
)
from .formats import (
    IMAGE_SUFFIXES,
    LAYOUT_ORDER,
    channels_first,
    check_class_names,
    check_decoded,
    check_image_size,
    check_labels,
    check_layout,
    check_limit,
    cifar_batch,
    class_images,
    decode_image,
    decoding,
    idx_labels,
    image_family,
    labels_refused,
    layout_of,
    npz_member,
    npz_rows,
    open_image,
    open_regular_file,
    pixel_range,
    resize_images,
    scale_text,
    to_unit_interval,
)
from .stored_rows import StreamRows, byte_view, idx_reader, npz_items_reader
from .video import CLIP_DEFAULTS, moving_clips_of

CACHED_CIFAR_BATCHES = 2
"""CIFAR batch files kept decoded at once (each is 10,000 images, 30 MB as uint8)."""


# --- the source ------------------------------------------------------------------------------------------


def _sorted_unique(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(order, back)``: the distinct indices in increasing order and ``indices == order[back]`` (``back``
    is None where ``indices`` already increase strictly, the runner's case)."""
    if len(indices) < 2 or bool(np.all(indices[1:] > indices[:-1])):
        return indices, None
    order, back = np.unique(indices, return_inverse=True)
    return order, back.reshape(-1)


def _stamp(path: Path) -> tuple | None:
    """What tells a file apart from its edited or replaced self: device, inode, size and both times."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class DataSource:
    """Data whose labels, names and shapes are known when opened and whose pixels are decoded per batch.

    Made by :func:`open_data`; usable as a context manager (``close`` on leaving). Reads may come from
    several threads at once (see :func:`prefetch`).

    Attributes
    ----------
    labels : ndarray, shape (N,), int64
        Checked as :func:`~certmask_core.run.datasets.load_data` checks them: integers in
        ``[0, MAX_LABEL]``.
    ids : list of str or None
        Each item's name (an image folder's relative paths); None where the index names the item.
    classes : list of str or None
        The class names, where the data names them.
    source : str
        Where the data came from, as ``load_data`` states it.
    item_shape : tuple of int
        ``(C, *spatial)`` of every item after any resizing.
    parallel_reads : bool
        Whether reads of different batches proceed at once. False where one stream is decoded in order
        (compressed ``.npz``, gzip idx): such reads queue behind one another, so :func:`prefetch` gives
        the source one worker.
    files : tuple of Path
        The files the source reads (read-only).
    bytes_per_item : int
        What one item costs while a read decodes it (read-only).
    """

    parallel_reads = True

    def __init__(self, labels: np.ndarray, source: str, item_shape: tuple[int, ...], *,
                 ids: list[str] | None = None, classes: list[str] | None = None,
                 files: Sequence[Path] = (), closing: Sequence = (), bytes_per_item: int | None = None):
        self.labels, self.source, self.item_shape = labels, source, tuple(int(v) for v in item_shape)
        self.ids, self.classes = ids, classes
        self._files = list(files)
        self._stamps = {path: _stamp(path) for path in self._files}
        self._closing = list(closing)  # closed (last first) with the source
        self._native_shape = self.item_shape  # before resizing
        self._resize_to: tuple[int, int] | None = None
        self._bytes_per_item = bytes_per_item or 4 * math.prod(self.item_shape)
        self._state = threading.Condition()
        self._active = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source!r}: {len(self)} items of {self.item_shape}>"

    def __enter__(self) -> DataSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the source reads: hashed by :meth:`fingerprint`, checked unchanged by every read."""
        return tuple(self._files)

    @property
    def bytes_per_item(self) -> int:
        """The bytes one item takes while a read decodes it (its stored values, its float32 pixels)."""
        return self._bytes_per_item

    def read(self, indices) -> np.ndarray:
        """The items at ``indices``, decoded.

        Parameters
        ----------
        indices : array of int, shape (n,)
            In ``[0, N)``, any order, repeats allowed. Reading in increasing order (the runner reads
            ``0 .. N`` in batches) is the cheap way for every kind of data.

        Returns
        -------
        ndarray, shape (n, *item_shape), float32 in [0, 1]
            Equal byte for byte to ``load_data(...).images[indices]``. One read decodes at most
            :data:`~certmask_core.run.formats.MAX_DECODED_BYTES`; beyond it the read is refused before
            anything is allocated.
        """
        indices = self._indices(indices)
        n = len(indices)
        check_decoded(n * self._bytes_per_item, f"{n} items of {self._native_shape} from {self.source}")
        if self._resize_to is not None:
            check_decoded(n * math.prod(self.item_shape) * 4,
                          f"{n} images resized to {self._resize_to[0]}x{self._resize_to[1]}")
        if n == 0:
            return np.zeros((0,) + self.item_shape, np.float32)
        order, back = _sorted_unique(indices)
        with self._reading():
            items = self._decode(order)
        self._check_unchanged(self._files_of(order))
        if self._resize_to is not None:
            items = resize_images(items, self._resize_to)
        return items if back is None else items[back]

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the data: labels, ids, classes, item shape, source and the bytes of every
        file the source reads (streamed, never held whole). A file changed since the source was opened
        is a CertMaskError here and at every read (see :meth:`read`)."""
        described = json.dumps({"source": self.source, "items": len(self), "classes": self.classes,
                                "item_shape": list(self.item_shape), "ids": self.ids,
                                "files": [str(path) for path in self._files]}, sort_keys=True)
        digest = hashlib.sha256(described.encode("utf-8", "surrogatepass"))
        digest.update(np.ascontiguousarray(self.labels, "<i8").tobytes())
        for path in self._files:
            with open_regular_file(path, "data file") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
            self._check_unchanged([path])
        return digest.hexdigest()

    def resize(self, image_size: tuple[int, int]) -> None:
        """Resize every item to ``image_size`` (H, W) as it is read from now on (bilinear, as load_data
        always did): :func:`open_data`'s ``image_size``, for the kinds of data that do not resize as they
        decode."""
        if len(self.item_shape) != 3:
            raise CertMaskError(f"image size {image_size[0]}x{image_size[1]} resizes images (C, H, W); "
                                f"{self.source} holds items of shape {self.item_shape}")
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise CertMaskError("--image-size needs Pillow: pip install 'certmask[images]'") from None
        if self.item_shape[1:] != tuple(image_size):
            self._resize_to = tuple(image_size)
            self.item_shape = self.item_shape[:1] + tuple(image_size)

    def _files_of(self, order: np.ndarray) -> list[Path]:
        """The files a read of the items ``order`` decodes from (every file, unless a kind knows)."""
        return self._files

    def _check_unchanged(self, paths) -> None:
        """CertMaskError when a file was replaced, rewritten or touched since the source was opened:
        items read before and after would come from different data."""
        for path in paths:
            if _stamp(path) != self._stamps[path]:
                raise CertMaskError(f"{str(path)!r} changed while certmask was reading it (size, time or "
                                    f"file differ from when the data were opened); rerun on data that "
                                    f"stay put")

    def close(self) -> None:
        """Release the files, once the reads in progress have finished; later reads are refused."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
        for item in reversed(self._closing):
            with contextlib.suppress(Exception):
                item.close()

    # --- for the kinds of data
    def _decode(self, order: np.ndarray) -> np.ndarray:
        """``(len(order), *native item shape)`` float32 in [0, 1] for strictly increasing ``order``."""
        raise NotImplementedError

    def _indices(self, indices) -> np.ndarray:
        array = np.asarray(indices)
        if array.size == 0:
            return np.zeros(0, np.int64)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise CertMaskError(f"indices must be a 1-D array of integers, got shape {array.shape} dtype "
                                f"{array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= len(self):
            raise CertMaskError(f"indices must lie in [0, {len(self)}), got values in [{low}, {high}]")
        return array.astype(np.int64, copy=False)

    @contextlib.contextmanager
    def _reading(self):
        """Counts a read in progress: close() waits for it, so no file is closed under a reader."""
        with self._state:
            if self._closed:
                raise CertMaskError(f"the data source {self.source!r:.200} is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()


class _ArraySource(DataSource):
    """Items that are rows of a stored array of a known layout (``.npz``, idx, Fashion-MNIST)."""

    def __init__(self, reader, layout: str, where: str, labels: np.ndarray, source: str, **kwargs):
        stored = reader.item_shape
        channel = LAYOUT_ORDER[layout][1]
        shape = ((1,) + stored if channel < 0 else stored if channel == 1
                 else (stored[-1],) + stored[:-1])
        super().__init__(labels, source, shape, **kwargs,
                         bytes_per_item=math.prod(stored) * max(reader.dtype.itemsize, 4))
        self._reader, self._layout, self._where = reader, layout, where
        self.parallel_reads = reader.parallel

    @property
    def stored_dtype(self) -> np.dtype:
        """The dtype the items are stored in (read-only)."""
        return self._reader.dtype

    def stored_rows(self, order: np.ndarray) -> np.ndarray:
        """The items at strictly increasing ``order`` as stored: their dtype and layout, unscaled (what a
        source made from these items, such as the clips, decodes from)."""
        return self._reader.rows(order)

    def _decode(self, order: np.ndarray) -> np.ndarray:
        unit = to_unit_interval(self.stored_rows(order), self._where, items=order)
        return channels_first(unit, self._layout)


# --- .npz ------------------------------------------------------------------------------------------------


def _items_member(files: list[str], where: str) -> str:
    """The member holding the items: ``images``, or ``clips`` (what the video module writes)."""
    present = [name for name in ("images", "clips") if name in files]
    if "labels" not in files or not present:
        raise CertMaskError(f"{where} holds {files[:20]}; it needs arrays 'images' and 'labels' ('clips' may "
                            "stand for 'images')")
    if len(present) > 1:
        raise CertMaskError(f"{where} holds both 'images' and 'clips'; keep the one to read")
    return present[0]


def open_npz(path: str | os.PathLike, limit: int | None = None, layout: str | None = None, *,
             source: str | None = None) -> DataSource:
    """An ``.npz`` of ``images`` (or ``clips``) and ``labels`` as a source (see
    :func:`~certmask_core.run.datasets.load_npz` for what is accepted).

    Parameters
    ----------
    path : path
    limit : int, optional
        The first ``limit`` items.
    layout : str, optional
        One of :data:`~certmask_core.run.formats.LAYOUTS`.
    source : str, optional
        What the source is called (its ``source``, and the name its reads' errors give the items), as the
        bundled subset is; by default the path, layout, scaling and channels.

    Returns
    -------
    DataSource
        Opening reads the zip directory, the two ``.npy`` headers and the labels.
    """
    path, limit, stated = Path(path), check_limit(limit), check_layout(layout)
    where = f"{str(path)!r}"
    raw = open_regular_file(path, "data file")
    closing = [raw]
    try:
        with decoding(path, "an .npz file"):
            if raw.read(6) == b"\x93NUMPY":
                raise CertMaskError(f"{where} is a .npy file (one array) named .npz; save images and labels "
                                    "together with np.savez(path, images=..., labels=...)")
            raw.seek(0)
            zf = zipfile.ZipFile(raw)
            closing.append(zf)
            name = _items_member([name[:-4] for name in zf.namelist() if name.endswith(".npy")], where)
            with contextlib.ExitStack() as stack:
                member, shape, fortran, dtype = npz_member(zf, name, path, stack)
                labels_member = npz_member(zf, "labels", path, stack)
                found = layout_of(shape, stated, where)
                n = shape[0]
                if 0 in shape[1:]:
                    raise CertMaskError(f"{where}: images of shape {shape} hold no pixels")
                label_shape, label_dtype = labels_member[1], labels_member[3]
                if label_shape != (n,) or label_dtype.kind not in "iu":
                    raise labels_refused(n, label_shape, label_dtype, where)
                pixel_range(dtype, where)
                rows = n if limit is None else min(limit, n)
                labels = npz_rows(labels_member, rows, f"{where}: array 'labels'")
                labels = check_labels(labels, rows, where)
                header = member.tell()
            reader = npz_items_reader(zf, raw, path, name, header, shape, fortran, dtype, rows)
            if isinstance(reader, StreamRows):
                closing.append(reader)
        data = _ArraySource(reader, found, source or where, labels, "", files=[path], closing=closing)
        data.source = source or (f"{path} ({found}{' as stated' if stated and found != 'NHW' else ''}, "
                                 f"{scale_text(dtype)}, {data.item_shape[0]} channel(s))")
        return data
    except BaseException:
        for item in reversed(closing):
            item.close()
        raise


# --- idx files -------------------------------------------------------------------------------------------


def _open_idx_pair(images_file: Path, labels_file: Path, limit: int | None, where: str, source: str,
                   image_where: str) -> _ArraySource:
    """Images and labels of two idx files, their counts compared (headers) when opened."""
    stored_labels, check = idx_labels(labels_file, limit, where)
    reader, raw = idx_reader(images_file, limit, lambda shape, dtype: check(shape, dtype, images_file))
    try:
        labels = check_labels(stored_labels, reader.count, f"{str(labels_file)!r}")
    except BaseException:
        raw.close()
        raise
    closing = [raw] + ([reader] if isinstance(reader, StreamRows) else [])
    return _ArraySource(reader, "NHW", image_where, labels, source, files=[images_file, labels_file],
                        closing=closing)


def open_idx_folder(folder: str | os.PathLike, split: str = "test", limit: int | None = None) -> DataSource:
    """MNIST-style idx files in ``folder`` as a source (see
    :func:`~certmask_core.run.datasets.load_idx_folder`); opening reads the labels and the images' header."""
    folder, limit = Path(folder), check_limit(limit)
    images_file, labels_file = idx_files(folder, split)
    data = _open_idx_pair(images_file, labels_file, limit, f"{str(folder)!r}", "", f"{str(images_file)!r}")
    data.source = f"{folder} (idx files, {split}, {scale_text(data.stored_dtype)})"
    return data


# --- Fashion-MNIST ---------------------------------------------------------------------------------------


def open_bundled_subset(limit: int | None = None) -> DataSource:
    """The Fashion-MNIST test images bundled in the package, as a source."""
    data = open_npz(bundled_subset_path(), limit, source=BUNDLED_SUBSET_SOURCE)
    data.classes = list(FASHION_MNIST_CLASSES)
    return data


def open_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None,
                       limit: int | None = None) -> DataSource:
    """Fashion-MNIST as a source: the Debian package's (or ``root``'s) gzip idx files, else the bundled
    test subset (see :func:`~certmask_core.run.datasets.load_fashion_mnist`)."""
    limit = check_limit(limit)
    files = fashion_mnist_files(split, root)
    if files is None:
        return open_bundled_subset(limit)
    images_file, labels_file, folder = files
    data = _open_idx_pair(images_file, labels_file, limit, str(folder), str(folder), str(folder))
    data.classes = list(FASHION_MNIST_CLASSES)
    return data


class _ClipSource(DataSource):
    """The moving Fashion-MNIST clips of :mod:`certmask_core.run.video`, made per batch: a read reads
    the images of its clips only and builds those clips."""

    def __init__(self, images: _ArraySource, split: str, params: dict):
        self._images, self._params = images, params
        frames, size = params["frames"], params["size"]
        described = ", ".join(f"{name} {value}" for name, value in params.items())
        super().__init__(images.labels, f"{images.source} (moving clips, {split}, {described})",
                         (1, frames, size, size), classes=images.classes, files=images.files,
                         closing=[images],
                         bytes_per_item=5 * frames * size * size + images.bytes_per_item)
        self.parallel_reads = images.parallel_reads

    def _decode(self, order: np.ndarray) -> np.ndarray:
        clips = moving_clips_of(self._images.stored_rows(order), order, **self._params)
        return to_unit_interval(clips, f"clips of {self._images.source}", items=order)


def open_fashion_mnist_clips(split: str = "test", root: str | os.PathLike | None = None,
                             limit: int | None = None) -> DataSource:
    """The moving Fashion-MNIST clips (``(N, 1, 16, 28, 28)``, clip ``i`` of image ``i``: the clips of
    :func:`certmask_core.run.video.fashion_mnist_clips`) as a source."""
    return _ClipSource(open_fashion_mnist(split, root, limit), split, dict(CLIP_DEFAULTS))


# --- CIFAR python batches --------------------------------------------------------------------------------


class _CifarSource(DataSource):
    """CIFAR-10/100 python batches. Each batch file is unpickled (restricted unpickler) once when opened,
    for its labels, and again when a read needs its pixels and it is no longer among the
    :data:`CACHED_CIFAR_BATCHES` kept decoded; a file that changed in between is refused."""

    def __init__(self, folder: Path, split: str, limit: int | None):
        self._where = f"CIFAR batch in {str(folder)!r}"
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._batches = []  # (path, first item, rows read, checksum of the stored rows, dtype)
        labels, count = [], 0
        for name in cifar_batch_names(folder, split):
            rows = None if limit is None else limit - count
            images, batch_labels = cifar_batch(folder / name, rows)
            self._batches.append((folder / name, count, rows, self._checksum(images), images.dtype))
            if len(self._cache) < CACHED_CIFAR_BATCHES:  # reads start at item 0: keep the first
                self._cache[len(self._batches) - 1] = images
            labels.append(batch_labels)
            count += len(images)
            if limit is not None and count >= limit:
                break
        widest = max(max(dtype.itemsize, 4) for *_, dtype in self._batches)
        super().__init__(np.concatenate(labels), f"{folder} (CIFAR python batches, {split})", (3, 32, 32),
                         files=[path for path, *_ in self._batches], bytes_per_item=3072 * widest)
        self._starts = np.array([first for _, first, *_ in self._batches], np.int64)

    @staticmethod
    def _checksum(images: np.ndarray) -> tuple:
        return images.shape, images.dtype.str, zlib.crc32(byte_view(np.ascontiguousarray(images)))

    def _batch(self, b: int) -> np.ndarray:
        with self._lock:
            if b in self._cache:
                self._cache.move_to_end(b)
                return self._cache[b]
            path, first, rows, checksum, _ = self._batches[b]
            images, labels = cifar_batch(path, rows)
            known = self.labels[first:first + len(labels)]
            if self._checksum(images) != checksum or not np.array_equal(labels, known):
                raise CertMaskError(f"CIFAR batch {str(path)!r} changed since the data was opened")
            self._cache[b] = images
            while len(self._cache) > CACHED_CIFAR_BATCHES:
                self._cache.popitem(last=False)
            return images

    def _decode(self, order: np.ndarray) -> np.ndarray:
        out = np.empty((len(order), 3, 32, 32), np.float32)
        which = np.searchsorted(self._starts, order, side="right") - 1
        # order increases: each batch file's items are one run of positions
        bounds = np.flatnonzero(np.diff(which)) + 1
        for a, z in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)]):
            b = int(which[a])
            stored = self._batch(b)[order[a:z] - self._batches[b][1]]
            out[a:z] = to_unit_interval(stored, self._where, items=order[a:z]).reshape(-1, 3, 32, 32)
        return out


def open_cifar(folder: str | os.PathLike, split: str = "test", limit: int | None = None) -> DataSource:
    """CIFAR-10 or CIFAR-100 python batches as a source (see
    :func:`~certmask_core.run.datasets.load_cifar`). Opening unpickles every batch file needed (the
    labels are inside), one at a time; later batches past ``limit`` are not read."""
    return _CifarSource(Path(folder), split, check_limit(limit))


# --- image folders ---------------------------------------------------------------------------------------


class _ImageFolderSource(DataSource):
    """Class subfolders of images: listed when opened, each image decoded when read. The first image's
    header sets the item shape; an image of another size (without ``image_size``) or mode is refused
    when read, naming both files."""

    def __init__(self, root: Path, image_size: tuple[int, int] | None, classes: list[str] | None,
                 limit: int | None):
        classes, files = class_images(root, classes)
        if not files:
            raise CertMaskError(f"{str(root)!r} holds no class subfolders with images "
                                f"({', '.join(IMAGE_SUFFIXES)})")
        files = files[:limit]
        self._root, self._image_size = root, image_size
        self._paths = [path for _, path in files]
        with open_image(self._paths[0]) as image:  # the header only: no pixel is decoded
            family = image_family(image, self._paths[0])
            shape = (3 if family == "RGB" else 1,) + (image_size or (image.height, image.width))
        super().__init__(np.array([label for label, _ in files], np.int64),
                         f"{root} (image folder, {len(classes)} classes)", shape,
                         ids=[str(path.relative_to(root)) for path in self._paths], classes=classes,
                         files=self._paths)

    def _decode(self, order: np.ndarray) -> np.ndarray:
        out = np.empty((len(order),) + self.item_shape, np.float32)
        first = self._paths[0]
        for j, i in enumerate(order.tolist()):
            path = self._paths[i]
            with open_image(path) as image:
                family = image_family(image, path)
                shape = (3 if family == "RGB" else 1,) + (self._image_size or (image.height, image.width))
                if shape[0] != self.item_shape[0]:
                    raise CertMaskError(f"{str(self._root)!r} mixes grayscale and RGB images "
                                        f"({str(first)!r}, {str(path)!r}); convert them to one mode")
                if shape != self.item_shape:
                    raise CertMaskError(f"{str(self._root)!r} holds images of sizes {self.item_shape[1:]} "
                                        f"({str(first)!r}) and {shape[1:]} ({str(path)!r}); pass "
                                        "--image-size H W")
                out[j] = decode_image(image, family, self._image_size, path)
        return out

    def _files_of(self, order: np.ndarray) -> list[Path]:
        return [self._paths[i] for i in order.tolist()]


def open_image_folder(root: str | os.PathLike, image_size: tuple[int, int] | None = None,
                      classes: Sequence[str] | None = None, limit: int | None = None) -> DataSource:
    """Images in class subfolders as a source (see :func:`~certmask_core.run.datasets.load_image_folder`
    for the layout, links, bit depths and ``classes``); ``image_size`` (H, W) resizes each image as it is
    decoded."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise CertMaskError("reading an image folder needs Pillow: pip install 'certmask[images]'") from None
    return _ImageFolderSource(Path(root), check_image_size(image_size), check_class_names(classes),
                              check_limit(limit))


# --- any data spec ---------------------------------------------------------------------------------------


def open_data(spec: str, root: str | os.PathLike | None = None, limit: int | None = None, split: str = "test",
              image_size: tuple[int, int] | None = None, *, layout: str | None = None,
              classes: Sequence[str] | None = None) -> DataSource:
    """Open a data spec, one of :data:`~certmask_core.run.datasets.DATA_SPECS`, as a :class:`DataSource`.

    The arguments, their checks and the errors are those of
    :func:`~certmask_core.run.datasets.load_data`, which reads every item of this source.

    Parameters
    ----------
    spec : str
    root : path, optional
        Fashion-MNIST's folder (``fashion-mnist``, ``fashion-mnist-clips``).
    limit : int, optional
        The first ``limit`` items.
    split : {"test", "train"}
    image_size : (int, int), optional
        Resize every image to (H, W) as it is read; items with other than two spatial axes are refused.
    layout : str, optional
        The layout of ``.npz`` arrays, one of :data:`~certmask_core.run.formats.LAYOUTS`.
    classes : sequence of str, optional
        An image folder's class names in label order.

    Returns
    -------
    DataSource
        Opening reads labels, headers and listings only: memory follows the batches read.
    """
    limit = check_limit(limit)
    if split not in ("test", "train"):
        raise CertMaskError(f"split must be 'test' or 'train', got {split!r}")
    image_size, layout = check_image_size(image_size), check_layout(layout)
    classes = check_class_names(classes)
    path = Path(spec)
    kind = data_kind(spec, path)
    if layout is not None and kind != "npz":
        raise CertMaskError(f"layout applies to .npz data only, not {spec!r}")
    if classes is not None and kind != "folder":
        raise CertMaskError(f"classes apply to image folders only, not {spec!r}")
    if kind == "fashion-mnist-subset" and split != "test":
        raise CertMaskError(f"the bundled subset holds test images only, not split {split!r}")
    openers = {"fashion-mnist": lambda: open_fashion_mnist(split, root, limit),
               "fashion-mnist-subset": lambda: open_bundled_subset(limit),
               "fashion-mnist-clips": lambda: open_fashion_mnist_clips(split, root, limit),
               "npz": lambda: open_npz(path, limit, layout),
               "cifar": lambda: open_cifar(path, split, limit),
               "idx": lambda: open_idx_folder(path, split, limit),
               "folder": lambda: open_image_folder(path, image_size, classes, limit)}
    data = openers[kind]()
    try:
        if len(data) == 0:
            raise CertMaskError(f"data {spec!r} from {data.source} is empty")
        if image_size is not None:
            if kind != "folder":  # an image folder resizes each image as Pillow decodes it
                data.resize(image_size)
            data.source += f", resized to {image_size[0]}x{image_size[1]}"
    except BaseException:
        data.close()
        raise
    return data


# --- reading ahead ---------------------------------------------------------------------------------------


def _count(value, name: str, low: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise CertMaskError(f"{name} must be an integer >= {low}, got {value!r:.40}") from None
    if value < low:
        raise CertMaskError(f"{name} must be an integer >= {low}, got {value}")
    return value


def prefetch(source: DataSource, batches: Iterable, depth: int = 2, workers: int | None = None
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices, source.read(indices))`` for each index array of ``batches``, in order, the next
    ``depth`` batches decoded ahead in background threads.

    Parameters
    ----------
    source : DataSource
        Anything with ``read(indices)``; ``parallel_reads = False`` limits it to one worker.
    batches : iterable of array of int
        The index arrays, each ``(n,)``.
    depth : int
        Batches decoded ahead of the one being used (0: each is read when asked for, in this thread).
        Memory holds at most ``depth + 1`` batches.
    workers : int, optional
        Threads decoding at once, at most ``depth`` (default: ``depth``, at most the CPU count).

    Yields
    ------
    indices : ndarray, shape (n,)
    items : ndarray, shape (n, *item_shape), float32

    Notes
    -----
    A read that failed raises its exception (the same :class:`CertMaskError`) when its batch is reached.
    Closing the generator early cancels the reads not started and waits for those running: no thread
    is left behind.
    """
    depth = _count(depth, "depth", 0)
    workers = min(depth, os.cpu_count() or 1) if workers is None else _count(workers, "workers", 1)
    if depth == 0:
        for indices in batches:
            indices = np.asarray(indices)
            yield indices, source.read(indices)
        return
    workers = max(1, min(workers, depth, 1 if not getattr(source, "parallel_reads", True) else depth))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="certmask-prefetch")
    pending: collections.deque = collections.deque()
    batches = iter(batches)

    def submit_next() -> bool:
        for indices in batches:
            indices = np.asarray(indices)
            pending.append((indices, pool.submit(source.read, indices)))
            return True
        return False

    try:
        while len(pending) < depth and submit_next():
            pass
        while pending:
            indices, future = pending.popleft()
            items = future.result()  # a failed read raises here, when its batch is reached
            submit_next()
            yield indices, items
            del items  # not held while the next batch is awaited: memory stays at depth + 1 batches
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
