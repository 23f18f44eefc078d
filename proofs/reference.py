"""Slow, obviously correct twins of the core's decision rules, from the definitions (docs/theory.md;
every fast path and its twin: docs/design.md section 6).

They work on dense covering sets built pixel by pixel (:func:`proofs.common.covers`) and plain
Python sets, and are the oracles of the tests and the fuzz wall for the numba kernels of
:mod:`certmask_core.certification` and :mod:`certmask_core.coverage`.

The last section keeps the per-image implementations of recovery's second round that the core ran
before it was vectorised over images (:mod:`certmask_core.double_masking`,
:class:`certmask_core.sizes.PairCache`). They are not written from the definitions but from a fixed
asking order, so they are the twins of the fast code on everything it promises: certificates,
outputs, the pairs asked (and their order) and the passes.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from certmask_core.certification import ALERT, NO_VOTE
from certmask_core.errors import CertMaskError

from .common import covers


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


# --- recovery's second round, one image at a time (the core before it was vectorised) -------------

# pair states of the hitting-set search
_UNKNOWN, _SURE, _NEAR, _WRONG = 0, 1, 2, 3
_STATE_BYTES = 2**26
"""Memory for the per-image pair-state matrices of one block of images (int8, n x n each)."""


def _row_pairs(i: int, others: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(others), i), others], axis=1)


def _majority(row: np.ndarray, no_vote: int, alert: int) -> int:
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
    output = np.array([_majority(row, no_vote, alert) for row in first], dtype=np.int64)
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
