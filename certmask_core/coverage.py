"""Coverage verification for any mask set (theorem T1 applied to every mask).

:func:`coverage_counts` is the fast path (numba, 2-D difference array, ``O(n + H W)``);
:func:`coverage_counts_bruteforce` is its obviously correct twin (the definition, ``O(n H W)``) and
the oracle of the tests. :func:`box_coverage_counts` (with its twin
:func:`box_coverage_counts_bruteforce`) is the same difference array in any number of axes, the kernel
for d-dimensional inputs (issue 14; the 2-D path keeps its fused kernel, 2.4x faster at 4096x4096).
"""
from __future__ import annotations

import numba
import numpy as np

from .errors import CertMaskError
from .geometry import MaskSet, PatchThreat

MAX_DENSE_POSITIONS = 2**27
"""Largest patch-position grid :func:`coverage_counts` materialises (1 GiB of int64 counts); the
decisions never need the dense grid (see :func:`coverage_extremes`)."""


def _threat_for(maskset: MaskSet, patch) -> PatchThreat:
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    if isinstance(patch, PatchThreat):
        if patch.image_size != maskset.image_size:
            raise CertMaskError(f"threat image {patch.image_size} differs from the mask set's "
                                f"image {maskset.image_size}")
        return patch
    return PatchThreat(maskset.image_size, patch)


def covered_windows(maskset: MaskSet, patch) -> np.ndarray:
    """Per mask, the inclusive range of patch positions it covers: ``(n, 4)`` ``(a0, b0, a1, b1)``.

    By T1 a mask at ``(y, x)`` of size ``(mh, mw)`` covers ``a in [y, y + mh - ph]`` and
    ``b in [x, x + mw - pw]``. A mask smaller than the patch on an axis covers nothing: its range
    is empty (``a1 < a0`` or ``b1 < b0``). Masks lie inside the image, so non-empty ranges lie inside
    the position grid.
    """
    threat = _threat_for(maskset, patch)
    ph, pw = threat.patch_size
    o, s = maskset.origins, maskset.sizes
    return np.stack([o[:, 0], o[:, 1], o[:, 0] + s[:, 0] - ph, o[:, 1] + s[:, 1] - pw], axis=1)


# no cache=True: concurrent ranks of a distributed run race on numba's cache files (numba#10128)
@numba.njit
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


@numba.njit
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

    The d-dimensional kernel behind coverage in any number of axes (issue 14): a mask's covered
    patch positions form such a box (T1 per axis). ``O(n 2^d + d prod P)``; empty boxes count nowhere
    and boxes are clipped to the grid.

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
    extent = np.array([int(p) for p in positions], dtype=np.int64)
    if extent.ndim != 1 or not 1 <= len(extent) <= 8 or (extent < 1).any():
        raise CertMaskError(f"positions must be 1 to 8 axes of >= 1 positions, got {tuple(positions)}")
    if int(np.prod(extent + 1, dtype=object)) > MAX_DENSE_POSITIONS:
        raise CertMaskError(f"a {tuple(extent.tolist())} count grid exceeds {MAX_DENSE_POSITIONS} entries")
    lows, highs = np.asarray(lows), np.asarray(highs)
    if any(a.size and a.dtype.kind not in "iu" for a in (lows, highs)):
        raise CertMaskError(f"lows and highs must hold integers, got {lows.dtype} and {highs.dtype}")
    try:
        lows, highs = (np.ascontiguousarray(a, dtype=np.int64).reshape(-1, len(extent))
                       for a in (lows, highs))
    except ValueError:
        raise CertMaskError(f"lows {lows.shape} and highs {highs.shape} must be (n, {len(extent)})") from None
    if lows.shape != highs.shape:
        raise CertMaskError(f"lows {lows.shape} and highs {highs.shape} differ in shape")
    flat = _box_difference_counts(lows, highs, extent)
    return flat.reshape(tuple(extent + 1))[tuple(slice(0, p) for p in extent.tolist())].copy()


def box_coverage_counts_bruteforce(lows, highs, positions) -> np.ndarray:
    """Reference twin of :func:`box_coverage_counts`: every box tested at every point."""
    grids = np.meshgrid(*(np.arange(p) for p in positions), indexing="ij")
    counts = np.zeros(tuple(positions), dtype=np.int64)
    d = len(positions)
    for low, high in zip(np.asarray(lows).reshape(-1, d), np.asarray(highs).reshape(-1, d)):
        inside = np.ones(tuple(positions), dtype=bool)
        for axis, grid in enumerate(grids):
            inside &= (low[axis] <= grid) & (grid <= high[axis])
        counts += inside
    return counts


def coverage_counts(maskset: MaskSet, patch) -> np.ndarray:
    """Number of masks covering each patch position.

    Parameters
    ----------
    maskset : MaskSet
        Any mask set, constructed or user-supplied. Masks smaller than the patch cover nothing.
    patch : (ph, pw), int or PatchThreat

    Returns
    -------
    ndarray, shape (P_h, P_w), int64
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
    """
    threat = _threat_for(maskset, patch)
    P_h, P_w = threat.num_positions
    if P_h * P_w > MAX_DENSE_POSITIONS:
        raise CertMaskError(f"the count map would have {P_h} x {P_w} = {P_h * P_w} entries (limit "
                            f"{MAX_DENSE_POSITIONS}); use coverage_extremes or is_k_covered")
    return _difference_array_counts(np.ascontiguousarray(covered_windows(maskset, threat)), P_h, P_w)


def coverage_counts_bruteforce(maskset: MaskSet, patch) -> np.ndarray:
    """Reference twin of :func:`coverage_counts`: test the covering definition for every pair."""
    threat = _threat_for(maskset, patch)
    (P_h, P_w), (ph, pw) = threat.num_positions, threat.patch_size
    a = np.arange(P_h)[:, None]
    b = np.arange(P_w)[None, :]
    counts = np.zeros((P_h, P_w), dtype=np.int64)
    for (y, x), (mh, mw) in zip(maskset.origins, maskset.sizes):
        counts += (y <= a) & (a + ph <= y + mh) & (x <= b) & (b + pw <= x + mw)
    return counts


class CellGrid:
    """The patch positions cut into cells on which every mask's coverage is constant.

    Per axis the cuts are ``0`` and every window's first and one-past-last position; positions
    between two consecutive cuts are covered by the same masks, so one representative per cell
    (its first position) stands for the whole cell. There are at most ``2 n + 1`` cuts per axis
    whatever the image size.

    Attributes
    ----------
    threat : PatchThreat
    windows : ndarray, shape (n, 4)
        :func:`covered_windows`.
    rows, cols : ndarray
        First position of each cell per axis (sorted).
    cell_windows : ndarray, shape (n, 4)
        Each window in cell indices; empty windows map to empty ranges.
    """

    def __init__(self, maskset: MaskSet, threat: PatchThreat):
        self.threat = threat
        self.windows = covered_windows(maskset, threat)
        nonempty = (self.windows[:, 0] <= self.windows[:, 2]) & (self.windows[:, 1] <= self.windows[:, 3])
        cuts, cell = [], []
        for axis, P in enumerate(threat.num_positions):
            lo, hi = self.windows[nonempty, axis], self.windows[nonempty, axis + 2] + 1
            c = np.unique(np.concatenate([[0], lo, hi[hi < P]]))
            cuts.append(c)
            # a window [lo, hi) of positions spans the cells whose first position lies in it
            cell.append((np.searchsorted(c, self.windows[:, axis]),
                         np.searchsorted(c, self.windows[:, axis + 2] + 1) - 1))
        self.rows, self.cols = cuts
        self.cell_windows = np.stack([cell[0][0], cell[1][0], cell[0][1], cell[1][1]], axis=1)
        self.cell_windows[~nonempty] = (0, 0, -1, -1)

    def counts(self) -> np.ndarray:
        """``(len(rows), len(cols))`` coverage count of each cell."""
        return _difference_array_counts(np.ascontiguousarray(self.cell_windows),
                                        len(self.rows), len(self.cols))

    def incidence(self, axis: int) -> np.ndarray:
        """``(cells on axis, n)`` bool: mask ``i``'s window holds the cell on that axis."""
        reps = (self.rows, self.cols)[axis][:, None]
        return (self.windows[:, axis] <= reps) & (reps <= self.windows[:, axis + 2])


def cell_grid(maskset: MaskSet, patch) -> CellGrid:
    """The :class:`CellGrid` of ``maskset`` for ``patch``, computed once per set and patch size."""
    threat = _threat_for(maskset, patch)
    key = ("cells", threat.patch_size)
    if key not in maskset._cache:
        maskset._cache[key] = CellGrid(maskset, threat)
    return maskset._cache[key]


def coverage_extremes(maskset: MaskSet, patch) -> tuple[int, int, tuple[int, int]]:
    """``(min, max, argmin position)`` of the coverage counts, without the dense position grid.

    ``O(n log n + c_h c_w)`` for ``c_h, c_w <= 2 n + 1`` cells per axis, whatever the image size.

    Examples
    --------
    >>> ms = MaskSet((1, 6), [[0, 0], [0, 2]], [[1, 4], [1, 4]])
    >>> coverage_extremes(ms, (1, 2))
    (1, 2, (0, 0))
    """
    grid = cell_grid(maskset, patch)
    key = ("extremes", grid.threat.patch_size)
    if key not in maskset._cache:
        counts = grid.counts()
        i, j = np.unravel_index(int(counts.argmin()), counts.shape)
        maskset._cache[key] = (int(counts.min()), int(counts.max()), (int(grid.rows[i]), int(grid.cols[j])))
    return maskset._cache[key]


def is_k_covered(maskset: MaskSet, patch, k: int = 1) -> bool:
    """True when every patch position is covered by at least ``k`` masks."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CertMaskError(f"k must be an integer >= 1, got {k!r}")
    return bool(coverage_extremes(maskset, patch)[0] >= k)


def _pack(incidence: np.ndarray) -> np.ndarray:
    """``(m, n)`` bool -> ``(m, ceil(n / 64))`` uint64 bitsets (bit ``i`` = mask ``i``)."""
    m, n = incidence.shape
    words = max(1, -(-n // 64))
    padded = np.zeros((m, words * 64), dtype=bool)
    padded[:, :n] = incidence
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64).reshape(m, words)


def unpack(bits: np.ndarray, n: int) -> np.ndarray:
    """Inverse of the bitset packing: ``(m, words)`` uint64 -> ``(m, n)`` bool."""
    as_bytes = np.ascontiguousarray(bits).view(np.uint8).reshape(len(bits), -1)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :n].astype(bool)


def covering_set_bits(maskset: MaskSet, patch, chunk_words: int = 2**22) -> np.ndarray:
    """The distinct covering sets ``S(l)`` as bitsets, ``(m, ceil(n / 64))`` uint64, sorted.

    ``S(l)`` of a cell is the intersection of its row's and its column's mask bitsets; cells are
    processed a block of rows at a time (at most ``chunk_words`` words in memory) and deduplicated.
    Cached on the mask set.
    """
    threat = _threat_for(maskset, patch)
    key = ("sets", threat.patch_size)
    if key not in maskset._cache:
        grid = cell_grid(maskset, threat)
        rows, cols = _pack(grid.incidence(0)), _pack(grid.incidence(1))
        words = rows.shape[1]
        step = max(1, chunk_words // max(1, len(cols) * words))
        found = []
        for start in range(0, len(rows), step):
            cells = (rows[start:start + step, None, :] & cols[None, :, :]).reshape(-1, words)
            found.append(_unique_rows(cells))
        maskset._cache[key] = _unique_rows(np.concatenate(found))
    return maskset._cache[key]


def _unique_rows(bits: np.ndarray) -> np.ndarray:
    view = np.ascontiguousarray(bits).view(np.dtype((np.void, bits.dtype.itemsize * bits.shape[1])))
    return np.unique(view).view(bits.dtype).reshape(-1, bits.shape[1])


@numba.njit
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


def _popcount(bits: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=1).sum(1, dtype=np.int64)


def minimal_covering_set_bits(maskset: MaskSet, patch) -> np.ndarray:
    """The inclusion-minimal covering sets as bitsets (see :func:`covering_set_bits`). Cached."""
    threat = _threat_for(maskset, patch)
    key = ("minimal", threat.patch_size)
    if key not in maskset._cache:
        bits = covering_set_bits(maskset, threat)
        maskset._cache[key] = bits[minimal_rows(bits)]
    return maskset._cache[key]


def minimal_rows(bits: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``bits`` (unique bitsets) that contain no other row, by size then order."""
    sizes = _popcount(bits)
    order = np.argsort(sizes, kind="stable")
    return order[_minimal_flags(np.ascontiguousarray(bits[order]), sizes[order])]


def covering_sets(maskset: MaskSet, patch) -> np.ndarray:
    """The distinct covering sets ``S(l)`` over all positions, as a boolean incidence matrix.

    Returns
    -------
    ndarray, shape (m, n), bool
        Row ``r`` marks the masks of one distinct covering set; rows are unique.
    """
    return unpack(covering_set_bits(maskset, patch), len(maskset))
