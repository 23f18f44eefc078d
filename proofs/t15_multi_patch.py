"""T15 (several patches, mask groups): every certificate keeps its guarantee against ``m`` patches when
masks become groups and positions become m-tuples.

Threat: ``m`` patches of at most ``ph x pw`` each, anywhere (they may overlap). A *group* is a list
of masks hidden together; its prediction sees the image with the union of its masks hidden. The
package says a group *covers* the m-tuple of positions ``(l_1, ..., l_m)`` when each patch lies in
one mask of the group, and ``S(l_1, ..., l_m)`` is the set of covering groups
(:mod:`certmask_core.multipatch`).

Proof. Under the patches at ``(l_1, ..., l_m)``, a covering group hides every patch pixel, so its
prediction (and that of any pair of groups holding it: the pair hides more) equals the clean one.
The proofs of T6 (detection), T12 (plurality), T13 (covering consensus) and T11/T8 (recovery: hitting
set, all pairs; the second round asks pairs of groups) use nothing else about ``S(l)`` than "a
covering member's prediction, and every pair holding it, is the clean one", and nothing about the
positions than that each attack has some ``S(l)``. Replacing masks by groups and ``l`` by the tuple
changes neither. Physically more is fixed: a group whose union hides the patches without any one
mask holding a whole patch, and a pair of groups whose union does; the package's covering sets
leave those out, which only makes the certificates more demanding (conservative, never unsound).
(c) ``all_pairs_groups`` of a 1-fold set of at least two masks covers every pair of positions: with
``i`` covering ``l_1`` and ``j`` covering ``l_2``, the group ``{i, j}`` covers the pair (any group
holding ``i`` when ``i = j``).

The exhaustive part checks (1) the verifier: on 1-D strips and 2-D images up to 5 x 5 with patches
of side 1 and 2, for the set itself, all pairs, all triples and seeded random groups (repeated
indices included), ``m = 1, 2, 3``: the fewest covering groups, the argmin tuple, the all-pairs closed
form and the minimal covering sets of ``certmask_core.multipatch`` against counts from painted pixels
and :func:`certmask_core.reference.minimal_sets_reference`; (2) soundness against the *physical* threat:
every clean row over 3 labels (every pair table too, for recovery on families of 3 groups), every
m-tuple of positions, a member fixed iff its hidden pixels contain every patch pixel and a pair iff
their union does; no certificate of the package (``certify(..., patches=m)``) is attacked
successfully; (3) the same with ``NO_VOTE`` in the attacker's alphabet (T10).
"""
from __future__ import annotations

import itertools
import sys
import time

import numpy as np

from certmask_core import (
    CertMaskError,
    MaskGroups,
    MaskSet,
    PatchThreat,
    all_pairs_groups,
    certify,
    make_maskset,
)
from certmask_core.coverage import coverage_extremes, unpack
from certmask_core.multipatch import all_pairs_coverage_min, tuple_coverage_extremes, tuple_minimal_sets
from certmask_core.reference import (
    box_containment,
    dense_pixels,
    minimal_sets_reference,
    tuple_coverage_bruteforce,
)

from .common import make_random_masks
from .exact import (
    ExactResult,
    attack_classes,
    clean_tables,
    geometries,
    one_round_exact,
    recovery_certified,
    recovery_outcomes,
    recovery_robustness,
    tally,
    tuple_attacks,
)

THEOREM = "T15"
STATEMENT = "m patches, mask groups: T6, T8, T11-T13 hold with S(l_1..l_m) = the groups covering the tuple"
symbolic = None

ONE_ROUND = ("detection", "plurality", "covering_consensus")


# -------------------------------------------------------------------------------------- (1) verifier

def members_of(family) -> list[list[int]]:
    return family.members.tolist() if isinstance(family, MaskGroups) else [[i] for i in range(len(family))]


def package_sets(family, patch, patches: int):
    """``(tuples (T, m) of flat positions, (T, n) bool)``: group ``g`` covers the tuple when each patch
    lies in one of its masks, from painted pixels (the package's definition, computed independently)."""
    base = getattr(family, "base", family)
    holds_mask = box_containment(dense_pixels(base), patch)  # (P_h, P_w, len(base))
    holds_mask = holds_mask.reshape(-1, len(base))
    holds = np.stack([holds_mask[:, row].any(1) for row in members_of(family)], axis=1)  # (P, n)
    tuples = np.array(list(itertools.combinations_with_replacement(range(len(holds)), patches)), np.int64)
    sets = np.logical_and.reduce([holds[tuples[:, t]] for t in range(patches)])
    return tuples, sets, holds


def families(base: MaskSet, rng, random_groups: int = 2):
    """The set itself, all pairs, all triples and seeded random groups (repeated indices allowed)."""
    n = len(base)
    out = [("singles", base)]
    if n >= 2:
        out.append(("all pairs", all_pairs_groups(base)))
    if n >= 3:
        out.append(("all triples", MaskGroups(base, list(itertools.combinations(range(n), 3)))))
    for r in range(random_groups):
        size, width = int(rng.integers(1, 7)), int(rng.integers(1, 4))
        out.append((f"random {size}x{width} #{r}", MaskGroups(base, rng.integers(0, n, (size, width)))))
    return out


def verifier_bases(rng):
    """1-D strips 1 x 7 with a 1 x 2 patch, 2-D images up to 5 x 5 with square patches of side 1, 2."""
    strip = PatchThreat((1, 7), (1, 2))
    for strategy, k, per_axis in (("patchcleanser", 1, (1, 2)), ("patchcleanser", 1, (1, 3)),
                                  ("replicated", 2, (1, 2)), ("offset", 2, (1, 2))):
        yield f"1x7 p1x2 {strategy} k={k}", make_maskset(strip, k, strategy, masks_per_axis=per_axis), (1, 2)
    for r in range(3):
        yield f"1x7 p1x2 random #{r}", make_random_masks(rng, (1, 7), 5), (1, 2)
    for H, W in itertools.product(range(2, 6), repeat=2):
        for side in (1, 2):
            if side > min(H, W):
                continue
            patch = (side, side)
            grid = make_maskset(PatchThreat((H, W), patch), 1, "patchcleanser", masks_per_axis=2)
            yield f"{H}x{W} p{side} patchcleanser", grid, patch
            for r in range(2):
                yield f"{H}x{W} p{side} random #{r}", make_random_masks(rng, (H, W), 5), patch


def verifier(seed: int = 15, brute_limit: int = 1024) -> int:
    """(1): returns the (base, family, m) cases checked."""
    rng = np.random.default_rng(seed)
    checked = 0
    for name, base, patch in verifier_bases(rng):
        P_w = base.image_size[1] - patch[1] + 1
        single_low = int(box_containment(dense_pixels(base), patch).sum(-1).min())
        assert single_low == coverage_extremes(base, patch)[0], (name, "single coverage")
        for fam_name, family in families(base, rng):
            assert (dense_pixels(family) == family.dense()).all(), (name, fam_name, "hidden pixels")
            for m in (1, 2, 3):
                tuples, sets, holds = package_sets(family, patch, m)
                counts = sets.sum(1)
                low = int(counts.min())
                where = f"{name} / {fam_name} / m={m}"
                got, argmin = tuple_coverage_extremes(family, patch, m)
                assert got == low, (where, "min", got, low)
                flat = [a * P_w + b for a, b in argmin]
                assert int(np.logical_and.reduce(holds[flat]).sum()) == low, (where, "argmin", argmin)
                if len(holds) ** m <= brute_limit:
                    brute = tuple_coverage_bruteforce(family, patch, m)
                    for perm in set(itertools.permutations(range(m))):  # every order of each tuple
                        assert (brute[tuple(tuples[:, perm].T)] == counts).all(), (where, "bruteforce")
                mine = minimal_sets_reference({frozenset(np.flatnonzero(r).tolist())
                                               for r in np.unique(sets, axis=0)})
                core = {frozenset(np.flatnonzero(r).tolist())
                        for r in unpack(tuple_minimal_sets(family, patch, m), len(family))}
                assert core == mine, (where, "minimal sets", sorted(map(sorted, core ^ mine)))
                if fam_name == "all pairs" and m == 2:
                    assert all_pairs_coverage_min(base, patch) == low, (where, "all pairs closed form")
                    if single_low >= 1:
                        assert low >= 1, (where, "T15(c): all pairs of a 1-fold set miss a pair")
                checked += 1
    return checked


# ------------------------------------------------------------------------------------- (2) soundness

def soundness_families(max_members: int = 6, seed: int = 15):
    """``(name, family, patch, m)`` that the package accepts (every m-tuple covered by a group, as the
    package counts): all pairs and all triples of the small geometries, the set itself, seeded random
    groups; and ``m`` from 1 to 3."""
    rng = np.random.default_rng(seed)
    for name, base, patch in geometries(5):
        fams = [("singles", base)] if len(base) <= max_members else []
        n = len(base)
        if 2 <= n and n * (n - 1) // 2 <= max_members:
            fams.append(("all pairs", all_pairs_groups(base)))
        if 3 <= n and n * (n - 1) * (n - 2) // 6 <= max_members:
            fams.append(("all triples", MaskGroups(base, list(itertools.combinations(range(n), 3)))))
        for r in range(2):
            size = int(rng.integers(3, max_members + 1))
            fams.append((f"random {size} groups #{r}", MaskGroups(base, rng.integers(0, n, (size, 2)))))
        for fam_name, family in fams:
            for m in (1, 2, 3):
                if fam_name == "singles" and m == 1:
                    continue  # T6, T11-T13 themselves
                low = int(package_sets(family, patch, m)[1].sum(1).min())
                if low == 0:  # the package must refuse it
                    try:
                        certify(np.zeros((1, len(family)), np.int64), [0], family, patch=patch, patches=m,
                                k=1)
                    except CertMaskError:
                        continue
                    raise AssertionError((name, fam_name, m, "uncovered family accepted"))
                yield f"{name} / {fam_name} / m={m}", family, patch, m


def recovery_bases():
    """The geometries of at most 5 masks, and a 2-D set of 3 masks (3 x 4 image, 2 x 2 patch: two
    3 x 3 masks side by side and a 2 x 4 band)."""
    yield from geometries(5)
    yield ("3x4 p2x2 hand-made n=3", MaskSet((3, 4), [[0, 0], [0, 1], [1, 0]], [[3, 3], [3, 3], [2, 4]]),
           (2, 2))


def recovery_families(seed: int = 16):
    """Families of 3 groups: all pairs of the 3-mask sets, and seeded custom groups of up to 3 masks
    (repeats allowed) over the larger ones, for m = 1, 2, 3 where every m-tuple is covered."""
    rng = np.random.default_rng(seed)
    for name, base, patch in recovery_bases():
        if len(base) == 3:
            fam_name, family = "all pairs", all_pairs_groups(base)
        else:
            fam_name, family = "custom 3 groups", MaskGroups(base, rng.integers(0, len(base), (3, 3)))
        for m in (1, 2, 3):
            if package_sets(family, patch, m)[1].sum(1).min() > 0:
                yield f"{name} / {fam_name} / m={m}", family, patch, m


RECOVERY_CI = ("1x6 p1x2 patchcleanser k=1 n=3 / all pairs / m=2",
               "1x4 p1x2 replicated k=2 n=3 / all pairs / m=2",
               "1x7 p1x2 replicated k=2 n=5 / custom 3 groups / m=3",
               "5x5 p2x2 offset k=2 n=5 / custom 3 groups / m=2", "3x4 p2x2 hand-made n=3 / all pairs / m=2")
"""The recovery families of the CI run (2-3 s each); ``big`` runs every family."""


def one_round_soundness(results=None, max_members: int = 6, no_vote_members: int = 5) -> int:
    """(2) and (3) for the one-round modes; returns the tables checked."""
    checked = 0
    for name, family, patch, m in soundness_families(max_members):
        classes = attack_classes(family, tuple_attacks(family.image_size, patch, m))
        for mode in ONE_ROUND:
            for no_vote in (False, True):  # NO_VOTE (T10): two patches, detection on every family
                if no_vote and (m != 2 or (len(family) > no_vote_members and mode != "detection")):
                    continue
                r = one_round_exact(family, patch, mode, no_vote=no_vote, geometry=name, classes=classes,
                                    patches=m, k=1)
                assert r.unsound == 0, (name, mode, "NO_VOTE" if no_vote else "", r.counterexample)
                checked += r.tables
                if results is not None and not no_vote:
                    results.append(r)
    return checked


def recovery_soundness(results=None, big: bool = False) -> int:
    """(2) for recovery (hitting set, all pairs, and T11(b)'s exact condition); returns tables checked."""
    checked = 0
    for name, family, patch, m in recovery_families():
        if not big and name not in RECOVERY_CI:
            continue
        classes = attack_classes(family, tuple_attacks(family.image_size, patch, m))
        robust = recovery_robustness(family, patch, classes, patches=m, k=1)
        _, first, pairs = clean_tables(len(family))
        for certificate in ("hitting_set", "all_pairs", "exact"):
            r = ExactResult("recovery", certificate, name)
            for y in range(3):
                certified = recovery_certified(family, patch, certificate, y, classes=classes, patches=m, k=1)
                tally(r, first, y, robust[y], certified, pairs)
            assert r.unsound == 0, (name, certificate, r.counterexample)
            if certificate == "exact":
                assert r.over_conservative == 0, (name, "T11(b) is not exact", r.example_missed)
            checked += r.tables
            if results is not None:
                results.append(r)
    return checked


def abstraction_matches_bruteforce(tables: int = 3, seed: int = 17) -> int:
    """The chosen-disagreer abstraction of free pair answers gives exactly the outcomes of every free
    pair table, for groups and two patches too (a pair may be fixed while neither group is)."""
    rng = np.random.default_rng(seed)
    checked = 0
    for name, family, patch, m in list(recovery_families())[::3]:
        for cover, forced, _ in attack_classes(family, tuple_attacks(family.image_size, patch, m)):
            for _ in range(tables):
                first, pairs = rng.integers(0, 3, 3), rng.integers(0, 3, 3)
                got = [recovery_outcomes(family, patch, None, first, pairs, attack=(cover, forced), patches=m,
                                         brute_force=b) for b in (False, True)]
                assert got[0] == got[1], (name, cover.tolist(), first.tolist(), pairs.tolist())
                checked += 1
    return checked


def physical_extra(max_members: int = 6) -> tuple[int, int]:
    """``(tuple classes, those where the physical threat fixes a member the package does not count)``."""
    total = extra = 0
    for _, family, patch, m in soundness_families(max_members):
        tuples, sets, _ = package_sets(family, patch, m)
        P_w = family.image_size[1] - patch[1] + 1
        dense = dense_pixels(family)
        for t, row in zip(tuples, sets):
            pixels = np.zeros(family.image_size, dtype=bool)
            for flat in t:
                a, b = divmod(int(flat), P_w)
                pixels[a:a + patch[0], b:b + patch[1]] = True
            physical = dense[:, pixels].all(1)
            assert not (row & ~physical).any()  # a package cover is a physical cover
            total += 1
            extra += int((physical & ~row).any())
    return total, extra


def exhaustive(big: bool = False) -> int:
    return (verifier() + one_round_soundness() + recovery_soundness(big=big)
            + abstraction_matches_bruteforce())


def main(argv) -> int:
    big = argv[:1] == ["big"]
    start = time.perf_counter()
    print(f"T15(1) verifier: {verifier()} (base, family, m) cases [{time.perf_counter() - start:.1f} s]")
    start = time.perf_counter()
    print(f"abstraction == brute force: {abstraction_matches_bruteforce()} tables "
          f"[{time.perf_counter() - start:.1f} s]")
    total, extra = physical_extra()
    print(f"tuples where the physical threat fixes more than the package counts: {extra} of {total}")
    results = []
    start = time.perf_counter()
    cases = one_round_soundness(results) + recovery_soundness(results, big)
    print(f"T15(2,3) soundness: {cases} tables [{time.perf_counter() - start:.1f} s]")
    print(f"{'family':58s} {'certificate':19s} {'tables':>7s} {'robust':>7s} {'certified':>9s} "
          f"{'unsound':>7s} {'missed':>7s}")
    for r in results:
        print(f"{r.geometry:58s} {r.certificate:19s} {r.tables:7d} {r.robust:7d} {r.certified:9d} "
              f"{r.unsound:7d} {r.over_conservative:7d}")
    summary = {}
    for r in results:
        s = summary.setdefault(r.certificate, [0, 0, 0, 0, 0])
        for i, v in enumerate((1, r.tables, r.robust, r.certified, r.over_conservative)):
            s[i] += v
    for certificate, (count, tables, robust, certified, missed) in summary.items():
        print(f"summary {certificate:19s} families {count:3d} tables {tables:8d} robust {robust:7d} "
              f"certified {certified:7d} missed {missed:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
