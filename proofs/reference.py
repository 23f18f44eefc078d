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
    return {frozenset(np.flatnonzero(cov[a, b]).tolist())
            for a in range(cov.shape[0]) for b in range(cov.shape[1])}


def minimal_sets_reference(sets: set[frozenset]) -> set[frozenset]:
    """The sets that contain no other set."""
    return {s for s in sets if not any(t < s for t in sets)}


def one_round_reference(row, sets: set[frozenset], mode: str, k: int = 1) -> int:
    """``detection``, ``covering_consensus`` or ``paper`` on one row of labels, from the definitions."""
    votes = Counter(v for v in row if v != NO_VOTE)
    voters = {c: frozenset(i for i, v in enumerate(row) if v == c) for c in votes}
    if mode == "detection":
        return row[0] if len(votes) == 1 and votes[row[0]] == len(row) else ALERT
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
