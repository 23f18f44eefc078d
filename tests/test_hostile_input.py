"""A hostile mask set or prediction must never yield a certificate, nor crash the process.

Each test below either reproduces a defect of an earlier version (it failed there), or pins a rule of
docs/theory.md, "Hostile input" (masks smaller than the patch, NO_VOTE, margins, cached geometry).
"""
import json

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmask_core import CertMaskError, MaskSet, PatchThreat, certify, coverage_counts, defend, make_maskset
from certmask_core.certification import NO_VOTE
from certmask_core.coverage import (
    _difference_array_counts,
    coverage_extremes,
    covering_set_bits,
    minimal_covering_set_bits,
    unpack,
)
from certmask_core.reference import (
    coverage_counts_bruteforce,
    covering_sets_reference,
    minimal_sets_reference,
    one_round_reference,
)
from certmask_core.run.cli import main
from certmask_core.run.records import per_image_records
from tests.strategies import threats

FORGED = ([[0, 0], [6, 0], [2**58, 0]], [[2, 8], [2, 8], [2**63 - 1, 8]])


@pytest.mark.parametrize("origins,sizes", [
    FORGED,                                                         # wrapped to a negative sum: accepted
    ([[0, 0], [2**58, 0]], [[8, 8], [2**63 - 2, 8]]),               # crashed with heap corruption
    (np.array(FORGED[0], np.int64), np.array(FORGED[1], np.int64)),
    (np.array(FORGED[0], np.uint64), np.array(FORGED[1], np.uint64)),
    ([[0, 0]], [[2**64 + 8, 8]]),
    ([[True, 0]], [[2, 8]]),                                        # booleans are not coordinates
    (np.array([[True, False]]), [[2, 8]]),
    ([[0.0, 0]], [[2, float("inf")]]),
])
def test_overflowing_or_non_integral_masks_are_refused(origins, sizes):
    with pytest.raises(CertMaskError):
        MaskSet((8, 8), origins, sizes)


def test_forged_file_is_refused_by_the_cli(tmp_path, capsys):
    path = tmp_path / "forged.json"
    path.write_text(json.dumps({"image_size": [8, 8], "origins": FORGED[0], "sizes": FORGED[1]}))
    assert main(["coverage", str(path), "--patch", "2", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "288230376151711744" in err


def test_the_forged_set_without_its_bad_mask_certifies_nothing():
    # what the forgery pretended: two 2x8 bands that leave rows 2..5 uncovered
    ms = MaskSet((8, 8), FORGED[0][:2], FORGED[1][:2])
    assert coverage_counts(ms, (2, 2)).min() == 0
    with pytest.raises(CertMaskError, match="not 1-fold"):
        certify(np.array([[3, 3]]), [3], ms, "detection", patch=(2, 2))


bounds_checked_kernel = numba.njit(boundscheck=True)(_difference_array_counts.py_func)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6),
       st.lists(st.tuples(*[st.integers(-2**62, 2**62)] * 4), min_size=1, max_size=6))
def test_kernel_cannot_index_outside_its_arrays(P_h, P_w, windows):
    """Any window, however hostile, is clipped: the bounds-checked twin raises no IndexError."""
    windows = np.array(windows, dtype=np.int64)
    safe = bounds_checked_kernel(windows, P_h, P_w)
    expected = np.zeros((P_h, P_w), np.int64)
    for a0, b0, a1, b1 in windows:
        expected[max(a0, 0):max(a1 + 1, 0), max(b0, 0):max(b1 + 1, 0)] += 1
    assert (safe == expected).all() and (_difference_array_counts(windows, P_h, P_w) == expected).all()


def test_masks_smaller_than_the_patch_cover_nothing():
    # mask 1 is clipped at the border to 1 row: smaller than the 2x2 patch
    ms = MaskSet((4, 4), [[0, 0], [3, 0], [2, 0]], [[2, 4], [1, 4], [2, 4]])
    counts = coverage_counts(ms, (2, 2))
    assert (counts == coverage_counts_bruteforce(ms, (2, 2))).all()
    assert counts[:, 0].tolist() == [1, 0, 1]
    assert coverage_extremes(ms, (2, 2))[:2] == (0, 1)
    with pytest.raises(CertMaskError, match=r"position \(1, 0\) is covered by 0"):
        defend(np.array([[1, 1, 1]]), ms, "detection", patch=(2, 2))


@pytest.mark.parametrize("call,expected", [
    (lambda ms: certify(np.zeros((0, 2), np.int64), [], ms).certified.shape, (0,)),
    (lambda ms: defend(np.zeros((0, 2), np.int64), ms, "covering_consensus").output.shape, (0,)),
])
def test_empty_batches_give_empty_results(call, expected):
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    assert call(ms) == expected


@pytest.mark.parametrize("call,message", [
    (lambda ms: defend(np.zeros((1, 2, 0)), ms), "logits have 0 classes"),
    (lambda ms: defend(np.array([[True, False]]), ms), "integer labels or float logits, got dtype bool"),
    (lambda ms: defend(np.array([[0, 2**63]], np.uint64), ms), r"found range \[0, 9223372036854775808\]"),
    (lambda ms: certify(np.array([[0, 0]]), [True], ms), "labels must be a 1-D integer array"),
    (lambda ms: certify(np.array([[0, 0]]), [0], ms, margin_tolerance=float("nan")), "margin_tolerance"),
    (lambda ms: defend(np.array([[0, 0]]), ms, k=True), "k must be an integer >= 1, got True"),
    (lambda ms: defend(np.array([[0, 0]]), ms, num_classes=0), "num_classes must be an integer >= 1"),
    (lambda ms: defend(np.array([[0, 0]]), ms, ["detection"]), "mode must be one of"),
])
def test_more_bad_input_is_named(call, message):
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    with pytest.raises(CertMaskError, match=message):
        call(ms)


def test_the_range_message_reads_sensibly_without_num_classes():
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    with pytest.raises(CertMaskError) as err:
        defend(np.array([[0, -5]]), ms)
    assert "None" not in str(err.value) and "found range [-5, 0]" in str(err.value)


def test_huge_class_indices_allocate_nothing_class_sized():
    ms = make_maskset(PatchThreat(12, 2), 2, "replicated", masks_per_axis=2)
    big = 2**62
    pred = np.full((2, len(ms)), big, dtype=np.int64)
    pred[1, 0] = big - 7
    for mode in ("covering_consensus", "paper"):
        assert defend(pred, ms, mode).output[0] == big
    recovered = defend(pred, ms, "recovery", pair_predictor=lambda b, pairs: np.full(len(pairs), big - 7))
    assert recovered.output.tolist() == [big, big - 7]


def test_non_finite_logits_vote_for_no_class_instead_of_raising():
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 3))   # 3 masks
    logits = np.zeros((3, 3, 4))
    logits[:, :, 2] = 1.0
    logits[1, 0] = np.nan                  # attacked mask emits NaN
    logits[2, 1, 0] = np.inf               # +inf used to become class 0 silently
    assert defend(logits, ms, "detection").output.tolist() == [2, -1, -1]
    twos = lambda b, pairs: np.full(len(pairs), 2)  # noqa: E731
    assert defend(logits, ms, "recovery", pair_predictor=twos).output.tolist() == [2, 2, 2]
    report = certify(logits, [2, 2, 2], ms, "recovery", pair_predictor=twos)
    assert report.certified.tolist() == [True, False, False]
    # a NaN in a pair answer refuses the recovery certificate
    def nan_pairs(b, pairs):
        answer = np.eye(4)[[2] * len(pairs)]
        answer[0] = np.nan
        return answer

    assert not certify(logits[:1], [2], ms, "recovery", pair_predictor=nan_pairs).certified.any()


def test_margins_are_recorded_and_close_calls_refused():
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    logits = np.array([[[0.0, 2.0, 1.5], [0.0, 3.0, 0.0]],
                       [[0.0, 1.0, 1.0 - 1e-6], [0.0, 3.0, 0.0]]])
    report = certify(logits, [1, 1], ms, "detection")
    np.testing.assert_allclose(report.min_margin, [0.5, 1e-6])
    assert report.certified.tolist() == [True, False] and report.below_margin.tolist() == [False, True]
    assert certify(logits, [1, 1], ms, "detection", margin_tolerance=0.0).certified.all()
    assert certify(logits, [1, 1], ms, "detection", margin_tolerance=0.5).certified.tolist() == [False, False]
    assert report.summary()["refused_for_margin"] == 1
    record = per_image_records([0, 1], report.labels, report.output, {("replicated", 1, "detection"): report})
    assert record[0]["runs"]["replicated/k1/detection"]["min_margin"] == pytest.approx(0.5)
    labels_only = certify(logits.argmax(2), [1, 1], ms, "detection")
    assert labels_only.certified.all() and np.isinf(labels_only.min_margin).all()


def test_geometry_is_computed_once_per_mask_set(monkeypatch):
    from certmask_core import coverage
    built = make_maskset(PatchThreat(28, 3), 2, "replicated", masks_per_axis=3)
    ms = MaskSet(built.image_size, built.origins, built.sizes, threat=built.threat)  # a fresh user set
    calls = []
    original = coverage.CellGrid.__init__

    def counting(self, *args):
        calls.append(1)
        original(self, *args)

    monkeypatch.setattr(coverage.CellGrid, "__init__", counting)
    pred = np.ones((5, len(ms)), np.int64)
    for _ in range(3):
        for mode in ("detection", "covering_consensus", "paper"):
            certify(pred, np.ones(5, np.int64), ms, mode)
    assert len(calls) == 1


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_bitset_covering_sets_equal_the_definition(data):
    threat = data.draw(threats(max_side=9))
    (H, W), n = threat.image_size, data.draw(st.integers(1, 7))
    sizes = [(data.draw(st.integers(1, H)), data.draw(st.integers(1, W))) for _ in range(n)]
    origins = [(data.draw(st.integers(0, H - h)), data.draw(st.integers(0, W - w))) for h, w in sizes]
    ms = MaskSet((H, W), origins, sizes)   # masks smaller than the patch included
    reference = covering_sets_reference(ms, threat.patch_size)
    as_sets = lambda bits: {frozenset(np.flatnonzero(r).tolist()) for r in unpack(bits, n)}  # noqa: E731
    assert as_sets(covering_set_bits(ms, threat.patch_size)) == reference
    assert as_sets(minimal_covering_set_bits(ms, threat.patch_size)) == minimal_sets_reference(reference)
    if min(map(len, reference)):
        labels = np.array(data.draw(st.lists(st.lists(st.sampled_from([0, 1, 2, NO_VOTE]), min_size=n,
                                                      max_size=n), min_size=1, max_size=6)))
        for mode in ("detection", "covering_consensus", "paper"):
            got = defend(labels, ms, mode, patch=threat.patch_size).output.tolist()
            assert got == [one_round_reference(row, reference, mode) for row in labels.tolist()]


class ConstantBackend:
    """A backend whose model says class 1 under every mask: every image passes every check."""

    batch_size = 64

    def predict(self, model, images):
        return np.ones(len(images), np.int64)

    def masked_predictions(self, model, images, maskset, return_logits=False):
        logits = np.zeros((len(images), len(maskset), 3), np.float32)
        logits[..., 1] = 1.0
        return logits if return_logits else logits.argmax(2)

    def pair_predictor(self, model, images, maskset, return_logits=False):
        return lambda b, pairs: np.ones(len(pairs), np.int64)


def test_paper_is_never_certified_in_results_json_tables_or_plots(tmp_path):
    from certmask_core.run.config import RunConfig
    from certmask_core.run.experiment import run_certification
    from certmask_core.run.outputs import results_table, write_outputs
    images = np.zeros((4, 1, 8, 8), np.float32)
    config = RunConfig((2, 2), (1,), ("replicated",), ("detection", "paper"), masks_per_axis=(2, 2))
    results = run_certification(ConstantBackend(), None, images, np.ones(4, np.int64), config,
                                show_progress=False)
    detection, paper = results["runs"]
    assert detection["certified_accuracy"] == 1.0 and all(detection["per_image"]["certified"])
    assert "certified_accuracy" not in paper and paper["claimed_certified_accuracy_UNSOUND"] == 1.0
    assert not any(paper["per_image"]["certified"]) and all(paper["per_image"]["claim_holds"])
    paper_row = [line for line in results_table(results).splitlines() if line.startswith("| replicated | 1 |")
                 and "| paper |" in line]
    assert len(paper_row) == 1 and "UNSOUND claim" in paper_row[0]
    out = write_outputs(results, tmp_path / "run", plots=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved["unsound_modes"] == ["paper"] and not any(saved["runs"][1]["per_image"]["certified"])
