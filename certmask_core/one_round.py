"""The one-round decisions as numba kernels: plurality (T12), covering consensus (T7, T13), paper (T9).

Each kernel decides every row of a ``(B, n)`` int64 label matrix at once from the family's covering
sets (:class:`~certmask_core.family_geometry.FamilyGeometry`): minimal sets as member lists
``idx[ptr[s]:ptr[s + 1]]`` or as bitsets. ``NO_VOTE`` votes for no class. Detection (unanimity)
needs no kernel; recovery's two rounds are in :mod:`.double_masking`.

Slow twins (one image at a time, from the definitions): :func:`certmask_core.reference.one_round_reference`,
``plurality_certificate_reference`` and ``consensus_certificate_reference``.
"""
from __future__ import annotations

import numba
import numpy as np

from .predictions import NO_VOTE


@numba.njit(cache=True)
def _largest_run(values, count):  # pragma: no cover - compiled
    """``(label, size, tied)`` of the most frequent value in ``values[:count]`` (label -1 when empty)."""
    votes = np.sort(values[:count])
    best, best_count, tied = -1, 0, False
    start = 0
    while start < count:
        stop = start
        while stop < count and votes[stop] == votes[start]:
            stop += 1
        if stop - start > best_count:
            best, best_count, tied = votes[start], stop - start, False
        elif stop - start == best_count:
            tied = True
        start = stop
    return best, best_count, tied


@numba.njit(cache=True)
def plurality_kernel(labels, ptr, idx):  # pragma: no cover - compiled
    """``plurality`` on every row: the class that is the strict plurality of the one-mask
    predictions inside every minimal covering set (members ``idx[ptr[s]:ptr[s + 1]]``), else -1."""
    B, n = labels.shape
    out = np.empty(B, dtype=np.int64)
    buf = np.empty(n, dtype=np.int64)
    for b in range(B):
        common = -1
        for s in range(len(ptr) - 1):
            count = 0
            for t in range(ptr[s], ptr[s + 1]):
                if labels[b, idx[t]] != NO_VOTE:  # votes for no class
                    buf[count] = labels[b, idx[t]]
                    count += 1
            winner, _, tied = _largest_run(buf, count)
            if tied or winner == -1 or (s > 0 and winner != common):
                common = -1
                break
            common = winner
        out[b] = common
    return out


@numba.njit(cache=True)
def plurality_certificate(labels, unsure, y, ptr, idx):  # pragma: no cover - compiled
    """T12 on every row: inside every minimal set, the sure votes for ``y`` outnumber the sure votes
    of any other class plus every unsure prediction (which may turn into that class)."""
    B, n = labels.shape
    out = np.ones(B, dtype=np.bool_)
    buf = np.empty(n, dtype=np.int64)
    for b in range(B):
        for s in range(len(ptr) - 1):
            for_y, open_, count = 0, 0, 0
            for t in range(ptr[s], ptr[s + 1]):
                i = idx[t]
                if unsure[b, i]:
                    open_ += 1
                elif labels[b, i] == y[b]:
                    for_y += 1
                elif labels[b, i] != NO_VOTE:
                    buf[count] = labels[b, i]
                    count += 1
            _, rival, _ = _largest_run(buf, count)
            if for_y <= rival + open_:
                out[b] = False
                break
    return out


@numba.njit(cache=True)
def _blocked(labels, y, members, fixed):  # pragma: no cover - compiled
    """No class ``c != y`` can hold every fixed mask of ``members`` (so, with the masks outside
    ``fixed`` voting ``c``, ``c`` cannot take this whole covering set): some fixed member votes ``y``
    or for no class, or two fixed members vote differently. False when no member is fixed."""
    first = np.int64(-3)
    for i in members:
        if fixed[i]:
            v = labels[i]
            if v == y or v == NO_VOTE:
                return True
            if first == -3:
                first = v
            elif v != first:
                return True
    return False


@numba.njit(cache=True)
def consensus_certificate(labels, unsure, y, ptr, idx):  # pragma: no cover - compiled
    """T13 on every row, with every unsure prediction free (the attacker's).

    (a) The defence outputs ``y`` on the clean image whatever the unsure predictions are: some
    minimal set votes ``y`` wholly and surely, and every minimal set is blocked for the other
    classes by its sure members. (b) At every minimal set ``C`` (a patch position; its supersets
    follow), either ``C`` votes ``y`` wholly and surely, or every minimal set is blocked by its sure
    members inside ``C``.
    """
    B, n = labels.shape
    m = len(ptr) - 1
    out = np.zeros(B, dtype=np.bool_)
    sure = np.empty(n, dtype=np.bool_)
    fixed = np.empty(n, dtype=np.bool_)
    whole = np.empty(m, dtype=np.bool_)
    for b in range(B):
        row = labels[b]
        for i in range(n):
            sure[i] = not unsure[b, i]
        for s in range(m):
            whole[s] = True
            for t in range(ptr[s], ptr[s + 1]):
                if not sure[idx[t]] or row[idx[t]] != y[b]:
                    whole[s] = False
                    break
        ok = whole.any()
        for s in range(m):
            if not ok:
                break
            ok = _blocked(row, y[b], idx[ptr[s]:ptr[s + 1]], sure)
        for c in range(m):
            if not ok:
                break
            if whole[c]:
                continue
            fixed[:] = False
            for t in range(ptr[c], ptr[c + 1]):
                fixed[idx[t]] = sure[idx[t]]
            for s in range(m):
                if not _blocked(row, y[b], idx[ptr[s]:ptr[s + 1]], fixed):
                    ok = False
                    break
        out[b] = ok
    return out


@numba.njit(cache=True)
def one_round_kernel(labels, sets, paper, k):  # pragma: no cover - compiled
    """``covering_consensus`` (``paper=False``) or ``paper`` on every row of ``labels``.

    ``sets`` are bitsets of covering sets: the minimal ones for covering consensus (class c
    qualifies when its voters contain one), all of them for paper (c qualifies when it has exactly
    ``k`` voters and they lie inside one). Classes are visited in increasing order.
    """
    B, n = labels.shape
    m, words = sets.shape
    out = np.empty(B, dtype=np.int64)
    voters = np.zeros(words, dtype=np.uint64)
    one = np.uint64(1)
    for b in range(B):
        row = labels[b]
        order = np.argsort(row, kind="mergesort")
        found, first_found = 0, -1
        best, best_count = -1, 0
        start = 0
        while start < n:
            c = row[order[start]]
            stop = start
            while stop < n and row[order[stop]] == c:
                stop += 1
            count = stop - start
            if c != NO_VOTE:  # votes for no class
                if count > best_count:
                    best, best_count = c, count
                voters[:] = 0
                for t in range(start, stop):
                    i = order[t]
                    voters[i >> 6] |= one << np.uint64(i & 63)
                qualifies = False
                if not paper or count == k:
                    for s in range(m):
                        inside = True
                        for w in range(words):
                            if (sets[s, w] & ~voters[w]) if not paper else (voters[w] & ~sets[s, w]):
                                inside = False
                                break
                        if inside:
                            qualifies = True
                            break
                if qualifies:
                    found += 1
                    if first_found < 0:
                        first_found = c
            start = stop
        if not paper:
            out[b] = first_found if found == 1 else -1
        elif best_count == n:
            out[b] = best  # unanimous
        elif found:
            out[b] = first_found
        else:
            out[b] = best  # majority, ties to the smallest class; -1 (ALERT) when nobody votes
    return out


def one_round_certificate(mode: str, first: np.ndarray, unsure: np.ndarray, y: np.ndarray,
                          geometry) -> np.ndarray:
    """The one-round certificate of ``mode`` for each image, each ``unsure`` prediction taking any value.

    ``first``: ``(B, n)`` labels; ``unsure``: ``(B, n)`` bool; ``y``: ``(B,)`` true labels;
    ``geometry``: the family's :class:`~certmask_core.family_geometry.FamilyGeometry`.
    """
    if mode in ("detection", "paper"):
        return ((first == y[:, None]) & ~unsure).all(1)
    if mode == "plurality":
        return plurality_certificate(first, unsure, y, *geometry.member_lists)
    return consensus_certificate(first, unsure, y, *geometry.member_lists)
