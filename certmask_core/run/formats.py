"""The file formats behind every data reader, and the checks that treat their bytes as hostile.

:mod:`certmask_core.run.sources` streams a data set and :mod:`certmask_core.run.datasets` reads one
whole (through the same sources); both rest on what is here: opening regular files, the ``.npy`` members
of ``.npz`` files and their rows, idx headers and files, CIFAR python batches, image folders and image
decoding, and the checks of limits, layouts, labels, pixel ranges, class names and decoded sizes. These
names are public only so that no private name crosses a module border: they are internal to the run
layer, not part of the package's promised API. The few that are (:data:`MAX_DECODED_BYTES`,
:data:`LAYOUTS`, :func:`resize_images`, :func:`open_regular_file`, ...) are imported by callers from
:mod:`certmask_core.run.datasets`, which re-exports them.

Every file is read as hostile data: a malformed one gets a one-line :class:`CertMaskError` naming the file
and the offending values, never a traceback, a hang or code execution.

- Pixel values are scaled by their stored type's range, never by a guess: uint8 / 255, uint16 / 65535,
  floating point must be finite and already lie in ``[0, 1]``; other types are refused.
- Labels must be integers in ``[0, 2**31 - 1]``, one per image.
- Sizes are checked against the headers before anything is allocated, and one call (one read of a
  source) decodes at most :data:`MAX_DECODED_BYTES` (8 GiB, counted as the float32 images); ``limit``
  (``--limit``) reads the first images only: npz and idx files are decompressed no further, image folders
  decode no more images and later CIFAR batches are not read.
- CIFAR batches are pickles: they are read by :func:`.restricted_pickle.load_plain_pickle`, which admits
  only containers, numbers, bytes and numpy arrays of plain dtypes.
- Image folders read regular files only (a FIFO would block forever), each real file once, with the
  formats PNG, JPEG, BMP, GIF and WebP, under Pillow's decompression-bomb limit.

The idx reader parses the format with numpy alone (no torchvision).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import math
import operator
import os
import stat
import sys
import threading
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CertMaskError
from ..geometry import MAX_SIDE
from .restricted_pickle import describe, load_plain_pickle

MAX_DECODED_BYTES = 8 * 2**30
"""The most bytes one reader call may decode: the float32 images (or an array's stored size, where that
is larger). Beyond it the call is refused before allocating; ``limit`` reads the first images only."""
MAX_LABEL = 2**31 - 1
"""Labels lie in ``[0, MAX_LABEL]``: class indices that fit int32, whatever the backend."""
LAYOUTS = ("NHW", "NCHW", "NHWC", "NCL", "NLC", "NTHW", "NCTHW", "NTHWC")
"""The layouts a caller may state for ``.npz`` arrays (``layout=``, ``--layout``): each letter names an
axis (N items, C channels, H and W image sides, T frames, L signal length). Without one, a 3-D array is
grayscale images ``NHW`` and a 4-D (5-D) array is ``NCHW`` or ``NHWC`` (``NCTHW`` or ``NTHWC``) where
only one of axis 1 and the last axis could hold 1, 3 or 4 channels."""
CHUNK = 1 << 24
"""Bytes per read: memory follows the data found, not a header's claim (internal to the run layer)."""


# --- files ---------------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@contextlib.contextmanager
def decoding(path: Path, what: str):
    """Turn any failure of a decoder on hostile bytes into a one-line error naming the file (internal to
    the run layer).

    zipfile, gzip, pickle and Pillow raise many types on malformed input (OSError, ValueError, EOFError,
    zlib.error, struct.error, UnpicklingError, DecompressionBombError, ...); each one means the file is
    not the ``what`` it claims to be, so they are not enumerated.
    """
    try:
        yield
    except CertMaskError:
        raise
    except Exception as err:
        raise CertMaskError(f"cannot read {str(path)!r} as {what}: {_one_line(err)}") from None


def _file_kind(mode: int) -> str:
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


def _require_regular(mode: int, path: Path, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise CertMaskError(f"{what} {str(path)!r} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise CertMaskError(f"{what} {str(path)!r} is {_file_kind(mode)}, not a regular file: only regular "
                            "files are read (reading anything else can block forever)")


def open_regular_file(path: Path, what: str) -> io.BufferedReader:
    """``path`` opened for binary reading, provided it is a regular file (never a FIFO or device)."""
    try:
        _require_regular(os.stat(path).st_mode, path, what)
        # O_NONBLOCK: should the path become a FIFO between the two checks, opening it cannot block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CertMaskError(f"{what} not found: {str(path)!r}") from None
    except OSError as err:
        raise CertMaskError(f"cannot open {what} {str(path)!r}: {err.strerror or err}") from None
    except ValueError as err:  # a NUL byte in the path: no file can have that name
        raise CertMaskError(f"{what} not found: {str(path)!r} ({err})") from None
    try:
        _require_regular(os.fstat(fd).st_mode, path, what)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _read_upto(f, nbytes: int) -> bytearray:
    """Up to ``nbytes`` from ``f``, read in chunks: a header's claim allocates nothing by itself."""
    data = bytearray()
    while len(data) < nbytes:
        chunk = f.read(min(nbytes - len(data), CHUNK))
        if not chunk:
            break
        data += chunk
    return data


# --- checks of arguments and of stored values -----------------------------------------------------------


def _gib(nbytes: int) -> str:
    return f"{nbytes:,} bytes ({nbytes / 2**30:.1f} GiB)"


def check_decoded(nbytes: int, what: str) -> None:
    """Refuse ``what``, before allocating, where it would decode to more than :data:`MAX_DECODED_BYTES`
    (internal to the run layer)."""
    if nbytes > MAX_DECODED_BYTES:
        raise CertMaskError(f"{what} would decode to {_gib(nbytes)}, above the {_gib(MAX_DECODED_BYTES)} one "
                            "call may decode (MAX_DECODED_BYTES); pass --limit N (limit= in Python) to read "
                            "the first images only")


def check_limit(limit) -> int | None:
    """``limit`` (the first items to read) as an int >= 1, or None (internal to the run layer)."""
    if limit is None:
        return None
    try:
        limit = operator.index(limit)
    except TypeError:
        raise CertMaskError(f"limit must be an integer >= 1, got {limit!r}") from None
    if limit < 1:
        raise CertMaskError(f"limit must be >= 1, got {limit}")
    return limit


def check_layout(layout) -> str | None:
    """``layout``, one of :data:`LAYOUTS` or None (internal to the run layer)."""
    if layout is not None and layout not in LAYOUTS:
        raise CertMaskError(f"layout must be 'NCHW' or 'NHWC', got {layout!r:.40} (those are for images; "
                            "'NHW', 'NCL' and 'NLC' name 3-D arrays, 'NTHW' grayscale clips, 'NCTHW' and "
                            "'NTHWC' clips)")
    return layout


def check_image_size(image_size) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)``, each side in ``[1, MAX_SIDE]``, or None (internal to the run layer)."""
    if image_size is None:
        return None
    try:
        H, W = (operator.index(v) for v in image_size)
    except (TypeError, ValueError):
        shown = tuple(image_size) if isinstance(image_size, Sequence) else image_size
        raise CertMaskError(f"image size must be two integers >= 1 (H, W), got {shown}") from None
    if min(H, W) < 1:
        raise CertMaskError(f"image size must be two integers >= 1 (H, W), got {(H, W)}")
    if max(H, W) > MAX_SIDE:
        raise CertMaskError(f"image size {H}x{W}: each side may be at most {MAX_SIDE} (MAX_SIDE)")
    return H, W


def pixel_range(dtype: np.dtype, where: str) -> int | None:
    """The divisor that maps ``dtype``'s values onto [0, 1] (None: floating point, already there); other
    dtypes are refused, naming ``where`` (internal to the run layer)."""
    if dtype.kind == "u" and dtype.itemsize in (1, 2):
        return 255 if dtype.itemsize == 1 else 65535
    if dtype.kind == "f":
        return None
    raise CertMaskError(f"{where}: images of dtype {dtype} have no known value range; store uint8 (0-255), "
                        "uint16 (0-65535) or floating point in [0, 1]")


def scale_text(dtype: np.dtype) -> str:
    """The rule :func:`to_unit_interval` applies to ``dtype``, e.g. ``"uint8 / 255"``, as sources state it
    (internal to the run layer)."""
    top = pixel_range(dtype, "")
    return "float" if top is None else f"uint{8 * dtype.itemsize} / {top}"


def to_unit_interval(array: np.ndarray, where: str, items: np.ndarray | None = None) -> np.ndarray:
    """Pixels scaled by their stored dtype's range: the one rule every reader applies (internal to the run
    layer).

    Parameters
    ----------
    array : ndarray
        uint8 (divided by 255), uint16 (divided by 65535) or floating point (must be finite and lie in
        ``[0, 1]``: it is checked, never clipped). Any other dtype is refused.
    where : str
        Names the data in error messages.
    items : ndarray, shape (len(array),), optional
        The item number of each row of ``array`` (a batch of a larger data set), for messages.

    Returns
    -------
    ndarray, float32 in [0, 1], of ``array``'s shape
        Scaled as :func:`scale_text` states.
    """
    top = pixel_range(array.dtype, where)
    if top is not None:
        out = array.astype(np.float32)
        out /= top
        return out
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite.reshape(-1))), array.shape))
        if items is not None:
            first = (int(items[first[0]]),) + first[1:]
        seen = (f"finite values in [{float(array[finite].min())}, {float(array[finite].max())}]"
                if bad < array.size else "no finite values")
        raise CertMaskError(f"{where}: float images must be finite and lie in [0, 1]: {bad} non-finite "
                            f"value(s) (first at image {first[0]}, stored index {first}), {seen}")
    if array.size and not (array.min() >= 0 and array.max() <= 1):
        raise CertMaskError(f"{where}: float images must be finite and lie in [0, 1], found "
                            f"[{float(array.min())}, {float(array.max())}]")
    return array.astype(np.float32)


def labels_refused(n, shape, dtype, where: str) -> CertMaskError:
    """The error for stored labels of the wrong shape or dtype (internal to the run layer)."""
    return CertMaskError(f"{where}: labels must be {n} integers, got shape {shape} dtype {dtype}")


def check_labels(labels, n: int, where: str) -> np.ndarray:
    """Labels as int64 after checking them: 1-D integers (not bool), ``n`` of them, in ``[0, MAX_LABEL]``
    (internal to the run layer).

    Parameters
    ----------
    labels : ndarray or list
        As stored. The range is checked in the stored type, before any cast, so that a uint64
        ``2**64 - 1`` is reported as itself and not as ``-1``.
    n : int
        The number of images.
    where : str
        Names the data in error messages.

    Returns
    -------
    ndarray, shape (n,), int64
    """
    if isinstance(labels, (list, tuple)):
        odd = next((v for v in labels if isinstance(v, (bool, np.bool_))
                    or not isinstance(v, (int, np.integer))), None)
        if odd is not None or len(labels) != n:
            shown = f"a {describe(odd)}" if odd is not None else f"{len(labels)} values"
            raise CertMaskError(f"{where}: labels must be {n} integers, got a list holding {shown}")
        values = [int(v) for v in labels]
        low, high = (min(values), max(values)) if values else (0, 0)
    elif isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            raise labels_refused(n, labels.shape, labels.dtype, where)
        low, high = (int(labels.min()), int(labels.max())) if n else (0, 0)
        values = labels
    else:
        raise CertMaskError(f"{where}: labels must be {n} integers, got a {type(labels).__name__}")
    if low < 0 or high > MAX_LABEL:
        raise CertMaskError(f"{where}: labels must lie in [0, {MAX_LABEL}], found values in [{low}, {high}]")
    return np.asarray(values, dtype=np.int64).reshape(n)


# --- idx files -------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_header(f, path: Path, plain_size: int | None) -> tuple[tuple[int, ...], np.dtype]:
    """``(declared shape, dtype)`` from the header at the start of idx stream ``f`` (left after it, at
    ``4 + 4 * len(shape)`` bytes); ``plain_size``, the size of an uncompressed file, is checked against
    the declared data before any is read (internal to the run layer)."""
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise CertMaskError(f"{str(path)!r} is not an idx file (magic bytes {magic!r})")
    ndim = magic[3]
    if not 1 <= ndim <= 4:
        raise CertMaskError(f"{str(path)!r}: idx header declares {ndim} dimensions; 1 to 4 are read")
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise CertMaskError(f"{str(path)!r}: idx header cut short ({4 + len(dims)} bytes)")
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    declared = math.prod(shape) * dtype.itemsize
    if plain_size is not None and plain_size - 4 - 4 * ndim != declared:
        # a plain file's size is known: a header that claims more (or less) is refused unread
        found = (plain_size - 4 - 4 * ndim) // dtype.itemsize
        raise CertMaskError(f"{str(path)!r}: header says shape {shape}, found {found} values")
    return shape, dtype


def read_idx_rows(path: Path, limit: int | None = None, check=None) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(first rows as stored, declared shape)`` of an idx file (gzip or not), read whole up to ``limit``
    rows; ``check(shape, dtype)`` runs before any data is read (internal to the run layer)."""
    path = Path(path)
    gz = path.suffix == ".gz"
    with open_regular_file(path, "idx file") as raw, decoding(path, "an idx file"):
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        shape, dtype = idx_header(f, path, None if gz else os.fstat(raw.fileno()).st_size)
        row = math.prod(shape[1:]) * dtype.itemsize
        declared = shape[0] * row
        if check is not None:
            check(shape, dtype)
        rows = shape[0] if limit is None else min(limit, shape[0])
        check_decoded(rows * row // dtype.itemsize * max(dtype.itemsize, 4), f"{str(path)!r} ({shape})")
        data = _read_upto(f, rows * row)
        if len(data) < rows * row or (gz and rows == shape[0] and f.read(1)):
            found = (f"{len(data) // dtype.itemsize}" if len(data) < rows * row
                     else f"more than {declared // dtype.itemsize}")
            raise CertMaskError(f"{str(path)!r}: header says shape {shape}, found {found} values")
    return np.frombuffer(data, dtype).reshape((rows,) + shape[1:]), shape


def idx_labels(labels_file: Path, limit: int | None, where: str):
    """``(first labels as stored, check(shape, dtype))``: the labels of an idx pair, and the test that the
    images' header must pass (3-D, one image per label, a known pixel range) before they are read
    (internal to the run layer)."""
    labels, label_shape = read_idx_rows(labels_file, limit)
    if len(label_shape) != 1:
        raise labels_refused(label_shape[0], label_shape, labels.dtype, where)

    def check(shape, dtype, images_file):
        if len(shape) != 3 or shape[0] != label_shape[0] or 0 in shape[1:]:
            raise CertMaskError(f"{where}: idx images of shape {shape} and {label_shape[0]} labels")
        pixel_range(dtype, f"{str(images_file)!r}")

    return labels, check


# --- .npz ------------------------------------------------------------------------------------------------

_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npz_member(zf: zipfile.ZipFile, name: str, path: Path, stack: contextlib.ExitStack):
    """``(open member, shape, fortran_order, dtype)`` from one ``.npy`` header, its byte count checked
    (internal to the run layer)."""
    where = f"{str(path)!r}: array {name!r}"
    info = zf.getinfo(f"{name}.npy")
    f = stack.enter_context(zf.open(info))
    version = np.lib.format.read_magic(f)
    if version not in _NPY_HEADERS:
        raise CertMaskError(f"{where} has .npy format version {version}; versions 1.0 and 2.0 are read")
    shape, fortran, dtype = _NPY_HEADERS[version](f)
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise CertMaskError(f"{where} has dtype {dtype}; only plain integers and floats are read")
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - f.tell()
    if min(shape, default=0) < 0 or declared != held:
        raise CertMaskError(f"{where}: header declares shape {shape} of {dtype} ({_gib(declared)}) but the "
                            f"member holds {held:,} bytes")
    return f, shape, fortran, dtype


def npz_rows(member, rows: int, where: str) -> np.ndarray:
    """The first ``rows`` entries of a member: in C order a prefix, so only that much is decompressed
    (internal to the run layer)."""
    f, shape, fortran, dtype = member
    # Fortran order stores the first rows scattered: the whole array is read, then sliced
    count = math.prod(shape) if fortran else rows * math.prod(shape[1:])
    check_decoded(count * max(dtype.itemsize, 4), f"{where} ({shape} of {dtype})")
    data = _read_upto(f, count * dtype.itemsize)
    if len(data) < count * dtype.itemsize:
        raise CertMaskError(f"{where}: cut short ({len(data):,} of {count * dtype.itemsize:,} bytes)")
    array = np.frombuffer(data, dtype)
    return array.reshape(shape[::-1]).transpose()[:rows] if fortran else array.reshape((rows,) + shape[1:])


LAYOUT_ORDER = {layout: (len(layout), layout.find("C")) for layout in LAYOUTS}
"""Each layout's rank and the position of its channel axis (-1: no channel axis, one channel); internal
to the run layer."""
_LAYOUT_SHAPES = "(N, H, W), (N, C, H, W) or (N, H, W, C) images, (N, C, T, H, W) or (N, T, H, W, C) clips"


def layout_of(shape: tuple[int, ...], layout: str | None, where: str) -> str:
    """The layout of stored items from their shape (or as stated), refusing shapes that could be either
    (internal to the run layer).

    Parameters
    ----------
    shape : tuple of int
        The stored array's shape, ``N`` first.
    layout : str, optional
        One of :data:`LAYOUTS`, as the caller stated it; it must have the array's rank.
    where : str
        Names the data in error messages.

    Returns
    -------
    str
        A 3-D array is ``NHW`` unless stated; a 4-D or 5-D array is channels-first or channels-last
        where only one of axis 1 and the last axis could hold 1, 3 or 4 channels, else it must be stated.
    """
    if layout is not None:
        if LAYOUT_ORDER[layout][0] != len(shape):
            raise CertMaskError(f"{where}: layout {layout} names {LAYOUT_ORDER[layout][0]}-D arrays, but "
                                f"the array has shape {shape}")
        return layout
    if len(shape) == 3:
        return "NHW"
    if len(shape) not in (4, 5):
        raise CertMaskError(f"{where}: items must be {_LAYOUT_SHAPES} (or with layout= 'NCL' / 'NLC' "
                            f"signals (N, C, L) / (N, L, C), 'NTHW' clips), got shape {shape}")
    first, last = shape[1] in (1, 3, 4), shape[-1] in (1, 3, 4)
    channels_first, channels_last = ("NCHW", "NHWC") if len(shape) == 4 else ("NCTHW", "NTHWC")
    if first != last:
        return channels_first if first else channels_last
    either = (f"both axis 1 and axis {len(shape) - 1} could hold the channels" if first
              else f"neither axis 1 nor axis {len(shape) - 1} holds 1, 3 or 4 channels")
    also = "; grayscale clips (N, T, H, W): --layout NTHW" if len(shape) == 4 else ""
    raise CertMaskError(f"{where}: {'images' if len(shape) == 4 else 'clips'} of shape {shape} are ambiguous "
                        f"({either}); pass --layout {channels_first} or --layout {channels_last} (layout= in "
                        f"Python){also}")


def channels_first(items: np.ndarray, layout: str) -> np.ndarray:
    """Stored items of ``layout`` as a C-ordered ``(N, C, *spatial)`` array (a view where possible);
    internal to the run layer."""
    rank, channel = LAYOUT_ORDER[layout]
    if channel < 0:
        return np.ascontiguousarray(items[:, None])
    if channel == 1:
        return np.ascontiguousarray(items)
    return np.ascontiguousarray(items.transpose(0, rank - 1, *range(1, rank - 1)))


# --- CIFAR python batches --------------------------------------------------------------------------------

_CIFAR_PIXELS = 3 * 32 * 32


def _cifar_rows(data, rows: int | None, where: str) -> tuple[np.ndarray, int]:
    """``(first rows (N, 3072), stored N)`` of a batch's data: an array as stored, or a list of rows of
    integers 0-255 as uint8 (the format's type)."""
    if isinstance(data, np.ndarray):
        if data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
            raise CertMaskError(f"{where}: data must be (N, {_CIFAR_PIXELS}), got shape {data.shape}")
        pixel_range(data.dtype, where)
        return data[:rows], len(data)
    if not isinstance(data, list):
        raise CertMaskError(f"{where}: data must be an array or a list of rows, got {type(data).__name__}")
    total, data = len(data), data[:rows]
    for row in data:
        if (row.shape != (_CIFAR_PIXELS,) if isinstance(row, np.ndarray)
                else not isinstance(row, (list, tuple, bytes)) or len(row) != _CIFAR_PIXELS):
            shown = getattr(row, "shape", None) or (len(row) if isinstance(row, (list, tuple, bytes))
                                                    else type(row).__name__)
            raise CertMaskError(f"{where}: data rows must hold {_CIFAR_PIXELS} values each, found {shown}")
    check_decoded(len(data) * _CIFAR_PIXELS * 8, where)  # the int64 copy made below
    # the types first: numpy would truncate floats and expand nested lists (possibly shared, so huge)
    kinds = {kind.__name__ for kind in map(type, (v for row in data for v in row))
             if not issubclass(kind, (int, np.integer)) or issubclass(kind, bool)}
    if kinds:
        raise CertMaskError(f"{where}: data rows must hold integers 0-255, found {sorted(kinds)}")
    values = np.fromiter((int(v) for row in data for v in row), np.int64, len(data) * _CIFAR_PIXELS)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise CertMaskError(f"{where}: data rows must hold integers 0-255, found [{values.min()}, "
                            f"{values.max()}]")
    return values.astype(np.uint8).reshape(len(data), _CIFAR_PIXELS), total


def cifar_batch(path: Path, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(first rows (N, 3072) as stored, int64 labels)`` of one CIFAR python batch file, unpickled by the
    restricted unpickler and checked (internal to the run layer)."""
    where = f"CIFAR batch {str(path)!r}"
    with open_regular_file(path, "CIFAR batch") as f, decoding(path, "a CIFAR python batch"):
        size = os.fstat(f.fileno()).st_size
        check_decoded(size, where)  # the unpickler holds the whole batch in memory
        raw = bytes(_read_upto(f, size))
        batch = load_plain_pickle(raw, where)
    if not isinstance(batch, dict):
        raise CertMaskError(f"{where} holds a {type(batch).__name__}, not a dict of data and labels")
    data, labels = batch.get(b"data"), batch.get(b"labels", batch.get(b"fine_labels"))
    if data is None or labels is None:
        keys = sorted(repr(key)[:40] for key in list(batch)[:10])  # keys are bytes, str or int64
        raise CertMaskError(f"{where} holds keys {keys}; a CIFAR batch needs b'data' and b'labels' "
                            "(CIFAR-10) or b'fine_labels' (CIFAR-100)")
    if isinstance(data, list) and len(data) * _CIFAR_PIXELS > size:
        # each stored value takes a byte at least: more rows than that share them through the memo
        raise CertMaskError(f"{where}: {len(data)} rows of {_CIFAR_PIXELS} values cannot be stored in "
                            f"{size} bytes; the batch repeats rows to expand in memory")
    images, total = _cifar_rows(data, rows, where)
    if isinstance(labels, np.ndarray) and labels.shape != (total,):
        raise labels_refused(total, labels.shape, labels.dtype, where)
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != total:
        shown = f"{len(labels)} labels" if isinstance(labels, (list, tuple)) else f"a {type(labels).__name__}"
        raise CertMaskError(f"{where}: labels must be {total} integers, got {shown}")
    check_decoded(images.size * 4, where)
    return images, check_labels(labels[:rows], len(images), where)


# --- image folders and images ----------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""The files of an image folder that are read as images."""
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP")
"""The Pillow plugins an image may be decoded by: none that runs external programs (internal to the run
layer)."""


def _inside(outer: str, inner: str) -> bool:
    """Whether real path ``inner`` is ``outer`` or lies below it."""
    return os.path.commonpath([outer, inner]) == outer


def check_class_names(classes) -> list[str] | None:
    """``classes`` as a list of distinct folder names, or None (internal to the run layer)."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) for c in classes):
        raise CertMaskError(f"classes must be a list of folder names (str), got {classes!r:.100}")
    names = list(classes)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    bad = [c for c in names if c in ("", ".", "..") or "/" in c or os.sep in c or "\0" in c
           or (os.altsep and os.altsep in c)]
    if not names or repeated or bad:
        raise CertMaskError(f"classes must be distinct folder names, one per class: got {names[:20]}"
                            + (f" (repeated: {repeated[:10]})" if repeated else "")
                            + (f" (not a folder name: {bad[:10]})" if bad else ""))
    return names


def _refuse_the_root(folder: Path, real: str, root_real: str) -> None:
    if _inside(real, root_real):
        raise CertMaskError(f"{str(folder)!r} leads to {real!r}, which holds the data folder itself: its "
                            "images would be counted again under another label")


def _walk_images(folder: Path, root_real: str, seen_dirs: dict[str, Path]) -> list[Path]:
    """Image files below ``folder`` (following links), each directory entered once, regular files only."""
    found, todo = [], [folder]
    while todo:
        current = todo.pop()
        real = os.path.realpath(current)
        if real in seen_dirs:
            raise CertMaskError(f"{str(current)!r} and {str(seen_dirs[real])!r} are the same folder "
                                f"({real!r}): its images would be counted twice")
        _refuse_the_root(current, real, root_real)
        seen_dirs[real] = current
        try:
            with os.scandir(current) as entries:
                names = [entry.name for entry in entries]
        except OSError as err:
            raise CertMaskError(f"cannot list folder {str(current)!r}: {err.strerror or err}") from None
        for name in names:
            path = current / name
            image = path.suffix.lower() in IMAGE_SUFFIXES
            try:
                mode = os.stat(path).st_mode  # follows links: what would be opened
            except OSError as err:
                if image:
                    raise CertMaskError(f"cannot read image {str(path)!r}: {err.strerror or err}") from None
                continue
            if stat.S_ISDIR(mode):
                if image:
                    raise CertMaskError(f"image {str(path)!r} is a directory, not a file")
                todo.append(path)
            elif image:
                _require_regular(mode, path, "image")
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def class_images(root: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[int, Path]]]:
    """The class names and ``(label, path)`` of every image below ``root``'s class subfolders, each real
    file once (internal to the run layer)."""
    try:
        with os.scandir(root) as entries:
            subfolders = sorted(entry.name for entry in entries
                                if not entry.name.startswith(".") and entry.is_dir())
    except OSError as err:
        raise CertMaskError(f"cannot list image folder {str(root)!r}: {err.strerror or err}") from None
    if classes is None:
        classes = subfolders
    else:
        listed = set(classes)
        unlisted = [name for name in subfolders if name not in listed]
        if unlisted:
            raise CertMaskError(f"{str(root)!r} has subfolder(s) {unlisted[:10]} not among the classes given "
                                f"({classes[:20]}); list every class or move the folder away")
    root_real = os.path.realpath(root)
    class_real: dict[str, str] = {}
    seen_dirs: dict[str, Path] = {}
    seen_files: dict[tuple[int, int], Path] = {}
    files = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue  # a listed class without a folder: no images, its label kept
        real = os.path.realpath(folder)
        _refuse_the_root(folder, real, root_real)
        for other, other_real in class_real.items():
            if _inside(real, other_real) or _inside(other_real, real):
                raise CertMaskError(f"class folders {name!r} and {other!r} lead to overlapping folders "
                                    f"({real!r}, {other_real!r}): images would be counted under two labels")
        class_real[name] = real
        for path in _walk_images(folder, root_real, seen_dirs):
            info = os.stat(path)
            real_file = (info.st_dev, info.st_ino)  # the file itself: symbolic and hard links alike
            if real_file in seen_files:
                raise CertMaskError(f"images {str(seen_files[real_file])!r} and {str(path)!r} are the same "
                                    f"file ({os.path.realpath(path)!r}): each image must be counted once")
            seen_files[real_file] = path
            files.append((label, path))
    return classes, files


class _BombWarningsRaise:
    """While any image is decoded, Pillow's DecompressionBombWarning is raised as an error.

    Pillow only warns between its bomb limit and twice that; a warning is not one error line. Where
    warning filters are process-wide (unless Python runs with context-aware warnings, 3.14 and later),
    ``warnings.catch_warnings`` in several decoding threads at once would have each restore the filters
    it saw on entry, undoing the others' filter or leaving it installed for good: one installation is
    shared, counted, and removed when the last decoder leaves. Where filters belong to each thread, each
    decoder installs its own.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._installed = None

    @contextlib.contextmanager
    def __call__(self, category):
        if getattr(sys.flags, "context_aware_warnings", False):
            with warnings.catch_warnings():
                warnings.simplefilter("error", category)
                yield
            return
        with self._lock:
            if self._users == 0:
                self._installed = warnings.catch_warnings()
                self._installed.__enter__()
                warnings.simplefilter("error", category)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._installed.__exit__(None, None, None)
                    self._installed = None


_bomb_warnings_raise = _BombWarningsRaise()


@contextlib.contextmanager
def open_image(path: Path):
    """``path`` opened by Pillow (header read, pixels decoded on first use); any failure inside the
    block, decoding included, is a one-line CertMaskError naming the file. Safe in several threads
    (internal to the run layer)."""
    from PIL import Image
    Image.init()  # registers the plugins, so that a Pillow built without one is not asked for it
    formats = [name for name in PIL_FORMATS if name in Image.OPEN]
    with open_regular_file(path, "image") as f, decoding(path, "an image"), \
            _bomb_warnings_raise(Image.DecompressionBombWarning):
        with Image.open(f, formats=formats) as image:
            yield image


def image_family(image, path: Path) -> str:
    """``"L"`` (8-bit grayscale), ``"L16"`` (16-bit grayscale) or ``"RGB"``: how the image is decoded
    (internal to the run layer)."""
    mode = image.mode
    # PNG stores at most 16 bits per sample, so a PNG read as 32-bit "I" holds 16-bit values
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        return "L16"
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        raise CertMaskError(f"image {str(path)!r} has mode {mode!r} ({image.format}), whose value range is "
                            "not known; store 8- or 16-bit images")
    return "L" if mode in ("1", "L") else "RGB"


def decode_image(image, family: str, image_size: tuple[int, int] | None, path: Path) -> np.ndarray:
    """One image as float32 ``(C, H, W)`` in [0, 1], scaled by its own bit depth and resized to
    ``image_size`` (H, W) where given (internal to the run layer)."""
    from PIL import Image
    if family == "L16":
        array = np.asarray(image)
        if array.dtype.kind != "u" and array.size and (array.min() < 0 or array.max() > 65535):
            raise CertMaskError(f"image {str(path)!r}: 16-bit PNG holds values in [{array.min()}, "
                                f"{array.max()}]")
        array = array.astype(np.uint16)  # native byte order, as Pillow's "I;16" expects
        if image_size is not None:
            array = np.asarray(Image.fromarray(array).resize(image_size[::-1], Image.BILINEAR))
    else:
        image = image.convert(family)
        if image_size is not None:
            image = image.resize(image_size[::-1], Image.BILINEAR)
        array = np.asarray(image)
    unit = to_unit_interval(array, f"image {str(path)!r}")
    return unit[None] if unit.ndim == 2 else unit.transpose(2, 0, 1)


def resize_images(images: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N, C, H, W)`` float images in [0, 1] resized to ``image_size`` (H, W), bilinear (Pillow).

    Each plane is resized on its own, so a batch's result equals the rows of the whole set's.

    Sides above :data:`~certmask_core.geometry.MAX_SIDE`, or an output above :data:`MAX_DECODED_BYTES`,
    are refused before allocating.
    """
    try:
        from PIL import Image
    except ImportError:
        raise CertMaskError("--image-size needs Pillow: pip install 'certmask[images]'") from None
    H, W = check_image_size(image_size)
    check_decoded(math.prod(images.shape[:2]) * H * W * 4, f"{len(images)} images resized to {H}x{W}")
    out = np.empty(images.shape[:2] + (H, W), np.float32)
    for i, image in enumerate(images):
        for c, plane in enumerate(image):
            out[i, c] = np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((W, H),
                                                                                            Image.BILINEAR))
    # bilinear weights are convex: only rounding can leave [0, 1]
    return np.clip(out, 0.0, 1.0)
