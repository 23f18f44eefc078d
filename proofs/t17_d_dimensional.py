"""T17 (issue 14, first part): the geometry theorems in 1, 2 and 3 dimensions, on an independent
d-dimensional reference (no core d-dimensional API exists yet).

A patch of ``p_1 x ... x p_d`` in a ``L_1 x ... x L_d`` signal has ``P_i = L_i - p_i + 1`` positions per
axis; a box mask covers a position iff it holds the patch (T1 per axis), so it covers a product of
per-axis windows of ``w_i = m_i - p_i + 1`` positions. Restated and checked here for d = 1, 2, 3:

* T2 in d dimensions: ``n >= k prod_i ceil(P_i / w_i)``: the positions ``(j_1 w_1, ..., j_d w_d)``
  differ by ``>= w_i`` on some axis, so no box covers two of them (checked by painting).
* T4/T16 in d dimensions: the ``k`` cheapest shifted single covers (a copy is the product of
  per-axis shifted covers, ``prod_i ceil((P_i + o_i) / w_i)`` boxes) are k-fold and distinct, and
  their count is the core's closed form ``_minimum_of_classes`` for the same axes (T16, proven for
  every d), which also equals scipy's integer program on small 1-D and 3-D cases.
"""
import itertools

import numpy as np

from certmask_core.constructions import _axis_classes, _minimum_of_classes, shifted_cover_windows

THEOREM = "T17"
STATEMENT = "T2, T4 and T16 in 1, 2 and 3 dimensions (independent d-dimensional reference)"

symbolic = None  # the per-axis algebra is T1-T4's and T16's; this module checks the products


def cheapest_copies(P, w, k):
    """Reference construction: every shift tuple sorted by its box count, the first ``k`` taken;
    returns the boxes as ``(n, d, 2)`` inclusive position windows."""
    w = [min(wi, p) for wi, p in zip(w, P)]
    per_axis = [{o: shifted_cover_windows(p, wi, o) for o in range(wi)} for p, wi in zip(P, w)]
    shifts = sorted(itertools.product(*(range(wi) for wi in w)),
                    key=lambda o: (int(np.prod([len(per_axis[i][oi]) for i, oi in enumerate(o)])), o))
    boxes = [tuple(windows) for o in shifts[:k]
             for windows in itertools.product(*(per_axis[i][oi] for i, oi in enumerate(o)))]
    return np.array(boxes, dtype=np.int64).reshape(-1, len(P), 2)


def coverage_bruteforce(boxes, P) -> np.ndarray:
    """Boxes holding each position (the definition, position by position)."""
    counts = np.zeros(P, dtype=np.int64)
    for pos in itertools.product(*(range(p) for p in P)):
        counts[pos] = sum(all(b[i, 0] <= pos[i] <= b[i, 1] for i in range(len(P))) for b in boxes)
    return counts


def geometries(d: int, largest: int):
    for P in itertools.product(range(1, largest + 1), repeat=d):
        for w in itertools.product(*(range(1, p + 1) for p in P)):
            yield P, w


def exhaustive(limit: int = 5) -> int:
    checked = 0
    for d, largest in ((1, 4 * limit), (2, limit), (3, 3)):
        for P, w in geometries(d, largest):
            most = int(np.prod(w))
            for k in sorted({k for k in (1, 2, most // 2 or 1, most) if k <= most}):
                boxes = cheapest_copies(P, w, k)
                counts = coverage_bruteforce(boxes, P)
                assert counts.min() >= k, (P, w, k)
                assert len({b.tobytes() for b in boxes}) == len(boxes), (P, w, k)
                closed = int(_minimum_of_classes([_axis_classes(p, wi) for p, wi in zip(P, w)], k))
                assert len(boxes) == closed, (P, w, k, len(boxes), closed)
                bound = k * int(np.prod([-(-p // wi) for p, wi in zip(P, w)]))
                assert len(boxes) >= bound
                checked += 1
            points = list(itertools.product(*(range(0, p, wi) for p, wi in zip(P, w))))
            for b in cheapest_copies(P, w, 1):  # T2: no box holds two independent points
                held = [pt for pt in points if all(b[i, 0] <= pt[i] <= b[i, 1] for i in range(d))]
                assert len(held) <= 1, (P, w, b)
    return checked


def milp_agreement(cases=((5,), (7,), (3, 3, 3), (4, 3, 2))) -> int:
    """The closed form against scipy's integer program on a few 1-D and 3-D geometries (test-only)."""
    from .t16_exact_minimum import milp_minimum
    checked = 0
    for P in cases:
        for w in itertools.product(*(range(1, min(p, 3) + 1) for p in P)):
            for k in range(1, int(np.prod(w)) + 1):
                closed = int(_minimum_of_classes([_axis_classes(p, wi) for p, wi in zip(P, w)], k))
                assert closed == milp_minimum(P, w, k), (P, w, k)
                checked += 1
    return checked


if __name__ == "__main__":
    print(f"{THEOREM}: {exhaustive()} constructions, {milp_agreement()} integer programs agree")
