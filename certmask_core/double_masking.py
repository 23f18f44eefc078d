"""PatchCleanser's double-masking defence and its two certificates (theorems T8 and T11).

Pair predictions are asked for many images at once: every round gathers the requests of all the
images still undecided into one call of the pair predictor, so a backend sees full batches.

A pair predictor is a callable ``pair_predictor(image_index, pairs)`` answering one image
(:data:`certmask_core.certification.PairPredictor`). It may also offer
``pair_predictor.many(image_indices, pairs)``, answering rows of several images in one call
(``image_indices`` shape ``(m,)``, ``pairs`` shape ``(m, 2)``); the core then uses that.
"""
from __future__ import annotations

import numpy as np

from .errors import CertMaskError

# pair states of the hitting-set certificate
_UNKNOWN, _SURE, _NEAR, _WRONG = 0, 1, 2, 3
_STATE_BYTES = 2**26
"""Memory for the per-image pair-state matrices of one block of images (int8, n x n each)."""


def ask_pairs(pair_predictor, image_indices: np.ndarray, pairs: np.ndarray,
              validate) -> tuple[np.ndarray, np.ndarray]:
    """Labels and margins of ``pairs[t]`` on image ``image_indices[t]``, in one call if possible.

    ``validate(answer, m)`` turns an answer of ``m`` rows into (labels, margins).
    """
    if len(pairs) == 0:
        return np.empty(0, np.int64), np.empty(0)
    many = getattr(pair_predictor, "many", None)
    if callable(many):
        return validate(many(image_indices, pairs), len(pairs))
    labels, margins = np.empty(len(pairs), np.int64), np.empty(len(pairs))
    order = np.argsort(image_indices, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(image_indices[order]) != 0])
    for first, last in zip(starts, np.r_[starts[1:], len(order)]):
        rows = order[first:last]
        labels[rows], margins[rows] = validate(pair_predictor(int(image_indices[rows[0]]), pairs[rows]),
                                               len(rows))
    return labels, margins


def all_pairs(n: int) -> np.ndarray:
    """The ``n (n - 1) / 2`` unordered mask pairs ``(i, j)``, ``i < j``, in row-major order."""
    i, j = np.triu_indices(n, k=1)
    return np.stack([i, j], axis=1)


def _row_pairs(i: int, others: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(others), i), others], axis=1)


def _majority(row: np.ndarray, no_vote: int, alert: int) -> int:
    votes = row[row != no_vote]
    if not len(votes):
        return alert
    classes, counts = np.unique(votes, return_counts=True)
    return int(classes[counts.argmax()])


def patchcleanser_defence(first: np.ndarray, ask, no_vote: int, alert: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """PatchCleanser's defence on every row of ``first``; returns (output, second-round passes).

    First round: the majority (ties to the smallest class; NO_VOTE votes for none). If every mask
    agrees with it, output it. Otherwise try the disagreeing masks in index order: the first whose
    every two-mask prediction equals its own one-mask prediction is output; else the majority.
    ``ask(image_indices, pairs)`` returns the pair labels.
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


def all_pairs_certificate(first, sure, y, ask, chunk: int):
    """T8: every one-mask and every two-mask prediction equals ``y``.

    ``sure`` flags predictions whose margin is above the tolerance. Pairs are asked ``chunk`` per
    image per round, and an image stops at its first wrong chunk. Returns (holds, holds on labels
    alone, pair passes, smallest margin seen).
    """
    B, n = first.shape
    loose = (first == y[:, None]).all(1)
    strict = loose & sure.all(1)
    passes = np.zeros(B, dtype=np.int64)
    min_margin = np.full(B, np.inf)
    pairs = all_pairs(n)
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


class _HittingSearch:
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


def hitting_set_certificate(first, sure, y, member, ask):
    """T11: the good masks hit every minimal covering set.

    ``member`` is the ``(n, m)`` membership of masks in the minimal covering sets. Each round asks,
    for every undecided image, the unevaluated pairs of one candidate mask (one-mask prediction
    ``y``), chosen greedily by how many still-unhit minimal sets it lies in; an image stops when its
    good masks hit every minimal set or when some unhit set has no untried candidate left.
    Returns (holds, holds on labels alone, pair passes, smallest margin seen).
    """
    B, n = first.shape
    strict, loose = np.zeros(B, dtype=bool), np.zeros(B, dtype=bool)
    passes = np.zeros(B, dtype=np.int64)
    min_margin = np.full(B, np.inf)
    block = max(1, _STATE_BYTES // max(1, n * n))
    for start in range(0, B, block):
        searches = {b: _HittingSearch(first[b], sure[b], y[b], member)
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


class PairAsker:
    """``ask(image_indices, pairs)`` -> validated (labels, margins) from a user's pair predictor.

    ``tolerance`` is the margin at or below which a pair prediction is unsure (certificates only).
    """

    def __init__(self, pair_predictor, validate, tolerance: float):
        if not callable(pair_predictor):
            raise CertMaskError(f"mode 'recovery' needs a callable pair_predictor for its second round, "
                                f"got {pair_predictor!r}")
        self.pair_predictor, self.validate, self.tolerance = pair_predictor, validate, tolerance

    def __call__(self, image_indices, pairs):
        return ask_pairs(self.pair_predictor, np.asarray(image_indices, dtype=np.int64),
                         np.asarray(pairs, dtype=np.int64), self.validate)

    def labels(self, image_indices, pairs):
        return self(image_indices, pairs)[0]
