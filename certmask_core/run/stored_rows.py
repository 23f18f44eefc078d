"""Rows of a stored array, read per batch: by offset, from a compressed stream's cursor, or decoded whole.

The streaming sources (:mod:`certmask_core.run.sources`) read the items of ``.npz`` members and idx
files through one of three readers with the same face (``rows(order)``, ``count``, ``item_shape``,
``dtype``, ``parallel``): :class:`PositionalRows` (uncompressed data, ``os.pread``, any order, from
several threads), :class:`StreamRows` (compressed data, a cursor moving forward) and
:class:`WholeRows` (Fortran-ordered arrays, decoded once). :func:`npz_items_reader` and
:func:`idx_reader` choose the reader for a member or a file. Internal to the run layer.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CertMaskError
from .formats import CHUNK, decoding, idx_header, npz_member, npz_rows, open_regular_file

_SKIP_CHUNK = 1 << 18  # bytes decompressed at a time while skipping rows: a skip allocates no more


def _consecutive_runs(order: np.ndarray) -> list[tuple[int, int, int]]:
    """``(first, stop, at)`` of every run of consecutive values in increasing ``order``: values
    ``first .. stop - 1`` sit at positions ``at ..`` of ``order``."""
    if not len(order):
        return []
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    starts = [0, *breaks.tolist()]
    stops = [*breaks.tolist(), len(order)]
    return [(int(order[a]), int(order[a]) + b - a, a) for a, b in zip(starts, stops)]


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Bytes of ``fd`` from ``offset`` into ``view``: how many were read (fewer only at the file's end).

    ``os.pread`` keeps no file position, so threads read one file at once without a lock.
    """
    done = 0
    while done < len(view):
        rest = view[done:]
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [rest], offset + done)
        elif hasattr(os, "pread"):
            chunk = os.pread(fd, min(len(rest), CHUNK), offset + done)
            got = len(chunk)
            rest[:got] = chunk
        else:  # no positional reads (Windows): one reader at a time moves the shared position
            with _SEEK_LOCK:
                os.lseek(fd, offset + done, os.SEEK_SET)
                chunk = os.read(fd, min(len(rest), CHUNK))
            got = len(chunk)
            rest[:got] = chunk
        if got == 0:
            break
        done += got
    return done


_SEEK_LOCK = threading.Lock()


def byte_view(array: np.ndarray) -> np.ndarray:
    """The bytes of C-contiguous ``array`` as a flat writable uint8 view."""
    return array.reshape(-1).view(np.uint8)


class _MemberCrc:
    """The CRC-32 of a zip member read by offset, checked once its bytes have been read from first to last.

    zipfile checks a member's CRC as it reads the member to its end; rows read by offset bypass it. The
    check follows the reads that extend the prefix read so far (in order, as ``load_data`` and the runner
    read); a few batches finished ahead of the prefix (by other prefetch workers) wait for it as copies.
    Reads in another order leave the member unchecked, as reading part of it through zipfile would.
    """

    _AHEAD = 4  # batches read ahead of the prefix kept for the check; beyond, it is given up

    def __init__(self, head: bytes, size: int, expected: int, path: Path, name: str):
        self._lock = threading.Lock()
        self._crc, self._end = zlib.crc32(head), len(head)
        self._size, self._expected, self._path, self._name = size, expected, path, name
        self._ahead: dict[int, bytes] = {}

    def update(self, start: int, data: np.ndarray) -> None:
        """``data`` is the member's bytes from offset ``start``."""
        with self._lock:
            if self._end is None or start + len(data) <= self._end:
                return
            if start > self._end:
                if len(self._ahead) < self._AHEAD:
                    self._ahead[start] = data.tobytes()
                else:
                    self._end, self._ahead = None, {}
                return
            self._extend(start, memoryview(data))
            while self._end in self._ahead:
                self._extend(self._end, memoryview(self._ahead.pop(self._end)))
            if self._end == self._size and self._crc != self._expected:
                raise CertMaskError(f"cannot read {str(self._path)!r} as an .npz file: BadZipFile: Bad "
                                    f"CRC-32 for file '{self._name}.npy'")

    def _extend(self, start: int, data: memoryview) -> None:
        self._crc = zlib.crc32(data[self._end - start:], self._crc)
        self._end = start + len(data)


class PositionalRows:
    """Rows stored one after another from a fixed offset of an open regular file, read by offset.

    Used for uncompressed data (stored ``.npz`` members, plain idx files). ``os.pread`` rather than a
    memory map: a file cut short after opening is then a short read, one named error, where a mapped
    page past the end would kill the process (SIGBUS).
    """

    parallel = True

    def __init__(self, file, path: Path, what: str, offset: int, count: int, item_shape: tuple[int, ...],
                 dtype: np.dtype, crc: tuple[_MemberCrc, int] | None = None):
        self._fd, self._path, self._what, self._offset = file.fileno(), path, what, offset
        self.count, self.item_shape, self.dtype = count, item_shape, dtype
        self._row = math.prod(item_shape) * dtype.itemsize
        self._crc = crc  # the member's check, and the member offset of row 0

    def rows(self, order: np.ndarray) -> np.ndarray:
        """``(len(order), *item_shape)`` as stored, for increasing ``order``."""
        out = np.empty((len(order),) + self.item_shape, self.dtype)
        flat, row = byte_view(out), self._row
        with decoding(self._path, self._what):
            for first, stop, at in _consecutive_runs(order):
                view = flat[at * row:(at + stop - first) * row]
                got = _pread_into(self._fd, memoryview(view), self._offset + first * row)
                if got < len(view):
                    raise CertMaskError(f"{str(self._path)!r}: cut short since it was opened (rows {first} "
                                        f"to {stop - 1} need {self._offset + stop * row:,} bytes)")
                if self._crc is not None:
                    check, base = self._crc
                    check.update(base + first * row, view)
        return out


class StreamRows:
    """Rows of a compressed stream, decoded in order from a cursor.

    A read continues from where the last one stopped; one that starts before it opens the stream
    again. One lock serialises the reads: a stream has one position.

    Parameters
    ----------
    open_stream : callable
        A new stream, positioned at row 0.
    stored : int
        The rows the stream holds: reaching the last, ``at_end(stream)`` checks what follows.
    short : callable
        ``short(bytes found from row 0)``: the message for data cut short.
    """

    parallel = False

    def __init__(self, open_stream: Callable, path: Path, what: str, stored: int, count: int,
                 item_shape: tuple[int, ...], dtype: np.dtype, short: Callable[[int], str],
                 at_end: Callable | None = None, stream=None):
        self._open_stream, self._path, self._what = open_stream, path, what
        self._stored, self.count, self.item_shape, self.dtype = stored, count, item_shape, dtype
        self._short, self._at_end = short, at_end
        self._row = math.prod(item_shape) * dtype.itemsize
        self._lock = threading.Lock()
        self._stream, self._next = stream, 0  # the cursor: the next row the stream yields

    def rows(self, order: np.ndarray) -> np.ndarray:
        """``(len(order), *item_shape)`` as stored, for increasing ``order``."""
        out = np.empty((len(order),) + self.item_shape, self.dtype)
        flat, row = byte_view(out), self._row
        with self._lock, decoding(self._path, self._what):
            try:
                for first, stop, at in _consecutive_runs(order):
                    if self._stream is None or first < self._next:
                        self._drop()
                        self._stream, self._next = self._open_stream(), 0
                    self._skip((first - self._next) * row)
                    self._next = first
                    self._fill(flat[at * row:(at + stop - first) * row], first * row)
                    self._next = stop
                    if stop == self._stored and self._at_end is not None:
                        self._at_end(self._stream)
            except BaseException:
                self._drop()  # the stream's position is unknown after a failure
                raise
        return out

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _skip(self, nbytes: int) -> None:
        start = self._next * self._row
        left = nbytes
        while left:
            chunk = self._stream.read(min(left, _SKIP_CHUNK))
            if not chunk:
                raise CertMaskError(self._short(start + nbytes - left))
            left -= len(chunk)

    def _fill(self, view: np.ndarray, start: int) -> None:
        done = 0
        while done < len(view):
            got = self._stream.readinto(memoryview(view[done:done + CHUNK]))
            if not got:
                raise CertMaskError(self._short(start + done))
            done += got

    def _drop(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        self._stream = None


class WholeRows:
    """Rows of an array decoded whole at the first read (Fortran order scatters every row)."""

    parallel = True

    def __init__(self, load: Callable[[], np.ndarray], count: int, item_shape: tuple[int, ...],
                 dtype: np.dtype):
        self._load, self.count, self.item_shape, self.dtype = load, count, item_shape, dtype
        self._lock = threading.Lock()
        self._array = None

    def rows(self, order: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = self._load()
        return self._array[order]


def _stored_member_start(file, info: zipfile.ZipInfo, path: Path) -> int:
    """Where an uncompressed member's bytes begin: after its local header, whose name and extra field
    lengths may differ from the central directory's."""
    head = bytearray(30)
    got = _pread_into(file.fileno(), memoryview(head), info.header_offset)
    if got < 30 or head[:4] != b"PK\x03\x04":
        raise CertMaskError(f"cannot read {str(path)!r} as an .npz file: BadZipFile: bad local header for "
                            f"{info.filename!r}")
    name_length, extra_length = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    size = os.fstat(file.fileno()).st_size
    if start + info.file_size > size:
        raise CertMaskError(f"{str(path)!r}: member {info.filename!r} is cut short ({size:,} bytes in the "
                            f"file, the member ends at {start + info.file_size:,})")
    return start


def npz_items_reader(zf: zipfile.ZipFile, raw, path: Path, name: str, header: int,
                      shape: tuple[int, ...], fortran: bool, dtype: np.dtype, count: int):
    """How the rows of member ``name`` are read: by offset, from a cursor, or whole."""
    where = f"{str(path)!r}: array {name!r}"
    info = zf.getinfo(f"{name}.npy")
    item = tuple(shape[1:])
    if fortran:
        def load():
            with contextlib.ExitStack() as stack, decoding(path, "an .npz file"):
                return npz_rows(npz_member(zf, name, path, stack), count, where)
        return WholeRows(load, count, item, dtype)
    stored = info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size
    if stored and not info.flag_bits & 1:  # bit 0: encrypted, which zipfile refuses when opened
        start = _stored_member_start(raw, info, path)
        head = bytearray(header)
        _pread_into(raw.fileno(), memoryview(head), start)
        check = _MemberCrc(bytes(head), info.file_size, info.CRC, path, name)
        return PositionalRows(raw, path, "an .npz file", start + header, count, item, dtype, (check, header))

    def open_stream():
        stream = zf.open(info)
        stream.read(header)  # the .npy header, parsed when the source was opened
        return stream

    total = shape[0] * math.prod(item) * dtype.itemsize
    return StreamRows(open_stream, path, "an .npz file", shape[0], count, item, dtype,
                       short=lambda found: f"{where}: cut short ({found:,} of {total:,} bytes)",
                       # reading past the end makes zipfile check the member's CRC-32
                       at_end=lambda stream: stream.read(1))


def idx_reader(path: Path, limit: int | None, check: Callable) -> tuple[object, object]:
    """``(rows reader, open file)`` of an idx file whose header passes ``check(shape, dtype)``."""
    gz = path.suffix == ".gz"
    raw = open_regular_file(path, "idx file")
    try:
        with decoding(path, "an idx file"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            shape, dtype = idx_header(stream, path, None if gz else os.fstat(raw.fileno()).st_size)
            check(shape, dtype)
            header, item = 4 + 4 * len(shape), tuple(shape[1:])
            count = shape[0] if limit is None else min(limit, shape[0])
            if not gz:
                return PositionalRows(raw, path, "an idx file", header, count, item, dtype), raw

            def open_stream():
                raw.seek(0)
                again = gzip.GzipFile(fileobj=raw, mode="rb")
                again.read(header)
                return again

            def at_end(stream):
                # a gzip stream's length is known once read: data beyond the header's claim is refused
                if stream.read(1):
                    raise CertMaskError(f"{str(path)!r}: header says shape {shape}, found more than "
                                        f"{math.prod(shape)} values")

            return StreamRows(open_stream, path, "an idx file", shape[0], count, item, dtype,
                               short=lambda found: f"{str(path)!r}: header says shape {shape}, found "
                                                   f"{found // dtype.itemsize} values",
                               at_end=at_end, stream=stream), raw
    except BaseException:
        raw.close()
        raise
