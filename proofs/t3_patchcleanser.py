"""T3 (PatchCleanser single cover): windows at ``0, w, ..., (n - 2) w`` and ``P - w`` with
``n = ceil(P / w)`` cover every position once or more and meet the bound of T2 for ``k = 1``.

Proof: window ``i`` ends at ``(i + 1) w - 1`` where window ``i + 1`` begins, and the flush window
``[P - w, P - 1]`` starts at or before ``(n - 1) w`` because ``(n - 1) w < P``. Starts are strictly
increasing, so masks are distinct.
"""
import itertools

import sympy as sp

from certmask_core import PatchThreat, coverage_counts, lower_bound, make_maskset

THEOREM = "T3"
STATEMENT = "patchcleanser grid is 1-fold, distinct, with exactly the T2 count for k = 1"


def symbolic() -> None:
    q, w = sp.symbols("q w", integer=True, positive=True)
    r = sp.symbols("r", integer=True, nonnegative=True)
    # write P = q w + r with 0 <= r < w; n = ceil(P / w) is q (r = 0) or q + 1 (r >= 1)
    assert ((q - 1) * w - q * w).expand().is_negative  # r = 0: (n - 1) w < P
    r1 = sp.symbols("r1", integer=True, positive=True)
    assert (q * w - (q * w + r1)).expand().is_negative  # r >= 1: (n - 1) w = q w < q w + r
    # consecutive windows touch: window i ends at (i + 1) w - 1, window i + 1 starts at (i + 1) w
    i = sp.symbols("i", integer=True)
    assert sp.expand(((i + 1) * w - 1) + 1 - (i + 1) * w) == 0
    del r


def exhaustive(limit: int = 12) -> int:
    checked = 0
    for H, W in itertools.product(range(1, limit + 1), repeat=2):
        for ph, pw in itertools.product(range(1, min(H, 4) + 1), range(1, min(W, 4) + 1)):
            t = PatchThreat((H, W), (ph, pw))
            for nh, nw in itertools.product(range(1, 5), repeat=2):
                ms = make_maskset(t, 1, "patchcleanser", masks_per_axis=(nh, nw))
                assert coverage_counts(ms, t).min() >= 1 and ms.is_distinct()
                assert len(ms) == lower_bound(t, ms.spec.mask_size, 1), (t, nh, nw)
                checked += 1
    return checked
