"""Deterministic k-fold mask-set constructions (theorems T3, T4, T5) and their exact minimum (T16).

All three build a product of 1-D window lists, one per axis. A *window* is the inclusive range
``[a0, a1]`` of patch positions a mask covers on one axis; by T1 it maps back to the pixel rows
``[a0, a1 + p)``. Windows that would leave the position range are clipped, which clips the mask to
the image; clipped masks are smaller, never larger, than the requested size.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .coverage import coverage_extremes
from .errors import CertMaskError
from .geometry import (
    MAX_MASKS,
    MaskSet,
    MaskSpec,
    PatchThreat,
    check_sizes,
    effective_coverage,
    lower_bound,
)
from .validation import positive_int

Windows = list[tuple[int, int]]


def single_cover_windows(P: int, w: int) -> Windows:
    """PatchCleanser's 1-D grid (T3): starts ``0, w, 2w, ...`` and a last window flush with the end.

    ``ceil(P / w)`` windows, which meets the 1-D lower bound for ``k = 1``.
    """
    n = math.ceil(P / w)
    starts = [i * w for i in range(n - 1)] + [max(P - w, 0)]
    return [(s, min(s + w - 1, P - 1)) for s in starts]


def shifted_cover_windows(P: int, w: int, shift: int) -> Windows:
    """1-D single cover whose grid starts ``shift`` positions before 0 (T4).

    Windows start at ``-shift + i w`` and are clipped to ``[0, P - 1]``; ``ceil((P + shift) / w)`` of
    them. For ``0 <= shift < w`` consecutive windows touch, so every position is covered once.
    """
    n = math.ceil((P + shift) / w)
    return [(max(-shift + i * w, 0), min(-shift + (i + 1) * w - 1, P - 1)) for i in range(n)]


def _product(threat: PatchThreat, *axes: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the product of one window list per axis, the last axis varying fastest."""
    windows = [np.array(w, dtype=np.int64).reshape(-1, 2) for w in axes]
    index = np.indices([len(w) for w in windows]).reshape(len(windows), -1)
    origins = np.stack([w[i, 0] for w, i in zip(windows, index)], axis=1)
    sizes = np.stack([w[i, 1] - w[i, 0] + p for w, i, p in zip(windows, index, threat.patch_size)], axis=1)
    return origins, sizes


def axis_classes(P, w):
    """Per axis: the cheap copy count ``q = ceil(P / w)``, how many shifts ``o`` have
    ``ceil((P + o) / w) = q`` (the rest need ``q + 1``), and ``w`` itself, after shortening windows to
    ``min(w, P)`` (longer windows clip to duplicates of ``[0, P - 1]``). Broadcasts over arrays.
    Internal to the package (shared with :mod:`.planning` and the proofs)."""
    w = np.minimum(w, P)
    q = -(-P // w)
    return q, np.minimum(w, q * w - P + 1), w


def minimum_of_classes(classes, k):
    """Sum of the ``k`` smallest products ``prod_axis N_axis(o_axis)`` over shift tuples (T16), from
    each axis's two copy counts ``q`` (``cheap`` shifts) and ``q + 1`` (the others); -1 where
    ``k > prod w``. Broadcasts over arrays of sizes. Internal to the package (shared with
    :mod:`.planning` and the proofs)."""
    shape = np.broadcast_shapes(*(np.shape(q) for q, _, _ in classes))
    largest = math.prod((int(np.max(q)) + 1) * int(np.max(w)) for q, _, w in classes) * (int(k) + 1)
    if largest >= 2**62:  # products overflow int64 (from 5 axes of 2**14): exact Python ints instead
        exact = np.vectorize(int, otypes=[object])
        classes = [tuple(exact(np.asarray(v)) for v in axis) for axis in classes]
    costs, counts = [], []
    for choice in itertools.product((0, 1), repeat=len(classes)):  # cheap or dear shift per axis
        cost, count = 1, 1
        for extra, (q, cheap, w) in zip(choice, classes):
            cost, count = cost * (q + extra), count * (w - cheap if extra else cheap)
        costs.append(np.broadcast_to(cost, shape))
        counts.append(np.broadcast_to(count, shape))
    dtype = object if largest >= 2**62 else np.int64
    costs, counts = np.stack(costs, -1).astype(dtype), np.stack(counts, -1).astype(dtype)
    order = np.argsort(costs, axis=-1, kind="stable")
    costs, counts = np.take_along_axis(costs, order, -1), np.take_along_axis(counts, order, -1)
    taken_before = np.cumsum(counts, -1) - counts
    taken = np.clip(k - taken_before, 0, counts)
    total = (costs * taken).sum(-1)
    enough = np.asarray(counts.sum(-1) >= k, dtype=bool)
    total = np.asarray(total, dtype=costs.dtype)
    return np.where(enough, total, np.asarray(-1, dtype=costs.dtype))


def exact_minimum(threat: PatchThreat, mask_size, k: int = 1) -> int | None:
    """Fewest pairwise distinct masks of ``mask_size`` giving k-fold coverage (theorem T16).

    With ``w = min(m - p + 1, P)`` per axis, the masks of one size are the points of a
    ``(P_h + w_h - 1) x (P_w + w_w - 1)`` lattice of origins and position ``(a, b)`` is covered by the
    ``w_h x w_w`` block of them starting at ``(a, b)``. Shift class ``(o_h, o_w)`` of that lattice is one
    shifted single cover with ``ceil((P_h + o_h) / w_h) * ceil((P_w + o_w) / w_w)`` masks; the minimum
    is the sum of the ``k`` smallest such counts. The same holds per axis in any number of axes
    (products over the axes; proofs/t17). ``replicated`` and ``offset`` both build sets of
    exactly this size. It equals :func:`lower_bound` while ``k`` shift classes cost no extra row or
    column, and exceeds it otherwise (repeated masks would be needed to reach the bound).

    Slow twins: :func:`certmask_core.reference.fewest_by_search` (subset search),
    :func:`certmask_core.reference.milp_minimum` (integer program).

    Returns
    -------
    int or None
        None when no distinct k-fold set exists (``k > prod min(w_i, P_i)``: position ``(0, 0)`` lies
        in only that many distinct masks).

    Examples
    --------
    >>> t = PatchThreat(8, 1)
    >>> exact_minimum(t, (2, 2), k=3), lower_bound(t, (2, 2), k=3)
    (56, 48)
    """
    k = positive_int("k", k)
    w = effective_coverage(check_sizes("mask_size", mask_size, threat.ndim), threat.patch_size)
    if k > math.prod(min(wi, P) for wi, P in zip(w, threat.num_positions)):
        return None  # (and keeps arbitrarily large k out of int64 arithmetic)
    classes = [axis_classes(P, wi) for P, wi in zip(threat.num_positions, w)]
    return int(minimum_of_classes(classes, k))


def _spread(size: int, m: int, cyclic: bool) -> np.ndarray:
    """``m <= size`` distinct indices of ``[0, size)`` evenly spaced: stride ``size / m`` on a whole
    cycle of shifts (its ends are neighbours), from end to end on a part of one."""
    if cyclic or m == 1:
        return np.arange(m) * size // m
    return np.rint(np.arange(m) * (size - 1) / (m - 1)).astype(np.int64)


def _with_sum(ranges, total: int):
    """The shift tuples of the product of ``ranges`` whose entries add up to ``total``, in
    lexicographic order."""
    if len(ranges) == 1:
        if total in ranges[0]:
            yield (total,)
        return
    rest_low = sum(r.start for r in ranges[1:])
    rest_high = sum(r.stop - 1 for r in ranges[1:])
    first = ranges[0]
    for o in range(max(first.start, total - rest_high), min(first.stop - 1, total - rest_low) + 1):
        for tail in _with_sum(ranges[1:], total - o):
            yield (o,) + tail


def _diagonals(products, m: int) -> list[tuple[int, ...]]:
    """The first ``m`` shift tuples of the products ``products`` (each a tuple of ``range``, one per
    axis) by smallest sum, then lexicographically: the first release's replicated order."""
    tuples: list[tuple[int, ...]] = []
    for total in itertools.count(min(sum(r.start for r in ranges) for ranges in products)):
        tuples += sorted(t for ranges in products for t in _with_sum(ranges, total))[:m - len(tuples)]
        if len(tuples) == m:
            return tuples


def _lattice(ranges, m: int, cyclic) -> list[tuple[int, ...]]:
    """``m`` distinct tuples of the product of ``ranges`` spread evenly: a diagonal while one axis has
    room for ``m`` distinct shifts (every axis interleaves, the paper's stride ``w / k``), else evenly
    spaced shifts of the first axis each holding an even lattice of the other axes."""
    sizes = [len(r) for r in ranges]
    if m <= max(sizes):
        picks = [_spread(n, m, c) if m <= n else np.arange(m) * n // m for n, c in zip(sizes, cyclic)]
        return [tuple(r[i] for r, i in zip(ranges, row)) for row in zip(*(p.tolist() for p in picks))]
    per_first = np.diff(np.arange(sizes[0] + 1) * m // sizes[0])  # each fits the other axes' product
    return [(ranges[0][i],) + rest for i, c in enumerate(per_first.tolist()) if c
            for rest in _lattice(ranges[1:], c, cyclic[1:])]


def least_shift_distance(shifts, period) -> float:
    """Least cyclic distance between two of the copies' shifts, ``sum_axis min(d, w - d) / w``
    (``inf`` for fewer than two copies): how far apart the interleaved grids are."""
    period = np.asarray(period, dtype=float)
    pts = np.asarray(shifts, dtype=float).reshape(-1, len(period))
    if len(pts) < 2:
        return np.inf
    gap = np.abs(pts[:, None, :] - pts[None, :, :]) / period
    dist = np.minimum(gap, 1 - gap).sum(-1)
    return float(dist[~np.eye(len(pts), dtype=bool)].min())


SPREAD_CHECKED_UP_TO = 1024
"""Offset compares its lattice with replicated's choice (and keeps the one spread further) for sets of
up to this many copies; beyond, the O(k^2) comparison is skipped and the lattice kept."""


def shift_classes(threat: PatchThreat, w, k: int, strategy: str) -> list[tuple[int, ...]]:
    """The ``k`` shift classes (copies ``(o_h, o_w)``, one shift per axis, of the single cover) a
    replicated or offset set takes: always ``k`` of the cheapest, so the set has :func:`exact_minimum`
    masks (T16). Internal to the package (shared with the proofs and tests).

    Per axis the shifts ``o < t`` (the slack) need ``q = ceil(P / w)`` windows and the others ``q + 1``,
    so the copies fall into at most ``2^d`` price tiers, each a product of shift ranges. Every tier
    cheaper than the ``k``-th copy is taken whole; from the tier of the ``k``-th copy ``replicated``
    takes the smallest shifts and ``offset`` an evenly spread lattice (:func:`_lattice`), so that its
    grids interleave; offset keeps replicated's choice instead where that is spread further (by
    :func:`least_shift_distance`; small sets whose cheap shifts sit in uneven tiers). O(k + sum w)
    for images (plus O(k^2) for offset's comparison up to ``SPREAD_CHECKED_UP_TO`` copies).
    """
    P = threat.num_positions
    w = [min(wi, Pi) for wi, Pi in zip(w, P)]
    if k > math.prod(w):
        raise CertMaskError(
            f"{strategy}: only {math.prod(w)} = prod min(w_i, P_i) distinct shifted copies of the "
            f"single-cover grid with windows {tuple(w)} exist for image {threat.image_size} and patch "
            f"{threat.patch_size}, k={k} asked; use a larger mask or a smaller k")
    axes = []
    for P_i, w_i in zip(P, w):
        q, cheap, _ = (int(v) for v in axis_classes(P_i, w_i))
        axes.append([(q, range(0, cheap)), (q + 1, range(cheap, w_i))])
    tiers: dict[int, list[tuple[range, ...]]] = {}
    for choice in itertools.product(*axes):
        if all(len(r) for _, r in choice):
            tiers.setdefault(math.prod(q for q, _ in choice), []).append(tuple(r for _, r in choice))
    chosen: list[tuple[int, ...]] = []
    for cost in sorted(tiers):
        products, need = tiers[cost], k - len(chosen)
        sizes = np.array([math.prod(len(r) for r in ranges) for ranges in products])
        size = int(sizes.sum())
        if size <= need:
            chosen += [o for ranges in products for o in itertools.product(*ranges)]
        elif strategy == "replicated":
            chosen += _diagonals(products, need)
        else:  # each product of the tier gets its share of the copies, by largest remainder
            share = need * sizes // size
            share[np.argsort(-(need * sizes % size), kind="stable")[:need - share.sum()]] += 1
            for ranges, m in zip(products, share.tolist()):
                chosen += _lattice(ranges, m, [len(r) == wi for r, wi in zip(ranges, w)]) if m else []
        if len(chosen) == k:
            break
    if strategy == "replicated":  # the first release's mask order: cheapest copies, smallest shifts first
        price = [{o: q for q, shifts in axis for o in shifts} for axis in axes]
        chosen.sort(key=lambda o: (math.prod(p[oi] for p, oi in zip(price, o)), sum(o), o))
    elif k <= SPREAD_CHECKED_UP_TO:
        packed = shift_classes(threat, w, k, "replicated")
        if least_shift_distance(packed, w) > least_shift_distance(chosen, w):
            return packed
    return chosen


def _shifted_copies(threat: PatchThreat, w: tuple[int, ...], k: int, strategy: str):
    P = threat.num_positions
    w = tuple(min(wi, Pi) for wi, Pi in zip(w, P))
    parts = [_product(threat, *(shifted_cover_windows(Pi, wi, oi) for Pi, wi, oi in zip(P, w, shifts)))
             for shifts in shift_classes(threat, w, k, strategy)]
    return np.concatenate([o for o, _ in parts]), np.concatenate([s for _, s in parts])


def make_maskset(threat: PatchThreat, k: int = 1, strategy: str = "patchcleanser",
                 mask_size=None, masks_per_axis=None) -> MaskSet:
    """Build a mask set giving k-fold coverage of every patch position with distinct masks.

    Parameters
    ----------
    threat : PatchThreat
    k : int
        Coverage multiplicity (``strategy="patchcleanser"`` needs ``k=1``).
    strategy : {"patchcleanser", "replicated", "offset"}
        ``patchcleanser``: single-cover grid, stride ``w``, last mask flush (T3).
        ``replicated``: ``k`` copies of the single cover, copy ``(o_h, o_w)`` shifted by ``o``
        positions per axis so that no mask repeats; the cheapest copies, smallest shifts first (T4).
        ``offset``: ``k`` of the cheapest copies too, but spread as far apart as equal cost allows
        so that the grids interleave (T5). Both have exactly :func:`exact_minimum` masks (T16).
    mask_size : int or (mh, mw), optional
    masks_per_axis : int or (n_h, n_w), optional
        Exactly one of the two; ``masks_per_axis`` means ``w = ceil(P / n)``. One size per axis of
        the threat (``(mt, mh, mw)`` for a clip), or an int for every axis.

    Returns
    -------
    MaskSet
        Verified k-fold and distinct before it is returned. Compare ``len(ms)`` with
        :func:`lower_bound` and :func:`exact_minimum` for the gap.

    Raises
    ------
    CertMaskError
        For invalid sizes, or when no distinct k-fold set of this strategy exists.

    Examples
    --------
    >>> ms = make_maskset(PatchThreat(28, 3), k=1, masks_per_axis=6)
    >>> len(ms), ms.sizes[0].tolist()
    (36, [7, 7])
    >>> clip = make_maskset(PatchThreat((16, 28, 28), (4, 3, 3)), k=2, strategy="offset",
    ...                     masks_per_axis=(2, 3, 3))
    >>> len(clip), clip.sizes[0].tolist()
    (36, [10, 11, 11])
    """
    if not isinstance(threat, PatchThreat):
        raise CertMaskError(f"threat must be a PatchThreat, got {type(threat).__name__}")
    spec = MaskSpec(strategy, k, mask_size, masks_per_axis)
    size = spec.resolve_mask_size(threat)
    w = effective_coverage(size, threat.patch_size)
    minimum = exact_minimum(threat, size, spec.k)
    if (minimum or 0) > MAX_MASKS:
        raise CertMaskError(f"{strategy} k={spec.k} with masks {size} on {threat.image_size} needs at least "
                            f"{minimum} masks (limit {MAX_MASKS}); use larger masks or a smaller k")
    if strategy == "patchcleanser":
        origins, sizes = _product(threat, *(single_cover_windows(P, wi)
                                            for P, wi in zip(threat.num_positions, w)))
    else:
        origins, sizes = _shifted_copies(threat, w, spec.k, strategy)
    spec = MaskSpec(strategy, spec.k, mask_size=size)
    maskset = MaskSet(threat.image_size, origins, sizes, spec, threat)
    # The constructions are proven (proofs/t3..t5, t16); this re-check is cheap and turns a bug into an error.
    if (not maskset.is_distinct() or coverage_extremes(maskset, threat)[0] < spec.k
            or (strategy != "patchcleanser" and len(maskset) != minimum)):
        raise AssertionError(f"internal error: {strategy} set for {threat}, k={k} fails verification")
    return maskset


def plan_summary(maskset: MaskSet, threat: PatchThreat | None = None) -> dict:
    """Count, lower bound, exact minimum, gap and coverage range of a mask set, as a JSON-ready dict.

    ``gap`` is the count above :func:`lower_bound`; ``exact_minimum`` (T16) is the fewest distinct masks
    of the set's mask size with its coverage (None when no distinct set exists, e.g. a user set with
    masks of several sizes covering more than the largest size could alone)."""
    threat = threat or maskset.threat
    if threat is None:
        raise CertMaskError("plan_summary needs the threat of a user-supplied mask set")
    low, high, _ = coverage_extremes(maskset, threat)
    k = maskset.k or low
    mask_size = maskset.spec.mask_size if maskset.spec else tuple(int(v) for v in maskset.sizes.max(0))
    mask_size = check_sizes("mask_size", mask_size, threat.ndim)
    bound = lower_bound(threat, mask_size, max(k, 1))
    return {"image_size": list(threat.image_size), "patch_size": list(threat.patch_size),
            "strategy": maskset.spec.strategy if maskset.spec else "user",
            "k": k, "mask_size": list(mask_size), "num_masks": len(maskset),
            "lower_bound": bound, "exact_minimum": exact_minimum(threat, mask_size, max(k, 1)),
            "gap": len(maskset) - bound,
            "min_coverage": low, "max_coverage": high,
            "distinct": maskset.is_distinct()}


def union_maskset(masksets) -> MaskSet:
    """The masks of several sets of one image in one set (a multi-size set), duplicates dropped.

    Masks keep their order (first occurrence). Coverage of any patch is at least each part's, so a
    union of sets planned for several patch sizes covers each of them (verify with
    :func:`~certmask_core.coverage.coverage_extremes` per size). The result carries the threat of the
    part planned for the largest patch (by area), when the parts carry threats.

    Examples
    --------
    >>> small = make_maskset(PatchThreat(28, 3), masks_per_axis=4)
    >>> large = make_maskset(PatchThreat(28, 5), masks_per_axis=4)
    >>> both = union_maskset([small, large])
    >>> len(both), both.threat.patch_size
    (32, (5, 5))
    """
    masksets = list(masksets)
    if not masksets or not all(isinstance(ms, MaskSet) for ms in masksets):
        raise CertMaskError(f"union_maskset needs one or more MaskSets, got {masksets!r}")
    sizes = {ms.image_size for ms in masksets}
    if len(sizes) > 1:
        raise CertMaskError(f"the mask sets are for different images: {sorted(sizes)}")
    rects = np.concatenate([ms.rectangles() for ms in masksets])
    _, first = np.unique(rects, axis=0, return_index=True)
    rects = rects[np.sort(first)]
    threats = [ms.threat for ms in masksets if ms.threat is not None]
    threat = max(threats, key=lambda t: math.prod(t.patch_size)) if threats else None
    d = masksets[0].ndim
    return MaskSet(masksets[0].image_size, rects[:, :d], rects[:, d:] - rects[:, :d], threat=threat)
