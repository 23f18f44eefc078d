"""T17: the geometry theorems and the certificates in 1, 2 and 3 dimensions, on an
independent d-dimensional reference.

A patch of ``p_1 x ... x p_d`` in a ``L_1 x ... x L_d`` signal has ``P_i = L_i - p_i + 1`` positions per
axis; a box mask covers a position iff it holds the patch (T1 per axis), so it covers a product of
per-axis windows of ``w_i = m_i - p_i + 1`` positions. Restated and checked here for d = 1, 2, 3:

* T2 in d dimensions: ``n >= k prod_i ceil(P_i / w_i)``: the positions ``(j_1 w_1, ..., j_d w_d)``
  differ by ``>= w_i`` on some axis, so no box covers two of them (checked by painting).
* T4/T16 in d dimensions: the ``k`` cheapest shifted single covers (a copy is the product of
  per-axis shifted covers, ``prod_i ceil((P_i + o_i) / w_i)`` boxes) are k-fold and distinct, and
  their count is the core's closed form ``minimum_of_classes`` for the same axes (T16, proven for
  every d), which also equals scipy's integer program on small 1-D and 3-D cases.
* The core's own d-dimensional constructions (``make_maskset`` on 1-D and 3-D threats, every strategy)
  are k-fold and distinct when painted pixel by pixel (:func:`certmask_core.reference.covers`), have the
  reference's count, and the core's coverage counts equal the painted ones (:func:`core_constructions`).
* The certificates (T6-T8, T11-T13) are statements about the family of covering sets only, so they
  hold in any number of axes; :func:`certificates` re-checks them exhaustively on 1-D and 3-D
  constructions: every clean table of a 3-label alphabet, every attack the geometry allows, no
  certified table broken (and the one-round certificates exact: no robust table missed).
"""
import itertools

import numpy as np

from certmask_core import PatchThreat, coverage_counts, lower_bound, make_maskset
from certmask_core.constructions import axis_classes, minimum_of_classes, shifted_cover_windows
from certmask_core.reference import box_coverage_counts_bruteforce, covers, milp_minimum

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


def geometries(d: int, largest: int):
    for P in itertools.product(range(1, largest + 1), repeat=d):
        for w in itertools.product(*(range(1, p + 1) for p in P)):
            yield P, w


def exhaustive(limit: int = 5) -> int:
    """The reference constructions, the core's 1-D/3-D sets and the certificates; returns the cases."""
    return reference_constructions(limit) + core_constructions(3) + certificates()


def reference_constructions(limit: int = 5) -> int:
    checked = 0
    for d, largest in ((1, 4 * limit), (2, limit), (3, 3)):
        for P, w in geometries(d, largest):
            most = int(np.prod(w))
            for k in sorted({k for k in (1, 2, most // 2 or 1, most) if k <= most}):
                boxes = cheapest_copies(P, w, k)
                counts = box_coverage_counts_bruteforce(boxes[:, :, 0], boxes[:, :, 1], P)
                assert counts.min() >= k, (P, w, k)
                assert len({b.tobytes() for b in boxes}) == len(boxes), (P, w, k)
                closed = int(minimum_of_classes([axis_classes(p, wi) for p, wi in zip(P, w)], k))
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
    checked = 0
    for P in cases:
        for w in itertools.product(*(range(1, min(p, 3) + 1) for p in P)):
            for k in range(1, int(np.prod(w)) + 1):
                closed = int(minimum_of_classes([axis_classes(p, wi) for p, wi in zip(P, w)], k))
                assert closed == milp_minimum(P, w, k), (P, w, k)
                checked += 1
    return checked


def small_nd_threats(limit: int = 4):
    """1-D signals up to ``4 limit`` long and 3-D inputs up to ``limit`` per axis, small patches."""
    for L in range(1, 4 * limit + 1):
        for p in range(1, min(L, 3) + 1):
            yield PatchThreat((L,), (p,))
    for image in itertools.product(range(1, limit + 1), repeat=3):
        for patch in itertools.product(*(range(1, min(n, 2) + 1) for n in image)):
            yield PatchThreat(image, patch)


def core_constructions(limit: int = 4) -> int:
    """The core's 1-D and 3-D sets against the painted reference; returns the sets checked."""
    checked = 0
    for threat in small_nd_threats(limit):
        P = threat.num_positions
        for n in {1, 2, 3}:
            per_axis = tuple(min(n, Pi) for Pi in P)
            w = tuple(-(-Pi // ni) for Pi, ni in zip(P, per_axis))
            for strategy, k in [("patchcleanser", 1)] + [(s, k) for s in ("replicated", "offset")
                                                         for k in (1, 2, 3) if k <= np.prod(w)]:
                ms = make_maskset(threat, k, strategy, masks_per_axis=per_axis)
                painted = covers(ms, threat.patch_size).sum(-1)
                assert painted.min() >= k and ms.is_distinct(), (threat, strategy, k)
                assert (coverage_counts(ms, threat) == painted).all(), (threat, strategy, k)
                expected = (lower_bound(threat, ms.spec.mask_size) if strategy == "patchcleanser"
                            else len(cheapest_copies(P, w, k)))
                assert len(ms) == expected, (threat, strategy, k, len(ms), expected)
                checked += 1
    return checked


def nd_geometries():
    """Small 1-D and 3-D constructions for the exhaustive certificate checks (name, set, patch)."""
    cases = [((6,), (2,), "patchcleanser", 1, 3), ((7,), (2,), "replicated", 2, 2),
             ((7,), (2,), "offset", 2, 2), ((8,), (3,), "offset", 3, 1),
             ((3, 3, 3), (1, 2, 2), "patchcleanser", 1, (2, 1, 1)),
             ((2, 3, 3), (1, 2, 2), "replicated", 2, (1, 1, 2)),
             ((3, 2, 4), (2, 1, 2), "offset", 2, (1, 1, 2)),
             ((4, 2, 2), (2, 2, 1), "replicated", 3, (1, 1, 1)),
             ((2, 4, 3), (1, 2, 2), "patchcleanser", 1, (2, 2, 1)),
             ((3, 2, 2), (1, 2, 2), "patchcleanser", 1, (3, 1, 1)),
             ((2, 3, 2), (1, 2, 2), "replicated", 2, (1, 1, 1)),
             ((3, 2, 2), (2, 1, 2), "offset", 2, (1, 1, 1)),
             ((4, 2, 2), (2, 2, 2), "replicated", 2, (1, 1, 1))]
    for image, patch, strategy, k, per_axis in cases:
        ms = make_maskset(PatchThreat(image, patch), k, strategy, masks_per_axis=per_axis)
        name = f"{'x'.join(map(str, image))} p{'x'.join(map(str, patch))} {strategy} k={k} n={len(ms)}"
        yield name, ms, patch


def certificates(one_round_max: int = 6, recovery_max: int = 3) -> int:
    """Every sound certificate, exhaustively, on :func:`nd_geometries`; returns the tables checked."""
    from .exact import ONE_ROUND, one_round_exact, recovery_exact
    checked = 0
    for name, ms, patch in nd_geometries():
        results = []
        if len(ms) <= one_round_max:
            results += [one_round_exact(ms, patch, mode, geometry=name) for mode in ONE_ROUND]
        if len(ms) <= recovery_max:
            results += [recovery_exact(ms, patch, c, geometry=name) for c in ("hitting_set", "all_pairs")]
        for r in results:
            assert r.unsound == 0, (name, r.certificate, r.counterexample)
            assert r.mode == "recovery" or r.over_conservative == 0, (name, r.certificate, r.example_missed)
            checked += r.tables
    return checked


if __name__ == "__main__":  # the larger run: 4 per axis and recovery on 4-mask sets (about 5 minutes)
    print(f"{THEOREM}: {reference_constructions()} reference constructions, {milp_agreement()} integer "
          f"programs "
          f"agree, {core_constructions(4)} core 1-D/3-D sets equal the painted reference, "
          f"{certificates(recovery_max=4)} clean tables of 1-D/3-D sets: no certified table broken")
