"""T4 (replicated tiling): the copies ``(o_h, o_w)``, ``0 <= o < w``, of the single cover shifted by
``o`` positions are each 1-fold, so ``k`` of them are k-fold; copies with different shifts on an axis
share no window on that axis, so masks never repeat. Copy ``o`` needs ``ceil((P + o) / w)`` windows
per axis, equal to ``ceil(P / w)`` while ``o <= ceil(P / w) w - P`` (the slack), so the count meets T2
whenever ``k`` copies fit within the slack of both axes. The construction takes the ``k`` cheapest
copies, so its count is the exact minimum of distinct masks (T16) in every case.

Proof: windows of copy ``o`` are ``[-o + i w, -o + (i + 1) w - 1]`` clipped to ``[0, P - 1]``;
consecutive ones touch, the first starts at or before 0 and the last ends at or after ``P - 1``.
Unclipped windows of copy ``o`` start at ``-o mod w``, so copies differ; clipped first windows
``[0, w - 1 - o]`` differ in length. Windows are first shortened to ``min(w, P)`` so that no copy
but the first holds ``[0, P - 1]``; hence ``w_h w_w`` distinct copies exist and larger ``k`` is
refused.
"""
import itertools
import math

import sympy as sp

from certmask_core import CertMaskError, coverage_counts, exact_minimum, lower_bound, make_maskset
from certmask_core.constructions import shifted_cover_windows

from .common import counts_1d, small_threats

THEOREM = "T4"
STATEMENT = "replicated: k-fold, distinct; count = T16 exact minimum (= T2 bound when k copies fit the slack)"


def symbolic() -> None:
    i, o, w = sp.symbols("i o w", integer=True)
    end_i = -o + (i + 1) * w - 1
    start_next = -o + (i + 1) * w
    assert sp.expand(start_next - end_i) == 1  # consecutive windows touch
    P, wp = sp.symbols("P w", integer=True, positive=True)
    n = sp.ceiling((P + o) / wp)
    # the last window ends at -o + n w - 1 >= P - 1 since n w >= P + o (ceiling >= its argument)
    assert sp.simplify(sp.ceiling((P + o) / wp) >= (P + o) / wp) == sp.true
    del n


def exhaustive(limit: int = 14) -> int:
    checked = 0
    for P in range(1, 30):
        for w in range(1, 12):
            for o in range(w):
                windows = shifted_cover_windows(P, w, o)
                assert min(counts_1d(windows, P)) >= 1 and len(windows) == math.ceil((P + o) / w)
    for t in small_threats(limit):
        for n_axis, k in itertools.product((1, 2, 3), range(1, 7)):
            try:
                ms = make_maskset(t, k, "replicated", masks_per_axis=n_axis)
            except CertMaskError:
                w = [min(math.ceil(P / n_axis), P) for P in t.num_positions]
                assert k > w[0] * w[1]
                continue
            assert ms.is_distinct() and coverage_counts(ms, t).min() >= k
            assert len(ms) == exact_minimum(t, ms.spec.mask_size, k), (t, n_axis, k)
            w = [math.ceil(P / n_axis) for P in t.num_positions]
            slack = [math.ceil(P / wi) * wi - P for P, wi in zip(t.num_positions, w)]
            if (slack[0] + 1) * (slack[1] + 1) >= k:
                assert len(ms) == lower_bound(t, ms.spec.mask_size, k), (t, n_axis, k)
            checked += 1
    return checked
