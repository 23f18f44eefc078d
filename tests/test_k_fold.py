"""Certificates that gain from k (T11-T13): core vs the slow twins of certmask_core/reference.py, the pair
scheduling of the hitting-set certificate, batching across images, and unsure predictions."""
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import PatchThreat, certify, defend, make_maskset
from certmask_core.certification import ALERT, NO_VOTE
from certmask_core.reference import (
    consensus_certificate_reference,
    covering_sets_reference,
    hitting_set_reference,
    minimal_sets_reference,
    plurality_certificate_reference,
    plurality_reference,
    recovery_reference,
)

from .strategies import covering_masksets, logits_of, threats


class PairTable:
    """Pair answers from one symmetric table per image; records every question and every call."""

    def __init__(self, table, unsure=None, classes=3, batched=True):
        self.table, self.unsure, self.classes = table, unsure, classes
        self.asked, self.calls = [], 0
        if batched:
            self.many = self._many

    def _answer(self, images, pairs):
        self.calls += 1
        pairs = np.asarray(pairs).reshape(-1, 2)
        self.asked += [(int(b), int(i), int(j)) for b, (i, j) in zip(images, pairs)]
        labels = self.table[images, pairs[:, 0], pairs[:, 1]]
        if self.unsure is None:
            return labels
        return logits_of(labels, self.unsure[images, pairs[:, 0], pairs[:, 1]], self.classes)

    def __call__(self, b, pairs):
        return self._answer(np.full(len(pairs), b), pairs)

    def _many(self, images, pairs):
        return self._answer(np.asarray(images), pairs)


def symmetric(rng, B, n, p_wrong, classes=3, y=None):
    table = np.where(rng.random((B, n, n)) < p_wrong, rng.integers(0, classes, (B, n, n)),
                     (y if y is not None else np.zeros(B, int))[:, None, None])
    upper = np.triu(table, 1)
    return upper + np.transpose(upper, (0, 2, 1))


@st.composite
def cases(draw, max_masks=7):
    threat = draw(threats(max_side=8))
    ms = draw(covering_masksets(threat, max_masks=max_masks))
    n, B = len(ms), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    p_wrong = draw(st.sampled_from([0.0, 0.1, 0.3, 0.7]))
    return threat, ms, n, B, np.random.default_rng(seed), p_wrong


@given(cases())
def test_one_round_rules_match_their_twins(case):
    threat, ms, n, B, rng, p_wrong = case
    y = rng.integers(0, 3, B)
    first = np.where(rng.random((B, n)) < p_wrong, rng.integers(-2, 3, (B, n)), y[:, None])
    first[first == -1] = NO_VOTE
    unsure = rng.random((B, n)) < p_wrong / 2
    minimal = minimal_sets_reference(covering_sets_reference(ms, threat.patch_size))
    out = defend(first, ms, "plurality", patch=threat.patch_size).output
    assert out.tolist() == [plurality_reference(row, minimal) for row in first]
    for mode, twin in (("plurality", plurality_certificate_reference),
                       ("covering_consensus", consensus_certificate_reference)):
        for given_unsure in (np.zeros_like(unsure), unsure):
            rep = certify(logits_of(first, given_unsure, 3), y, ms, mode, patch=threat.patch_size)
            expected = [twin(r, u | (r == NO_VOTE), int(t), minimal)
                        for r, u, t in zip(first, given_unsure, y)]
            assert rep.certified.tolist() == expected, mode


@given(cases(max_masks=6), st.booleans())
def test_recovery_defence_and_hitting_set_match_their_twins(case, batched):
    threat, ms, n, B, rng, p_wrong = case
    y = rng.integers(0, 3, B)
    first = np.where(rng.random((B, n)) < p_wrong, rng.integers(0, 3, (B, n)), y[:, None])
    table = symmetric(rng, B, n, p_wrong / 3, y=y)
    pair_unsure = symmetric(rng, B, n, 0.0) | (rng.random((B, n, n)) < p_wrong / 4)
    pair_unsure = pair_unsure | np.transpose(pair_unsure, (0, 2, 1))
    unsure = rng.random((B, n)) < p_wrong / 4
    minimal = minimal_sets_reference(covering_sets_reference(ms, threat.patch_size))
    out = defend(first, ms, "recovery", patch=threat.patch_size,
                 pair_predictor=PairTable(table, batched=batched)).output
    assert out.tolist() == [recovery_reference(row, lambda i, j, b=b: table[b, i, j])
                            for b, row in enumerate(first)]
    predictor = PairTable(table, pair_unsure, batched=batched)
    rep = certify(logits_of(first, unsure, 3), y, ms, "recovery", patch=threat.patch_size,
                  pair_predictor=predictor)
    expected = [hitting_set_reference(first[b], int(y[b]), lambda i, j, b=b: table[b, i, j], minimal,
                                      ~unsure[b], lambda i, j, b=b: not pair_unsure[b, i, j])
                for b in range(B)]
    assert rep.certified.tolist() == expected
    loose = [hitting_set_reference(first[b], int(y[b]), lambda i, j, b=b: table[b, i, j], minimal)
             for b in range(B)]
    assert rep.below_margin.tolist() == [e != h for e, h in zip(expected, loose)]
    # the certificate asks only pairs holding a candidate mask (one-mask prediction = y); certify's
    # defence asks its own second rounds through the same predictor
    defence = PairTable(table, pair_unsure)
    defend(first, ms, "recovery", patch=threat.patch_size, pair_predictor=defence)
    asked = Counter(predictor.asked) - Counter(defence.asked)
    assert all(first[b, i] == y[b] or first[b, j] == y[b] for b, i, j in asked)
    # never fewer certified than all pairs; the same when every mask is some position's only cover
    all_pairs = certify(logits_of(first, unsure, 3), y, ms, "recovery", patch=threat.patch_size,
                        pair_predictor=PairTable(table, pair_unsure), recovery_certificate="all_pairs")
    assert not (all_pairs.certified & ~rep.certified).any()
    if all(frozenset([i]) in minimal for i in range(n)):
        assert (all_pairs.certified == rep.certified).all()


def test_hitting_set_pays_off_with_k_and_asks_fewer_pairs():
    """k = 4 replicated: one wrong pair per image breaks all pairs but not the hitting set."""
    ms = make_maskset(PatchThreat(28, 3), k=4, strategy="replicated", masks_per_axis=4)
    n, B = len(ms), 20
    rng = np.random.default_rng(0)
    table = np.ones((B, n, n), dtype=np.int64)
    for b in range(B):  # one wrong pair per image
        i, j = rng.choice(n, 2, replace=False)
        table[b, i, j] = table[b, j, i] = 2
    predictor = PairTable(table)
    first = np.ones((B, n), dtype=np.int64)
    hitting = certify(first, np.ones(B, int), ms, "recovery", pair_predictor=predictor)
    all_pairs = certify(first, np.ones(B, int), ms, "recovery", pair_predictor=PairTable(table),
                        recovery_certificate="all_pairs")
    assert hitting.certified.all() and not all_pairs.certified.any()
    assert hitting.certificate_passes.mean() < 0.5 * (n + n * (n - 1) / 2)
    assert hitting.summary()["all_pairs_passes"] == n + n * (n - 1) // 2
    # all images share each round's call: as many calls as rounds, far fewer than images x candidates
    assert predictor.calls <= 3 * 16


def test_plurality_tolerates_a_minority_of_wrong_masks_per_minimal_set():
    ms = make_maskset(PatchThreat(28, 3), k=3, strategy="replicated", masks_per_axis=4)
    minimal = minimal_sets_reference(covering_sets_reference(ms, (3, 3)))
    assert {len(m) for m in minimal} == {3}
    first = np.ones((1, len(ms)), dtype=np.int64)
    first[0, 5] = 2  # one wrong mask: a minority in every minimal set it lies in
    assert certify(first, [1], ms, "plurality").certified.tolist() == [True]
    assert certify(first, [1], ms, "detection").certified.tolist() == [False]
    # two wrong masks in one minimal set make a tie: ALERT there, not certified
    two = sorted(next(m for m in minimal if 5 in m) - {5})[0]
    first[0, two] = 2
    assert certify(first, [1], ms, "plurality").certified.tolist() == [False]
    assert defend(first, ms, "plurality").output.tolist() == [ALERT]


def test_unsure_predictions_count_against_the_certificate():
    ms = make_maskset(PatchThreat(28, 3), k=3, strategy="replicated", masks_per_axis=4)
    first = np.ones((1, len(ms)), dtype=np.int64)
    first[0, 5] = 2
    unsure = np.zeros_like(first, dtype=bool)
    minimal = minimal_sets_reference(covering_sets_reference(ms, (3, 3)))
    partner = sorted(next(m for m in minimal if 5 in m) - {5})[0]
    unsure[0, partner] = True  # could flip to 2: then 2 ties 1 in that minimal set
    rep = certify(logits_of(first, unsure, 3), [1], ms, "plurality")
    assert rep.certified.tolist() == [False] and rep.below_margin.tolist() == [True]
    # recovery: the only good mask of a set relies on a pair at the tolerance
    strip = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    table = np.ones((1, 2, 2), dtype=np.int64)
    near = np.ones((1, 2, 2), dtype=bool)
    rep = certify(np.ones((1, 2), np.int64), [1], strip, "recovery", pair_predictor=PairTable(table, near))
    assert rep.certified.tolist() == [False] and rep.below_margin.tolist() == [True]


def test_unknown_recovery_certificate_is_refused():
    from certmask_core import CertMaskError
    with pytest.raises(CertMaskError, match="recovery_certificate must be one of"):
        certify(np.ones((1, 2), np.int64), [1], make_maskset(PatchThreat((1, 6), (1, 2)),
                                                              masks_per_axis=(1, 2)),
                "recovery", pair_predictor=lambda b, p: np.ones(len(p), int), recovery_certificate="some")


def test_masked_arrays_and_pair_logits_of_another_class_count_are_refused():
    """Found by an independent review: masked entries counted with their hidden values, and pair
    logits could have another number of classes than the one-mask logits."""
    from certmask_core import CertMaskError
    strip = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    hidden = np.ma.masked_array([[1, 1]], mask=[[False, True]])
    with pytest.raises(CertMaskError, match="masked array with 1 masked entries"):
        certify(hidden, [1], strip, "detection")
    with pytest.raises(CertMaskError, match="labels: a masked array"):
        certify(np.ones((1, 2), np.int64), np.ma.masked_array([1], mask=[True]), strip, "detection")
    assert certify(np.ma.masked_array([[1, 1]]), [1], strip, "detection").certified.tolist() == [True]
    three = logits_of(np.ones((1, 2), np.int64), np.zeros((1, 2), bool), 3)
    with pytest.raises(CertMaskError, match="logits have 4 classes, expected 3"):
        certify(three, [1], strip, "recovery", pair_predictor=lambda b, p: np.zeros((len(p), 4)))


@pytest.mark.parametrize("answer", [lambda images, pairs: np.ones(len(pairs) + 1, np.int64),
                                    lambda images, pairs: [[0.0], [0.0, 1.0]],
                                    lambda images, pairs: np.full(len(pairs), 2**63, np.uint64)])
def test_a_hostile_batched_answer_is_refused(answer):
    from certmask_core import CertMaskError
    strip = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))

    def predictor(b, pairs):
        return np.ones(len(pairs), np.int64)
    predictor.many = answer  # the batched path is validated like the per-image one
    with pytest.raises(CertMaskError, match="pair"):
        certify(np.ones((2, 2), np.int64), [1, 1], strip, "recovery", pair_predictor=predictor)
