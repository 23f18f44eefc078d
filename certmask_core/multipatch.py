"""Several patches: mask groups, their coverage of patch tuples, and covering sets (theorem T15).

Threat: ``m`` patches, each at most ``ph x pw``, anywhere (they may overlap). A *group* is a list of
masks of a base :class:`~certmask_core.geometry.MaskSet` whose union is hidden at once; it *covers*
an m-tuple of patch positions ``(l_1, ..., l_m)`` when each patch lies inside one mask of the group
(T1 per patch). Under the patches, a covering group's masked input equals the clean image's, so the
whole theory of one patch (T6-T13) carries over with groups for masks and tuples for positions:
``S(l_1, ..., l_m)`` is the set of groups covering the tuple. (A patch that lies in the union of two
masks of a group but in neither is hidden too; the covering sets leave such groups out, which only
makes every certificate more demanding.)

Computation. Let ``U(l)`` be the groups holding a mask that covers ``l``; then
``S(l_1, ..., l_m) = U(l_1) ∩ ... ∩ U(l_m)``. ``U`` is constant on the cells of the base set's
:class:`~certmask_core.coverage.CellGrid`, and intersections are monotone, so the smallest count and
the inclusion-minimal covering sets are found among the intersections of ``m`` inclusion-minimal
``U`` rows (with repetition: two patches may share a cell). For the family of all pairs of a set the
count has a closed form (:func:`all_pairs_coverage_min`), the verifier's fast path;
:func:`certmask_core.reference.tuple_coverage_bruteforce` is the definition, the oracle of the tests.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .bitsets import pack, popcount, unique_rows
from .coverage import cell_grid, coverage_extremes, minimal_rows, threat_for
from .errors import CertMaskError
from .geometry import MaskSet
from .validation import positive_int

MAX_TUPLE_SETS = 2**22
"""Most intersections of minimal rows :func:`tuple_covering_sets` will form (the m-tuples of
minimal ``U`` rows); beyond it the family or ``m`` is too large for an exact verification."""
MAX_PATCHES = 8
"""Largest number of patches the verifier accepts."""
MAX_GROUPS = 2**16
"""Most groups :func:`combination_groups` builds (each is one forward pass per image)."""


@dataclass(frozen=True, eq=False)
class MaskGroups:
    """Groups of masks of a base set; group ``g`` hides the union of masks ``members[g]``.

    Parameters
    ----------
    base : MaskSet
    members : array_like, shape (n, g)
        Indices into ``base``; a row may repeat an index (a group of fewer masks).

    Examples
    --------
    >>> base = MaskSet((4, 4), [[0, 0], [0, 2], [2, 0]], [[2, 2], [2, 2], [2, 2]])
    >>> groups = all_pairs_groups(base)
    >>> len(groups), groups.members.tolist()
    (3, [[0, 1], [0, 2], [1, 2]])
    """

    base: MaskSet
    members: np.ndarray
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.base, MaskSet):
            raise CertMaskError(f"base must be a MaskSet, got {type(self.base).__name__}")
        if np.ma.isMaskedArray(self.members):
            raise CertMaskError("members: a masked array (its hidden values would count); pass a plain array")
        try:
            members = np.asarray(self.members)
        except (TypeError, ValueError) as err:
            raise CertMaskError(f"members is not an (n, g) integer array: {err}") from None
        if members.ndim != 2 or members.shape[0] == 0 or members.shape[1] == 0:
            raise CertMaskError(f"members must have shape (n, g) with n, g >= 1, got {members.shape}")
        if members.dtype == bool or members.dtype.kind not in "iu":
            raise CertMaskError(f"members must hold integer mask indices, got dtype {members.dtype}")
        if members.min() < 0 or members.max() >= len(self.base):
            raise CertMaskError(f"members must index the {len(self.base)} masks of the base set, found "
                                f"[{members.min()}, {members.max()}]")
        members = members.astype(np.int64)
        members.setflags(write=False)
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "_cache", {})

    @property
    def image_size(self) -> tuple[int, ...]:
        return self.base.image_size

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.members)

    def cached(self, key, compute):
        """``compute()``, computed once per ``key`` and kept on the family, as
        :meth:`MaskSet.cached <certmask_core.geometry.MaskSet.cached>` (internal to the package)."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = compute()
            return value

    def incidence(self) -> np.ndarray:
        """``(len(base), n)`` bool: base mask ``i`` belongs to group ``g``."""
        out = np.zeros((len(self.base), len(self)), dtype=bool)
        out[self.members, np.arange(len(self))[:, None]] = True
        return out

    def dense(self) -> np.ndarray:
        """Boolean ``(n, H, W)``: True where group ``g`` hides the pixel (the union of its masks).

        Slow twin: :func:`certmask_core.reference.dense_pixels`.
        """
        return self.base.dense()[self.members].any(1)


def all_pairs_groups(maskset: MaskSet) -> MaskGroups:
    """Every pair of distinct masks of ``maskset`` as a group (PatchCleanser's two-patch first round).

    A 1-fold set of at least two masks gives a family that covers every pair of patch positions
    (T15(c)): with ``i`` covering ``l_1`` and ``j`` covering ``l_2`` the group ``{i, j}`` covers the
    pair, or any group holding ``i`` when ``i = j``.
    """
    return combination_groups(maskset, 2)


def combination_groups(maskset: MaskSet, size: int) -> MaskGroups:
    """Every ``size``-combination of distinct masks as a group, in lexicographic order.

    Of a 1-fold set with at least ``size`` masks, it covers every ``size``-tuple of positions
    (T15(c)). ``C(n, size)`` groups; more than :data:`MAX_GROUPS` are refused.
    """
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    size = check_patches(size)
    if len(maskset) < size:
        raise CertMaskError(f"groups of {size} masks need at least {size} masks, the set has {len(maskset)}")
    count = math.comb(len(maskset), size)
    if count > MAX_GROUPS:
        raise CertMaskError(f"C({len(maskset)}, {size}) = {count} groups exceed the limit {MAX_GROUPS}")
    members = np.array(list(itertools.combinations(range(len(maskset)), size)), dtype=np.int64)
    return MaskGroups(maskset, members)


def check_patches(patches) -> int:
    """``patches`` (the number of patches) as an int in ``[1, MAX_PATCHES]``, checked."""
    return positive_int("patches", patches, 1, MAX_PATCHES, whole_range=True)


def base_set(family) -> MaskSet:
    """The MaskSet a family's members are drawn from (a MaskSet is its own)."""
    return family.base if isinstance(family, MaskGroups) else family


def _family_parts(family) -> tuple[MaskSet, np.ndarray]:
    """(base set, ``(len(base), n)`` incidence of base masks in family members)."""
    if isinstance(family, MaskGroups):
        return family.base, family.incidence()
    if isinstance(family, MaskSet):
        return family, np.eye(len(family), dtype=bool)
    raise CertMaskError(f"expected a MaskSet or MaskGroups, got {type(family).__name__}")


def _union_rows(family, patch):
    """The distinct inclusion-minimal ``U`` rows as bitsets over the family, with one position each.

    Returns ``(bits (r, words) uint64, positions (r, d))``. Cached on the family.
    """
    return family.cached(("union rows", patch), lambda: _compute_union_rows(family, patch))


def _compute_union_rows(family, patch):
    base, incidence = _family_parts(family)
    grid = cell_grid(base, threat_for(base, patch))
    axes = [grid.incidence(axis) for axis in range(len(grid.shape))]  # (cells on axis, len(base)) each
    inc = incidence.astype(np.int64)
    found, where = [], []
    total = math.prod(grid.shape)
    step = max(1, 2**22 // max(len(base), len(family)))
    for start in range(0, total, step):  # the cells in row-major order, a block at a time
        cells = np.unravel_index(np.arange(start, min(start + step, total)), grid.shape)
        base_cells = np.logical_and.reduce([a[c] for a, c in zip(axes, cells)])
        bits, first = _unique_with_index(pack((base_cells.astype(np.int64) @ inc) > 0))
        found.append(bits)
        where.append(np.stack([cuts[c[first]] for cuts, c in zip(grid.cuts, cells)], axis=1))
    bits, positions = np.concatenate(found), np.concatenate(where)
    bits, first = _unique_with_index(bits)
    positions = positions[first]
    keep = minimal_rows(bits)
    return bits[keep], positions[keep]


def _unique_with_index(bits: np.ndarray):
    view = np.ascontiguousarray(bits).view(np.dtype((np.void, bits.itemsize * bits.shape[1]))).ravel()
    _, first = np.unique(view, return_index=True)
    first = np.sort(first)
    return bits[first], first


def tuple_covering_sets(family, patch, patches: int = 2):
    """Candidate covering sets of m-tuples: the intersections of ``m`` minimal ``U`` rows.

    Returns ``(bits (t, words) uint64, tuples (t, m) indices into the minimal rows,
    positions (r, d))``. Every covering set of an m-tuple contains one of them, and each is itself the
    covering set of the tuple of its rows' positions.
    """
    patches = check_patches(patches)
    return family.cached(("tuple sets", patch, patches),
                         lambda: _compute_tuple_covering_sets(family, patch, patches))


def _compute_tuple_covering_sets(family, patch, patches: int):
    rows, positions = _union_rows(family, patch)
    count = math.comb(len(rows) + patches - 1, patches)
    if count > MAX_TUPLE_SETS:
        raise CertMaskError(f"{count} tuples of minimal covering rows for {patches} patches (limit "
                            f"{MAX_TUPLE_SETS}): the family or the number of patches is too large")
    tuples = np.array(list(itertools.combinations_with_replacement(range(len(rows)), patches)),
                      dtype=np.int64).reshape(-1, patches)
    bits = rows[tuples[:, 0]].copy()
    for t in range(1, patches):
        bits &= rows[tuples[:, t]]
    return bits, tuples, positions


def tuple_coverage_extremes(family, patch, patches: int = 2):
    """``(min, argmin)``: the fewest members covering an m-tuple of positions, and such a tuple.

    ``argmin`` is a tuple of ``m`` positions ``(a, b)``. A MaskSet is the family of single masks.

    Slow twin: :func:`certmask_core.reference.tuple_coverage_bruteforce`.

    Examples
    --------
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat((1, 8), (1, 2)), masks_per_axis=(1, 2))
    >>> tuple_coverage_extremes(all_pairs_groups(ms), (1, 2))
    (1, ((0, 0), (0, 0)))
    """
    bits, tuples, positions = tuple_covering_sets(family, patch, patches)
    counts = popcount(bits)
    t = int(counts.argmin())
    return int(counts[t]), tuple(tuple(int(v) for v in positions[r]) for r in tuples[t])


def family_coverage(family, patch, patches: int = 1):
    """``(min, argmin)`` over positions (one patch, a MaskSet: :func:`coverage_extremes`) or over
    m-tuples of positions (:func:`tuple_coverage_extremes`)."""
    if patches == 1 and isinstance(family, MaskSet):
        low, _, where = coverage_extremes(family, patch)
        return low, where
    return tuple_coverage_extremes(family, patch, patches)


def tuple_minimal_sets(family, patch, patches: int = 2) -> np.ndarray:
    """The inclusion-minimal covering sets of m-tuples as bitsets over the family. Cached.

    Slow twin: :func:`certmask_core.reference.tuple_minimal_sets_reference`.
    """

    def minimal():
        bits = unique_rows(tuple_covering_sets(family, patch, patches)[0])
        return bits[minimal_rows(bits)]

    return family.cached(("tuple minimal", patch, patches), minimal)


def all_pairs_coverage_min(maskset: MaskSet, patch) -> int:
    """Fast path of :func:`tuple_coverage_extremes` for ``all_pairs_groups(maskset)`` and two patches.

    With ``A = S(l_1)``, ``B = S(l_2)`` (masks covering each patch), the pairs holding a mask of
    ``A`` and a mask of ``B`` number ``C(n,2) - C(n-|A|,2) - C(n-|B|,2) + C(n-|A ∪ B|,2)``
    (inclusion-exclusion over the pairs missing ``A`` or ``B``). The count grows with ``A`` and
    ``B``, so the minimum is over pairs of minimal covering sets.

    Slow twin: :func:`certmask_core.reference.tuple_coverage_bruteforce`.
    """
    from .coverage import minimal_covering_set_bits

    n = len(maskset)
    sets = minimal_covering_set_bits(maskset, patch)
    size = popcount(sets)
    if (size == 0).any():
        return 0
    union = popcount((sets[:, None, :] | sets[None, :, :]).reshape(-1, sets.shape[1])).reshape(len(sets), -1)

    def pairs(k):
        return k * (k - 1) // 2

    counts = pairs(n) - pairs(n - size)[:, None] - pairs(n - size)[None, :] + pairs(n - union)
    return int(counts.min())

