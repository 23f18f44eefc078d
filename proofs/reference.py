"""Slow, obviously correct twins of the core's decision rules, from the definitions (DESIGN.md 2).

They work on dense covering sets built pixel by pixel (:func:`proofs.soundness.covers`) and plain
Python sets, and are the oracles of the tests and the fuzz wall for the numba kernels of
:mod:`certmask_core.certification` and :mod:`certmask_core.coverage`.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from certmask_core.certification import ALERT, NO_VOTE

from .soundness import covers


def covering_sets_reference(maskset, patch) -> set[frozenset]:
    """Every distinct ``S(l)``, as frozensets of mask indices."""
    cov = covers(maskset, patch)
    return {frozenset(np.flatnonzero(row).tolist()) for row in cov.reshape(-1, cov.shape[-1])}


def minimal_sets_reference(sets: set[frozenset]) -> set[frozenset]:
    """The sets that contain no other set."""
    return {s for s in sets if not any(t < s for t in sets)}


def one_round_reference(row, sets: set[frozenset], mode: str, k: int = 1) -> int:
    """``detection``, ``plurality``, ``covering_consensus`` or ``paper`` on one row of labels, from the
    definitions."""
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
    """PatchCleanser's double masking on one row; ``pair_label(i, j)`` answers the pair ``(i, j)``."""
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
    """The class with more votes than any other (NO_VOTE excluded), or None."""
    counts = Counter(v for v in votes if v != NO_VOTE)
    if not counts:
        return None
    ranked = counts.most_common()
    return ranked[0][0] if len(ranked) == 1 or ranked[0][1] > ranked[1][1] else None


def plurality_reference(row, minimal: set[frozenset]) -> int:
    """``plurality`` on one row: the strict plurality of every minimal covering set, else ALERT."""
    winners = {strict_plurality([row[i] for i in m]) for m in minimal}
    return winners.pop() if len(winners) == 1 and None not in winners else ALERT


def plurality_certificate_reference(row, unsure, y: int, minimal: set[frozenset]) -> bool:
    """T12: in every minimal set, sure votes for ``y`` beat any other class's sure votes plus every
    unsure prediction."""
    for m in minimal:
        sure = [row[i] for i in m if not unsure[i]]
        rivals = Counter(v for v in sure if v not in (y, NO_VOTE))
        if sure.count(y) <= max(rivals.values(), default=0) + sum(bool(unsure[i]) for i in m):
            return False
    return True


def consensus_certificate_reference(row, unsure, y: int, minimal: set[frozenset]) -> bool:
    """T13 from its statement: clean output ``y`` whatever the unsure predictions, and at every
    minimal set ``C`` either ``C`` votes ``y`` wholly and surely or every minimal set is blocked in it."""
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
    """T11: the surely good masks hit every minimal covering set (every pair evaluated)."""
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
