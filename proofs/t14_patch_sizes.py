"""T14 (unknown patch size): coverage and certificates are monotone in the patch size.

Sizes are ordered on both sides: ``q <= p`` means ``qh <= ph`` and ``qw <= pw``.

(a) Coverage. For every mask set and ``q <= p``, each ``q`` position ``l'`` lies inside the ``p`` box
at some ``p`` position ``l`` (take ``l = (min(a', H - ph), min(b', W - pw))``), and then
``S_p(l) ⊆ S_q(l')``: a mask holding the ``p`` box holds every box inside it (T1 per axis). Hence
the fewest masks covering a position can only grow as the patch shrinks, and every minimal covering
set for ``q`` (it is some ``S_q(l')``) contains ``S_p(l)``, which contains a minimal one for ``p``.

(b) Certificates. An attack by a patch whose pixels fit in a ``ph x pw`` box (a ``q x q`` square,
an L-shape, any pixel set) is also an attack by the ``ph x pw`` rectangle that holds them: its
content copies the clean pixels it does not need, and the attacked image is the same. So every
defence keeps, against the smaller threat, each guarantee it has against ``p``; a table certified
at ``p`` (the defence configured for ``p``) is robust against every ``q <= p`` and every shape in a
``p`` box.

(c) A certificate is a promise about one deployed defence. Detection (unanimity) and recovery
(PatchCleanser's double masking) never look at the size, so ``certify_sizes`` gives each size its own
certificate and closes the table under inclusion by (b). Plurality and covering consensus decide
with the minimal sets of the size ``D`` they are deployed for: size ``q`` is certified when the ``D``
certificate holds and every minimal set of ``q`` contains one of ``D`` (so under a ``q`` patch a
deployed minimal set stays clean, all that T12 and T13 use); by (a) that holds for every ``q <= D``,
and sometimes for larger ``q``. The checker confirms every column against the defence it promises,
deployed at every covered size; :func:`closure_examples` keeps the two sets on which the first
version (own certificates closed under inclusion for every mode) claimed what no deployment earns.

The exhaustive part checks (a) with independent pixel arithmetic (summed-area tables over painted
masks) on every image up to 5 x 5 (``big``: 7 x 7), for package constructions and seeded random sets,
every pair of sizes, against :mod:`certmask_core.reference`'s covering and minimal sets and the core's
``coverage_extremes``; and (b) with the every-clean-table checker of :mod:`proofs.exact`: every
one-mask row over 3 labels (and, for recovery on sets of at most 3 masks, every pair table), the
defence configured for each covered size ``p``, attacked at every covered ``q <= p`` (rectangles, and
every non-empty pixel subset of a ``p`` box of at most 4 pixels).
"""
from __future__ import annotations

import itertools
import sys

import numpy as np
import sympy as sp

from certmask_core import CertMaskError, MaskSet, PatchThreat, certify, certify_sizes, defend, make_maskset
from certmask_core.certification import ALERT, GUARANTEES
from certmask_core.coverage import coverage_extremes
from certmask_core.reference import (
    box_containment,
    covering_sets_reference,
    dense_pixels,
    minimal_sets_reference,
)

from .common import make_random_masks, sizes_within, within
from .exact import (
    all_rows,
    answer_from,
    attack_classes,
    box_attacks,
    clean_tables,
    geometries,
    guarantee_ok,
    one_round_robust,
    recovery_certified,
    recovery_robustness,
    row_keys,
    shape_attacks,
)

THEOREM = "T14"
STATEMENT = "q <= p: S_p ⊆ S_q, coverage monotone; certified at p => robust at q; one deployment per column"

ONE_ROUND = ("detection", "plurality", "covering_consensus")


def symbolic() -> None:
    y, m, a, p, a2, q, H = sp.symbols("y m a p a2 q H", integer=True)
    d1, d2, e1, e2, s, t, v = sp.symbols("d1 d2 e1 e2 s t v", integer=True, nonnegative=True)
    u = sp.symbols("u", integer=True, positive=True)
    # Nested intervals. [y, y+m) holds [a, a+p): a = y + d1, y + m = a + p + d2 (d1, d2 >= 0).
    # [a, a+p) holds [a2, a2+q): a2 = a + e1, a + p = a2 + q + e2 (e1, e2 >= 0). Then [y, y+m) holds
    # [a2, a2+q): both of its slacks are sums of the given ones.
    sub = {a2: y + d1 + e1, m: p + d1 + d2, q: p - e1 - e2}
    low, high = sp.expand((a2 - y).subs(sub)), sp.expand(((y + m) - (a2 + q)).subs(sub))
    assert (low, high) == (d1 + e1, d2 + e2), (low, high)
    assert low.is_nonnegative and high.is_nonnegative
    # A p box inside [0, H) holding the q patch at a2 (0 <= a2 <= H - q, q <= p <= H): a = min(a2, H - p).
    # Slacks to show >= 0: (H - p) - a, a2 - a, (a + p) - (a2 + q); and a >= 0.
    def slacks(case):
        a_val = sp.Min(a2, H - p).subs(case)
        return a_val, [sp.expand(e.subs(case)) for e in ((H - p) - a_val, a2 - a_val, a_val + p - a2 - q)]
    # case a2 <= H - p (a2 = H - p - t), p = q + s: a = a2 (>= 0 by hypothesis)
    a_val, got = slacks({a2: H - q - s - t, p: q + s})
    assert sp.simplify(a_val - (H - q - s - t)) == 0 and got == [t, 0, s], (a_val, got)
    # case a2 > H - p (a2 = H - p + u, u >= 1); a2 <= H - q gives p = q + u + v: a = H - p (>= 0, p <= H)
    a_val, got = slacks({a2: H - q - v, p: q + u + v})
    assert sp.simplify(a_val - (H - q - u - v)) == 0 and got == [0, u, v], (a_val, got)
    # in 2-D a box lies in a rectangle iff it does on both axes (T1), so both facts hold per axis


# ----------------------------------------------------------------------------------------------- (a)

def _masksets(image, rng, random_sets: int = 3):
    """Package constructions (every strategy, k <= 3, a few planned patches) and seeded random sets
    with duplicated, clipped and useless masks (no coverage required)."""
    H, W = image
    found = []
    planned = {(s, s) for s in range(1, min(H, W, 3) + 1)} | {(1, min(W, 2)), (min(H, 2), 1)}
    for patch in sorted(planned):
        for strategy, k in (("patchcleanser", 1), ("replicated", 2), ("offset", 2), ("replicated", 3),
                            ("offset", 3)):
            for per_axis in (1, 2):
                try:
                    ms = make_maskset(PatchThreat(image, patch), k, strategy, masks_per_axis=per_axis)
                except CertMaskError:
                    continue
                if all(ms != other for _, other in found):
                    found.append((f"{strategy} k={k} p{patch[0]}x{patch[1]} per_axis={per_axis}", ms))
    for r in range(random_sets):
        ms = make_random_masks(rng, image, 5)
        found.append((f"random #{r} n={len(ms)}", ms))
    return found


def coverage_monotone(limit: int = 6, seed: int = 14) -> int:
    """T14(a) on every image up to ``limit x limit``; returns the (set, q, p) triples checked."""
    rng = np.random.default_rng(seed)
    checked = 0
    for image in itertools.product(range(1, limit + 1), repeat=2):
        H, W = image
        for name, ms in _masksets(image, rng):
            n = len(ms)
            dense = dense_pixels(ms)
            assert (dense == ms.dense()).all(), (image, name)
            sizes = sizes_within(image)
            cover = {s: box_containment(dense, s) for s in sizes}
            sets = {s: {frozenset(np.flatnonzero(r).tolist()) for r in cover[s].reshape(-1, n)}
                    for s in sizes}
            minimal = {s: minimal_sets_reference(sets[s]) for s in sizes}
            low = {s: int(cover[s].sum(-1).min()) for s in sizes}
            for s in sizes:
                assert low[s] == coverage_extremes(ms, s)[0], (image, name, s, "core min coverage")
                if H * W <= 16:  # the loop-based twin of certmask_core/reference.py, on the smaller images
                    assert sets[s] == covering_sets_reference(ms, s), (image, name, s)
            for p, q in itertools.product(sizes, sizes):
                if not within(q, p):
                    continue
                (ph, pw), (qh, qw) = p, q
                ra, rb = np.arange(H - qh + 1), np.arange(W - qw + 1)
                A, B = np.minimum(ra, H - ph), np.minimum(rb, W - pw)  # the p box holding each q patch
                assert ((A >= 0) & (A <= ra) & (ra + qh <= A + ph)).all(), (image, p, q)
                assert ((B >= 0) & (B <= rb) & (rb + qw <= B + pw)).all(), (image, p, q)
                outside = cover[p][A][:, B] & ~cover[q]
                assert not outside.any(), (image, name, p, q, "S_p(l) not inside S_q(l')",
                                           np.argwhere(outside)[0].tolist())
                assert low[q] >= low[p], (image, name, p, q, low)
                for N in minimal[q]:
                    assert any(M <= N for M in minimal[p]), (image, name, p, q, sorted(N))
                checked += 1
    return checked


# ----------------------------------------------------------------------------------------------- (b)

def _covered(ms) -> list[tuple[int, int]]:
    dense = dense_pixels(ms)
    return [s for s in sizes_within(ms.image_size) if box_containment(dense, s).any(-1).all()]


def _shapes(ms, t, max_area: int):
    return attack_classes(ms, shape_attacks(ms.image_size, t)) if t[0] * t[1] <= max_area else None


def _fail(what, name, mode, y, row, **extra):
    raise AssertionError({"unsound": what, "geometry": name, "mode": mode, "true_label": int(y),
                          "clean": np.asarray(row).tolist(), **extra})


def _wrong_label(rows, symbols, outputs, y, mode, classes) -> np.ndarray:
    """Per clean row: the defence (``outputs`` on every row) breaks its guarantee on the clean row or
    under some attack of ``classes``."""
    bad_output = ~guarantee_ok(outputs, y, GUARANTEES[mode])
    wrong = bad_output.copy()
    for cover, *_ in classes:
        keys = row_keys(rows, np.flatnonzero(cover), symbols)
        bad = np.zeros(keys.max() + 1, dtype=bool)
        np.logical_or.at(bad, keys, bad_output)
        wrong |= bad[keys]
    return wrong


def one_round_sizes(name, ms, alphabet: int = 3, shapes_area: int = 4, stats=None) -> int:
    """(b) and (c) for detection, plurality and covering consensus on one mask set; returns tables
    checked.

    Each table certified at ``p`` must be robust at every covered ``q <= p`` (and every shape in a
    ``p`` box) for the defence configured at ``p``. Every certify_sizes column must be robust for the
    defence it promises: detection's (size-free) at that size; plurality's and covering consensus's
    as deployed for each covered size, including columns larger than the deployment (T14(c)).
    ``stats[mode]`` counts certified entries, those larger than the deployment, and robust entries
    the certificate leaves out."""
    n = len(ms)
    symbols = list(range(alphabet))
    rows = all_rows(n, symbols)
    covered = _covered(ms)
    classes = {s: attack_classes(ms, box_attacks(ms.image_size, s)) for s in covered}
    shapes = {t: _shapes(ms, t, shapes_area) for t in covered}
    every = sizes_within(ms.image_size)
    checked = 0
    for mode in ONE_ROUND:
        outputs = {t: defend(rows, ms, mode, patch=t, k=1).output for t in covered}
        tally = (stats if stats is not None else {}).setdefault(
            mode, {"certified": 0, "larger than deployed": 0, "missed": 0})
        for y in range(alphabet):
            labels = np.full(len(rows), y)
            robust = {(t, s): one_round_robust(ms, t, mode, rows, symbols, y, classes[s], outputs=outputs[t])
                      for t in covered for s in covered if within(s, t)}
            for t in covered:
                certified = certify(rows, labels, ms, mode, patch=t, k=1).certified
                for s in covered:
                    if within(s, t) and (bad := certified & ~robust[t, s]).any():
                        _fail("certified at p, attacked at q", name, mode, y, rows[bad][0], p=t, q=s)
                    checked += len(rows) if within(s, t) else 0
                if shapes[t] is not None:
                    inside = one_round_robust(ms, t, mode, rows, symbols, y, shapes[t], outputs=outputs[t])
                    if (bad := certified & ~inside).any():
                        _fail("certified at p, attacked by a shape in a p box", name, mode, y, rows[bad][0],
                              p=t)
                    checked += len(rows)
            if mode == "detection":  # size-free: one defence, each column its own certificate
                report = certify_sizes(rows, labels, ms, every, mode)
                for column, s in enumerate(report.sizes):
                    col = report.certified[:, column]
                    if s not in covered:
                        assert not col.any(), (name, mode, s, "certified an uncovered size")
                    elif (bad := col & ~robust[s, s]).any():
                        _fail("certify_sizes column", name, mode, y, rows[bad][0], size=s)
                    tally["certified"] += int(col.sum())
                continue
            for deployed in covered:  # size-dependent: every column is a promise about this deployment
                report = certify_sizes(rows, labels, ms, every, mode, patch=deployed)
                for column, s in enumerate(report.sizes):
                    col = report.certified[:, column]
                    if s not in covered:
                        assert not col.any(), (name, mode, s, "certified an uncovered size")
                        continue
                    if (deployed, s) not in robust:
                        robust[deployed, s] = one_round_robust(ms, deployed, mode, rows, symbols, y,
                                                                classes[s], outputs=outputs[deployed])
                    if (bad := col & ~robust[deployed, s]).any():
                        _fail("certify_sizes column, defence deployed for another size", name, mode, y,
                              rows[bad][0], deployed=deployed, size=s)
                    tally["certified"] += int(col.sum())
                    tally["larger than deployed"] += int(col.sum()) if not within(s, deployed) else 0
                    tally["missed"] += int((robust[deployed, s] & ~col).sum())
            checked += len(rows)
    return checked


def recovery_sizes(name, ms, alphabet: int = 3, shapes_area: int = 4) -> int:
    """(b) for recovery (hitting set and all pairs) on a set of at most 3 masks: every clean table."""
    covered = _covered(ms)
    index, first, pairs = clean_tables(len(ms), alphabet)
    answer = answer_from(pairs, index)
    clean = {t: defend(first, ms, "recovery", patch=t, k=1, pair_predictor=answer).output for t in covered}
    assert all((clean[t] == clean[covered[0]]).all() for t in covered), (name, "recovery depends on the size")
    planned = covered[0]  # the defence does not depend on the size it is configured for (checked above)
    cache = {}  # per attack class: recovery's outcome does not depend on the configured size
    robust = {s: recovery_robustness(ms, planned, attack_classes(ms, box_attacks(ms.image_size, s)),
                                     alphabet, k=1, cache=cache) for s in covered}
    shapes = {t: _shapes(ms, t, shapes_area) for t in covered}
    shape_robust = {t: recovery_robustness(ms, planned, shapes[t], alphabet, k=1, cache=cache)
                    for t in covered if shapes[t] is not None}
    checked = 0
    for certificate in ("hitting_set", "all_pairs"):
        for y in range(alphabet):
            for t in covered:
                certified = recovery_certified(ms, t, certificate, y, alphabet, k=1)
                for s in covered:
                    if within(s, t) and (bad := certified & ~robust[s][y]).any():
                        t_ = int(np.flatnonzero(bad)[0])
                        _fail("certified at p, attacked at q", name, certificate, y, first[t_], p=t, q=s,
                              pairs=pairs[t_].tolist())
                    checked += len(first) if within(s, t) else 0
                if t in shape_robust and (bad := certified & ~shape_robust[t][y]).any():
                    _fail("certified at p, attacked by a shape", name, certificate, y, first[bad][0], p=t)
            report = certify_sizes(first, np.full(len(first), y), ms, sizes_within(ms.image_size), "recovery",
                                   pair_predictor=answer, recovery_certificate=certificate)
            for column, s in enumerate(report.sizes):
                col = report.certified[:, column]
                ok = robust[s][y] if s in covered else np.zeros_like(col)
                if (bad := col & ~ok).any():
                    _fail("certify_sizes column", name, certificate, y, first[bad][0], size=s)
            checked += len(first)
    return checked


RECOVERY_CI = ("1x6 p1x2 patchcleanser k=1 n=2", "1x4 p1x2 replicated k=2 n=3")
"""The recovery geometries of the CI run (0.3 and 7 s); ``big`` adds the others of at most
``recovery_max`` masks (4-6 s each)."""


def certificates_monotone(one_round_max: int = 6, recovery_max: int = 3, stats=None,
                          big: bool = False) -> int:
    checked = 0
    for name, ms, _ in geometries(max(one_round_max, recovery_max)):
        if len(ms) <= one_round_max:
            checked += one_round_sizes(name, ms, stats=stats)
        if len(ms) <= recovery_max and (big or name in RECOVERY_CI):
            checked += recovery_sizes(name, ms)
    return checked


def exhaustive(limit: int = 5, one_round_max: int = 6, recovery_max: int = 3, big: bool = False) -> int:
    return coverage_monotone(limit) + certificates_monotone(one_round_max, recovery_max, big=big)


def closure_examples() -> dict:
    """The two sets on which the first certify_sizes (every column by its own certificate, closed
    under inclusion, for every mode) claimed what no deployed defence delivers, and what it says now.

    ``plurality``: masks C = [0, 4), A1 = A2 = [0, 2), B1 = B2 = [2, 4) on a 1 x 4 strip; for 1 x 2
    the only minimal covering set is {C}, for 1 x 1 they are {C, A1, A2} and {C, B1, B2}. Image 0
    (only C right) passes the 1 x 2 certificate, image 1 (only C wrong) the 1 x 1 one; the defence
    deployed at 1 x 1 outputs the wrong label on clean image 0, deployed at 1 x 2 on clean image 1, so
    no deployment earns "both certified at 1 x 1". Now each column is a promise about one deployment.

    ``covering_consensus``: masks [0, 4), [3, 7), [0, 3), [2, 6), [5, 7) on a 1 x 7 strip, only the
    last wrong: the 1 x 3 certificate holds (its minimal sets {0}, {1}, {3} are right) but the defence
    deployed at 1 x 1 is broken by a one-pixel patch at column 6 (masks 1 and 4 keep their votes, 0, 2
    and 3 turn to label 1). Now the 1 x 1 column follows the deployment (1 x 3: certified, and robust;
    1 x 1: not certified)."""
    out = {}
    ms = MaskSet((1, 4), [[0, 0], [0, 0], [0, 0], [0, 2], [0, 2]], [[1, 4], [1, 2], [1, 2], [1, 2], [1, 2]])
    rows = np.array([[0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    sizes = [(1, 1), (1, 2)]
    out["plurality"] = {str(d): {
        "certified": certify_sizes(rows, [0, 0], ms, sizes, "plurality", patch=d).certified.tolist(),
        "clean outputs": defend(rows, ms, "plurality", patch=d).output.tolist()} for d in sizes}
    assert out["plurality"]["(1, 1)"]["certified"] == [[False, False], [True, False]]
    assert out["plurality"]["(1, 2)"]["certified"] == [[True, True], [False, False]]
    ms = MaskSet((1, 7), [[0, 0], [0, 3], [0, 0], [0, 2], [0, 5]], [[1, 4], [1, 4], [1, 3], [1, 4], [1, 2]])
    clean, attacked, sizes = np.array([[0, 0, 0, 0, 1]]), np.array([[1, 0, 1, 1, 1]]), [(1, 1), (1, 3)]
    assert box_containment(dense_pixels(ms), (1, 1))[0, 6].tolist() == [False, True, False, False, True]
    out["covering_consensus"] = {str(d): {
        "certified": certify_sizes(clean, [0], ms, sizes, "covering_consensus", patch=d).certified.tolist(),
        "attacked at 1x1": defend(attacked, ms, "covering_consensus", patch=d).output.tolist()}
        for d in sizes}
    assert out["covering_consensus"]["(1, 1)"]["certified"] == [[False, False]]
    assert out["covering_consensus"]["(1, 3)"]["certified"] == [[True, True]]
    assert out["covering_consensus"]["(1, 3)"]["attacked at 1x1"] == [ALERT]  # deployed at 1x3: y or ALERT
    return out


def main(argv) -> int:
    big = argv[:1] == ["big"]
    symbolic()
    import time
    start = time.perf_counter()
    cases = coverage_monotone(7 if big else 5)
    print(f"T14(a) coverage: {cases} (set, q, p) triples [{time.perf_counter() - start:.1f} s]")
    stats = {}
    start = time.perf_counter()
    cases = certificates_monotone(6, 3, stats, big)
    print(f"T14(b) certificates: {cases} table checks [{time.perf_counter() - start:.1f} s]")
    for mode, tally in stats.items():
        print(f"  certify_sizes {mode:19s} certified entries {tally['certified']:6d}, of them larger than "
              f"the deployed size {tally.get('larger than deployed', 0):5d}; robust but not certified "
              f"{tally.get('missed', 0):5d}")
    for mode, example in closure_examples().items():
        print(f"closure example ({mode}, true label 0): {example}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
