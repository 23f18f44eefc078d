"""T1 (covering condition, effective coverage).

A mask ``[y, y + m)`` contains the patch ``[a, a + p)`` iff ``y <= a <= y + m - p``; per axis it
covers ``w = m - p + 1`` positions, and in 2-D the rectangle condition is the product of the axes.
"""
import itertools

import numpy as np
import sympy as sp

from certmask_core import MaskSet, coverage_counts, coverage_counts_bruteforce, effective_coverage

THEOREM = "T1"
STATEMENT = "mask covers patch at a  <=>  y <= a <= y + m - p;  w = m - p + 1 positions per axis"


def symbolic() -> None:
    y, a, m, p, i = sp.symbols("y a m p i", integer=True)
    # patch inside mask: y <= a and a + p <= y + m; the upper condition rearranges to a <= y + m - p
    assert sp.simplify((a + p <= y + m).lhs - p - ((a <= y + m - p).lhs)) == 0
    assert sp.simplify((y + m).expand() - p - (y + m - p)) == 0
    # number of integers a in [y, y + m - p]
    count = sp.summation(1, (i, y, y + m - p))
    assert sp.simplify(count - (m - p + 1)) == 0


def exhaustive(limit: int = 12) -> int:
    """Pixel containment == window formula for every 1-D case with L <= limit; 2-D via the verifier."""
    checked = 0
    for L in range(1, limit + 1):
        for p in range(1, L + 1):
            for m in range(p, L + 1):
                for y in range(0, L - m + 1):
                    for a in range(0, L - p + 1):
                        pixels = set(range(a, a + p)) <= set(range(y, y + m))
                        assert pixels == (y <= a <= y + m - p), (L, p, m, y, a)
                        checked += 1
                assert effective_coverage((m, m), (p, p)) == (m - p + 1, m - p + 1)
    rng = np.random.default_rng(1)
    for H, W in itertools.product(range(1, 9), repeat=2):
        n = 4
        y0, x0 = rng.integers(0, H, n), rng.integers(0, W, n)
        ms = MaskSet((H, W), np.stack([y0, x0], 1),
                     np.stack([rng.integers(1, H - y0 + 1), rng.integers(1, W - x0 + 1)], 1))
        dense = ms.dense()
        ph, pw = 1, 1
        direct = np.array([[[dense[i, a:a + ph, b:b + pw].all() for b in range(W)] for a in range(H)]
                           for i in range(n)]).sum(0)
        assert (direct == coverage_counts_bruteforce(ms, (ph, pw))).all()
        assert (direct == coverage_counts(ms, (ph, pw))).all()
        checked += 1
    return checked
