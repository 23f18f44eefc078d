"""Planning for a budget: every mask size for a threat and k, with its exact mask count (T16).

The planner answers the questions users ask before they build a set: "the fewest masks whose masks each
hide at most 10 % of the image", "the smallest masks I can afford in 100 forward passes", "what does
recovery cost at worst". It evaluates the closed form of :func:`~certmask_core.constructions.exact_minimum`
for every window size at once, keeps the layouts no other layout beats on both count and mask area, and
applies the constraints.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .constructions import axis_classes, minimum_of_classes
from .errors import CertMaskError
from .geometry import MAX_MASKS, STRATEGIES, PatchThreat, lower_bound
from .validation import distinct_list, positive_int, shape_text

PASSES_FOR = ("one_round", "recovery")

PAIRS_PER_CHUNK = 2**22
"""``shape="any"`` prices the window pairs in chunks of about this many."""
MAX_ANY_PAIRS = 2**24
"""``shape="any"`` prices every ``(w_h, w_w)`` pair: at most this many (4,096 x 4,096 positions, about
10 s on one core); larger images plan with ``shape="square"``."""


def passes_per_image(num_masks: int, passes_for: str = "one_round") -> int:
    """Forward passes per image: ``n`` for one round; ``n + n (n - 1) / 2`` at worst for recovery
    (every mask and, when masks disagree, every pair of masks: PatchCleanser's second round).

    Examples
    --------
    >>> passes_per_image(36), passes_per_image(36, "recovery")
    (36, 666)
    """
    if passes_for not in PASSES_FOR:
        raise CertMaskError(f"passes_for must be one of {PASSES_FOR}, got {passes_for!r}")
    n = positive_int("num_masks", num_masks)
    return n if passes_for == "one_round" else _recovery_passes(n)


def _recovery_passes(n):
    """``n + n (n - 1) / 2``, on ints or int64 arrays (``n <= MAX_MASKS`` keeps it inside int64)."""
    return n + n * (n - 1) // 2


def default_strategy(k: int) -> str:
    """``patchcleanser`` for ``k = 1`` (its grid is the single cover), else ``replicated``."""
    return "patchcleanser" if k == 1 else "replicated"


def _limit(name: str, value, kind=numbers.Real):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 or value != value:
        raise CertMaskError(f"{name} must be a positive number, got {value!r}")
    return value


def plan_layouts(threat: PatchThreat, k: int = 1, strategy: str | None = None, *,
                 max_mask_side: int | None = None, max_mask_fraction: float | None = None,
                 max_masks: int | None = None, max_passes: int | None = None,
                 passes_for: str = "one_round", shape: str = "square") -> list[dict]:
    """Mask layouts for ``threat`` and ``k`` that satisfy the given constraints, fewest masks first.

    Every window size ``(w_h, w_w)`` is priced by its exact minimum of distinct masks (T16), which
    ``replicated`` and ``offset`` attain and ``patchcleanser`` attains for ``k = 1``. Of all sizes only
    those that no other beats on both count and mask area are kept (for each count, the smallest mask
    giving it), so the list runs from few large masks to many small ones. A mask hiding the whole image
    is never proposed (every masked prediction would be the same).

    Slow twin: :func:`certmask_core.reference.front_by_building`.

    Parameters
    ----------
    threat : PatchThreat
    k : int
        Coverage every patch position must get.
    strategy : {"patchcleanser", "replicated", "offset"}, optional
        Reported with each layout (all three have the same count where they apply); default
        ``patchcleanser`` for ``k = 1``, else ``replicated``.
    max_mask_side : int, optional
        Largest mask side in pixels.
    max_mask_fraction : float, optional
        Largest share of the image one mask may hide, in (0, 1].
    max_masks : int, optional
        Most masks in the set.
    max_passes : int, optional
        Most forward passes per image, counted by :func:`passes_per_image` with ``passes_for``.
    passes_for : {"one_round", "recovery"}
        One round costs ``n`` passes; recovery at worst ``n + n (n - 1) / 2``.
    shape : {"square", "any"}
        ``square``: masks exceed the patch by the same amount on both axes (clipped to the image), the
        grids users know; ``any``: every ``(mh, mw)`` pair, which favours strips.

    Returns
    -------
    list of dict
        One JSON-ready dict per layout, by ascending ``num_masks``: ``strategy``, ``k``, ``mask_size``
        ``[mh, mw]``, ``num_masks`` (what the strategy builds, which is ``exact_minimum``, T16),
        ``lower_bound`` (T2), ``mask_fraction`` (share of
        the image one unclipped mask hides), ``passes_one_round``, ``passes_recovery_worst``. The first
        is the cheapest; the last hides the least per mask.

    Raises
    ------
    CertMaskError
        For invalid arguments, or when no layout satisfies the constraints (the message names the
        cheapest layout there is).

    Examples
    --------
    >>> layouts = plan_layouts(PatchThreat(28, 3), k=2, max_passes=40)
    >>> [(d["num_masks"], d["mask_size"], d["lower_bound"]) for d in layouts]
    [(8, [16, 16], 8), (10, [15, 15], 8), (18, [11, 11], 18), (32, [9, 9], 32)]
    """
    if not isinstance(threat, PatchThreat):
        raise CertMaskError(f"threat must be a PatchThreat, got {type(threat).__name__}")
    k = positive_int("k", k, high=MAX_MASKS)
    strategy = default_strategy(k) if strategy is None else strategy
    if strategy not in STRATEGIES:
        raise CertMaskError(f"strategy must be patchcleanser, replicated or offset, got {strategy!r}")
    if strategy == "patchcleanser" and k != 1:
        raise CertMaskError(f"strategy 'patchcleanser' is a single cover (k=1), got k={k}")
    if passes_for not in PASSES_FOR:
        raise CertMaskError(f"passes_for must be one of {PASSES_FOR}, got {passes_for!r}")
    max_mask_side = _limit("max_mask_side", max_mask_side, numbers.Integral)
    max_mask_fraction = _limit("max_mask_fraction", max_mask_fraction)
    max_masks = _limit("max_masks", max_masks, numbers.Integral)
    max_passes = _limit("max_passes", max_passes, numbers.Integral)
    if max_mask_fraction is not None and max_mask_fraction > 1:
        raise CertMaskError(f"max_mask_fraction is a share of the image in (0, 1], got {max_mask_fraction}")

    _check_shape(threat, shape)

    volume = math.prod(threat.image_size)
    fronts, cheapest, seen = [], None, {"covering": False, "affordable": False}
    for windows in _window_chunks(threat.num_positions, shape):
        counts = minimum_of_classes([axis_classes(P, w) for P, w in zip(threat.num_positions, windows)], k)
        counts = np.minimum(counts, MAX_MASKS + 1).astype(np.int64)  # exact ints beyond int64 (5+ axes)
        masks = np.stack([w + p - 1 for w, p in zip(windows, threat.patch_size)])  # (d, m) mask sizes
        area = np.prod(masks, axis=0)
        seen["covering"] |= bool((counts > 0).any())
        seen["affordable"] |= bool(((counts > 0) & (counts <= MAX_MASKS)).any())
        feasible = (counts > 0) & (counts <= MAX_MASKS) & (area < volume)
        if feasible.any():
            i = np.flatnonzero(feasible)[np.argmin(counts[feasible])]
            if cheapest is None or counts[i] < cheapest[0]:
                cheapest = (int(counts[i]), masks[:, i].tolist())
        ok = feasible
        if max_mask_side is not None:
            ok &= masks.max(0) <= max_mask_side
        if max_mask_fraction is not None:
            ok &= area <= max_mask_fraction * volume
        if max_masks is not None:
            ok &= counts <= max_masks
        if max_passes is not None:
            n = np.where(feasible, counts, 0)  # <= MAX_MASKS
            ok &= (n if passes_for == "one_round" else _recovery_passes(n)) <= max_passes
        fronts.append(_count_area_front(counts[ok], masks[:, ok]))
    if cheapest is None:
        why = (f"at most {math.prod(threat.num_positions)} distinct masks lie over the corner position"
               if not seen["covering"] else
               f"it needs more than {MAX_MASKS} masks" if not seen["affordable"] else
               "only masks hiding the whole image give it (every masked prediction would be the same)")
        raise CertMaskError(f"no mask size gives {k}-fold coverage with distinct masks for {threat}: {why}")
    counts, masks = _count_area_front(np.concatenate([c for c, _ in fronts]),
                                      np.concatenate([m for _, m in fronts], axis=1))
    if not len(counts):
        limits = {name: value for name, value in (("max_mask_side", max_mask_side),
                  ("max_mask_fraction", max_mask_fraction), ("max_masks", max_masks),
                  ("max_passes", max_passes)) if value is not None}
        n, size = cheapest
        raise CertMaskError(
            f"no {k}-fold layout for {threat} satisfies {limits} (passes for {passes_for}); the fewest masks "
            f"are {n} of {shape_text(size)} ({math.prod(size) / volume:.1%} of the image each)")
    return [{"strategy": strategy, "k": k, "mask_size": size, "num_masks": n, "exact_minimum": n,
             "lower_bound": lower_bound(threat, size, k), "mask_fraction": round(math.prod(size) / volume, 6),
             "passes_one_round": n, "passes_recovery_worst": _recovery_passes(n)}
            for n, size in zip(counts.tolist(), masks.T.tolist())]


def _check_shape(threat: PatchThreat, shape) -> None:
    if shape not in ("square", "any"):
        raise CertMaskError(f"shape must be 'square' or 'any', got {shape!r}")
    if shape == "any" and math.prod(threat.num_positions) > MAX_ANY_PAIRS:
        raise CertMaskError(f"shape='any' prices every (w_h, w_w) pair: "
                            f"{' x '.join(map(str, threat.num_positions))} "
                            f"positions give more than {MAX_ANY_PAIRS}; use shape='square'")


def _window_chunks(positions, shape: str):
    """Windows to price, as one array per axis: equal windows (clipped per axis) for ``square``, every
    combination for ``any``, in chunks of about ``PAIRS_PER_CHUNK``."""
    if shape == "square":
        w = np.arange(1, max(positions) + 1)
        yield [np.minimum(w, P) for P in positions]
        return
    total = math.prod(positions)
    for start in range(0, total, PAIRS_PER_CHUNK):
        index = np.unravel_index(np.arange(start, min(start + PAIRS_PER_CHUNK, total)), positions)
        yield [i + 1 for i in index]


def _count_area_front(counts, masks):
    """The layouts no other beats on both count and mask volume (area), by ascending count (ties: the
    most even mask, then the shorter first axis). ``masks`` is ``(d, m)``."""
    area = np.prod(masks, axis=0)
    order = np.lexsort((masks[0], masks.max(0) - masks.min(0), area, counts))
    counts, masks, area = counts[order], masks[:, order], area[order]
    keep = area < np.minimum.accumulate(np.concatenate([[np.inf], area[:-1]]))
    return counts[keep], masks[:, keep]


def tune_candidates(threat: PatchThreat, budget: int, ks=(1, 2, 3, 4), strategies=STRATEGIES,
                    shape: str = "square") -> list[dict]:
    """Every (strategy, k, mask size) whose one-round cost fits ``budget`` passes per image.

    The mask sizes are :func:`plan_layouts`'s for each ``k`` (for each count, the smallest masks);
    ``patchcleanser`` is tried for ``k = 1`` only, ``replicated`` and ``offset`` for ``k >= 2`` (at
    ``k = 1`` they are PatchCleanser's grid up to where the last mask sits). Each dict is a layout of
    :func:`plan_layouts`; a ``k`` with no layout under the budget is skipped.

    Examples
    --------
    >>> found = tune_candidates(PatchThreat(28, 3), budget=20, ks=(1, 2))
    >>> sorted({(d["strategy"], d["k"]) for d in found})
    [('offset', 2), ('patchcleanser', 1), ('replicated', 2)]
    """
    if not isinstance(threat, PatchThreat):
        raise CertMaskError(f"threat must be a PatchThreat, got {type(threat).__name__}")
    budget = positive_int("budget", budget)
    ks, strategies = distinct_list("ks", ks), distinct_list("strategies", strategies)
    ks = [positive_int("ks[]", k, high=MAX_MASKS) for k in ks]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies or not ks:
        raise CertMaskError(f"strategies must be some of {STRATEGIES} and ks at least one k, got "
                            f"strategies {strategies} and ks {ks}")
    pairs = [(k, s) for k in ks for s in strategies if (s == "patchcleanser") == (k == 1)]
    if not pairs:
        raise CertMaskError(f"nothing to try: patchcleanser serves k = 1 and replicated/offset k >= 2, "
                            f"got ks {ks} and strategies {strategies}")
    _check_shape(threat, shape)
    found = []
    for k, strategy in pairs:  # every argument is checked: an error here is a k the budget cannot afford
        try:
            found += plan_layouts(threat, k, strategy, max_passes=budget, shape=shape)
        except CertMaskError:
            continue
    if not found:
        raise CertMaskError(f"no layout for {threat} with k in {tuple(ks)} and strategies "
                            f"{tuple(strategies)} fits {budget} passes per image")
    return found


def pareto_front(passes, accuracy) -> np.ndarray:
    """Indices of the points no other point beats: fewer or equal passes with higher accuracy, or
    fewer passes with equal accuracy. Sorted by passes.

    Slow twin: :func:`certmask_core.reference.pareto_front_reference`.

    Examples
    --------
    >>> pareto_front([10, 20, 30, 20], [0.5, 0.7, 0.6, 0.7]).tolist()
    [0, 1]
    """
    try:
        passes, accuracy = np.asarray(passes, dtype=float), np.asarray(accuracy, dtype=float)
    except (TypeError, ValueError):
        raise CertMaskError(f"passes and accuracy must be numbers, got {passes!r} and {accuracy!r}") from None
    if passes.ndim != 1 or passes.shape != accuracy.shape or not np.isfinite(passes).all() \
            or not np.isfinite(accuracy).all():
        raise CertMaskError(f"passes and accuracy must be finite 1-D arrays of one length, got shapes "
                            f"{passes.shape} and {accuracy.shape}")
    order = np.lexsort((np.arange(len(passes)), -accuracy, passes))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(int(i))
            best = accuracy[i]
    return np.array(front, dtype=np.int64)
