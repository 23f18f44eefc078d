"""T16 (exact minimum of distinct masks): the fewest pairwise distinct masks of one size giving
k-fold coverage is the sum of the ``k`` smallest shifted-copy counts
``prod_axis ceil((P_axis + o_axis) / w_axis)`` over shift tuples ``0 <= o < w`` (windows shortened to
``min(w, P)``), and no distinct set exists when ``k > prod_axis w_axis``.

Reformulation: a mask of window ``w`` is its origin ``s`` with ``-(w - 1) <= s <= P - 1`` per axis
(distinct origins give distinct clipped masks, T4), and position ``a`` is covered by the origins in
the block ``[a - w + 1, a]``. So a distinct k-fold set is a subset ``X`` of the origin lattice
(``L = P + w - 1`` points per axis) with at least ``k`` points in every ``w``-block. The points of one
residue class mod ``w`` are one shifted single cover (T4) and every block holds exactly one point of
each class, so the union of the ``k`` smallest classes is k-fold: the upper bound.

Lower bound, 1-D (proof): write ``L = q w + r``. The ``q`` disjoint blocks ending at ``L`` need
``q k`` points; the block ``[0, w)`` holds at most ``w - r`` points outside ``[0, r)``, so ``[0, r)``
holds at least ``k - (w - r)``: ``|X| >= q k + max(0, k - w + r)``, which is the sum of the ``k``
smallest class sizes (``w - r`` classes of ``q`` points, ``r`` of ``q + 1``).

Lower bound, any dimension (proof; docs/theory.md, T16): there is a distribution of block starts on
each axis (:func:`uniform_window_measure`) under which the class-``o`` point of the block is uniform
on its class, so with independent axes every origin ``p`` lies in the random block with probability
exactly ``1 / N(p)``. For a fractional set ``0 <= x <= 1`` with ``k`` in every block, let ``c(o)`` be
the mean of ``x`` over class ``o``: then ``k <= E[x(block)] = sum_o c(o)`` and
``|x| = sum_o N(o) c(o)``, and a fractional knapsack with ``c <= 1`` gives ``|x| >=`` the sum of the
``k`` smallest ``N(o)``. Hence the LP relaxation is tight too; the explicit dual is
``y_block = v mu(block)``, ``z_p = max(0, v / N(p) - 1)`` with ``v`` the ``k``-th smallest count.

Checked here: the measure's exact coverage ``1 / N(p)`` and the dual's value (exact fractions), and
the closed form against an integer program (:func:`certmask_core.reference.milp_minimum`, scipy's
``milp``, a test-only dependency) on small cases.
"""
import functools
import itertools
from fractions import Fraction

import numpy as np
import sympy as sp

from certmask_core import PatchThreat, exact_minimum
from certmask_core.reference import milp_minimum

THEOREM = "T16"
STATEMENT = "exact minimum of distinct k-fold masks = sum of the k smallest shifted-copy counts"


def uniform_window_measure(P: int, w: int) -> dict[int, Fraction]:
    """Lemma 1: block starts ``s`` in ``[0, P)`` with weights under which, for every residue ``o``, the
    block's point of class ``o`` is uniform on that class. With ``L = P + w - 1 = q w + r``:
    ``mu(j w) = 1 / q`` when ``r = 0``, else ``mu(j w) = (q - j) / (q (q + 1))`` and
    ``mu(j w + r) = (j + 1) / (q (q + 1))``."""
    q, r = divmod(P + w - 1, w)
    if r == 0:
        return {j * w: Fraction(1, q) for j in range(q)}
    mu = {}
    for j in range(q):
        mu[j * w] = mu.get(j * w, 0) + Fraction(q - j, q * (q + 1))
        mu[j * w + r] = mu.get(j * w + r, 0) + Fraction(j + 1, q * (q + 1))
    return mu


@functools.cache
def _axis_class_sizes(P: int, w: int) -> tuple[int, ...]:
    """One axis of Lemma 2: the measure covers origin ``t`` with probability ``1 / |class of t|``;
    returns the class sizes."""
    L = P + w - 1
    mu = uniform_window_measure(P, w)
    assert sum(mu.values()) == 1 and all(0 <= s < P for s in mu)
    size = [len(range(t % w, L, w)) for t in range(L)]
    for t in range(L):
        assert sum(m for s, m in mu.items() if s <= t < s + w) == Fraction(1, size[t])
    return tuple(sorted(size[:w]))


def check_dual(P, w, k) -> None:
    """The measure covers every origin with probability ``1 / N`` (a product over axes, Lemma 2) and the
    dual ``(v mu, max(0, v / N - 1))`` is feasible with value equal to the closed form."""
    w = [min(wi, p) for wi, p in zip(w, P)]
    class_sizes = [_axis_class_sizes(p, wi) for p, wi in zip(P, w)]
    counts = sorted(int(np.prod(c)) for c in itertools.product(*class_sizes))
    v = counts[k - 1]
    dual = k * v - sum(max(0, v - n) for n in counts)  # each class's points: z = v / N - 1 each
    assert dual == sum(counts[:k]) == exact_minimum(PatchThreat(tuple(P) if len(P) == 2 else (1, P[0]), 1),
                                                    tuple(w) if len(w) == 2 else (1, w[0]), k)


def symbolic() -> None:
    # 1-D: the k smallest of floor((L + o) / w), o < w, sum to q k + max(0, k - w + r) (L = q w + r)
    q, w, r, k = sp.symbols("q w r k", integer=True, nonnegative=True)
    for q_v, w_v in itertools.product(range(0, 6), range(1, 8)):
        for r_v, k_v in itertools.product(range(w_v), range(1, w_v + 1)):
            L = q_v * w_v + r_v
            sizes = sorted((L + o) // w_v for o in range(w_v))
            closed = (q * k + sp.Max(0, k - w + r)).subs({q: q_v, w: w_v, r: r_v, k: k_v})
            assert sum(sizes[:k_v]) == closed


def exhaustive(limit: int = 6) -> int:
    checked = 0
    for P_h, P_w in itertools.product(range(1, 13), repeat=2):  # the dual certificate, exact
        for w_h, w_w in itertools.product(range(1, min(P_h, 6) + 1), range(1, min(P_w, 6) + 1)):
            for k in range(1, w_h * w_w + 1, max(1, w_h * w_w // 5)):
                check_dual((P_h, P_w), (w_h, w_w), k)
                checked += 1
    for P in range(1, 3 * limit):
        for w in range(1, P + 1):
            for k in range(1, w + 2):
                expected = milp_minimum((P,), (w,), k) if k <= w else None
                assert exact_minimum(PatchThreat((1, P), 1), (1, w), k) == expected, (P, w, k)
                checked += 1
    for P_h, P_w in itertools.combinations_with_replacement(range(1, limit), 2):
        for w_h, w_w in itertools.product(range(1, P_h + 1), range(1, P_w + 1)):
            if (P_h + w_h) * (P_w + w_w) > 90:
                continue
            for k in range(1, w_h * w_w + 1):
                got = exact_minimum(PatchThreat((P_h, P_w), 1), (w_h, w_w), k)
                assert got == milp_minimum((P_h, P_w), (w_h, w_w), k), (P_h, P_w, w_h, w_w, k)
                if k == (w_h * w_w + 1) // 2:  # the LP relaxation is tight too (a hint at a dual proof)
                    assert milp_minimum((P_h, P_w), (w_h, w_w), k, relax=True) > got - 1e-6
                checked += 1
    return checked


if __name__ == "__main__":
    symbolic()
    print(f"{THEOREM}: {exhaustive()} cases equal the integer program")
