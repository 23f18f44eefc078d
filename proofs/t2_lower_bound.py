"""T2 (lower bound): ``n >= k * ceil(P_h / w_h) * ceil(P_w / w_w)``, exact with repeated masks.

Proof: the positions ``i * w`` (``0 <= i < ceil(P / w)``) are pairwise at least ``w`` apart, while a
window spans ``w - 1``; so no mask covers two of them (in 2-D: two points of the product grid differ
by ``>= w`` on some axis), and each needs ``k`` masks of its own. ``k`` copies of the single cover
(T3) attain the bound.
"""
import itertools
import math

import sympy as sp

from certmask_core import MaskSet, PatchThreat, is_k_covered, lower_bound, make_maskset

THEOREM = "T2"
STATEMENT = "n >= k * ceil(P_h / w_h) * ceil(P_w / w_w); tight with repeats (k copies of T3)"


def symbolic() -> None:
    i, j = sp.symbols("i j", integer=True, nonnegative=True)
    w = sp.symbols("w", integer=True, positive=True)
    # points i w and (i + 1 + j) w are further apart than the w - 1 a window spans
    assert ((i + 1 + j) * w - i * w - (w - 1)).expand().is_positive
    # ceil(P / w) points fit in [0, P - 1]: with P = q w + r, (ceil(P/w) - 1) w <= P - 1 (see T3)
    q = sp.symbols("q", integer=True, positive=True)
    r = sp.symbols("r", integer=True, positive=True)
    assert ((q - 1) * w - (q * w - 1)).expand().is_nonpositive  # r = 0
    assert (q * w - (q * w + r - 1)).expand().is_nonpositive  # 1 <= r < w


def min_cover_1d(P: int, w: int, k: int) -> int:
    """Exact minimum number of windows (repeats allowed, clipped windows included) for k-fold cover.

    Greedy from the left is optimal: the leftmost position with deficit ``d`` needs ``d`` more windows
    containing it, and a window starting there dominates every other such window.
    """
    counts = [0] * P
    used = 0
    for a in range(P):
        deficit = k - counts[a]
        if deficit > 0:
            used += deficit
            for b in range(a, min(a + w, P)):
                counts[b] += deficit
    return used


def exhaustive(limit: int = 13) -> int:
    checked = 0
    for L in range(1, limit + 1):
        for p in range(1, L + 1):
            P = L - p + 1
            for m in range(p, L + 1):
                w = m - p + 1
                points = [i * w for i in range(math.ceil(P / w))]
                for start in range(-w + 1, P):  # every window, clipped ones too
                    assert sum(start <= q <= start + w - 1 for q in points) <= 1
                for k in range(1, 4):
                    bound = lower_bound(PatchThreat((1, L), (1, p)), (1, m), k)
                    assert min_cover_1d(P, w, k) == bound, (L, p, m, k)
                    checked += 1
    for H, W in itertools.product(range(2, 8), repeat=2):
        t = PatchThreat((H, W), 2)
        for mh, mw in itertools.product(range(2, H + 1), range(2, W + 1)):
            single = make_maskset(t, 1, "patchcleanser", mask_size=(mh, mw))
            for k in (1, 2, 3):
                copies = MaskSet((H, W), single.origins.repeat(k, 0), single.sizes.repeat(k, 0))
                assert is_k_covered(copies, 2, k) and len(copies) == lower_bound(t, (mh, mw), k)
                checked += 1
    return checked
