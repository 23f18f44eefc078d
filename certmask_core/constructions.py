"""Deterministic k-fold mask-set constructions (theorems T3, T4, T5).

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
from .geometry import MAX_MASKS, MaskSet, MaskSpec, PatchThreat, effective_coverage, lower_bound

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


def _counts_1d(windows: Windows, P: int) -> np.ndarray:
    diff = np.zeros(P + 1, dtype=np.int64)
    for a0, a1 in windows:
        diff[a0] += 1
        diff[a1 + 1] -= 1
    return np.cumsum(diff[:-1])


def offset_windows(P: int, w: int, k: int) -> Windows | None:
    """1-D k-fold cover by one grid of stride ``s = floor(w / k)`` (T5), or None if ``k > min(w, P)``.

    Windows are first shortened to ``min(w, P)`` so that distinct starts give distinct clipped windows.

    Any ``w`` consecutive integers hold at least ``floor(w / s) >= k`` grid points, so every position
    is covered ``k`` times. Of the ``s`` grid phases the one needing the fewest windows is kept,
    after dropping end windows that the k-fold property does not need.
    """
    w = min(w, P)  # longer windows would clip to duplicates of [0, P - 1]
    if k > w:
        return None
    s = w // k
    best = None
    for phase in range(s):
        starts = range(phase - ((w - 1 + phase) // s) * s, P, s)
        wins = sorted({(max(a, 0), min(a + w - 1, P - 1)) for a in starts})
        for end in (0, -1):  # drop windows from each end while still k-fold
            while len(wins) > k:
                trial = wins[1:] if end == 0 else wins[:-1]
                if _counts_1d(trial, P).min() < k:
                    break
                wins = trial
        if _counts_1d(wins, P).min() >= k and (best is None or len(wins) < len(best)):
            best = wins
    return best


def _product(threat: PatchThreat, rows: Windows, cols: Windows) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = threat.patch_size
    r = np.array(rows, dtype=np.int64).reshape(-1, 2)
    c = np.array(cols, dtype=np.int64).reshape(-1, 2)
    rr, cc = np.repeat(r, len(c), axis=0), np.tile(c, (len(r), 1))
    origins = np.stack([rr[:, 0], cc[:, 0]], axis=1)
    sizes = np.stack([rr[:, 1] - rr[:, 0] + ph, cc[:, 1] - cc[:, 0] + pw], axis=1)
    return origins, sizes


REPLICATED_SHIFTS_PER_AXIS = 1024
"""The replicated construction draws its copies' shifts from the first 1,024 per axis (all of them
for windows up to 1,024 positions), so that planning stays fast on the largest images."""


def _replicated(threat: PatchThreat, w: tuple[int, int], k: int):
    P = threat.num_positions
    w = tuple(min(wi, Pi) for wi, Pi in zip(w, P))  # as in offset_windows: no [0, P-1] duplicates
    shifts = [min(wi, REPLICATED_SHIFTS_PER_AXIS) for wi in w]
    if k > shifts[0] * shifts[1]:
        raise CertMaskError(f"replicated: at most {shifts[0] * shifts[1]} distinct shifted copies of the "
                            f"single-cover grid with windows {w} exist for image {threat.image_size} and "
                            f"patch {threat.patch_size}, k={k} asked; use a larger mask or a smaller k")
    per_axis = [{o: shifted_cover_windows(P[i], w[i], o) for o in range(shifts[i])} for i in range(2)]
    candidates = sorted(itertools.product(range(shifts[0]), range(shifts[1])),
                        key=lambda o: (len(per_axis[0][o[0]]) * len(per_axis[1][o[1]]), sum(o), o))
    seen: set[tuple[int, ...]] = set()
    chosen = []
    for oh, ow in candidates:
        origins, sizes = _product(threat, per_axis[0][oh], per_axis[1][ow])
        rects = {tuple(r) for r in np.concatenate([origins, sizes], 1)}
        if rects.isdisjoint(seen):
            seen |= rects
            chosen.append((origins, sizes))
            if len(chosen) == k:
                return (np.concatenate([o for o, _ in chosen]), np.concatenate([s for _, s in chosen]))
    raise CertMaskError(
        f"replicated: only {len(chosen)} = min(w_h, P_h) * min(w_w, P_w) distinct shifted copies of "
        f"the single-cover grid with windows {w} exist for image {threat.image_size} and patch "
        f"{threat.patch_size}, k={k} asked; use a larger mask or a smaller k")


def _offset(threat: PatchThreat, w: tuple[int, int], k: int):
    P = threat.num_positions
    # an axis holds at most min(w, P) distinct windows over a position (offset_windows), so larger
    # k_h or k_w are impossible: refuse at once instead of trying every split of k
    most = [min(wi, Pi) for wi, Pi in zip(w, P)]
    best = None
    for k_h in range(1, min(k, most[0]) + 1) if k <= most[0] * most[1] else ():
        k_w = math.ceil(k / k_h)
        rows, cols = offset_windows(P[0], w[0], k_h), offset_windows(P[1], w[1], k_w)
        if rows is None or cols is None:
            continue
        if best is None or len(rows) * len(cols) < len(best[0]) * len(best[1]):
            best = (rows, cols)
    if best is None:
        raise CertMaskError(
            f"offset: no grid with windows {w} gives {k}-fold coverage with distinct masks for "
            f"{threat.num_positions} positions (one axis must hold k_h <= min(w_h, P_h) and the other "
            f"k_w <= min(w_w, P_w) with k_h * k_w >= k); use a larger mask or a smaller k")
    return _product(threat, *best)


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
        positions per axis so that no mask repeats; the cheapest shifts first (T4).
        ``offset``: one grid of stride ``floor(w / k_axis)`` per axis with ``k_h * k_w >= k`` (T5).
    mask_size : int or (mh, mw), optional
    masks_per_axis : int or (n_h, n_w), optional
        Exactly one of the two; ``masks_per_axis`` means ``w = ceil(P / n)``.

    Returns
    -------
    MaskSet
        Verified k-fold and distinct before it is returned. Compare ``len(ms)`` with
        :func:`lower_bound` for the gap.

    Raises
    ------
    CertMaskError
        For invalid sizes, or when no distinct k-fold set of this strategy exists.

    Examples
    --------
    >>> ms = make_maskset(PatchThreat(28, 3), k=1, masks_per_axis=6)
    >>> len(ms), ms.sizes[0].tolist()
    (36, [7, 7])
    """
    if not isinstance(threat, PatchThreat):
        raise CertMaskError(f"threat must be a PatchThreat, got {type(threat).__name__}")
    spec = MaskSpec(strategy, k, mask_size, masks_per_axis)
    size = spec.resolve_mask_size(threat)
    w = effective_coverage(size, threat.patch_size)
    if lower_bound(threat, size, spec.k) > MAX_MASKS:
        raise CertMaskError(f"{strategy} k={spec.k} with masks {size} on {threat.image_size} needs at least "
                            f"{lower_bound(threat, size, spec.k)} masks (limit {MAX_MASKS}); use larger "
                            f"masks or a smaller k")
    if strategy == "patchcleanser":
        origins, sizes = _product(threat, *(single_cover_windows(P, wi)
                                            for P, wi in zip(threat.num_positions, w)))
    elif strategy == "replicated":
        origins, sizes = _replicated(threat, w, spec.k)
    else:
        origins, sizes = _offset(threat, w, spec.k)
    spec = MaskSpec(strategy, spec.k, mask_size=size)
    maskset = MaskSet(threat.image_size, origins, sizes, spec, threat)
    # The constructions are proven (proofs/t3..t5); this re-check is cheap and turns a bug into an error.
    if not maskset.is_distinct() or coverage_extremes(maskset, threat)[0] < spec.k:
        raise AssertionError(f"internal error: {strategy} set for {threat}, k={k} fails verification")
    return maskset


def plan_summary(maskset: MaskSet, threat: PatchThreat | None = None) -> dict:
    """Count, lower bound, gap and coverage range of a mask set, as a JSON-ready dict."""
    threat = threat or maskset.threat
    if threat is None:
        raise CertMaskError("plan_summary needs the threat of a user-supplied mask set")
    low, high, _ = coverage_extremes(maskset, threat)
    k = maskset.k or low
    mask_size = maskset.spec.mask_size if maskset.spec else tuple(int(v) for v in maskset.sizes.max(0))
    bound = lower_bound(threat, mask_size, max(k, 1))
    return {"image_size": list(threat.image_size), "patch_size": list(threat.patch_size),
            "strategy": maskset.spec.strategy if maskset.spec else "user",
            "k": k, "mask_size": list(mask_size), "num_masks": len(maskset),
            "lower_bound": bound, "gap": len(maskset) - bound,
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
    threat = max(threats, key=lambda t: t.patch_size[0] * t.patch_size[1]) if threats else None
    return MaskSet(masksets[0].image_size, rects[:, :2], rects[:, 2:] - rects[:, :2], threat=threat)
