"""Unknown patch size (T14): certify_sizes against a per-size twin, the pair cache, bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import (
    CertMaskError,
    MaskSet,
    PatchThreat,
    certify,
    certify_sizes,
    coverage_counts_bruteforce,
    make_maskset,
)
from certmask_core.coverage import coverage_extremes
from certmask_core.reference import covering_sets_reference, minimal_sets_reference
from certmask_core.sizes import PairCache, patch_sizes

from .strategies import covering_masksets, logits_of, threats


def per_size_twin(predictions, labels, maskset, sizes, mode, deployed=None, **kwargs):
    """The definition, through certify and certmask_core.reference: a size-free defence (detection, recovery)
    by each size's own certificate, closed under inclusion; a size-dependent one by the deployed
    size's certificate wherever each minimal set of the size holds a deployed minimal set."""
    sizes = patch_sizes(sizes)
    direct = np.zeros((len(labels), len(sizes)), dtype=bool)
    covered = [coverage_extremes(maskset, size)[0] > 0 for size in sizes]
    if mode not in ("detection", "recovery"):
        held = certify(predictions, labels, maskset, mode, patch=deployed, k=1, **kwargs).certified
        kept = minimal_sets_reference(covering_sets_reference(maskset, deployed))
        for s, size in enumerate(sizes):
            if covered[s]:
                minimal = minimal_sets_reference(covering_sets_reference(maskset, size))
                direct[:, s] = held if all(any(m <= c for m in kept) for c in minimal) else False
        return direct
    for s, size in enumerate(sizes):
        if covered[s]:
            direct[:, s] = certify(predictions, labels, maskset, mode, patch=size, k=1, **kwargs).certified
    closed = np.zeros_like(direct)
    for s, (h, w) in enumerate(sizes):
        for t, (th, tw) in enumerate(sizes):
            if th >= h and tw >= w:
                closed[:, s] |= direct[:, t]
    return closed


@given(st.data())
def test_certify_sizes_equals_the_per_size_twin(data):
    threat = data.draw(threats(max_side=7))
    ms = data.draw(covering_masksets(threat, max_masks=6))
    H, W = ms.image_size
    sizes = data.draw(st.lists(st.tuples(st.integers(1, H), st.integers(1, W)), min_size=1, max_size=4))
    rows = data.draw(st.integers(1, 6))
    labels = np.array(data.draw(st.lists(st.integers(0, 2), min_size=rows, max_size=rows)))
    first = np.array(data.draw(st.lists(st.lists(st.integers(0, 2), min_size=len(ms), max_size=len(ms)),
                                        min_size=rows, max_size=rows)))
    unsure = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=len(ms), max_size=len(ms)),
                                         min_size=rows, max_size=rows)))
    logits = logits_of(first, unsure, 3)
    for mode in ("detection", "plurality", "covering_consensus"):
        report = certify_sizes(logits, labels, ms, sizes, mode, patch=threat.patch_size)
        twin = per_size_twin(logits, labels, ms, sizes, mode, deployed=threat.patch_size)
        assert (report.certified == twin).all()
        assert report.deployed == (None if mode == "detection" else threat.patch_size)
        assert not report.certified[:, ~report.certifiable].any()
        assert (report.certifiable <= (report.min_coverage > 0)).all()
        if mode == "detection":
            assert (report.certifiable == (report.min_coverage > 0)).all()
        assert report.min_coverage.tolist() == [coverage_extremes(ms, s)[0] for s in report.sizes]
        assert not report.certified[:, report.min_coverage == 0].any()


class CountingPairs:
    """Pair labels from a fixed table; counts how often each (image, pair) is evaluated."""

    def __init__(self, table):
        self.table, self.seen = table, []

    def many(self, images, pairs):
        pairs = np.sort(np.asarray(pairs), axis=1)
        self.seen += [(int(b), int(i), int(j)) for b, (i, j) in zip(images, pairs)]
        return self.table[np.asarray(images), pairs[:, 0], pairs[:, 1]]

    def __call__(self, index, pairs):
        return self.many(np.full(len(pairs), index), pairs)


def test_recovery_over_sizes_evaluates_each_pair_once_and_equals_the_twin():
    rng = np.random.default_rng(0)
    ms = make_maskset(PatchThreat((12, 12), (3, 3)), 2, "replicated", masks_per_axis=3)
    n, B = len(ms), 40
    labels = rng.integers(0, 3, B)
    first = np.where(rng.random((B, n)) < 0.9, labels[:, None], rng.integers(0, 3, (B, n)))
    table = np.where(rng.random((B, n, n)) < 0.97, labels[:, None, None], rng.integers(0, 3, (B, n, n)))
    table = np.minimum(table, table.transpose(0, 2, 1))  # symmetric
    sizes = [1, 2, 3, (2, 4), 4]
    counting = CountingPairs(table)
    report = certify_sizes(first, labels, ms, sizes, "recovery", pair_predictor=counting)
    assert len(counting.seen) == len(set(counting.seen))  # no pair evaluated twice over five sizes
    per_image = np.bincount([b for b, _, _ in counting.seen], minlength=B)
    assert (report.passes == n + per_image).all()
    twin = per_size_twin(first, labels, ms, sizes, "recovery", pair_predictor=CountingPairs(table))
    assert (report.certified == twin).all()
    assert 0 < report.certified[:, 0].sum()  # the table is not all-or-nothing


def test_a_smaller_patch_needs_less_of_recovery_but_not_of_a_deployed_plurality():
    """Masks [4, 6), [0, 4), [1, 5) on a 1 x 6 strip. For a 1 x 2 patch each mask is alone at some
    position; for a 1 x 1 patch mask 2 lies in no minimal covering set. With mask 2 wrong, recovery
    (size-free) certifies 1 x 1 but not 1 x 2. Plurality deployed for 1 x 2 needs mask 2 even on the
    clean image; deployed for 1 x 1 it certifies the 1 x 1 patch only: the 1 x 2 minimal set {2}
    holds no 1 x 1 minimal set, so a 1 x 2 patch can reach every minimal set it decides with."""
    ms = MaskSet((1, 6), [[0, 4], [0, 0], [0, 1]], [[1, 2], [1, 4], [1, 4]])
    first = np.eye(3, dtype=np.int64)  # image i: mask i wrong (label 1), the others right (0)
    labels = np.zeros(3, np.int64)
    pairs = CountingPairs(np.zeros((3, 3, 3), np.int64))  # every pair right
    recovery = certify_sizes(first, labels, ms, [(1, 1), (1, 2)], "recovery", pair_predictor=pairs)
    assert recovery.certified.tolist() == [[False, False], [False, False], [True, False]]
    deployed_large = certify_sizes(first, labels, ms, [(1, 1), (1, 2)], "plurality", patch=(1, 2))
    deployed_small = certify_sizes(first, labels, ms, [(1, 1), (1, 2)], "plurality", patch=(1, 1))
    assert not deployed_large.certified.any()
    assert deployed_small.certified.tolist() == [[False, False], [False, False], [True, False]]
    assert not certify_sizes(first, labels, ms, [(1, 1), (1, 2)], "detection").certified.any()


def test_sizes_above_the_planned_patch_count_only_when_covered():
    # planned for 3x3 (9x9 masks, stride 7): sizes up to 3x3 are covered, 4x4 falls between masks
    ms = make_maskset(PatchThreat((28, 28), (3, 3)), 2, "replicated", masks_per_axis=4)
    labels = np.array([0, 1])
    first = np.zeros((2, len(ms)), np.int64)
    first[1] = 1
    report = certify_sizes(first, labels, ms, range(1, 10), "detection")
    lowest = [int(coverage_counts_bruteforce(ms, s).min()) for s in report.sizes]
    covered = [low > 0 for low in lowest]
    assert report.min_coverage.tolist() == lowest
    assert covered[:3] == [True] * 3 and not all(covered)
    assert report.certified.tolist() == [covered] * 2
    largest = max(side for (side, _), c in zip(report.sizes, covered) if c)
    assert report.largest_certified().tolist() == [largest] * 2
    assert report.inherited[:largest - 1].tolist() == [2] * (largest - 1)  # implied by the largest
    summary = report.summary()
    assert summary["sizes"][largest]["covered"] is False
    assert summary["sizes"][largest - 1]["certified_accuracy"] == 1.0


def test_bad_sizes_and_modes_are_named():
    ms = make_maskset(PatchThreat((8, 8), (2, 2)), masks_per_axis=2)
    first, labels = np.zeros((1, len(ms)), np.int64), np.zeros(1, np.int64)
    for sizes, message in (([0], "must be >= 1"), ([], "empty"), (3, "list of patch sizes"),
                           (["3x3"], "int or a size per axis"), ([(9, 1)], "larger than the image")):
        with pytest.raises(CertMaskError, match=message):
            certify_sizes(first, labels, ms, sizes)
    with pytest.raises(CertMaskError, match="certifies nothing"):
        certify_sizes(first, labels, ms, [2], "paper")
    with pytest.raises(CertMaskError, match="callable pair_predictor"):
        certify_sizes(first, labels, ms, [2], "recovery")
    with pytest.raises(CertMaskError, match="prediction rows"):
        certify_sizes(np.zeros((2, len(ms)), np.int64), labels, ms, [2])


def test_pair_cache_answers_from_memory():
    table = np.arange(2 * 4 * 4).reshape(2, 4, 4) % 3
    counting = CountingPairs(table)
    cache = PairCache(counting, 2)
    first = cache.many(np.array([0, 1]), np.array([[0, 1], [2, 3]]))
    again = cache.view(np.array([1, 0])).many(np.array([1, 0]), np.array([[1, 0], [3, 2]]))
    assert first.tolist() == again.tolist() and len(counting.seen) == 2
    assert cache.evaluated.tolist() == [1, 1]


def test_hostile_pair_answers_and_caches_are_named():
    """Found by an independent review: these raised ValueError, AttributeError or IndexError, or were
    silently accepted."""
    ms = MaskSet((1, 6), [[0, 0], [0, 3], [0, 0]], [[1, 3], [1, 3], [1, 6]])
    first, labels = np.zeros((1, 3), np.int64), [0]
    for answer in (lambda b, p: 0, lambda b, p: None, lambda b, p: np.zeros((len(p), 2, 2))):
        with pytest.raises(CertMaskError, match="pair_predictor"):
            certify_sizes(first, labels, ms, [1], "recovery", pair_predictor=answer)
    calls = []

    def flipping(b, p):  # labels first, logits next
        calls.append(1)
        return np.zeros(len(p), np.int64) if len(calls) == 1 else np.zeros((len(p), 3))

    with pytest.raises(CertMaskError, match="labels on one call and logits on another"):
        certify_sizes(np.zeros((2, 3), np.int64), [0, 0], ms, [(1, 1), (1, 2)], "recovery",
                      pair_predictor=flipping)
    zeros = PairCache(lambda b, p: np.zeros(len(p), np.int64), 1)
    with pytest.raises(CertMaskError, match="not both"):
        certify_sizes(first, labels, ms, [1], "recovery", pair_cache=zeros,
                      pair_predictor=lambda b, p: np.ones(len(p), np.int64))
    for cache in ("cache", PairCache(lambda b, p: np.zeros(len(p), np.int64), 2)):
        with pytest.raises(CertMaskError, match="pair_cache must be a PairCache for these 1 images"):
            certify_sizes(first, labels, ms, [1], "recovery", pair_cache=cache)
    assert certify_sizes(first, labels, ms, [1], "recovery", pair_cache=zeros).certified.tolist() == [[True]]


def test_a_deployment_its_set_does_not_cover_is_refused_whatever_the_sizes():
    """plurality deployed for a size the set leaves uncovered is an error, even when every listed size
    is uncovered too (nothing to certify is no reason to accept the deployment)."""
    ms = make_maskset(PatchThreat((1, 8), (1, 2)), masks_per_axis=(1, 2))
    with pytest.raises(CertMaskError, match="not 1-fold"):
        certify_sizes(np.array([[2, 2]]), [2], ms, [(1, 6)], "plurality", patch=(1, 6))
