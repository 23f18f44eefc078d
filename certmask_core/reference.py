"""Slow, obviously correct twins of the core's fast paths, written from the definitions.

Every fast path of the core has a twin here, and a test that compares them (docs/design.md section 6
names the tests). The twins are the oracles of ``tests/``, ``proofs/`` and ``benchmarks/``: they work
on painted pixels, plain Python sets and loops, one image at a time, and are meant for small inputs.

===================================================  ======================================================
fast path                                            slow twin
===================================================  ======================================================
``coverage.coverage_counts``                         :func:`coverage_counts_bruteforce` (T1 position by
                                                     position); :func:`covers` (painted pixels)
``coverage.coverage_extremes``, ``is_k_covered``     the same two, through the counts
``coverage.box_coverage_counts``                     :func:`box_coverage_counts_bruteforce`
``coverage.covering_set_bits``, ``covering_sets``    :func:`covering_sets_reference`
``coverage.minimal_covering_set_bits``               :func:`minimal_sets_reference`
``MaskSet.dense``, ``MaskGroups.dense``              :func:`dense_pixels`
coverage by every patch size (T14), by groups (T15)  :func:`box_containment`
``multipatch.tuple_coverage_extremes``               :func:`tuple_coverage_bruteforce`
``multipatch.all_pairs_coverage_min``                :func:`tuple_coverage_bruteforce`
``multipatch.tuple_minimal_sets``                    :func:`tuple_minimal_sets_reference`
``constructions.exact_minimum``                      :func:`fewest_by_search`, :func:`milp_minimum`
``planning.plan_layouts``                            :func:`front_by_building`
``planning.pareto_front``                            :func:`pareto_front_reference`
``defend``, every one-round mode                     :func:`one_round_reference`
``defend(mode="plurality")``                         :func:`plurality_reference` (:func:`strict_plurality`)
``defend``, ``covering_consensus`` and ``paper``     :func:`dense_reference` (dense matrices, at
                                                     benchmark scale)
``certify(mode="plurality")`` (T12)                  :func:`plurality_certificate_reference`
``certify(mode="covering_consensus")`` (T13)         :func:`consensus_certificate_reference`
``double_masking.majorities``                        :func:`majority_reference`
``double_masking.patchcleanser_defence``             :func:`recovery_reference` (definition);
                                                     :func:`patchcleanser_defence_reference` (per image)
``double_masking.all_pairs_certificate`` (T8)        :func:`all_pairs_certificate_reference`
``double_masking.hitting_set_certificate`` (T11)     :func:`hitting_set_reference` (definition);
                                                     :func:`hitting_set_certificate_reference` and
                                                     :class:`HittingSearchReference` (per image)
``sizes.PairCache``                                  :class:`PairCacheReference`
``certify(mode="recovery")`` through a backend       :func:`reference_patchcleanser` (every pair)
===================================================  ======================================================

Two more are definitions the checkers of ``proofs/`` attack with rather than twins of a fast path:
:func:`pair_covers` (the pairs of masks whose union hides the patch) and
:func:`recovery_robust_reference` (T11(b): when recovery's output cannot be changed).

Independence: from the core this module takes only :class:`~certmask_core.errors.CertMaskError`,
the value types of :mod:`certmask_core.geometry` and plain constants (``ALERT``, ``NO_VOTE``); never
a function of the code it checks (``tests/test_isolation.py``). Covering sets here come from painted
pixels (:func:`covers`), coverage counts from the covering condition (T1) position by position. No
core module imports this one, except ``certmask_core/__init__.py``, which re-exports the public
:func:`coverage_counts_bruteforce`. :func:`front_by_building` takes the construction it builds with
as an argument, and :func:`milp_minimum` imports scipy (a test-only dependency) when called.

The per-image twins of recovery's second round (:func:`patchcleanser_defence_reference`,
:func:`all_pairs_certificate_reference`, :func:`hitting_set_certificate_reference`,
:class:`PairCacheReference`) are the code the core ran before it was vectorised over images. They are
not written from the definitions but from a fixed asking order, so they are the twins of the fast
code on everything it promises: certificates, outputs, the pairs asked (and their order) and the
passes.
"""
from __future__ import annotations

import itertools
import math
import numbers
from collections import Counter

import numpy as np

from .errors import CertMaskError
from .geometry import MaskSet, PatchThreat
from .predictions import ALERT, NO_VOTE


def _threat(maskset: MaskSet, patch) -> PatchThreat:
    """``patch`` (a size or a :class:`PatchThreat`) as a threat on ``maskset``'s image, refused as the
    fast paths refuse it (same messages)."""
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    if isinstance(patch, PatchThreat):
        if patch.image_size != maskset.image_size:
            raise CertMaskError(f"threat image {patch.image_size} differs from the mask set's "
                                f"image {maskset.image_size}")
        return patch
    return PatchThreat(maskset.image_size, patch)


# --- coverage (T1, T17) -----------------------------------------------------------------------------

def coverage_counts_bruteforce(maskset: MaskSet, patch) -> np.ndarray:
    """Reference twin of :func:`~certmask_core.coverage.coverage_counts`: test the covering definition
    for every pair.

    Slow twin of :func:`certmask_core.coverage.coverage_counts` (and of ``coverage_extremes`` and
    ``is_k_covered``, which read the same counts): for every mask and every patch position, whether
    the patch lies inside the mask (T1: ``y <= a`` and ``a + p <= y + m`` on every axis).

    Parameters
    ----------
    maskset : MaskSet
    patch : sizes per axis, int or PatchThreat

    Returns
    -------
    ndarray, shape ``threat.num_positions``, int64

    Examples
    --------
    >>> ms = MaskSet((1, 6), [[0, 0], [0, 2]], [[1, 4], [1, 4]])
    >>> coverage_counts_bruteforce(ms, (1, 2)).tolist()
    [[1, 1, 2, 1, 1]]
    """
    threat = _threat(maskset, patch)
    grids = np.meshgrid(*(np.arange(P) for P in threat.num_positions), indexing="ij")
    counts = np.zeros(threat.num_positions, dtype=np.int64)
    for origin, size in zip(maskset.origins, maskset.sizes):
        inside = np.ones(threat.num_positions, dtype=bool)
        for a, y, m, p in zip(grids, origin, size, threat.patch_size):
            inside &= (y <= a) & (a + p <= y + m)
        counts += inside
    return counts


def box_coverage_counts_bruteforce(lows, highs, positions) -> np.ndarray:
    """Reference twin of :func:`certmask_core.coverage.box_coverage_counts`: every box tested at every
    point.

    Boxes are inclusive, ``lows[i] <= point <= highs[i]`` on every axis (empty, clipped and out-of-grid
    boxes count where they hold a point of the grid of ``positions`` per axis).

    Examples
    --------
    >>> box_coverage_counts_bruteforce([[0], [2]], [[3], [4]], (5,)).tolist()
    [1, 1, 2, 2, 1]
    """
    grids = np.meshgrid(*(np.arange(p) for p in positions), indexing="ij")
    counts = np.zeros(tuple(positions), dtype=np.int64)
    d = len(positions)
    for low, high in zip(np.asarray(lows).reshape(-1, d), np.asarray(highs).reshape(-1, d)):
        inside = np.ones(tuple(positions), dtype=bool)
        for axis, grid in enumerate(grids):
            inside &= (low[axis] <= grid) & (grid <= high[axis])
        counts += inside
    return counts


def _positions(maskset: MaskSet, patch):
    """Every patch position of the set's input (any number of axes), with the pixel slices it holds."""
    ranges = [range(n - p + 1) for n, p in zip(maskset.image_size, patch)]
    for position in itertools.product(*ranges):
        yield position, tuple(slice(a, a + p) for a, p in zip(position, patch))


def covers(maskset: MaskSet, patch) -> np.ndarray:
    """``(P_h, P_w, n)`` boolean (``(*P, n)`` in any number of axes): mask ``i`` covers position ``l``,
    from dense bitmaps (T1).

    The painted-pixel twin of the core's windows (:func:`certmask_core.coverage.covered_windows` and
    everything built on them): ``covers(ms, p).sum(-1)`` equals ``coverage_counts(ms, p)``.
    """
    patch = tuple(patch)
    dense = maskset.dense()
    d = maskset.ndim
    out = np.zeros(tuple(n - p + 1 for n, p in zip(maskset.image_size, patch)) + (len(maskset),), dtype=bool)
    for position, pixels in _positions(maskset, patch):
        out[position] = dense[(slice(None),) + pixels].all(axis=tuple(range(1, d + 1)))
    return out


def pair_covers(maskset: MaskSet, patch) -> np.ndarray:
    """``(*P, n, n)`` boolean: the union of masks ``i`` and ``j`` hides the patch at position ``l``.

    Not the twin of a fast path: the pairs an attacker at ``l`` cannot change, the attack model of the
    recovery checkers (``proofs/soundness.py``, ``proofs/exact.py``).
    """
    patch = tuple(patch)
    dense = maskset.dense()
    d, n = maskset.ndim, len(maskset)
    union = dense[:, None] | dense[None, :]
    out = np.zeros(tuple(m - p + 1 for m, p in zip(maskset.image_size, patch)) + (n, n), dtype=bool)
    for position, pixels in _positions(maskset, patch):
        out[position] = union[(slice(None), slice(None)) + pixels].all(axis=tuple(range(2, d + 2)))
    return out


def covering_sets_reference(maskset, patch) -> set[frozenset]:
    """Every distinct ``S(l)``, as frozensets of mask indices.

    Slow twin of :func:`certmask_core.coverage.covering_set_bits` and ``covering_sets`` (cells and
    bitsets): the covering set of every position, from painted pixels (:func:`covers`).
    """
    cov = covers(maskset, patch)
    return {frozenset(np.flatnonzero(row).tolist()) for row in cov.reshape(-1, cov.shape[-1])}


def minimal_sets_reference(sets: set[frozenset]) -> set[frozenset]:
    """The sets that contain no other set.

    Slow twin of :func:`certmask_core.coverage.minimal_covering_set_bits` (applied to
    :func:`covering_sets_reference`).
    """
    return {s for s in sets if not any(t < s for t in sets)}


def dense_pixels(family) -> np.ndarray:
    """``(n, H, W)`` bool, True where member ``i`` of a MaskSet or MaskGroups hides the pixel: each
    rectangle painted from its origin and size (independent of the core's ``dense``); a group hides
    the union of its masks.

    Slow twin of :meth:`certmask_core.geometry.MaskSet.dense` and
    :meth:`certmask_core.multipatch.MaskGroups.dense` (2-D).
    """
    base = getattr(family, "base", family)
    H, W = base.image_size
    masks = np.zeros((len(base), H, W), dtype=bool)
    for i, ((y, x), (mh, mw)) in enumerate(zip(base.origins.tolist(), base.sizes.tolist())):
        masks[i, y:y + mh, x:x + mw] = True
    if family is base:
        return masks
    return np.stack([masks[list(row)].any(0) for row in family.members.tolist()])


def box_containment(dense: np.ndarray, patch) -> np.ndarray:
    """``(P_h, P_w, n)`` bool: member ``i`` hides every pixel of the ``ph x pw`` box at ``(a, b)``,
    by counting its hidden pixels in the box (a summed-area table): covered iff the count is the area.

    Slow twin of the core's coverage of any family by any box size (per member: what
    :func:`certmask_core.coverage.coverage_extremes` counts for each patch size, T14; per group:
    the ``U(l)`` rows of :mod:`certmask_core.multipatch`, T15), on hidden pixels (:func:`dense_pixels`).
    """
    ph, pw = patch
    n, H, W = dense.shape
    table = np.zeros((n, H + 1, W + 1), dtype=np.int64)
    table[:, 1:, 1:] = dense.cumsum(1).cumsum(2)
    inside = (table[:, ph:, pw:] - table[:, :H - ph + 1, pw:] - table[:, ph:, :W - pw + 1]
              + table[:, :H - ph + 1, :W - pw + 1])
    return np.moveaxis(inside == ph * pw, 0, -1)


# --- several patches (T15) --------------------------------------------------------------------------

def _patches(patches) -> int:
    """The number of patches as an int in ``[1, 8]`` (the verifier's limit), refused as the core
    refuses it."""
    integral = isinstance(patches, numbers.Integral) and not isinstance(patches, (bool, np.bool_))
    if not integral or not 1 <= patches <= 8:
        raise CertMaskError(f"patches must be an integer in [1, 8], got {patches!r}")
    return int(patches)


def _family_parts(family) -> tuple[MaskSet, np.ndarray]:
    """(base set, ``(len(base), n)`` incidence of base masks in family members), from the members."""
    if isinstance(family, MaskSet):
        return family, np.eye(len(family), dtype=bool)
    base = getattr(family, "base", None)
    if not isinstance(base, MaskSet):
        raise CertMaskError(f"expected a MaskSet or MaskGroups, got {type(family).__name__}")
    members = np.asarray(family.members)
    incidence = np.zeros((len(base), len(members)), dtype=bool)
    for g, row in enumerate(members.tolist()):
        incidence[row, g] = True
    return base, incidence


def tuple_coverage_bruteforce(family, patch, patches: int = 2) -> np.ndarray:
    """Reference twin: count, for every m-tuple of positions, the members covering it (definition).

    Slow twin of :func:`certmask_core.multipatch.tuple_coverage_extremes` and of its closed form
    :func:`certmask_core.multipatch.all_pairs_coverage_min`. Returns an ``(P,) * m`` array over flat
    positions (row-major: ``a * P_w + b`` for images). Small inputs only.
    """
    patches = _patches(patches)
    base, incidence = _family_parts(family)
    threat = _threat(base, patch)
    positions = list(itertools.product(*(range(P) for P in threat.num_positions)))
    covers = np.zeros((len(positions), len(base)), dtype=bool)  # position x base mask, by containment
    for i, (origin, size) in enumerate(zip(base.origins.tolist(), base.sizes.tolist())):
        for flat, position in enumerate(positions):
            covers[flat, i] = all(y <= a and a + p <= y + m
                                  for a, y, m, p in zip(position, origin, size, threat.patch_size))
    holds = (covers.astype(np.int64) @ incidence.astype(np.int64)) > 0  # position x member
    counts = np.zeros((len(positions),) * patches, dtype=np.int64)
    for tup in itertools.product(range(len(positions)), repeat=patches):
        counts[tup] = int(np.logical_and.reduce(holds[list(tup)], axis=0).sum())
    return counts


def tuple_minimal_sets_reference(family, patch, patches):
    """Every m-tuple's covering set from the brute-force position x member table, then the minimal.

    Slow twin of :func:`certmask_core.multipatch.tuple_minimal_sets` (images; a MaskGroups family):
    the masks' hidden pixels decide which members hold each position.
    """
    base = family.base
    (P_h, P_w) = PatchThreat(base.image_size, patch).num_positions
    dense = base.dense()
    ph, pw = patch
    holds = np.zeros((P_h * P_w, len(family)), dtype=bool)
    for a, b in itertools.product(range(P_h), range(P_w)):
        in_mask = dense[:, a:a + ph, b:b + pw].all(axis=(1, 2))
        holds[a * P_w + b] = in_mask[family.members].any(1)
    sets = {frozenset(np.flatnonzero(np.logical_and.reduce(holds[list(t)], axis=0)).tolist())
            for t in itertools.product(range(P_h * P_w), repeat=patches)}
    return {s for s in sets if not any(o < s for o in sets)}


# --- planning (T16) ---------------------------------------------------------------------------------

def fewest_by_search(P, w, k):
    """Smallest subset of the origin lattice with k points in every w-block, by trying every subset
    size from the bound up (tiny lattices only).

    Slow twin of :func:`certmask_core.constructions.exact_minimum` (the reformulation of T16: a
    distinct k-fold set of window ``w`` is a set of origins with ``k`` in every block of positions).
    """
    L = [p + wi - 1 for p, wi in zip(P, w)]
    points = list(itertools.product(*(range(n) for n in L)))
    blocks = [[points.index(tuple(a + d for a, d in zip(pos, off)))
               for off in itertools.product(*(range(wi) for wi in w))]
              for pos in itertools.product(*(range(p) for p in P))]
    masks = np.zeros((len(blocks), len(points)), bool)
    for row, block in enumerate(blocks):
        masks[row, block] = True
    for size in range(len(points) + 1):
        for chosen in itertools.combinations(range(len(points)), size):
            if (masks[:, list(chosen)].sum(1) >= k).all():
                return size
    return None


def milp_minimum(P, w, k, relax: bool = False):
    """Fewest origins with ``k`` in every block, by integer (or, with ``relax``, linear) programming;
    None when infeasible. Needs scipy (a test-only dependency).

    Slow twin of :func:`certmask_core.constructions.exact_minimum` and ``minimum_of_classes`` in any
    number of axes (the same reformulation as :func:`fewest_by_search`, solved by scipy's ``milp``).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    w = [min(wi, p) for wi, p in zip(w, P)]
    L = [p + wi - 1 for p, wi in zip(P, w)]
    index = np.arange(int(np.prod(L))).reshape(L)
    rows = []
    for pos in itertools.product(*(range(p) for p in P)):
        block = index[tuple(slice(a, a + wi) for a, wi in zip(pos, w))].ravel()
        row = np.zeros(index.size)
        row[block] = 1
        rows.append(row)
    res = milp(np.ones(index.size), constraints=LinearConstraint(np.array(rows), k, np.inf),
               bounds=Bounds(0, 1), integrality=None if relax else np.ones(index.size))
    if res.status != 0:
        return None
    return float(res.fun) if relax else int(round(res.fun))


def front_by_building(threat: PatchThreat, k: int, make_maskset) -> list[tuple[int, list[int]]]:
    """Slow twin of :func:`certmask_core.planning.plan_layouts`: build every square-window set with
    ``make_maskset`` and keep the (count, mask area) front, as ``(num_masks, mask_size)``.

    The planner prices every window size by the closed form (T16) without building anything; this
    twin builds (and so verifies) each set. Pass :func:`certmask_core.make_maskset`: the construction
    is an argument so that this module imports nothing it checks.
    """
    (H, W), (ph, pw) = threat.image_size, threat.patch_size
    built = []
    for w in range(1, max(threat.num_positions) + 1):
        size = (min(w, threat.num_positions[0]) + ph - 1, min(w, threat.num_positions[1]) + pw - 1)
        if size == (H, W):
            continue
        try:
            ms = make_maskset(threat, k, "patchcleanser" if k == 1 else "replicated", mask_size=size)
        except CertMaskError:
            continue
        built.append((len(ms), size[0] * size[1], size))
    front, smallest = [], math.inf
    for count, area, size in sorted(built, key=lambda b: (b[0], b[1], abs(b[2][0] - b[2][1]), b[2][0])):
        if area < smallest:
            front.append((count, list(size)))
            smallest = area
    return front


def pareto_front_reference(passes, accuracy) -> list[int]:
    """The indices of the points no other point beats, by comparing every pair (quadratic).

    Slow twin of :func:`certmask_core.planning.pareto_front`: a point is beaten by one with at most as
    many passes and a higher accuracy, or with fewer passes and at least its accuracy.
    """
    def beaten(i):
        return any((p <= passes[i] and a > accuracy[i]) or (p < passes[i] and a >= accuracy[i])
                   for p, a in zip(passes, accuracy))
    return [i for i in range(len(passes)) if not beaten(i)]


# --- decisions, one row at a time (T6-T13) ----------------------------------------------------------

def one_round_reference(row, sets: set[frozenset], mode: str, k: int = 1) -> int:
    """``detection``, ``plurality``, ``covering_consensus`` or ``paper`` on one row of labels, from the
    definitions.

    Slow twin of the one-round decisions of :func:`certmask_core.certification.defend` (the numba
    kernels of the one-round modes); ``sets`` are the covering sets (:func:`covering_sets_reference`).
    """
    votes = Counter(v for v in row if v != NO_VOTE)
    voters = {c: frozenset(i for i, v in enumerate(row) if v == c) for c in votes}
    if mode == "detection":
        return row[0] if len(votes) == 1 and votes[row[0]] == len(row) else ALERT
    if mode == "plurality":
        return plurality_reference(row, minimal_sets_reference(sets))
    if mode == "covering_consensus":
        minimal = minimal_sets_reference(sets)
        qualifying = [c for c in votes if any(m <= voters[c] for m in minimal)]
        return qualifying[0] if len(qualifying) == 1 else ALERT
    if mode == "paper":
        if len(votes) == 1 and votes[row[0]] == len(row):
            return row[0]
        qualifying = sorted(c for c in votes if votes[c] == k and any(voters[c] <= s for s in sets))
        if qualifying:
            return qualifying[0]
        if not votes:
            return ALERT
        top = max(votes.values())
        return min(c for c in votes if votes[c] == top)
    raise ValueError(mode)


def recovery_reference(row, pair_label) -> int:
    """PatchCleanser's double masking on one row; ``pair_label(i, j)`` answers the pair ``(i, j)``.

    Slow twin of :func:`certmask_core.double_masking.patchcleanser_defence` (the output), from the
    definition.
    """
    votes = Counter(v for v in row if v != NO_VOTE)
    if not votes:
        return ALERT
    top = max(votes.values())
    majority = min(c for c in votes if votes[c] == top)
    if votes[majority] == len(row):
        return majority
    for i, v in enumerate(row):
        if v not in (majority, NO_VOTE) and all(pair_label(i, j) == v for j in range(len(row)) if j != i):
            return v
    return majority


def strict_plurality(votes) -> int | None:
    """The class with more votes than any other (NO_VOTE excluded), or None.

    Part of :func:`plurality_reference`, the twin of the plurality kernel.
    """
    counts = Counter(v for v in votes if v != NO_VOTE)
    if not counts:
        return None
    ranked = counts.most_common()
    return ranked[0][0] if len(ranked) == 1 or ranked[0][1] > ranked[1][1] else None


def plurality_reference(row, minimal: set[frozenset]) -> int:
    """``plurality`` on one row: the strict plurality of every minimal covering set, else ALERT.

    Slow twin of the ``plurality`` decision of :func:`certmask_core.certification.defend` (its numba
    kernel).
    """
    winners = {strict_plurality([row[i] for i in m]) for m in minimal}
    return winners.pop() if len(winners) == 1 and None not in winners else ALERT


def plurality_certificate_reference(row, unsure, y: int, minimal: set[frozenset]) -> bool:
    """T12: in every minimal set, sure votes for ``y`` beat any other class's sure votes plus every
    unsure prediction.

    Slow twin of the ``plurality`` certificate of :func:`certmask_core.certification.certify`.
    """
    for m in minimal:
        sure = [row[i] for i in m if not unsure[i]]
        rivals = Counter(v for v in sure if v not in (y, NO_VOTE))
        if sure.count(y) <= max(rivals.values(), default=0) + sum(bool(unsure[i]) for i in m):
            return False
    return True


def consensus_certificate_reference(row, unsure, y: int, minimal: set[frozenset]) -> bool:
    """T13 from its statement: clean output ``y`` whatever the unsure predictions, and at every
    minimal set ``C`` either ``C`` votes ``y`` wholly and surely or every minimal set is blocked in it.

    Slow twin of the ``covering_consensus`` certificate of :func:`certmask_core.certification.certify`.
    """
    sure = {i for i in range(len(row)) if not unsure[i]}

    def blocked(m, fixed):
        values = {row[i] for i in m & fixed}
        return bool(values) and (len(values) > 1 or values & {y, NO_VOTE} != set())

    def wholly_y(c):
        return all(i in sure and row[i] == y for i in c)

    clean = any(wholly_y(m) for m in minimal) and all(blocked(m, sure) for m in minimal)
    return clean and all(wholly_y(c) or all(blocked(m, c & sure) for m in minimal) for c in minimal)


def hitting_set_reference(row, y: int, pair_label, minimal: set[frozenset], sure=None,
                          pair_sure=None) -> bool:
    """T11: the surely good masks hit every minimal covering set (every pair evaluated).

    Slow twin of :func:`certmask_core.double_masking.hitting_set_certificate` (the certificate, from
    the definition; the fast path asks only some pairs).
    """
    n = len(row)
    sure = sure if sure is not None else [True] * n
    pair_sure = pair_sure or (lambda i, j: True)
    good = {g for g in range(n) if row[g] == y and sure[g]
            and all(pair_label(g, m) == y and pair_sure(g, m) for m in range(n) if m != g)}
    return all(m & good for m in minimal)


def recovery_robust_reference(row, pair_label, y: int, positions, alphabet) -> bool:
    """The exact condition under which PatchCleanser's defence outputs ``y`` under every attack
    (T11(b)), from the clean one-mask ``row`` and ``pair_label(i, j)``.

    ``positions`` lists, per patch position, ``(cover, forced)``: the masks covering it and the
    ``(n, n)`` pairs whose union hides it; ``alphabet`` are the classes an attacker may use. At each
    position either (H) a covering mask is good, or (M) the first-round majority is ``y`` whatever the
    free masks say, and no mask can be accepted with a wrong label: none has all its fixed pair
    predictions equal to one class ``c != y`` (for a covering mask, ``c`` is its own label).

    Not the twin of a fast path: the exact robustness that ``proofs/exact.py`` compares with its
    enumeration of every attack and with the package's recovery certificates.
    """
    n = len(row)
    for cover, forced in positions:
        inside = [i for i in range(n) if cover[i]]
        if any(row[g] == y and all(pair_label(g, m) == y for m in range(n) if m != g) for g in inside):
            continue  # (H)
        votes = Counter(row[i] for i in inside if row[i] != NO_VOTE)
        free = n - len(inside)
        rivals = [c for c in alphabet if c != y]
        majority_safe = all(votes[y] > votes[c] + free or (votes[y] == votes[c] + free and y < c)
                            for c in rivals)
        if not majority_safe:
            return False

        for i in range(n):
            if cover[i] and row[i] in (y, NO_VOTE):
                continue  # never a wrong disagreer
            fixed = {pair_label(i, j) for j in range(n) if j != i and forced[i, j]}
            if any(c not in (y, NO_VOTE) and fixed <= {c} for c in ([row[i]] if cover[i] else rivals)):
                return False  # i can be accepted with a wrong label
    return True


def _windows(maskset: MaskSet, threat: PatchThreat) -> np.ndarray:
    """Per mask, the inclusive box of patch positions it covers, ``(n, 2 d)``: first positions, then
    last ones (T1: ``a`` in ``[y, y + m - p]`` on every axis; empty where the mask is smaller)."""
    return np.concatenate([maskset.origins, maskset.origins + maskset.sizes - np.array(threat.patch_size)],
                          axis=1)


def dense_reference(labels: np.ndarray, maskset: MaskSet, patch, mode: str) -> np.ndarray:
    """The covering-set modes as computed before the bitset core: dense, obviously correct.

    Slow twin, at benchmark scale, of the ``covering_consensus`` and ``paper`` decisions of
    :func:`certmask_core.certification.defend` (their bitset path): every cell's covering set as a
    bool row, an ``m x m`` int64 subset matrix, one-hot votes. Images (2-D) only.
    """
    threat = PatchThreat(maskset.image_size, patch)
    win = _windows(maskset, threat)
    reps = []
    for axis, P in enumerate(threat.num_positions):
        cuts = np.concatenate([[0], win[:, axis], win[:, axis + 2] + 1])
        reps.append(np.unique(cuts[cuts < P]))
    a, b = reps[0][:, None, None], reps[1][None, :, None]
    inc = (win[:, 0] <= a) & (a <= win[:, 2]) & (win[:, 1] <= b) & (b <= win[:, 3])
    sets = np.unique(inc.reshape(-1, len(maskset)), axis=0)
    K = int(labels.max()) + 1
    onehot = np.zeros(labels.shape + (K,), dtype=np.int32)
    np.put_along_axis(onehot, labels[..., None], 1, axis=2)
    if mode == "covering_consensus":
        sub = sets.astype(np.int64)
        inter = sub @ sub.T
        size = sub.sum(1)
        minimal = sets[~((inter == size[None, :]) & (size[None, :] < size[:, None])).any(1)]
        votes = np.einsum("bnk,mn->bkm", onehot, minimal.astype(np.int32))
        qualifies = (votes == minimal.sum(1)[None, None, :]).any(2)
        return np.where(qualifies.sum(1) == 1, qualifies.argmax(1), ALERT)
    votes = np.einsum("bnk,mn->bkm", onehot, sets.astype(np.int32))
    totals = onehot.sum(1)
    qualifies = (totals == 1) & (votes == totals[:, :, None]).any(2)
    counts = onehot.sum(1)
    out = np.where(qualifies.any(1), qualifies.argmax(1), counts.argmax(1))
    unanimous = (labels == labels[:, :1]).all(1)
    return np.where(unanimous, labels[:, 0], out)


# --- recovery's second round, one image at a time (the core before it was vectorised) -------------

# pair states of the hitting-set search
_UNKNOWN, _SURE, _NEAR, _WRONG = 0, 1, 2, 3
_STATE_BYTES = 2**26
"""Memory for the per-image pair-state matrices of one block of images (int8, n x n each)."""


def _row_pairs(i: int, others: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(others), i), others], axis=1)


def majority_reference(row: np.ndarray, no_vote: int, alert: int) -> int:
    """The first-round majority of one row: the most frequent label, ties to the smallest,
    ``no_vote`` votes for none; ``alert`` for a row without a vote.

    Slow twin of :func:`certmask_core.double_masking.majorities`.
    """
    votes = row[row != no_vote]
    if not len(votes):
        return alert
    classes, counts = np.unique(votes, return_counts=True)
    return int(classes[counts.argmax()])



def patchcleanser_defence_reference(first: np.ndarray, ask, no_vote: int, alert: int
                                    ) -> tuple[np.ndarray, np.ndarray]:
    """Twin of :func:`certmask_core.double_masking.patchcleanser_defence`, one image at a time.

    First round: the majority (ties to the smallest class; NO_VOTE votes for none). If every mask
    agrees with it, output it. Otherwise try the disagreeing masks in index order: the first whose
    every two-mask prediction equals its own one-mask prediction is output; else the majority.
    ``ask(image_indices, pairs)`` returns the pair labels. Returns (output, second-round passes).
    """
    B, n = first.shape
    output = np.array([majority_reference(row, no_vote, alert) for row in first], dtype=np.int64)
    passes = np.zeros(B, dtype=np.int64)
    queues = {b: np.flatnonzero((first[b] != output[b]) & (first[b] != no_vote)) for b in range(B)
              if output[b] != alert and (first[b] != output[b]).any()}
    queues = {b: q for b, q in queues.items() if len(q)}
    step = dict.fromkeys(queues, 0)
    everyone = np.arange(n)
    while queues:
        images, requests = [], []
        for b, queue in queues.items():
            i = queue[step[b]]
            images.append(np.full(n - 1, b))
            requests.append(_row_pairs(i, np.delete(everyone, i)))
        answers = ask(np.concatenate(images), np.concatenate(requests)).reshape(len(queues), n - 1)
        for (b, queue), second in zip(list(queues.items()), answers):
            i = queue[step[b]]
            passes[b] += n - 1
            step[b] += 1
            if (second == first[b, i]).all():
                output[b] = first[b, i]
            elif step[b] < len(queue):
                continue
            del queues[b]
    return output, passes


def all_pairs_certificate_reference(first, sure, y, ask, chunk: int):
    """Twin of :func:`certmask_core.double_masking.all_pairs_certificate`, one image at a time.

    T8: every one-mask and every two-mask prediction equals ``y``. Pairs are asked ``chunk`` per
    image per round, and an image stops at its first wrong chunk. Returns (holds, holds on labels
    alone, pair passes, smallest margin seen).
    """
    B, n = first.shape
    loose = (first == y[:, None]).all(1)
    strict = loose & sure.all(1)
    passes = np.zeros(B, dtype=np.int64)
    min_margin = np.full(B, np.inf)
    pairs = np.stack(np.triu_indices(n, k=1), axis=1)  # row-major, as the core's all_pairs
    position = dict.fromkeys(np.flatnonzero(loose).tolist(), 0)
    while position and len(pairs):
        images = [np.full(len(pairs[s:s + chunk]), b) for b, s in position.items()]
        batch = [pairs[s:s + chunk] for s in position.values()]
        labels, margins = ask(np.concatenate(images), np.concatenate(batch))
        offsets = np.cumsum([0] + [len(p) for p in batch])
        for t, b in enumerate(list(position)):
            got, near = labels[offsets[t]:offsets[t + 1]], margins[offsets[t]:offsets[t + 1]]
            passes[b] += len(got)
            min_margin[b] = min(min_margin[b], near.min(initial=np.inf))
            position[b] += chunk
            if (got != y[b]).any():
                loose[b] = strict[b] = False
            strict[b] &= bool((near > ask.tolerance).all())
            if not loose[b] or position[b] >= len(pairs):
                del position[b]
    return strict, loose, passes, min_margin


class HittingSearchReference:
    """The T11 certificate of one image: find good masks that hit every minimal covering set.

    Mask ``g`` is good when its one-mask prediction and every two-mask prediction ``(g, m)`` equal
    ``y``; it is *surely* good when all those predictions also have margins above the tolerance.
    The search first looks for surely good masks; if that becomes impossible it goes on with good
    ones (to tell a refusal for margins from a failure).

    Slow twin of the core's array search (``double_masking``'s hitting-set searches), step for step.
    """

    def __init__(self, row, sure_row, y, member):
        self.n, self.member = len(row), member  # member: (n, m) mask i lies in minimal set s
        self.candidate = {True: (row == y) & sure_row, False: row == y}
        self.tried = np.zeros(self.n, dtype=bool)
        self.good = {True: np.zeros(self.n, dtype=bool), False: np.zeros(self.n, dtype=bool)}
        self.state = np.zeros((self.n, self.n), dtype=np.int8)
        np.fill_diagonal(self.state, _SURE)
        self.level = True
        self.pending: list[int] = []
        self.width = 1  # candidate rows asked in the next round without a suspect

    def unhit(self, level) -> np.ndarray:
        return ~self.member[self.good[level]].any(0)

    def hits(self, level) -> bool:
        return not self.unhit(level).any()

    def next_request(self) -> np.ndarray | None:
        """Pairs to evaluate for the next candidate mask, or None when the search is over."""
        while True:
            level = self.level
            if self.hits(level):
                return None
            unhit = self.unhit(level)
            worst = _WRONG if not level else _NEAR
            open_ = self.candidate[level] & ~self.tried & ~(self.state >= worst).any(1)
            gain = self.member[:, unhit].sum(1) * open_
            # impossible when some unhit set holds no open candidate
            if not (self.member[open_][:, unhit].any(0)).all():
                if level and not self.hits(False) and self._loose_possible():
                    self.level = False
                    continue
                return None
            g = int(gain.argmax())
            unknown = self.state[g] == _UNKNOWN
            suspect = self.suspect()
            if not unknown.any():
                self._settle(g)
                continue
            if (unknown & suspect).any() and (unknown & ~suspect).any():
                # pairs with a suspect first: they are the likeliest to be wrong, and one wrong
                # pair spares the rest of the row
                self.pending = [g]
                return _row_pairs(g, np.flatnonzero(unknown & suspect))
            # no suspect in sight: every candidate that alone can hit some unhit set must be good for
            # the image to be certified, so their rows are asked together, as many more each round
            # as the rows of the last round all came back good (fewer rounds, little waste)
            alone = unhit & (self.member[open_].sum(0) == 1)
            forced = open_ & self.member[:, alone].any(1) & ~(self.state[:, suspect] == _UNKNOWN).any(1)
            forced[g] = False
            self.pending = sorted([g] + np.flatnonzero(forced)[:self.width - 1].tolist())
            rows = self.state[self.pending] == _UNKNOWN
            i, j = np.nonzero(rows)
            i = np.asarray(self.pending)[i]
            keep = (i < j) | ~np.isin(j, self.pending)  # a pair of two pending masks is asked once
            return np.stack([i[keep], j[keep]], axis=1)

    def suspect(self) -> np.ndarray:
        """Masks whose one-mask prediction is wrong or that are in a wrong pair already."""
        return ~self.candidate[False] | (self.state == _WRONG).any(0)

    def _loose_possible(self) -> bool:
        open_ = self.candidate[False] & ~self.tried & ~(self.state == _WRONG).any(1)
        unhit = self.unhit(False)
        return bool((self.member[open_ | self.good[False]][:, unhit].any(0)).all())

    def answer(self, pairs, labels, sure, y) -> None:
        states = np.where(labels != y, _WRONG, np.where(sure, _SURE, _NEAR)).astype(np.int8)
        self.state[pairs[:, 0], pairs[:, 1]] = states
        self.state[pairs[:, 1], pairs[:, 0]] = states
        for g in self.pending:
            if (self.state[g] == _WRONG).any() or not (self.state[g] == _UNKNOWN).any():
                self._settle(g)  # else the rest of its row comes next round (it stays the best choice)
        self.width = 2 * self.width if self.good[False][self.pending].all() else 1

    def _settle(self, g) -> None:
        self.tried[g] = True
        row = self.state[g]
        self.good[False][g] = self.candidate[False][g] and not (row == _WRONG).any()
        self.good[True][g] = self.candidate[True][g] and bool((row == _SURE).all())


def hitting_set_certificate_reference(first, sure, y, member, ask):
    """Twin of :func:`certmask_core.double_masking.hitting_set_certificate`, one search per image.

    T11: the good masks hit every minimal covering set. ``member`` is the ``(n, m)`` membership of
    masks in the minimal covering sets. Each round asks, for every undecided image, the pairs its
    :class:`HittingSearchReference` requests. Returns (holds, holds on labels alone, pair passes,
    smallest margin seen).
    """
    B, n = first.shape
    strict, loose = np.zeros(B, dtype=bool), np.zeros(B, dtype=bool)
    passes = np.zeros(B, dtype=np.int64)
    min_margin = np.full(B, np.inf)
    block = max(1, _STATE_BYTES // max(1, n * n))
    for start in range(0, B, block):
        searches = {b: HittingSearchReference(first[b], sure[b], y[b], member)
                    for b in range(start, min(B, start + block))}
        requests = {b: s.next_request() for b, s in searches.items()}
        while any(r is not None for r in requests.values()):
            active = [b for b, r in requests.items() if r is not None]
            pairs = np.concatenate([requests[b] for b in active])
            labels, margins = ask(np.concatenate([np.full(len(requests[b]), b) for b in active]), pairs)
            offset = 0
            for b in active:
                m = len(requests[b])
                got, near = labels[offset:offset + m], margins[offset:offset + m]
                offset += m
                passes[b] += m
                min_margin[b] = min(min_margin[b], near.min())
                searches[b].answer(requests[b], got, near > ask.tolerance, y[b])
                requests[b] = searches[b].next_request()
        for b, s in searches.items():
            strict[b], loose[b] = s.hits(True), s.hits(False)
    return strict, loose, passes, min_margin


class PairCacheReference:
    """Twin of :class:`certmask_core.sizes.PairCache`: a dict keyed by ``(image, i, j)``.

    Evaluates each (image, unordered pair) once and remembers the answer; ``rows`` maps the image
    indices it is asked about to the wrapped predictor's. ``evaluated[b]`` counts the pairs actually
    evaluated for image ``b``. Without ``many`` the wrapped predictor is asked one pair per call.
    """

    def __init__(self, pair_predictor, num_images: int):
        if not callable(pair_predictor):
            raise CertMaskError(f"mode 'recovery' needs a callable pair_predictor, got {pair_predictor!r}")
        self.pair_predictor = pair_predictor
        self.answers: dict[tuple[int, int, int], np.ndarray] = {}
        self.row_shape: tuple | None = None  # () for labels, (K,) for logits
        self.evaluated = np.zeros(num_images, dtype=np.int64)

    def view(self, rows: np.ndarray):
        """A pair predictor for images ``rows`` of the batch (local index ``t`` = image ``rows[t]``)."""
        rows = np.asarray(rows, dtype=np.int64)

        def predict(index, pairs):
            return self.many(np.full(len(pairs), index), pairs, rows)

        predict.many = lambda image_indices, pairs: self.many(image_indices, pairs, rows)
        return predict

    @staticmethod
    def _checked(answer, m: int) -> np.ndarray:
        try:
            answer = np.asarray(answer)
        except ValueError as err:  # a ragged answer
            raise CertMaskError(f"pair_predictor's answer is not an array: {err}") from None
        if answer.ndim not in (1, 2) or len(answer) != m:
            raise CertMaskError(f"pair_predictor must return labels (m,) or logits (m, K) for m = {m} pairs, "
                                f"got shape {answer.shape}")
        return answer

    def many(self, image_indices, pairs, rows=None) -> np.ndarray:
        image_indices = np.asarray(image_indices, dtype=np.int64)
        pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        images = image_indices if rows is None else rows[image_indices]
        keys = [(int(b), int(i), int(j)) for b, (i, j) in zip(images, pairs)]
        new = sorted({key for key in keys if key not in self.answers})
        if new:
            b, i, j = (np.array(column, dtype=np.int64) for column in zip(*new))
            many = getattr(self.pair_predictor, "many", None)
            if callable(many):
                answers = [self._checked(many(b, np.stack([i, j], 1)), len(new))]
            else:
                answers = [self._checked(self.pair_predictor(int(image), np.array([[u, v]])), 1)
                           for image, u, v in new]
            for answer in answers:
                if self.row_shape is None:
                    self.row_shape = answer.shape[1:]
                if answer.shape[1:] != self.row_shape:
                    raise CertMaskError(f"pair_predictor answered rows of shape {answer.shape[1:]} after "
                                        f"{self.row_shape}: labels on one call and logits on another?")
            self.answers.update(zip(new, np.concatenate(answers)))
            np.add.at(self.evaluated, b, 1)
        if not keys:
            return np.empty(0, np.int64)
        return np.stack([self.answers[key] for key in keys])


def reference_patchcleanser(backend, model, images, labels, ms) -> tuple[np.ndarray, int]:
    """The straightforward PatchCleanser certification loop: every pair of every image, no early exit.

    Slow twin of :func:`certmask_core.certification.certify` with ``mode="recovery"`` through a
    backend, which stops early: T8 from every one- and two-mask prediction (on PatchCleanser's 1-fold
    grids the default hitting-set certificate equals it, T11). Returns (certified, forward passes).
    """
    pairs = np.stack(np.triu_indices(len(ms), k=1), axis=1)  # row-major, as the core's all_pairs
    certified, passes = [], 0
    first = backend.masked_predictions(model, images, ms)
    passes += first.size
    for x, y, row in zip(images, labels, first):
        second = backend.pair_predictions(model, x, ms, pairs)
        passes += len(pairs)
        certified.append(bool((row == y).all() and (second == y).all()))
    return np.array(certified), passes
