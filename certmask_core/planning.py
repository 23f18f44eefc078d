"""Planning for a budget: every mask size for a threat and k, with its exact mask count (T16).

The planner answers the questions users ask before they build a set: "the fewest masks whose masks each
hide at most 10 % of the image", "the smallest masks I can afford in 100 forward passes", "what does
recovery cost at worst". It evaluates the closed form of :func:`~certmask_core.constructions.exact_minimum`
for every window size at once, keeps the layouts no other layout beats on both count and mask area, and
applies the constraints.
"""
from __future__ import annotations

import numbers

import numpy as np

from .constructions import _axis_classes, _minimum_of_classes
from .errors import CertMaskError
from .geometry import MAX_MASKS, STRATEGIES, PatchThreat, _positive_int, lower_bound

PASSES_FOR = ("one_round", "recovery")

ALL_WINDOWS_UP_TO = 1024
"""Axes with at most this many patch positions try every window size; longer axes try, for each
single-cover count ``ceil(P / w)``, the smallest window with it (so planning a 16k image stays fast)."""


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
    n = _positive_int("num_masks", num_masks)
    return n if passes_for == "one_round" else n + n * (n - 1) // 2


def _windows(P: int) -> np.ndarray:
    if P <= ALL_WINDOWS_UP_TO:
        return np.arange(1, P + 1)
    counts = np.arange(1, P + 1)
    return np.unique(-(-P // counts))  # the smallest w with ceil(P / w) = n, for every n


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
    k = _positive_int("k", k)
    strategy = strategy or ("patchcleanser" if k == 1 else "replicated")
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

    if shape not in ("square", "any"):
        raise CertMaskError(f"shape must be 'square' or 'any', got {shape!r}")

    (H, W), (ph, pw) = threat.image_size, threat.patch_size
    P_h, P_w = threat.num_positions
    if shape == "square":
        w = _windows(max(P_h, P_w))
        w_h, w_w = np.minimum(w, P_h), np.minimum(w, P_w)
    else:
        w_h, w_w = (v.ravel() for v in np.meshgrid(_windows(P_h), _windows(P_w), indexing="ij"))
    counts = _minimum_of_classes([_axis_classes(P, w) for P, w in zip(threat.num_positions, (w_h, w_w))], k)
    m_h, m_w = w_h + ph - 1, w_w + pw - 1
    area = m_h * m_w
    feasible = (counts > 0) & (counts <= MAX_MASKS) & (area < H * W)
    if not feasible.any():
        corner = threat.num_positions[0] * threat.num_positions[1]
        raise CertMaskError(f"no mask size gives {k}-fold coverage with distinct masks for {threat} "
                            f"(at most {corner} exist over a corner)")
    ok = feasible.copy()
    if max_mask_side is not None:
        ok &= np.maximum(m_h, m_w) <= max_mask_side
    if max_mask_fraction is not None:
        ok &= area <= max_mask_fraction * H * W
    if max_masks is not None:
        ok &= counts <= max_masks
    if max_passes is not None:
        n = np.where(feasible, counts, 0)  # <= MAX_MASKS = 2**22: n (n - 1) / 2 fits int64
        ok &= (n if passes_for == "one_round" else n + n * (n - 1) // 2) <= max_passes
    if not ok.any():
        cheapest = int(np.flatnonzero(feasible)[np.argmin(counts[feasible])])
        limits = {name: value for name, value in (("max_mask_side", max_mask_side),
                  ("max_mask_fraction", max_mask_fraction), ("max_masks", max_masks),
                  ("max_passes", max_passes)) if value is not None}
        raise CertMaskError(
            f"no {k}-fold layout for {threat} satisfies {limits} (passes for {passes_for}); the fewest masks "
            f"are {counts[cheapest]} of {m_h[cheapest]}x{m_w[cheapest]} "
            f"({area[cheapest] / (H * W):.1%} of the image each)")
    index = np.flatnonzero(ok)
    index = index[np.lexsort((m_h[index], np.abs(m_h - m_w)[index], area[index], counts[index]))]
    layouts, smallest = [], np.inf
    for i in index:
        if area[i] < smallest:
            smallest = area[i]
            n = int(counts[i])
            layouts.append({"strategy": strategy, "k": k, "mask_size": [int(m_h[i]), int(m_w[i])],
                            "num_masks": n, "exact_minimum": n,
                            "lower_bound": lower_bound(threat, (int(m_h[i]), int(m_w[i])), k),
                            "mask_fraction": round(float(area[i]) / (H * W), 6),
                            "passes_one_round": n, "passes_recovery_worst": n + n * (n - 1) // 2})
    return layouts


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
    budget = _positive_int("budget", budget)
    found = []
    for k in ks:
        for strategy in strategies:
            if (strategy == "patchcleanser") != (k == 1):
                continue
            try:
                found += plan_layouts(threat, k, strategy, max_passes=budget, shape=shape)
            except CertMaskError:
                continue  # nothing this k can afford
    if not found:
        raise CertMaskError(f"no layout for {threat} with k in {tuple(ks)} and strategies "
                            f"{tuple(strategies)} fits {budget} passes per image")
    return found


def pareto_front(passes, accuracy) -> np.ndarray:
    """Indices of the points no other point beats: fewer or equal passes with higher accuracy, or
    fewer passes with equal accuracy. Sorted by passes.

    Examples
    --------
    >>> pareto_front([10, 20, 30, 20], [0.5, 0.7, 0.6, 0.7]).tolist()
    [0, 1]
    """
    passes, accuracy = np.asarray(passes, dtype=float), np.asarray(accuracy, dtype=float)
    order = np.lexsort((np.arange(len(passes)), -accuracy, passes))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(int(i))
            best = accuracy[i]
    return np.array(front, dtype=np.int64)
