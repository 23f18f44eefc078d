"""PatchCleanser's double-masking defence and its two certificates (theorems T8 and T11).

Pair predictions are asked for many images at once: every round gathers the requests of all the
images still undecided into one call of the pair predictor, so a backend sees full batches. The
decisions of a round are taken for all those images together, in array operations (no Python loop
over images or pairs), so that the host keeps up with a fast model. Each function has a slow twin in
:mod:`certmask_core.reference` that decides one image at a time; the twins ask the same pairs in the same
order and return the same results.

A pair predictor is a callable ``pair_predictor(image_index, pairs)`` answering one image
(:data:`certmask_core.certification.PairPredictor`). It may also offer
``pair_predictor.many(image_indices, pairs)``, answering rows of several images in one call
(``image_indices`` shape ``(m,)``, ``pairs`` shape ``(m, 2)``); the core then uses that.
"""
from __future__ import annotations

import numpy as np

from .errors import CertMaskError
from .predictions import DEFAULT_MARGIN_TOLERANCE, labels_and_margins

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


def _group_starts(images: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins in the sorted ``images``."""
    starts = np.ones(len(images), dtype=bool)
    np.not_equal(images[1:], images[:-1], out=starts[1:])
    return np.flatnonzero(starts)


def majorities(first: np.ndarray, no_vote: int, alert: int) -> np.ndarray:
    """First-round majority of every row: the most frequent label, ties to the smallest, ``no_vote``
    votes for none; ``alert`` for a row without a vote.

    Slow twin: :func:`certmask_core.reference.majority_reference` (one row at a time)."""
    B, n = first.shape
    if n == 0:
        return np.full(B, alert, dtype=np.int64)
    votes = np.sort(first, axis=1)
    position = np.broadcast_to(np.arange(n), (B, n))
    starts = np.ones((B, n), dtype=bool)
    starts[:, 1:] = votes[:, 1:] != votes[:, :-1]
    ends = np.ones((B, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    # every entry learns the first and last position of its run of equal labels
    run_start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    run_end = np.minimum.accumulate(np.where(ends, position, n)[:, ::-1], axis=1)[:, ::-1]
    count = np.where(votes == no_vote, 0, run_end - run_start + 1)
    best = count.argmax(1)  # the first longest run: the smallest of the tied labels (sorted)
    rows = np.arange(B)
    return np.where(count[rows, best] > 0, votes[rows, best], alert).astype(np.int64)


def patchcleanser_defence(first: np.ndarray, ask, no_vote: int, alert: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """PatchCleanser's defence on every row of ``first``; returns (output, second-round passes).

    First round: the majority (ties to the smallest class; NO_VOTE votes for none). If every mask
    agrees with it, output it. Otherwise try the disagreeing masks in index order: the first whose
    every two-mask prediction equals its own one-mask prediction is output; else the majority.
    ``ask(image_indices, pairs)`` returns the pair labels. Each round asks, for every image still
    trying, the ``n - 1`` pairs of its next disagreeing mask, images in index order.

    Slow twin: :func:`certmask_core.reference.patchcleanser_defence_reference` (same output, same pairs
    asked in the same order, same passes).
    """
    B, n = first.shape
    output = majorities(first, no_vote, alert)
    passes = np.zeros(B, dtype=np.int64)
    disagree = (first != output[:, None]) & (first != no_vote)
    queue_length = disagree.sum(1)
    step = np.zeros(B, dtype=np.int64)
    trying = np.flatnonzero((output != alert) & (queue_length > 0))
    others = np.arange(n - 1)
    while len(trying):
        # the step-th disagreeing mask: the first column where the running count passes step
        mask = (np.cumsum(disagree[trying], axis=1) > step[trying, None]).argmax(1)
        partners = others + (others >= mask[:, None])  # every other mask, in index order
        images = np.repeat(trying, n - 1)
        pairs = np.stack([np.repeat(mask, n - 1), partners.ravel()], axis=1)
        answers = np.asarray(ask(images, pairs)).reshape(len(trying), n - 1)
        passes[trying] += n - 1
        step[trying] += 1
        own = first[trying, mask]
        accepted = (answers == own[:, None]).all(1)
        output[trying[accepted]] = own[accepted]
        trying = trying[~accepted & (step[trying] < queue_length[trying])]
    return output, passes


def all_pairs_certificate(first, sure, y, ask, chunk: int):
    """T8: every one-mask and every two-mask prediction equals ``y``.

    ``sure`` flags predictions whose margin is above the tolerance. Pairs are asked ``chunk`` per
    image per round, and an image stops at its first wrong chunk. Every image starts together and
    moves one chunk a round, so a round asks the same chunk of :func:`all_pairs` of every image
    still in. Returns (holds, holds on labels alone, pair passes, smallest margin seen).

    Slow twin: :func:`certmask_core.reference.all_pairs_certificate_reference` (same results, same pairs
    asked in the same order, same passes and margins).
    """
    B, n = first.shape
    y = np.asarray(y)
    loose = (first == y[:, None]).all(1)
    strict = loose & sure.all(1)
    passes = np.zeros(B, dtype=np.int64)
    min_margin = np.full(B, np.inf)
    pairs = all_pairs(n)
    going = np.flatnonzero(loose)
    position = 0
    while len(going) and position < len(pairs):
        batch = pairs[position:position + chunk]
        labels, margins = ask(np.repeat(going, len(batch)), np.tile(batch, (len(going), 1)))
        labels = np.asarray(labels).reshape(len(going), len(batch))
        margins = np.asarray(margins).reshape(len(going), len(batch))
        passes[going] += len(batch)
        min_margin[going] = np.minimum(min_margin[going], margins.min(1, initial=np.inf))
        position += chunk
        wrong = (labels != y[going, None]).any(1)
        loose[going[wrong]] = False
        strict[going] &= ~wrong & (margins > ask.tolerance).all(1)
        going = going[~wrong]
    return strict, loose, passes, min_margin


class _HittingSearches:
    """The T11 searches of a block of images, advanced together (one search per image).

    Mask ``g`` is good when its one-mask prediction and every two-mask prediction ``(g, m)`` equal
    ``y``; it is *surely* good when all those predictions also have margins above the tolerance.
    Each search first looks for surely good masks; if that becomes impossible it goes on with good
    ones (to tell a refusal for margins from a failure).

    The rule is that of :class:`certmask_core.reference.HittingSearchReference`, step for step, in array
    operations over the images: ``state`` holds every image's ``(n, n)`` pair states, and per-row
    summaries (pairs not asked yet, a wrong pair, a near pair) are kept up to date as answers
    arrive, so that a round reads the summaries, products with the membership and the state rows of
    the candidates it asks or checks, never every image's ``n x n`` states. Levels are indices: 1
    looks for surely good masks, 0 for good ones.
    """

    def __init__(self, first, sure, y, member):
        B, n = first.shape
        self.n, self.y = n, y
        # membership as float32 so that set counts are matrix products (exact: counts stay below 2**24)
        self.member = np.asarray(member, dtype=np.float32)
        self.member_t = np.ascontiguousarray(self.member.T)
        loose = first == y[:, None]
        self.candidate = np.stack([loose, loose & sure])
        self.good = np.zeros((2, B, n), dtype=bool)
        self.tried = np.zeros((B, n), dtype=bool)
        self.state = np.zeros((B, n, n), dtype=np.int8)
        self.state[:, np.arange(n), np.arange(n)] = _SURE
        self.unknown = np.full((B, n), n - 1, dtype=np.int64)  # per row: pairs not asked yet
        self.wrong = np.zeros((B, n), dtype=bool)  # per row: some pair answered a wrong label
        self.near = np.zeros((B, n), dtype=bool)  # per row: some right pair with a margin too small
        self.level = np.ones(B, dtype=np.int64)
        self.width = np.ones(B, dtype=np.int64)  # candidate rows asked in the next round without a suspect
        self.pending = np.zeros((B, n), dtype=bool)  # the rows asked last round
        self.searching = np.ones(B, dtype=bool)
        self._lower = np.tri(n, k=-1, dtype=bool)  # i > j: a pair of two pending rows is asked once, i < j
        self._eye = np.eye(n, dtype=bool)

    def unhit(self, level, images) -> np.ndarray:
        """``(t, m)``: minimal sets no good mask of ``level`` (per image) lies in yet."""
        return (self.good[level, images].astype(np.float32) @ self.member) == 0

    def hits(self, level: int) -> np.ndarray:
        """Per image: its good masks of ``level`` hit every minimal set."""
        return ~self.unhit(np.full(len(self.y), level), np.arange(len(self.y))).any(1)

    def requests(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images, pairs)`` to evaluate this round, grouped by image in index order; images whose
        search is over stop searching. Empty when every search is over."""
        found_images, found_pairs = [], []
        todo = np.flatnonzero(self.searching)
        while len(todo):
            level = self.level[todo]
            unhit = self.unhit(level, todo)
            over = ~unhit.any(1)
            blocked = self.wrong[todo] | (self.near[todo] & (level == 1)[:, None])
            open_ = self.candidate[level, todo] & ~self.tried[todo] & ~blocked
            open_count = open_.astype(np.float32) @ self.member
            stuck = ~over & (unhit & (open_count == 0)).any(1)  # an unhit set without open candidate
            relax = stuck & (level == 1)
            if relax.any():
                relax[relax] = self._loose_possible(todo[relax])
            self.level[todo[relax]] = 0
            self.searching[todo[(over | stuck) & ~relax]] = False
            go = ~(over | stuck)
            images, unhit, open_, open_count = todo[go], unhit[go], open_[go], open_count[go]
            g = ((unhit.astype(np.float32) @ self.member_t) * open_).argmax(1)  # first of the largest gain
            unasked = self.state[images, g] == _UNKNOWN  # the pairs of g's row not asked yet
            suspect = ~self.candidate[0, images] | self.wrong[images]
            known = ~unasked.any(1)
            if known.any():  # a row already complete: settle it and choose again
                self._settle(images[known], self._eye[g[known]])
            split = ~known & (unasked & suspect).any(1) & (unasked & ~suspect).any(1)
            if split.any():
                # pairs with a suspect first: they are the likeliest to be wrong, and one wrong pair
                # spares the rest of the row
                self.pending[images[split]] = self._eye[g[split]]
                t, j = np.nonzero(unasked[split] & suspect[split])
                found_images.append(images[split][t])
                found_pairs.append(np.stack([g[split][t], j], axis=1))
            whole = ~known & ~split
            if whole.any():
                found = self._rows(images[whole], g[whole], unhit[whole], open_[whole], open_count[whole],
                                   suspect[whole])
                found_images.append(found[0])
                found_pairs.append(found[1])
            todo = np.sort(np.concatenate([todo[relax], images[known]]))
        if not found_images:
            return np.empty(0, np.int64), np.empty((0, 2), np.int64)
        images, pairs = np.concatenate(found_images), np.concatenate(found_pairs)
        order = np.argsort(images, kind="stable")  # each image's request stays in its own order
        return images[order], pairs[order]

    def _rows(self, images, g, unhit, open_, open_count, suspect):
        """No suspect in sight: the rows of ``g`` and of up to ``width - 1`` forced candidates.

        Every candidate that alone can hit some unhit set must be good for the image to be certified,
        so their rows are asked together, as many more each round as the rows of the last round all
        came back good (fewer rounds, little waste). A candidate with an unknown pair with a suspect
        waits: that pair is the likeliest to be wrong.
        """
        rows = np.arange(len(images))
        alone = unhit & (open_count == 1)
        forced = open_ & ((alone.astype(np.float32) @ self.member_t) > 0)
        forced[rows, g] = False
        t, i = np.nonzero(forced)
        if len(t):  # only the rows of those candidates are read, not every image's n x n states
            waiting = ((self.state[images[t], i] == _UNKNOWN) & suspect[t]).any(1)
            forced[t[waiting], i[waiting]] = False
        forced &= np.cumsum(forced, axis=1) <= (self.width[images] - 1)[:, None]
        forced[rows, g] = True
        self.pending[images] = forced
        t, i = np.nonzero(forced)
        ask = (self.state[images[t], i] == _UNKNOWN) & ~(forced[t] & self._lower[i])
        r, j = np.nonzero(ask)
        return images[t[r]], np.stack([i[r], j], axis=1)

    def _loose_possible(self, images) -> np.ndarray:
        """Per image: no good mask hits every minimal set yet, and every unhit set still holds an open
        candidate of level 0 (so a search for good masks may succeed)."""
        open_ = self.candidate[0, images] & ~self.tried[images] & ~self.wrong[images]
        unhit = self.unhit(np.zeros(len(images), np.int64), images)
        reach = ((open_ | self.good[0, images]).astype(np.float32) @ self.member) > 0
        return unhit.any(1) & (reach | ~unhit).all(1)

    def answer(self, images, pairs, labels, sure) -> None:
        """Record the answers of a round (``images`` sorted) and settle the rows they complete."""
        i, j = pairs[:, 0], pairs[:, 1]
        states = np.where(labels != self.y[images], _WRONG, np.where(sure, _SURE, _NEAR)).astype(np.int8)
        fresh = self.state[images, i, j] == _UNKNOWN  # a request holds unknown pairs only, each once
        self.state[images, i, j] = states
        self.state[images, j, i] = states
        n = self.n
        flat = np.concatenate([images * n + i, images * n + j])
        counted = np.concatenate([fresh, fresh])
        self.unknown -= np.bincount(flat[counted], minlength=self.unknown.size).reshape(self.unknown.shape)
        for value, summary in ((_WRONG, self.wrong), (_NEAR, self.near)):
            hit = np.concatenate([states == value] * 2)
            summary.reshape(-1)[flat[hit]] = True
        asked = images[_group_starts(images)]
        pending = self.pending[asked]
        # a row with a wrong pair or without unknown pairs is decided; else the rest of it comes next
        # round (it stays the best choice)
        self._settle(asked, pending & (self.wrong[asked] | (self.unknown[asked] == 0)))
        all_good = (self.good[0, asked] | ~pending).all(1)
        # capped at n: the rule takes the first width - 1 of at most n - 1 forced rows
        self.width[asked] = np.where(all_good, np.minimum(2 * self.width[asked], n), 1)

    def _settle(self, images, rows) -> None:
        """Mark the masks ``rows`` (``(t, n)`` bool) of ``images`` tried, and good where they are."""
        self.tried[images] |= rows
        wrong, complete = self.wrong[images], self.unknown[images] == 0
        self.good[0, images] |= rows & self.candidate[0, images] & ~wrong
        self.good[1, images] |= rows & self.candidate[1, images] & complete & ~wrong & ~self.near[images]


def hitting_set_certificate(first, sure, y, member, ask):
    """T11: the good masks hit every minimal covering set.

    ``member`` is the ``(n, m)`` membership of masks in the minimal covering sets. Each round asks,
    for every undecided image, the unevaluated pairs of one candidate mask (one-mask prediction
    ``y``), chosen greedily by how many still-unhit minimal sets it lies in (or of several forced
    candidates, see :class:`_HittingSearches`); an image stops when its good masks hit every minimal
    set or when some unhit set has no untried candidate left. The decisions of a round are taken for
    all undecided images at once; the pair states of ``_STATE_BYTES`` worth of images are held at a
    time. Returns (holds, holds on labels alone, pair passes, smallest margin seen).

    The certificates do not depend on the order in which candidates are tried: a search gives up
    only when some unhit minimal set holds no candidate left that could still be (surely) good, so
    both are the image's T11 certificates over all its pairs. The smallest margin is over the pairs
    the search asked (all pairs would cost what the search saves).

    Slow twin: :func:`certmask_core.reference.hitting_set_certificate_reference` (same results, same pairs
    asked in the same order, same passes and margins).
    """
    B, n = first.shape
    y = np.asarray(y)
    strict, loose = np.zeros(B, dtype=bool), np.zeros(B, dtype=bool)
    passes = np.zeros(B, dtype=np.int64)
    min_margin = np.full(B, np.inf)
    block = max(1, _STATE_BYTES // max(1, n * n))
    for start in range(0, B, block):
        stop = min(B, start + block)
        search = _HittingSearches(first[start:stop], sure[start:stop], y[start:stop], member)
        while True:
            images, pairs = search.requests()
            if not len(images):
                break
            labels, margins = ask(images + start, pairs)
            labels, margins = np.asarray(labels), np.asarray(margins)
            passes[start:stop] += np.bincount(images, minlength=stop - start)
            starts = _group_starts(images)
            asked = images[starts] + start
            min_margin[asked] = np.minimum(min_margin[asked], np.minimum.reduceat(margins, starts))
            search.answer(images, pairs, labels, margins > ask.tolerance)
        strict[start:stop], loose[start:stop] = search.hits(1), search.hits(0)
    return strict, loose, passes, min_margin


class PairAsker:
    """``ask(image_indices, pairs)`` -> validated (labels, margins) from a user's pair predictor.

    ``num_classes`` (optional) range-checks the answers; ``tolerance`` is the margin at or below which
    a pair prediction is unsure (certificates only: the defence reads labels alone).
    """

    def __init__(self, pair_predictor, num_classes: int | None, tolerance: float = DEFAULT_MARGIN_TOLERANCE):
        if not callable(pair_predictor):
            raise CertMaskError(f"mode 'recovery' needs a callable pair_predictor for its second round, "
                                f"got {pair_predictor!r}")
        self.pair_predictor, self.num_classes, self.tolerance = pair_predictor, num_classes, tolerance

    def validate(self, answer, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The labels and margins of an answer for ``m`` pairs: labels ``(m,)`` or logits ``(m, K)``."""
        try:
            answer = np.asarray(answer)
        except ValueError as err:  # a ragged answer
            raise CertMaskError(f"pair_predictor's answer is not an array: {err}") from None
        if answer.ndim not in (1, 2):
            raise CertMaskError(f"pair_predictor must return labels (m,) or logits (m, K), got shape "
                                f"{answer.shape}")
        labels, margins = labels_and_margins(answer[None], None, self.num_classes, "pair predictions")
        if labels.shape[1] != m:
            raise CertMaskError(f"pair_predictor returned {labels.shape[1]} predictions for {m} pairs")
        return labels[0], margins[0]

    def __call__(self, image_indices, pairs):
        return ask_pairs(self.pair_predictor, np.asarray(image_indices, dtype=np.int64),
                         np.asarray(pairs, dtype=np.int64), self.validate)

    def labels(self, image_indices, pairs):
        return self(image_indices, pairs)[0]
