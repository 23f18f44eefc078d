"""Recovery's second round in arrays (certmask_core.double_masking, sizes.PairCache) against the
per-image implementations it replaced, kept as slow twins in certmask_core/reference.py.

The twins decide one image at a time; the array code decides every image of a round at once. They
must agree on everything the array code promises: certificates, the defence's output, the passes,
the smallest margin, and the pairs asked, call by call and in order (so a backend sees the same
batches). The hitting-set certificates are also checked against their definition (every pair
evaluated, :func:`certmask_core.reference.hitting_set_reference`): they do not depend on the order in which
candidates are tried, so they survive a renumbering of the masks.
"""
import itertools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from certmask_core import MaskSet, PatchThreat, certify, make_maskset
from certmask_core import double_masking as dm
from certmask_core import reference as ref
from certmask_core.certification import ALERT, NO_VOTE
from certmask_core.errors import CertMaskError
from certmask_core.family_geometry import family_geometry
from certmask_core.reference import (
    PairCacheReference,
    all_pairs_certificate_reference,
    covering_sets_reference,
    hitting_set_certificate_reference,
    hitting_set_reference,
    minimal_sets_reference,
    patchcleanser_defence_reference,
)
from certmask_core.sizes import PairCache

from .strategies import covering_masksets, logits_of, threats


class Oracle:
    """``ask(image_indices, pairs)`` -> (labels, margins) read from ``(B, n, n)`` tables (a
    deterministic function of (image, i, j)); records every call."""

    def __init__(self, labels, margins, tolerance=0.5):
        self.table, self.margin, self.tolerance, self.calls = labels, margins, tolerance, []

    def __call__(self, images, pairs):
        images, pairs = np.asarray(images, np.int64), np.asarray(pairs, np.int64).reshape(-1, 2)
        self.calls.append((images.copy(), pairs.copy()))
        return self.table[images, pairs[:, 0], pairs[:, 1]], self.margin[images, pairs[:, 0], pairs[:, 1]]

    def labels(self, images, pairs):
        return self(images, pairs)[0]


def symmetrise(table: np.ndarray) -> np.ndarray:
    """The upper triangle mirrored: the answer of an unordered pair does not depend on its order."""
    upper = np.triu(table, 1)
    return upper + np.swapaxes(upper, 1, 2) + np.eye(table.shape[1], dtype=table.dtype) * np.diagonal(
        table, axis1=1, axis2=2)[:, None, :]


def membership(ms, k=None, patch=None) -> np.ndarray:
    return family_geometry(ms, patch, k)[0].membership


def assert_same_calls(fast: Oracle, slow: Oracle):
    assert len(fast.calls) == len(slow.calls)
    for (images, pairs), (images_twin, pairs_twin) in zip(fast.calls, slow.calls):
        assert images.tolist() == images_twin.tolist() and pairs.tolist() == pairs_twin.tolist()


def assert_same(results, twin_results):
    for got, want in zip(results, twin_results, strict=True):
        assert got.dtype.kind == np.asarray(want).dtype.kind
        assert got.tolist() == np.asarray(want).tolist()


def check_all_three(first, sure, y, member, labels, margins, tolerance=0.5, chunk=3):
    """Both certificates and the defence, fast against their twins (results, passes, calls)."""
    fast, slow = Oracle(labels, margins, tolerance), Oracle(labels, margins, tolerance)
    hit = dm.hitting_set_certificate(first, sure, y, member, fast)
    assert_same(hit, hitting_set_certificate_reference(first, sure, y, member, slow))
    assert_same_calls(fast, slow)
    fast, slow = Oracle(labels, margins, tolerance), Oracle(labels, margins, tolerance)
    every = dm.all_pairs_certificate(first, sure, y, fast, chunk)
    assert_same(every, all_pairs_certificate_reference(first, sure, y, slow, chunk))
    assert_same_calls(fast, slow)
    fast, slow = Oracle(labels, margins), Oracle(labels, margins)
    defence = dm.patchcleanser_defence(first, fast.labels, NO_VOTE, ALERT)
    assert_same(defence, patchcleanser_defence_reference(first, slow.labels, NO_VOTE, ALERT))
    assert_same_calls(fast, slow)
    return hit, every, defence


def definition(first, sure, y, member, labels, margins, tolerance):
    """(strict, loose) of every image from T11's statement, every pair evaluated."""
    minimal = {frozenset(np.flatnonzero(column).tolist()) for column in member.T}
    strict = [hitting_set_reference(first[b], int(y[b]), lambda i, j, b=b: labels[b, i, j], minimal,
                                    sure[b], lambda i, j, b=b: margins[b, i, j] > tolerance)
              for b in range(len(y))]
    loose = [hitting_set_reference(first[b], int(y[b]), lambda i, j, b=b: labels[b, i, j], minimal)
             for b in range(len(y))]
    return strict, loose


# --- exhaustive small cases -------------------------------------------------------------------------

STRIPS = {
    "every mask alone (k = 1)": make_maskset(PatchThreat((1, 6), (1, 1)), 1, "replicated",
                                             masks_per_axis=(1, 3)),
    "two sets sharing mask 0": make_maskset(PatchThreat((1, 6), (1, 1)), 2, "replicated",
                                            masks_per_axis=(1, 1)),
    "a chain of four": make_maskset(PatchThreat((1, 6), (1, 2)), 2, "replicated", masks_per_axis=(1, 2)),
}


def every_row(n: int, values) -> np.ndarray:
    return np.array(list(itertools.product(values, repeat=n)), dtype=np.int64).reshape(-1, n)


def pair_tables(codes: np.ndarray, n: int) -> np.ndarray:
    """``(R, n, n)`` symmetric tables from ``(R, n (n - 1) / 2)`` codes, one per pair in row-major order."""
    table = np.zeros((len(codes), n, n), dtype=codes.dtype)
    i, j = np.triu_indices(n, 1)
    table[:, i, j] = codes
    table[:, j, i] = codes
    return table


@pytest.mark.parametrize("name", list(STRIPS))
def test_every_small_case_matches_the_twins_and_the_definition(name):
    """Every one-mask row over {right, wrong}, sure flags, pair labels and pair margins (n = 3: all
    4096 combinations; n = 4: every row and pair labelling, sure flags drawn)."""
    ms = STRIPS[name]
    member, n = membership(ms), len(ms)
    rows, pair_codes = every_row(n, (0, 1)), every_row(n * (n - 1) // 2, (0, 1))
    if n == 3:
        flags = every_row(n, (True, False)).astype(bool)
        grid = list(itertools.product(range(len(rows)), range(len(flags)), range(len(pair_codes)),
                                      range(len(pair_codes))))
        r, f, p, q = (np.array(column) for column in zip(*grid))
        first, sure = rows[r], flags[f]
        labels, margins = pair_tables(pair_codes[p], n), pair_tables(pair_codes[q], n).astype(float)
    else:
        grid = itertools.product(range(len(rows)), range(len(pair_codes)))
        r, p = (np.array(column) for column in zip(*grid))
        rng = np.random.default_rng(0)
        first, labels = rows[r], pair_tables(pair_codes[p], n)
        sure = rng.random(first.shape) < 0.8
        margins = symmetrise(rng.random(labels.shape))
    # label 1 is wrong (y = 0); a margin of 0 is unsure, 1 sure
    y = np.zeros(len(first), dtype=np.int64)
    (strict, loose, _, _), _, _ = check_all_three(first, sure, y, member, labels, margins, tolerance=0.5)
    want_strict, want_loose = definition(first, sure, y, member, labels, margins, 0.5)
    assert strict.tolist() == want_strict and loose.tolist() == want_loose
    assert loose.any() and (loose & ~strict).any() and not loose.all()


def test_every_small_defence_matches_its_twin():
    """PatchCleanser's defence on every row over three classes and NO_VOTE, every pair labelling."""
    ms = STRIPS["every mask alone (k = 1)"]
    n = len(ms)
    rows, codes = every_row(n, (0, 1, 2, NO_VOTE)), every_row(n * (n - 1) // 2, (0, 1, 2))
    r, p = (np.array(column) for column in zip(*itertools.product(range(len(rows)), range(len(codes)))))
    first, labels = rows[r], pair_tables(codes[p], n)
    fast, slow = Oracle(labels, np.ones(labels.shape)), Oracle(labels, np.ones(labels.shape))
    output, passes = dm.patchcleanser_defence(first, fast.labels, NO_VOTE, ALERT)
    assert_same((output, passes), patchcleanser_defence_reference(first, slow.labels, NO_VOTE, ALERT))
    assert_same_calls(fast, slow)
    assert (output == ALERT).sum() == len(codes)  # the all-NO_VOTE row
    assert passes.max() == 2 * (n - 1)


def test_majorities_match_the_per_row_vote():
    rng = np.random.default_rng(1)
    first = rng.choice([NO_VOTE, 0, 1, 5, 2**40, 7], size=(500, 9))
    first[:10] = NO_VOTE
    want = [ref.majority_reference(row, NO_VOTE, ALERT) for row in first]
    assert dm.majorities(first, NO_VOTE, ALERT).tolist() == want
    assert dm.majorities(np.zeros((3, 0), np.int64), NO_VOTE, ALERT).tolist() == [ALERT] * 3


def test_empty_batches_and_blocks_of_images(monkeypatch):
    ms = make_maskset(PatchThreat((6, 6), (2, 2)), 2, "replicated", masks_per_axis=2)
    member, n = membership(ms), len(ms)
    empty = np.zeros((0, n), np.int64)
    nobody = np.zeros(0, np.int64)
    for result in (dm.hitting_set_certificate(empty, empty.astype(bool), nobody, member, Oracle(None, None)),
                   dm.all_pairs_certificate(empty, empty.astype(bool), nobody, Oracle(None, None), 5),
                   dm.patchcleanser_defence(empty, Oracle(None, None).labels, NO_VOTE, ALERT)):
        assert all(len(part) == 0 for part in result)
    # several blocks of pair states: the same calls as the twin when both hold three images a block
    rng = np.random.default_rng(2)
    B = 10
    y = rng.integers(0, 2, B)
    first = np.where(rng.random((B, n)) < 0.15, 1 - y[:, None], y[:, None])
    labels = symmetrise(np.where(rng.random((B, n, n)) < 0.05, 1 - y[:, None, None], y[:, None, None]))
    margins = symmetrise(rng.random((B, n, n)))
    for module in (dm, ref):
        monkeypatch.setattr(module, "_STATE_BYTES", 3 * n * n)
    fast, slow = Oracle(labels, margins, 0.1), Oracle(labels, margins, 0.1)
    sure = np.ones((B, n), bool)
    assert_same(dm.hitting_set_certificate(first, sure, y, member, fast),
                hitting_set_certificate_reference(first, sure, y, member, slow))
    assert_same_calls(fast, slow)
    # each call asks the images of one block, and the blocks take turns
    assert all(len({int(b) // 3 for b in images}) == 1 for images, _ in fast.calls)
    assert len({int(images[0]) // 3 for images, _ in fast.calls}) > 1


@pytest.mark.parametrize("k, per_axis, seed", [(1, 4, 0), (3, 4, 1), (4, 3, 2), (2, 5, 3)])
def test_larger_sets_match_the_twins(k, per_axis, seed):
    """28 x 28 images, 3 x 3 patch, 16 to 50 masks, 40 images: many rounds, forced rows, suspects."""
    ms = make_maskset(PatchThreat(28, 3), k, "replicated", masks_per_axis=per_axis)
    member, n, B = membership(ms), len(ms), 40
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, B)
    p_wrong = rng.choice([0.02, 0.1, 0.3], B)[:, None]
    first = np.where(rng.random((B, n)) < p_wrong, rng.integers(0, 3, (B, n)), y[:, None])
    sure = rng.random((B, n)) > 0.01
    labels = symmetrise(np.where(rng.random((B, n, n)) < p_wrong[:, :, None] / 5,
                                 rng.integers(0, 3, (B, n, n)), y[:, None, None]))
    margins = symmetrise(np.where(rng.random((B, n, n)) < 0.002, 0.0, 1.0))
    (strict, loose, passes, _), _, _ = check_all_three(first, sure, y, member, labels, margins, 0.5, 100)
    assert 0 < loose.sum() < B and strict.sum() <= loose.sum() and passes.max() > 2 * n


# --- random cases (Hypothesis) ----------------------------------------------------------------------

@st.composite
def constructed_sets(draw):
    """A mask set of the package's constructions and the k it is built for."""
    H, W = draw(st.integers(2, 16)), draw(st.integers(2, 16))
    threat = PatchThreat((H, W), (draw(st.integers(1, min(H, 4))), draw(st.integers(1, min(W, 4)))))
    strategy = draw(st.sampled_from(["patchcleanser", "replicated", "offset"]))
    k = 1 if strategy == "patchcleanser" else draw(st.integers(1, 3))
    per_axis = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    try:
        ms = make_maskset(threat, k, strategy, masks_per_axis=per_axis)
    except CertMaskError:
        assume(False)
    assume(len(ms) <= 40)
    return ms, k, threat.patch_size


@st.composite
def user_sets(draw):
    """Any covering set, masks of any size (minimal sets of every shape)."""
    threat = draw(threats(max_side=8))
    return draw(covering_masksets(threat, max_masks=8)), 1, threat.patch_size


@st.composite
def rounds(draw):
    """A mask set, first-round labels, sure flags and a pair oracle for a few images."""
    ms, k, patch = draw(st.one_of(constructed_sets(), user_sets()))
    n, B = len(ms), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p_wrong = draw(st.sampled_from([0.0, 0.03, 0.1, 0.3, 0.7]))
    y = rng.integers(0, 3, B)
    wrong_label = rng.choice([NO_VOTE, 0, 1, 2], size=(B, n))
    first = np.where(rng.random((B, n)) < p_wrong, wrong_label, y[:, None])
    sure = rng.random((B, n)) >= p_wrong / 2
    wrong_pair = rng.choice([NO_VOTE, 0, 1, 2], (B, n, n))
    labels = symmetrise(np.where(rng.random((B, n, n)) < p_wrong / 3, wrong_pair, y[:, None, None]))
    margins = symmetrise(np.where(labels == NO_VOTE, 0.0, rng.random((B, n, n))))
    tolerance = draw(st.sampled_from([0.0, 0.05, 0.3]))
    chunk = draw(st.sampled_from([1, 2, 7, 1024, 2**100]))
    return ms, k, patch, first, sure, y, labels, margins, tolerance, chunk


@given(rounds())
def test_random_rounds_match_the_twins_and_the_definition(case):
    ms, k, patch, first, sure, y, labels, margins, tolerance, chunk = case
    member = membership(ms, k, patch)
    hit, every, _ = check_all_three(first, sure, y, member, labels, margins, tolerance, chunk)
    strict, loose = hit[0], hit[1]
    assert (strict.tolist(), loose.tolist()) == definition(first, sure, y, member, labels, margins, tolerance)
    assert not (every[0] & ~strict).any() and not (every[1] & ~loose).any()  # T11 certifies a superset
    # the certificates do not depend on the order candidates are tried: renumber the masks
    order = np.random.default_rng(len(y)).permutation(len(ms))
    renumbered_oracle = Oracle(labels[:, order][:, :, order], margins[:, order][:, :, order], tolerance)
    renumbered = dm.hitting_set_certificate(first[:, order], sure[:, order], y, member[order],
                                            renumbered_oracle)
    assert renumbered[0].tolist() == strict.tolist() and renumbered[1].tolist() == loose.tolist()
    # each unordered pair is asked at most once per image
    asked = Oracle(labels, margins, tolerance)
    dm.hitting_set_certificate(first, sure, y, member, asked)
    keys = [(b, min(i, j), max(i, j)) for images, pairs in asked.calls for b, (i, j) in zip(images, pairs)]
    assert len(keys) == len(set(keys))


@given(rounds(), st.booleans())
def test_certify_through_either_pair_cache_gives_the_same_report(case, logits):
    ms, k, patch, first, sure, y, labels, margins, tolerance, _ = case
    predictions = logits_of(first, ~sure, 3) if logits else first
    reports = []
    for cache_class in (PairCache, PairCacheReference):
        for certificate in ("hitting_set", "all_pairs"):
            predictor = TablePredictor(labels, margins if logits else None)
            cache = cache_class(predictor, len(y))
            report = certify(predictions, y, ms, "recovery", k=k, patch=patch, margin_tolerance=0.1,
                             pair_predictor=cache.view(np.arange(len(y))), recovery_certificate=certificate)
            reports.append((report.certified.tolist(), report.below_margin.tolist(), report.output.tolist(),
                            report.certificate_passes.tolist(), cache.evaluated.tolist(), predictor.rows))
    assert reports[:2] == reports[2:]


# --- the pair cache ---------------------------------------------------------------------------------

class TablePredictor:
    """A pair predictor answering from ``(B, n, n)`` tables: labels, or logits with the given margins.
    Records every row it evaluates, call by call."""

    def __init__(self, labels, margins=None, batched=True, classes=3):
        self.table, self.margins, self.classes, self.rows, self.calls = labels, margins, classes, [], 0
        if batched:
            self.many = self._many

    def _many(self, images, pairs):
        images, pairs = np.asarray(images), np.asarray(pairs).reshape(-1, 2)
        self.calls += 1
        self.rows.append([(int(b), int(i), int(j)) for b, (i, j) in zip(images, pairs)])
        labels = self.table[images, pairs[:, 0], pairs[:, 1]]
        if self.margins is None:
            return labels
        logits = np.zeros((len(labels), self.classes), np.float32)
        logits[np.arange(len(labels)), np.where(labels == NO_VOTE, 0, labels)] = \
            self.margins[images, pairs[:, 0], pairs[:, 1]]
        logits[labels == NO_VOTE] = np.nan
        return logits

    def __call__(self, index, pairs):
        return self._many(np.full(len(pairs), index), pairs)


@st.composite
def cache_sessions(draw):
    """Requests for a cache of B images: each a view (rows of the batch) and (image, pair) rows, some
    repeated, pairs in either order; masks numbered up to 40 (not all of them met)."""
    B, n = draw(st.integers(1, 6)), draw(st.integers(2, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    requests = []
    for _ in range(draw(st.integers(1, 6))):
        rows = rng.permutation(B)[:draw(st.integers(1, B))]
        m = draw(st.integers(0, 30))
        local = rng.integers(0, len(rows), m)
        pairs = rng.integers(0, draw(st.integers(2, n)), (m, 2))
        requests.append((rows, local, pairs))
    labels = symmetrise(rng.choice([NO_VOTE, 0, 1, 2], (B, n, n)))
    margins = symmetrise(rng.random((B, n, n)))
    return B, requests, labels, margins


@given(cache_sessions(), st.booleans(), st.booleans())
def test_pair_cache_matches_its_twin(session, logits, batched):
    B, requests, labels, margins = session
    fast_predictor = TablePredictor(labels, margins if logits else None, batched)
    slow_predictor = TablePredictor(labels, margins if logits else None, batched)
    fast, slow = PairCache(fast_predictor, B), PairCacheReference(slow_predictor, B)
    for rows, local, pairs in requests:
        got = fast.view(rows).many(local, pairs)
        want = slow.view(rows).many(local, pairs)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=logits)
        assert fast.evaluated.tolist() == slow.evaluated.tolist()
        assert fast.row_shape == slow.row_shape
    evaluated = [row for call in fast_predictor.rows for row in call]
    keys = [(b, min(i, j), max(i, j)) for b, i, j in evaluated]
    assert len(keys) == len(set(keys))  # each (image, unordered pair) evaluated at most once
    twin_keys = [(b, min(i, j), max(i, j)) for call in slow_predictor.rows for b, i, j in call]
    assert sorted(keys) == sorted(twin_keys)
    if batched:  # one call per request, the same rows in the same order
        assert fast_predictor.rows == slow_predictor.rows
    else:  # one call per image, not per pair
        assert fast_predictor.calls <= slow_predictor.calls


def test_pair_cache_grows_with_the_masks_it_meets():
    def label(b, pairs):  # a deterministic function of (image, unordered pair), masks numbered up to 3000
        return (b + pairs.min(1) * 7 + pairs.max(1) * 3) % 5

    def answer(images, pairs):
        return label(np.asarray(images), np.asarray(pairs))

    predictor = lambda b, pairs: answer(np.full(len(pairs), b), pairs)  # noqa: E731
    predictor.many = answer
    cache = PairCache(predictor, 2)
    want = answer([0, 1], np.array([[2999, 0], [5, 7]]))
    assert cache.many([0, 1], [[2999, 0], [5, 7]]).tolist() == want.tolist()
    assert cache._slots.shape == (2, 10)  # four masks met, not 3000: room for their 10 pairs only
    images, pairs = np.arange(1, 60) % 2, np.stack([np.arange(1, 60), 2 * np.arange(1, 60)], 1)
    for b, pair in zip(images, pairs):
        cache.many([b], [pair])
    assert cache.evaluated.tolist() == [30, 31]
    again = np.array([[5, 7], [0, 2999], [7, 5], [118, 59]])
    assert cache.many([0, 0, 1, 1], again).tolist() == answer([0, 0, 1, 1], again).tolist()
    assert cache.evaluated.tolist() == [31, 31]
    # mask numbers too large for one sort key per row: the same answers, each pair once
    huge = np.array([[2**40, 3], [3, 2**40], [1, 2], [2**40 + 1, 2**40]])
    assert cache.many([1, 1, 1, 0], huge).tolist() == answer([1, 1, 1, 0], huge).tolist()
    assert cache.evaluated.tolist() == [32, 32]  # (1, 2) of image 1 was asked before


def test_pair_cache_names_bad_answers_and_requests():
    with pytest.raises(CertMaskError, match="callable pair_predictor"):
        PairCache("predictor", 1)
    answers = {
        "one answer too many": lambda b, p: np.zeros(len(p) + 1, np.int64),
        "three axes": lambda b, p: np.zeros((len(p), 2, 2)),
    }
    for cache_class in (PairCache, PairCacheReference):
        for answer in answers.values():
            with pytest.raises(CertMaskError, match="pair_predictor must return labels"):
                cache_class(answer, 2).many([0], [[0, 1]])
        with pytest.raises(CertMaskError, match="not an array"):
            cache_class(lambda b, p: [[0.0], [0.0, 1.0]], 2).many([0, 0], [[0, 1], [0, 2]])
        flipping = TablePredictor(np.zeros((2, 3, 3), np.int64))
        cache = cache_class(flipping, 2)
        cache.many([0], [[0, 1]])
        flipping.margins = np.ones((2, 3, 3))
        with pytest.raises(CertMaskError, match="labels on one call and logits on another"):
            cache.many([1], [[0, 1]])
        assert cache.evaluated.tolist() == [1, 0]  # the refused answer is not kept
    cache = PairCache(TablePredictor(np.zeros((2, 3, 3), np.int64)), 2)
    for images, pairs, message in (([2], [[0, 1]], r"image indices must lie in \[0, 2\)"),
                                   ([0], [[-1, 1]], "pair indices must be >= 0"),
                                   ([0, 1], [[0, 1]], "2 image indices for 1 pairs")):
        with pytest.raises(CertMaskError, match=message):
            cache.many(images, pairs)
    assert cache.many([], np.zeros((0, 2))).shape == (0,)


def test_pair_cache_keeps_both_dtypes_of_logits():
    """float32 logits, then float64 ones: the answers stay exact (the float32 ones widened)."""
    calls = []

    def predictor(b, pairs):
        calls.append(1)
        dtype = np.float32 if len(calls) == 1 else np.float64
        return np.full((len(pairs), 3), 0.1, dtype=dtype)

    cache = PairCache(predictor, 2)
    first = cache.many([0], [[0, 1]])
    second = cache.many([0, 1], [[0, 1], [0, 1]])
    assert first.dtype == np.float32 and second.dtype == np.float64
    assert second[0, 0] == np.float64(np.float32(0.1)) and second[1, 0] == 0.1


def test_mask_sets_of_user_shapes_keep_their_membership():
    """A guard for the tests' own helper: the membership used here is certification's."""
    ms = MaskSet((1, 6), [[0, 4], [0, 0], [0, 1]], [[1, 2], [1, 4], [1, 4]])
    minimal = minimal_sets_reference(covering_sets_reference(ms, (1, 2)))
    assert {frozenset(np.flatnonzero(c).tolist()) for c in membership(ms, patch=(1, 2)).T} == minimal
