"""T5 (offset tiling): one grid of stride ``s = floor(w / k)`` per axis is k-fold.

Proof: with ``w = k s + r``, ``0 <= r < k``, we get ``k s <= w`` so ``floor(w / s) >= k``; any ``w``
consecutive positions hold ``floor(w / s)`` disjoint runs of ``s`` consecutive integers, each holding
one grid start, so every position is covered at least ``k`` times. In 2-D the product of a
``k_h``-fold and a ``k_w``-fold axis grid is ``k_h k_w``-fold; the construction takes the
factorisation ``k_h k_w >= k`` with the fewest masks. Distinct starts give distinct clipped windows
unless both clip to ``[0, P - 1]``, so ``k <= min(w, P)`` per axis is required and checked.
"""
import itertools
import math

import sympy as sp

from certmask_core import CertMaskError, coverage_counts, make_maskset
from certmask_core.constructions import offset_windows

from .common import counts_1d, small_threats

THEOREM = "T5"
STATEMENT = "offset: stride floor(w/k) grid is k-fold with distinct masks when k <= min(w, P)"


def symbolic() -> None:
    k, s = sp.symbols("k s", integer=True, positive=True)
    r = sp.symbols("r", integer=True, nonnegative=True)
    w = k * s + r
    assert (w - k * s).is_nonnegative  # k s <= w, hence w / s >= k and floor(w / s) >= k
    assert sp.simplify(sp.floor(w / s) >= k) == sp.true


def exhaustive(limit: int = 14) -> int:
    checked = 0
    for P in range(1, 30):
        for w in range(1, 12):
            for k in range(1, 8):
                wins = offset_windows(P, w, k)
                if wins is None:
                    assert k > min(w, P)
                    continue
                assert all(0 <= a0 <= a1 <= P - 1 and a1 - a0 + 1 <= w for a0, a1 in wins)
                assert min(counts_1d(wins, P)) >= k and len(set(wins)) == len(wins), (P, w, k)
                checked += 1
    for t in small_threats(limit):
        for n_axis, k in itertools.product((1, 2, 3), range(1, 7)):
            w = [math.ceil(P / n_axis) for P in t.num_positions]
            try:
                ms = make_maskset(t, k, "offset", masks_per_axis=n_axis)
            except CertMaskError:
                cap = [min(wi, P) for wi, P in zip(w, t.num_positions)]
                assert cap[0] * cap[1] < k
                continue
            assert ms.is_distinct() and coverage_counts(ms, t).min() >= k
            checked += 1
    return checked
