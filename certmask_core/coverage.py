"""Coverage verification for any mask set (theorem T1 applied to every mask), in any number of axes.

:func:`coverage_counts` is the fast path (numba difference array, ``O(n 2^d + d prod P)``);
:func:`certmask_core.reference.coverage_counts_bruteforce` is its obviously correct twin (the
definition, ``O(n prod P)``) and the oracle of the tests. The d-axis kernel is
:func:`box_coverage_counts` (with its own twin); images (d = 2) keep a fused 2-D kernel, 2.4x faster
at 4096x4096. Every slow twin is in :mod:`certmask_core.reference`.
"""
from __future__ import annotations

import math
import numbers

import numba
import numpy as np

from .bitsets import pack, popcount, unique_rows, unpack
from .errors import CertMaskError
from .geometry import MaskSet, PatchThreat
from .validation import positive_int

MAX_DENSE_POSITIONS = 2**27
"""Largest patch-position grid :func:`coverage_counts` materialises (1 GiB of int64 counts); the
decisions never need the dense grid (see :func:`coverage_extremes`)."""


def threat_for(maskset: MaskSet, patch) -> PatchThreat:
    """``patch`` (a size or a :class:`PatchThreat`) as a threat on ``maskset``'s image, checked.

    Internal to the package: every coverage question on a mask set starts here."""
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    if isinstance(patch, PatchThreat):
        if patch.image_size != maskset.image_size:
            raise CertMaskError(f"threat image {patch.image_size} differs from the mask set's "
                                f"image {maskset.image_size}")
        return patch
    return PatchThreat(maskset.image_size, patch)


def covered_windows(maskset: MaskSet, patch) -> np.ndarray:
    """Per mask, the inclusive box of patch positions it covers: ``(n, 2 d)``, first positions then
    last ones (``(a0, b0, a1, b1)`` for images).

    By T1 a mask at ``(y, x)`` of size ``(mh, mw)`` covers ``a in [y, y + mh - ph]`` and
    ``b in [x, x + mw - pw]``, and likewise on every axis. A mask smaller than the patch on an axis
    covers nothing: its range is empty (``a1 < a0`` on that axis). Masks lie inside the image, so
    non-empty ranges lie inside the position grid.
    """
    threat = threat_for(maskset, patch)
    return np.concatenate([maskset.origins, maskset.origins + maskset.sizes - np.array(threat.patch_size)],
                          axis=1)


# no cache=True: concurrent ranks of a distributed run race on numba's cache files (numba#10128)
@numba.njit(cache=True)
def _difference_array_counts(windows, P_h, P_w):  # pragma: no cover - compiled
    """Counts on a ``P_h x P_w`` grid; each window is clipped to the grid first, so no input, however
    hostile, can index outside the arrays (tests run this code with numba's bounds checking on)."""
    diff = np.zeros((P_h + 1, P_w + 1), dtype=np.int64)
    for i in range(windows.shape[0]):
        a0, b0 = max(windows[i, 0], 0), max(windows[i, 1], 0)
        a1, b1 = min(windows[i, 2], P_h - 1), min(windows[i, 3], P_w - 1)
        if a0 > a1 or b0 > b1:
            continue
        diff[a0, b0] += 1
        diff[a0, b1 + 1] -= 1
        diff[a1 + 1, b0] -= 1
        diff[a1 + 1, b1 + 1] += 1
    out = np.empty((P_h, P_w), dtype=np.int64)
    for a in range(P_h):
        row = 0
        for b in range(P_w):
            row += diff[a, b]
            out[a, b] = row + (out[a - 1, b] if a > 0 else 0)
    return out


@numba.njit(cache=True)
def _box_difference_counts(lows, highs, extent):  # pragma: no cover - compiled
    """Counts of ``d``-dimensional inclusive boxes on a grid of ``extent`` positions per axis, as a
    flat ``prod (extent + 1)`` array (the last row of every axis is scratch): +-1 at the ``2^d``
    corners of each box (clipped to the grid first), then a prefix sum along every axis."""
    d = extent.shape[0]
    dims = extent + 1
    strides = np.ones(d, np.int64)
    for i in range(d - 2, -1, -1):
        strides[i] = strides[i + 1] * dims[i + 1]
    total = strides[0] * dims[0]
    diff = np.zeros(total, np.int64)
    lo = np.empty(d, np.int64)
    hi = np.empty(d, np.int64)
    for b in range(lows.shape[0]):
        empty = False
        for i in range(d):
            lo[i] = max(lows[b, i], 0)
            hi[i] = min(highs[b, i], extent[i] - 1)
            empty = empty or lo[i] > hi[i]
        if empty:
            continue
        for corner in range(1 << d):
            index, sign = 0, 1
            for i in range(d):
                if (corner >> i) & 1:
                    index += (hi[i] + 1) * strides[i]
                    sign = -sign
                else:
                    index += lo[i] * strides[i]
            diff[index] += sign
    for i in range(d):  # prefix sum along axis i: blocks of dims[i] rows of strides[i] entries
        block = strides[i] * dims[i]
        for start in range(0, total, block):
            for row in range(start + strides[i], start + block, strides[i]):
                for index in range(row, row + strides[i]):
                    diff[index] += diff[index - strides[i]]
    return diff


def box_coverage_counts(lows, highs, positions) -> np.ndarray:
    """How many inclusive boxes ``[lows[j], highs[j]]`` hold each point of a ``d``-dimensional grid.

    The d-dimensional kernel behind coverage in any number of axes: a mask's covered
    patch positions form such a box (T1 per axis). ``O(n 2^d + d prod P)``; empty boxes count nowhere
    and boxes are clipped to the grid.

    Slow twin: :func:`certmask_core.reference.box_coverage_counts_bruteforce`.

    Parameters
    ----------
    lows, highs : array_like of int, shape (n, d)
    positions : sequence of d ints >= 1
        Grid extent per axis.

    Returns
    -------
    ndarray of int64, shape ``positions``

    Examples
    --------
    >>> box_coverage_counts([[0, 1, 0]], [[1, 2, 0]], (2, 3, 2))[:, :, 0].tolist()
    [[0, 1, 1], [0, 1, 1]]
    """
    if (isinstance(positions, (str, bytes)) or not hasattr(positions, "__len__")
            or not 1 <= len(positions) <= 8 or any(isinstance(p, (bool, np.bool_))
                                                   or not isinstance(p, numbers.Integral) or p < 1
                                                   for p in positions)):
        raise CertMaskError(f"positions must be 1 to 8 integers >= 1 (the grid extent per axis), got "
                            f"{positions!r}")
    if math.prod(int(p) + 1 for p in positions) > MAX_DENSE_POSITIONS:
        raise CertMaskError(f"a {tuple(positions)} count grid exceeds {MAX_DENSE_POSITIONS} entries")
    extent = np.array([int(p) for p in positions], dtype=np.int64)
    boxes = []
    for name, values in (("lows", lows), ("highs", highs)):
        try:
            arr = np.asarray(values)
        except (TypeError, ValueError) as err:
            raise CertMaskError(f"{name} is not an (n, {len(extent)}) integer array: {err}") from None
        if arr.size == 0:
            arr = arr.reshape(0, len(extent))
        if arr.ndim != 2 or arr.shape[1] != len(extent) or arr.size and arr.dtype.kind not in "iu":
            raise CertMaskError(f"{name} must be an (n, {len(extent)}) integer array, got shape {arr.shape} "
                                f"dtype {arr.dtype}")
        if arr.size and (int(arr.max()) > 2**62 or int(arr.min()) < -2**62):
            raise CertMaskError(f"{name} holds values beyond +-2**62: [{int(arr.min())}, {int(arr.max())}]")
        boxes.append(np.ascontiguousarray(arr, dtype=np.int64))
    lows, highs = boxes
    if lows.shape != highs.shape:
        raise CertMaskError(f"lows {lows.shape} and highs {highs.shape} differ in shape")
    flat = _box_difference_counts(lows, highs, extent)
    return flat.reshape(tuple(extent + 1))[tuple(slice(0, p) for p in extent.tolist())].copy()


def _window_counts(windows: np.ndarray, positions) -> np.ndarray:
    """Coverage counts of inclusive windows ``(n, 2 d)`` on a grid of ``positions`` per axis."""
    windows = np.ascontiguousarray(windows, dtype=np.int64)
    if len(positions) == 2:
        return _difference_array_counts(windows, *positions)
    d = len(positions)
    return box_coverage_counts(windows[:, :d], windows[:, d:], positions)


def coverage_counts(maskset: MaskSet, patch) -> np.ndarray:
    """Number of masks covering each patch position.

    Slow twin: :func:`certmask_core.reference.coverage_counts_bruteforce`.

    Parameters
    ----------
    maskset : MaskSet
        Any mask set, constructed or user-supplied, with any number of axes. Masks smaller than the
        patch cover nothing.
    patch : sizes per axis ((ph, pw) for images), int or PatchThreat

    Returns
    -------
    ndarray, shape ``threat.num_positions`` ((P_h, P_w) for images), int64
        ``counts[a, b]`` = number of masks containing the patch at top-left ``(a, b)``.

    Raises
    ------
    CertMaskError
        For a patch larger than the image, or a position grid above :data:`MAX_DENSE_POSITIONS`
        (use :func:`coverage_extremes`, which never builds the dense grid).

    Examples
    --------
    >>> from certmask_core import make_maskset, PatchThreat
    >>> ms = make_maskset(PatchThreat(28, 3), k=2, strategy="replicated", masks_per_axis=4)
    >>> int(coverage_counts(ms, 3).min())
    2
    >>> clip = make_maskset(PatchThreat((16, 28, 28), (4, 3, 3)), masks_per_axis=(2, 3, 3))
    >>> coverage_counts(clip, (4, 3, 3)).shape
    (13, 26, 26)
    """
    threat = threat_for(maskset, patch)
    total = math.prod(threat.num_positions)
    if total > MAX_DENSE_POSITIONS:
        raise CertMaskError(f"the count map would have {' x '.join(map(str, threat.num_positions))} = "
                            f"{total} "
                            f"entries (limit {MAX_DENSE_POSITIONS}); use coverage_extremes or is_k_covered")
    return _window_counts(covered_windows(maskset, threat), threat.num_positions)


class CellGrid:
    """The patch positions cut into cells on which every mask's coverage is constant.

    Per axis the cuts are ``0`` and every window's first and one-past-last position; positions
    between two consecutive cuts are covered by the same masks, so one representative per cell
    (its first position) stands for the whole cell. There are at most ``2 n + 1`` cuts per axis
    whatever the image size.

    Attributes
    ----------
    threat : PatchThreat
    windows : ndarray, shape (n, 2 d)
        :func:`covered_windows`.
    cuts : list of d ndarrays
        First position of each cell per axis (sorted).
    cell_windows : ndarray, shape (n, 2 d)
        Each window in cell indices; empty windows map to empty ranges.
    """

    def __init__(self, maskset: MaskSet, threat: PatchThreat):
        self.threat = threat
        self.windows = covered_windows(maskset, threat)
        d = threat.ndim
        nonempty = (self.windows[:, :d] <= self.windows[:, d:]).all(1)
        self.cuts, first, last = [], [], []
        for axis, P in enumerate(threat.num_positions):
            lo, hi = self.windows[nonempty, axis], self.windows[nonempty, axis + d] + 1
            c = np.unique(np.concatenate([[0], lo, hi[hi < P]]))
            self.cuts.append(c)
            # a window [lo, hi) of positions spans the cells whose first position lies in it
            first.append(np.searchsorted(c, self.windows[:, axis]))
            last.append(np.searchsorted(c, self.windows[:, axis + d] + 1) - 1)
        self.cell_windows = np.stack(first + last, axis=1)
        self.cell_windows[~nonempty] = [0] * d + [-1] * d

    @property
    def shape(self) -> tuple[int, ...]:
        """Cells per axis."""
        return tuple(len(c) for c in self.cuts)

    def counts(self) -> np.ndarray:
        """Coverage count of each cell, shape :attr:`shape`."""
        return _window_counts(self.cell_windows, self.shape)

    def count_blocks(self):
        """``(first, counts)`` for consecutive blocks of cells along the first axis, each small enough
        for one dense count grid: the counts of any number of axes without the whole grid at once
        (windows shifted into the block are clipped to it by the kernel)."""
        if len(self.shape) == 2:  # the fused 2-D kernel holds any grid of <= 2 n + 1 cuts per axis
            yield 0, self.counts()
            return
        d, rest = len(self.shape), math.prod(c + 1 for c in self.shape[1:])
        step = max(1, MAX_DENSE_POSITIONS // rest - 1)
        for first in range(0, self.shape[0], step):
            lows, highs = self.cell_windows[:, :d].copy(), self.cell_windows[:, d:].copy()
            lows[:, 0] -= first
            highs[:, 0] -= first
            block = (min(step, self.shape[0] - first),) + self.shape[1:]
            yield first, box_coverage_counts(lows, highs, block)

    def incidence(self, axis: int) -> np.ndarray:
        """``(cells on axis, n)`` bool: mask ``i``'s window holds the cell on that axis."""
        reps = self.cuts[axis][:, None]
        d = self.threat.ndim
        return (self.windows[:, axis] <= reps) & (reps <= self.windows[:, axis + d])

    def position(self, cell) -> tuple[int, ...]:
        """The first patch position of cell ``cell`` (an index per axis)."""
        return tuple(int(c[i]) for c, i in zip(self.cuts, cell))


def cell_grid(maskset: MaskSet, patch) -> CellGrid:
    """The :class:`CellGrid` of ``maskset`` for ``patch``, computed once per set and patch size."""
    threat = threat_for(maskset, patch)
    return maskset.cached(("cells", threat.patch_size), lambda: CellGrid(maskset, threat))


def coverage_extremes(maskset: MaskSet, patch) -> tuple[int, int, tuple[int, ...]]:
    """``(min, max, argmin position)`` of the coverage counts, without the dense position grid.

    ``O(n log n + prod c_i)`` for ``c_i <= 2 n + 1`` cells per axis, whatever the image size. Outside
    2-D the cells are counted a block of the first axis at a time (:meth:`CellGrid.count_blocks`), each
    block at most :data:`MAX_DENSE_POSITIONS` cells.

    Slow twin: :func:`certmask_core.reference.coverage_counts_bruteforce` (its min, max and argmin).

    Examples
    --------
    >>> ms = MaskSet((1, 6), [[0, 0], [0, 2]], [[1, 4], [1, 4]])
    >>> coverage_extremes(ms, (1, 2))
    (1, 2, (0, 0))
    """
    grid = cell_grid(maskset, patch)

    def extremes():
        low, high, where = None, None, None
        for first, counts in grid.count_blocks():
            if low is None or counts.min() < low:
                cell = np.unravel_index(int(counts.argmin()), counts.shape)
                low, where = int(counts.min()), grid.position((first + cell[0],) + cell[1:])
            high = int(counts.max()) if high is None else max(high, int(counts.max()))
        return low, high, where

    return maskset.cached(("extremes", grid.threat.patch_size), extremes)


def is_k_covered(maskset: MaskSet, patch, k: int = 1) -> bool:
    """True when every patch position is covered by at least ``k`` masks.

    Slow twin: :func:`certmask_core.reference.coverage_counts_bruteforce` (its min against ``k``).
    """
    k = positive_int("k", k, whole_range=True)
    return bool(coverage_extremes(maskset, patch)[0] >= k)


def covering_set_bits(maskset: MaskSet, patch, chunk_words: int = 2**22) -> np.ndarray:
    """The distinct covering sets ``S(l)`` as bitsets, ``(m, ceil(n / 64))`` uint64, sorted.

    ``S(l)`` of a cell is the intersection of its per-axis mask bitsets. The intersection is built
    one axis at a time, deduplicating after each (``{r & c}`` over distinct ``r`` is the same set),
    a block at a time (at most ``chunk_words`` words in memory). Cached on the mask set.

    Slow twin: :func:`certmask_core.reference.covering_sets_reference`.
    """
    threat = threat_for(maskset, patch)

    def sets_of_cells():
        grid = cell_grid(maskset, threat)
        sets = unique_rows(pack(grid.incidence(0)))
        for axis in range(1, threat.ndim):
            cells = pack(grid.incidence(axis))
            words = cells.shape[1]
            step = max(1, chunk_words // max(1, len(cells) * words))
            sets = unique_rows(np.concatenate([
                unique_rows((sets[start:start + step, None, :] & cells[None, :, :]).reshape(-1, words))
                for start in range(0, len(sets), step)]))
        return sets

    return maskset.cached(("sets", threat.patch_size), sets_of_cells)


@numba.njit(cache=True)
def _minimal_flags(bits, popcounts):  # pragma: no cover - compiled
    """Flags of the rows containing no other row; ``bits`` sorted by ``popcounts`` ascending.

    A row that contains another row contains a minimal one, so each row is tested against the
    minimal rows found so far only.
    """
    m, words = bits.shape
    minimal = np.zeros(m, dtype=np.bool_)
    kept = np.empty(m, dtype=np.int64)
    n_kept = 0
    for i in range(m):
        contains = False
        for t in range(n_kept):
            j = kept[t]
            if popcounts[j] >= popcounts[i]:
                break  # rows are unique: a row of equal size cannot be a proper subset
            subset = True
            for w in range(words):
                if bits[j, w] & ~bits[i, w]:
                    subset = False
                    break
            if subset:
                contains = True
                break
        if not contains:
            minimal[i] = True
            kept[n_kept] = i
            n_kept += 1
    return minimal


def minimal_covering_set_bits(maskset: MaskSet, patch) -> np.ndarray:
    """The inclusion-minimal covering sets as bitsets (see :func:`covering_set_bits`). Cached.

    Slow twin: :func:`certmask_core.reference.minimal_sets_reference`.
    """
    threat = threat_for(maskset, patch)

    def minimal():
        bits = covering_set_bits(maskset, threat)
        return bits[minimal_rows(bits)]

    return maskset.cached(("minimal", threat.patch_size), minimal)


def minimal_rows(bits: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``bits`` (unique bitsets) that contain no other row, by size then order."""
    sizes = popcount(bits)
    order = np.argsort(sizes, kind="stable")
    return order[_minimal_flags(np.ascontiguousarray(bits[order]), sizes[order])]


def covering_sets(maskset: MaskSet, patch) -> np.ndarray:
    """The distinct covering sets ``S(l)`` over all positions, as a boolean incidence matrix.

    Slow twin: :func:`certmask_core.reference.covering_sets_reference`.

    Returns
    -------
    ndarray, shape (m, n), bool
        Row ``r`` marks the masks of one distinct covering set; rows are unique.
    """
    return unpack(covering_set_bits(maskset, patch), len(maskset))
