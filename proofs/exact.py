"""Exhaustive check of every certificate against the defence's true robustness (T11-T13).

:mod:`proofs.soundness` attacks clean images that pass a unanimity certificate. The certificates of
T11-T13 also certify images on which some masks are wrong, so this checker enumerates *every* clean
table of a small geometry over a label alphabet: every row of one-mask predictions and, for
``recovery``, every symmetric table of two-mask predictions. For each table and true label ``y`` it
decides by enumeration whether the defence is **robust**: it outputs ``y`` on the clean table and,
under a patch at every position, every attack the geometry permits yields the guarantee (``y`` for
``label``, ``y`` or ALERT for ``label-or-alert``). Then it compares with the package's certificate:

* **unsound**: certified but not robust (a counterexample: must be 0);
* **over-conservative**: robust but not certified (what the certificate leaves on the table).

An attack at position ``l`` keeps the one-mask predictions of ``S(l)`` and the two-mask predictions
of the pairs whose union hides the patch; everything else takes any symbol of the alphabet (and
``NO_VOTE`` when asked). The attacked rows of a one-round rule are then exactly the clean rows that
agree on ``S(l)``, so one run of the defence over all rows decides every position. For recovery the
free pair answers follow the chosen-disagreer abstraction of :mod:`proofs.soundness` (its outcome set
equals the brute force over all pair tables; ``tests/test_proofs.py`` checks that on tiny sets).

The margin rule is checked too: a certificate computed with some predictions *unsure* must hold for
every value those predictions could take (``unsure_soundness``).

The attacks may also be given as pixel sets (:func:`attack_classes`): a member (a mask, or a group of
masks hidden together) is fixed iff its hidden pixels contain every attacked pixel, a pair iff their
union does. T14 attacks with smaller patches and shapes (:func:`box_attacks`, :func:`shape_attacks`)
than the size the defence is configured for; T15 with several patches (:func:`tuple_attacks`) on
MaskGroups with ``patches=m``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from certmask_core import MaskSet, PatchThreat, make_maskset
from certmask_core.certification import ALERT, GUARANTEES, NO_VOTE, certify, defend
from certmask_core.reference import covers, dense_pixels, pair_covers, recovery_robust_reference

from .common import box, positions, small_geometries

SURE, UNSURE = 1.0, 1e-4  # margins of the logits built from a label; UNSURE is below the tolerance


@dataclass
class ExactResult:
    mode: str
    certificate: str
    geometry: str
    tables: int = 0
    certified: int = 0
    robust: int = 0
    unsound: int = 0
    over_conservative: int = 0
    counterexample: dict = field(default_factory=dict)
    example_missed: dict = field(default_factory=dict)


def all_rows(n: int, symbols) -> np.ndarray:
    return np.array(list(itertools.product(symbols, repeat=n)), dtype=np.int64).reshape(-1, n) if n \
        else np.zeros((1, 0), dtype=np.int64)


def row_keys(rows: np.ndarray, columns: np.ndarray, symbols) -> np.ndarray:
    """An integer per row naming its values on ``columns``."""
    lookup = {s: t for t, s in enumerate(symbols)}
    digits = np.vectorize(lookup.__getitem__, otypes=[np.int64])(rows[:, columns]) if len(columns) \
        else np.zeros((len(rows), 0), np.int64)
    return digits @ (len(symbols) ** np.arange(len(columns), dtype=np.int64))


def guarantee_ok(output, y, guarantee):
    return (output == y) | ((output == ALERT) & (guarantee == "label-or-alert"))


def _position_classes(maskset, patch, with_pairs: bool):
    """One representative of each distinct (covering set, pairs hiding the patch) of the positions."""
    cov = covers(maskset, patch)
    pcov = pair_covers(maskset, patch) if with_pairs else None
    seen = {}
    for position in itertools.product(*(range(P) for P in cov.shape[:-1])):
        key = cov[position].tobytes() + (pcov[position].tobytes() if with_pairs else b"")
        seen.setdefault(key, (cov[position], pcov[position] if with_pairs else None, position))
    return list(seen.values())


def logits_of(rows: np.ndarray, unsure: np.ndarray, alphabet: int) -> np.ndarray:
    """Logits whose top-1 is ``rows`` with margin SURE or UNSURE (where ``unsure``); NaN for NO_VOTE.

    ``tests/strategies.py`` keeps the same builder for the tests, which do not import ``proofs``."""
    out = np.zeros(rows.shape + (alphabet,))
    label = np.where(rows == NO_VOTE, 0, rows)
    np.put_along_axis(out, label[..., None], np.where(unsure, UNSURE, SURE)[..., None], axis=-1)
    out[rows == NO_VOTE] = np.nan
    return out


def one_round_robust(maskset: MaskSet, patch, mode: str, rows: np.ndarray, symbols, y: int,
                      classes=None, patches: int = 1, outputs=None, k: int | None = None) -> np.ndarray:
    """Per clean row (``rows`` = every row over ``symbols``): the defence outputs ``y`` on it and, at
    every position, every attack (the rows agreeing on the covering masks) keeps the guarantee.

    The defence runs configured for ``patch`` (and ``patches``); the attacks are ``classes`` (default:
    the positions of ``patch``), each ``(fixed members, ...)`` as :func:`attack_classes` makes them.
    ``outputs`` may pass the defence's outputs on ``rows`` when already computed."""
    if outputs is None:
        outputs = defend(rows, maskset, mode, patch=patch, patches=patches, k=k).output
    bad_output = ~guarantee_ok(outputs, y, GUARANTEES[mode])
    robust = outputs == y
    if classes is None:
        classes = _position_classes(maskset, patch, with_pairs=False)
    for cover, *_ in classes:
        keys = row_keys(rows, np.flatnonzero(cover), symbols)
        bad = np.zeros(keys.max() + 1, dtype=bool)
        np.logical_or.at(bad, keys, bad_output)
        robust &= ~bad[keys]
    return robust


def one_round_exact(maskset: MaskSet, patch, mode: str, alphabet: int = 3, no_vote: bool = False,
                    geometry: str = "", classes=None, patches: int = 1, k: int | None = None) -> ExactResult:
    """Certificate vs robustness of a one-round mode on every clean row of ``alphabet`` labels.

    ``maskset`` may be a MaskGroups and ``patches`` > 1 (T15): the certificate is the package's for
    that threat, the attacks are ``classes`` (default: the positions of one ``patch``); ``k`` is the
    multiplicity the defence is told (default: the set's own)."""
    n = len(maskset)
    symbols = list(range(alphabet)) + ([NO_VOTE] if no_vote else [])
    rows = all_rows(n, symbols)
    result = ExactResult(mode, mode, geometry)
    outputs = defend(rows, maskset, mode, patch=patch, patches=patches, k=k).output
    for y in range(alphabet):
        robust = one_round_robust(maskset, patch, mode, rows, symbols, y, classes, patches, outputs)
        certified = certify(rows, np.full(len(rows), y), maskset, mode, patch=patch, patches=patches,
                            k=k).certified
        tally(result, rows, y, robust, certified)
    return result


def tally(result: ExactResult, rows, y, robust, certified, pairs=None):
    result.tables += len(rows)
    result.certified += int(certified.sum())
    result.robust += int(robust.sum())
    unsound, missed = certified & ~robust, robust & ~certified
    result.unsound += int(unsound.sum())
    result.over_conservative += int(missed.sum())
    for flags, slot in ((unsound, result.counterexample), (missed, result.example_missed)):
        if flags.any() and not slot:
            t = int(np.flatnonzero(flags)[0])
            slot.update({"true_label": int(y), "one_mask": rows[t].tolist(),
                         **({"pairs": pairs[t].tolist()} if pairs is not None else {})})


def unsure_soundness(maskset: MaskSet, patch, mode: str, alphabet: int = 3) -> int:
    """Certificates computed with unsure predictions hold for every value those could take.

    For every clean row, every set ``U`` of unsure masks and every ``y``: if the certificate holds
    with ``U`` unsure, then every row that agrees with this one outside ``U`` is robust. Returns the
    (row, U, y) cases checked; raises AssertionError with a counterexample.
    """
    n = len(maskset)
    rows = all_rows(n, range(alphabet))
    exact = {y: one_round_robust(maskset, patch, mode, rows, range(alphabet), y) for y in range(alphabet)}
    checked = 0
    for unsure_cols in itertools.product([False, True], repeat=n):
        unsure = np.array(unsure_cols)
        keys = row_keys(rows, np.flatnonzero(~unsure), range(alphabet))
        logits = logits_of(rows, np.broadcast_to(unsure, rows.shape), alphabet)
        for y in range(alphabet):
            all_robust = np.ones(keys.max() + 1, dtype=bool)
            np.logical_and.at(all_robust, keys, exact[y])
            certified = certify(logits, np.full(len(rows), y), maskset, mode, patch=patch).certified
            wrong = certified & ~all_robust[keys]
            assert not wrong.any(), (mode, "unsure", unsure.tolist(), y,
                                     rows[np.flatnonzero(wrong)[0]].tolist())
            checked += len(rows)
    return checked


def _pair_index(n):
    return {p: t for t, p in enumerate(itertools.combinations(range(n), 2))}


def answer_from(pair_values: np.ndarray, index: dict):
    """A pair predictor reading image ``b``'s pair labels from ``pair_values[b]``."""
    lookup = np.full((max(index, default=(0, 0))[0] + 2,) * 2, -1, dtype=np.int64)
    for (i, j), t in index.items():
        lookup[i, j] = lookup[j, i] = t

    def predict(b, pairs):
        pairs = np.asarray(pairs)
        return pair_values[b, lookup[pairs[:, 0], pairs[:, 1]]]
    predict.many = lambda images, pairs: pair_values[images, lookup[pairs[:, 0], pairs[:, 1]]]
    return predict


def _chosen_disagreer_answers(first: np.ndarray, chosen: np.ndarray, pair_list) -> np.ndarray:
    """The attacker's free pair answers when it tries to get mask ``chosen`` accepted (-1: none): a
    pair holding it answers its label, every other pair a label differing from both of its masks'
    (so that no other mask is accepted through a free pair)."""
    out = np.empty((len(first), len(pair_list)), np.int64)
    chosen_label = first[np.arange(len(first)), np.maximum(chosen, 0)]
    for t, (i, j) in enumerate(pair_list):
        other = np.array([min({0, 1, 2} - {u, v}) for u, v in zip(first[:, i], first[:, j])])
        out[:, t] = np.where((chosen == i) | (chosen == j), chosen_label, other)
    return out


def recovery_outcomes(maskset: MaskSet, patch, position, first: np.ndarray, pairs: np.ndarray,
                      alphabet: int = 3, brute_force: bool = False, attack=None, patches: int = 1) -> set:
    """Every (attacked one-mask row, output) of recovery at ``position`` for one clean table.

    ``first`` is the clean one-mask row, ``pairs`` the clean pair labels in :func:`_pair_index`
    order. By the chosen-disagreer abstraction, or with ``brute_force`` over every free pair table
    (tiny sets only): the tests check that both give the same set. ``attack`` may give the fixed
    ``(members, pairs)`` directly (then ``position`` is unused; MaskGroups and ``patches`` > 1, T15).
    """
    n = len(maskset)
    index = _pair_index(n)
    pair_list = list(index)
    if attack is not None:
        cover, forced = attack
    else:
        cover = covers(maskset, patch)[position]
        forced = pair_covers(maskset, patch)[position]
    fixed = np.array([forced[i, j] for i, j in pair_list], dtype=bool)
    rows = all_rows(n, range(alphabet))
    rows = rows[(rows[:, cover] == first[cover]).all(1)]
    if brute_force:
        free_values = all_rows(int((~fixed).sum()), range(alphabet))
        a_first = np.repeat(rows, len(free_values), axis=0)
        a_pairs = np.tile(pairs, (len(a_first), 1))
        a_pairs[:, ~fixed] = np.tile(free_values, (len(rows), 1))
    else:
        a_first = np.repeat(rows, n + 1, axis=0)
        chosen = np.tile(np.arange(-1, n), len(rows))
        a_pairs = np.where(fixed, pairs, _chosen_disagreer_answers(a_first, chosen, pair_list))
    outs = defend(a_first, maskset, "recovery", patch=patch, pair_predictor=answer_from(a_pairs, index),
                  patches=patches).output
    return {(tuple(r.tolist()), int(o)) for r, o in zip(a_first, outs)}


def clean_tables(n: int, alphabet: int = 3):
    """``(index, first, pairs)``: every clean (one-mask row, symmetric pair table) of ``n`` members."""
    index = _pair_index(n)
    rows = all_rows(n, range(alphabet))
    tables = all_rows(len(index), range(alphabet))
    return index, np.repeat(rows, len(tables), axis=0), np.tile(tables, (len(rows), 1))


def _recovery_class_ok(maskset, patch, cover, forced, first, pairs, alphabet, patches, k) -> dict:
    """``{y: ok}`` per clean table: every attack of one class (its fixed members and pairs keep their
    clean values, the rest follow the chosen-disagreer abstraction) leaves the output ``y``."""
    n = len(maskset)
    index = _pair_index(n)
    pair_list = list(index)
    fixed_pairs = np.array([t for (i, j), t in index.items() if forced[i, j]], dtype=np.int64)
    free = np.flatnonzero(~cover)
    parts_first = all_rows(int(cover.sum()), range(alphabet))
    parts_pairs = all_rows(len(fixed_pairs), range(alphabet))
    attacks = all_rows(len(free), range(alphabet))
    combos = np.array(list(itertools.product(range(len(parts_first)), range(len(parts_pairs)),
                                             range(len(attacks)), range(-1, n))), dtype=np.int64)
    a_first = np.empty((len(combos), n), np.int64)
    a_first[:, cover] = parts_first[combos[:, 0]]
    a_first[:, free] = attacks[combos[:, 2]]
    a_pairs = _chosen_disagreer_answers(a_first, combos[:, 3], pair_list)
    if len(fixed_pairs):
        a_pairs[:, fixed_pairs] = parts_pairs[combos[:, 1]]
    # the same key function on attacked and clean tables: the fixed part names the class's outcome
    part_key = (row_keys(a_first, np.flatnonzero(cover), range(alphabet)) * len(parts_pairs)
                + row_keys(a_pairs, fixed_pairs, range(alphabet)))
    outs = defend(a_first, maskset, "recovery", patch=patch, pair_predictor=answer_from(a_pairs, index),
                  patches=patches, k=k).output
    clean_key = (row_keys(first, np.flatnonzero(cover), range(alphabet)) * len(parts_pairs)
                 + row_keys(pairs, fixed_pairs, range(alphabet)))
    ok = {}
    for y in range(alphabet):
        good = np.ones(len(parts_first) * len(parts_pairs), dtype=bool)
        np.logical_and.at(good, part_key, outs == y)
        ok[y] = good[clean_key]
    return ok


def recovery_robustness(maskset, patch, classes=None, alphabet: int = 3, patches: int = 1,
                        k: int | None = None, cache: dict | None = None) -> dict:
    """``{y: robust}`` over the :func:`clean_tables`: PatchCleanser's defence outputs ``y`` on the clean
    table and under every attack of ``classes`` (default: the positions of ``patch``), each
    ``(fixed members, (n, n) fixed pairs, where)``; free pairs follow the chosen-disagreer abstraction.
    ``maskset`` may be a MaskGroups (its pairs are pairs of groups); ``k`` is the multiplicity the
    defence is told (default: the set's own). ``cache`` (a dict, one per family and alphabet) keeps
    each class's outcome for later calls: recovery does not depend on the configured size."""
    n = len(maskset)
    index, first, pairs = clean_tables(n, alphabet)
    clean = defend(first, maskset, "recovery", patch=patch, pair_predictor=answer_from(pairs, index),
                   patches=patches, k=k).output
    if classes is None:
        classes = _position_classes(maskset, patch, with_pairs=True)
    robust = {y: clean == y for y in range(alphabet)}
    for cover, forced, _ in classes:
        key = (cover.tobytes(), forced.tobytes())
        if cache is None or key not in cache:
            ok = _recovery_class_ok(maskset, patch, cover, forced, first, pairs, alphabet, patches, k)
            if cache is None:
                cache = {}
            cache[key] = ok
        for y in range(alphabet):
            robust[y] &= cache[key][y]
    return robust


def recovery_certified(maskset, patch, certificate: str, y: int, alphabet: int = 3, classes=None,
                       patches: int = 1, k: int | None = None) -> np.ndarray:
    """The certificate on every :func:`clean_tables` entry for label ``y``: ``hitting_set`` or
    ``all_pairs`` (the package's, through :func:`certify`) or ``exact`` (T11(b),
    :func:`certmask_core.reference.recovery_robust_reference`, with the attacks of ``classes``)."""
    n = len(maskset)
    index, first, pairs = clean_tables(n, alphabet)
    if certificate == "exact":  # T11(b): the exact condition, from certmask_core.reference
        if classes is None:
            classes = _position_classes(maskset, patch, with_pairs=True)
        positions = [(cover, forced) for cover, forced, _ in classes]
        return np.array([
            recovery_robust_reference(f, lambda i, j, t=t: t[index[min(i, j), max(i, j)]], y, positions,
                                      range(alphabet))
            for f, t in zip(first, pairs)])
    return certify(first, np.full(len(first), y), maskset, "recovery", patch=patch,
                   pair_predictor=answer_from(pairs, index), recovery_certificate=certificate,
                   patches=patches, k=k).certified


def recovery_exact(maskset, patch, certificate: str = "hitting_set", alphabet: int = 3,
                   geometry: str = "", classes=None, patches: int = 1, k: int | None = None) -> ExactResult:
    """Certificate vs robustness of PatchCleanser's defence on every clean (row, pair table).

    ``certificate`` is ``hitting_set`` or ``all_pairs`` (the package's, through :func:`certify`) or
    ``exact`` (T11(b), :func:`certmask_core.reference.recovery_robust_reference`). ``classes`` and
    ``patches`` as in :func:`recovery_robustness` (T15: MaskGroups, several patches).
    """
    _, first, pairs = clean_tables(len(maskset), alphabet)
    robust = recovery_robustness(maskset, patch, classes, alphabet, patches, k)
    result = ExactResult("recovery", certificate, geometry)
    for y in range(alphabet):
        certified = recovery_certified(maskset, patch, certificate, y, alphabet, classes, patches, k)
        tally(result, first, y, robust[y], certified, pairs)
    return result


def attack_classes(family, pixel_sets) -> list:
    """The distinct attacks of a physical threat: for each ``(where, (H, W) bool pixels)`` of
    ``pixel_sets`` (every pixel the patches may change), the members whose hidden pixels (a group:
    the union of its masks) contain all of them, and the pairs of members whose union does. Returns
    ``[(fixed members (n,), fixed pairs (n, n), where)]``, one per distinct signature."""
    dense = dense_pixels(family)
    union = dense[:, None] | dense[None, :]
    seen = {}
    for where, pixels in pixel_sets:
        cover = dense[:, pixels].all(1)
        forced = union[:, :, pixels].all(2)
        seen.setdefault(cover.tobytes() + forced.tobytes(), (cover, forced, where))
    return list(seen.values())


def box_attacks(image, patch):
    """One ``ph x pw`` patch at every position."""
    for position in positions(image, patch):
        yield position, box(image, patch, position)


def tuple_attacks(image, patch, patches: int):
    """``patches`` patches of size ``ph x pw`` at every multiset of positions (they may overlap)."""
    for where in itertools.combinations_with_replacement(positions(image, patch), patches):
        yield where, np.logical_or.reduce([box(image, patch, p) for p in where])


def shape_attacks(image, patch):
    """A patch of any shape that fits in a ``ph x pw`` box: every non-empty subset of the box's
    pixels (L-shapes, diagonals, single pixels, ...) at every position."""
    cells = list(itertools.product(range(patch[0]), range(patch[1])))
    for a, b in positions(image, patch):
        for size in range(1, len(cells) + 1):
            for shape in itertools.combinations(cells, size):
                pixels = np.zeros(image, dtype=bool)
                pixels[tuple(np.array(shape).T + np.array([[a], [b]]))] = True
                yield ((a, b), shape), pixels


def random_geometries(seed: int = 0, count: int = 6, max_masks: int = 5):
    """Seeded random mask sets with duplicated, border-clipped and useless (smaller than the patch)
    masks, on 1-D strips and small 2-D images, each covering every position at least once."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        image, patch = ((1, 7), (1, 2)) if made % 2 == 0 else ((4, 4), (2, 2))
        n = int(rng.integers(3, max_masks + 1))
        H, W = image
        origins = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], axis=1)
        sizes = np.stack([rng.integers(1, H + 1, n), rng.integers(1, W + 1, n)], axis=1)
        sizes = np.minimum(sizes, np.array(image) - origins)  # clipped at the border
        origins[-1], sizes[-1] = origins[0], sizes[0]  # a duplicate
        ms = MaskSet(image, origins, sizes)
        if covers(ms, patch).reshape(-1, n).any(1).all():
            made += 1
            yield f"random {H}x{W} p{patch[0]}x{patch[1]} n={n} #{made}", ms, patch


def k_fold_strips():
    """Package constructions with k = 2 small enough for recovery's full tables (n = 3 and 4)."""
    for image, patch, strategy, per_axis in (((1, 4), (1, 2), "replicated", (1, 1)),
                                             ((1, 3), (1, 1), "offset", (1, 1)),
                                             ((1, 3), (1, 1), "offset", (1, 2)),
                                             ((1, 6), (1, 2), "replicated", (1, 2))):
        ms = make_maskset(PatchThreat(image, patch), k=2, strategy=strategy, masks_per_axis=per_axis)
        yield f"{image[0]}x{image[1]} p{patch[0]}x{patch[1]} {strategy} k=2 n={len(ms)}", ms, patch


def geometries(max_masks: int):
    """The package constructions of the soundness table, the k = 2 strips and the random sets."""
    for name, ms, patch in list(small_geometries()) + list(k_fold_strips()) + list(random_geometries()):
        if len(ms) <= max_masks:
            yield name, ms, patch


def exhaustive_one_round(mode: str, alphabet: int = 3, max_masks: int = 6, unsure_max_masks: int = 5) -> int:
    """T12/T13: on every geometry, certified => robust and robust => certified (the certificate is
    exact), and every choice of unsure predictions on the smaller sets; returns the cases checked."""
    checked = 0
    for name, ms, patch in geometries(max_masks):
        result = one_round_exact(ms, patch, mode, alphabet, geometry=name)
        assert result.unsound == 0, (name, result.counterexample)
        assert result.over_conservative == 0, (name, "robust but not certified", result.example_missed)
        checked += result.tables
        if len(ms) <= unsure_max_masks:
            checked += unsure_soundness(ms, patch, mode, alphabet)
    return checked


ONE_ROUND = ("detection", "plurality", "covering_consensus")


def table(one_round_max: int = 6, recovery_max: int = 3, alphabet: int = 3) -> list[ExactResult]:
    results = []
    for name, ms, patch in geometries(max(one_round_max, recovery_max)):
        if len(ms) <= one_round_max:
            results += [one_round_exact(ms, patch, mode, alphabet, geometry=name) for mode in ONE_ROUND]
        if len(ms) <= recovery_max:
            results += [recovery_exact(ms, patch, c, alphabet, geometry=name)
                        for c in ("hitting_set", "all_pairs", "exact")]
    return results


def main(one_round_max: int = 6, recovery_max: int = 3) -> int:
    results = table(one_round_max, recovery_max)
    print(f"{'geometry':38s} {'certificate':19s} {'tables':>8s} {'robust':>7s} {'certified':>9s} "
          f"{'unsound':>7s} {'missed':>7s}  verdict")
    for r in results:
        verdict = "proven" if r.unsound == 0 else f"COUNTEREXAMPLE {r.counterexample}"
        print(f"{r.geometry:38s} {r.certificate:19s} {r.tables:8d} {r.robust:7d} {r.certified:9d} "
              f"{r.unsound:7d} {r.over_conservative:7d}  {verdict}")
    return int(any(r.unsound for r in results))


if __name__ == "__main__":
    import sys
    sys.exit(main(*map(int, sys.argv[1:])))
