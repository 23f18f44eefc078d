"""T5 (offset tiling): ``k`` of the cheapest shifted single covers, spread apart, are k-fold with
distinct masks and exactly the T16 minimum of masks.

The offset set is built from the same shift classes as replicated tiling (T4): copy ``(o_h, o_w)`` is
the single cover whose windows start at ``-o + i w`` on each axis. Each copy covers every position
once, so any ``k`` distinct copies cover it ``k`` times; copies with different shifts share no
window (T4), so masks never repeat. Offset takes every copy cheaper than the ``k``-th cheapest and
chooses the rest among the equally cheap ones as an evenly spread lattice (a diagonal of stride
``w / k`` when every shift is equally cheap, the paper's interleaving), keeping replicated's choice
where that is spread further (least cyclic distance ``sum_axis min(|o - o'|, w - |o - o'|) / w``).
Its count is the sum of the ``k`` smallest copy counts, the exact minimum (T16).

Where it cannot interleave: only shifts ``o <= ceil(P / w) w - P`` (the slack) keep a copy at the
cheapest count, so whenever the slack is smaller than ``w / k`` the minimum forces copies closer than
the paper's stride ``w / k`` (the stride grid of the first release, ``floor(w / k)`` per axis with
``k_h k_w >= k``, paid up to +69 % masks for its spacing; see docs/theory.md, T16).
"""
import itertools

import sympy as sp

from certmask_core import CertMaskError, coverage_counts, exact_minimum, make_maskset
from certmask_core.constructions import least_shift_distance, shift_classes

from .common import small_threats

THEOREM = "T5"
STATEMENT = "offset: k cheapest shifted covers, spread apart: k-fold, distinct, count = T16 exact minimum"


def symbolic() -> None:
    # a copy with shift o has ceil((P + o) / w) windows: the cheapest count ceil(P / w) exactly while
    # o <= ceil(P / w) w - P; at o = ceil(P / w) w - P + 1 it needs one more
    P, w = sp.symbols("P w", integer=True, positive=True)
    q = sp.ceiling(P / w)
    for P_value, w_value in itertools.product(range(1, 40), range(1, 12)):
        q_value = int(q.subs({P: P_value, w: w_value}))
        slack = q_value * w_value - P_value
        assert -(-(P_value + slack) // w_value) == q_value
        assert -(-(P_value + slack + 1) // w_value) == q_value + 1


def exhaustive(limit: int = 14) -> int:
    checked = 0
    for t in small_threats(limit):
        for n_axis, k in itertools.product((1, 2, 3), range(1, 7)):
            try:
                ms = make_maskset(t, k, "offset", masks_per_axis=n_axis)
            except CertMaskError:
                w = [min(-(-P // n_axis), P) for P in t.num_positions]
                assert k > w[0] * w[1]
                continue
            assert ms.is_distinct() and coverage_counts(ms, t).min() >= k
            assert len(ms) == exact_minimum(t, ms.spec.mask_size, k), (t, n_axis, k)
            w = tuple(min(m - p + 1, P) for m, p, P in zip(ms.spec.mask_size, t.patch_size, t.num_positions))
            spread = least_shift_distance(shift_classes(t, w, k, "offset"), w)
            packed = least_shift_distance(shift_classes(t, w, k, "replicated"), w)
            assert spread >= packed - 1e-12, (t, n_axis, k, spread, packed)
            checked += 1
    return checked
