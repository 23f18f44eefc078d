
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import ALERT, CertMaskError, MaskSet, PatchThreat, certify, defend, make_maskset
from certmask_core.certification import all_pairs
from certmask_core.reference import covers, pair_covers
from certmask_core.run.records import per_image_records

STRIP = make_maskset(PatchThreat((1, 6), (1, 2)), 1, "patchcleanser", masks_per_axis=(1, 2))


def constant_pairs(value):
    return lambda b, pairs: np.full(len(pairs), value)


def test_detection_unanimity_and_alert():
    res = defend(np.array([[3, 3], [3, 4]]), STRIP, "detection")
    assert res.output.tolist() == [3, ALERT] and res.forward_passes.tolist() == [2, 2]


def test_logits_are_accepted_and_argmaxed():
    logits = np.zeros((1, 2, 5), np.float32)
    logits[0, :, 2] = 1.0
    assert defend(logits, STRIP, "detection").output.tolist() == [2]


def test_covering_consensus_outputs_the_only_class_holding_a_covering_set():
    ms = make_maskset(PatchThreat(28, 3), 2, "replicated", masks_per_axis=2)  # 8 masks, 2 copies of 4
    pred = np.full((3, len(ms)), 1)
    pred[1, :4] = 7          # class 7 holds the whole first copy: both 1 and 7 hold covering sets
    pred[2, 0] = 7           # one disagreeing mask: only class 1 holds a covering set
    out = defend(pred, ms, "covering_consensus").output
    assert out.tolist() == [1, ALERT, 1]
    assert defend(pred, ms, "detection").output.tolist() == [1, ALERT, ALERT]


def test_paper_rule_exactly_k_on_a_common_position_then_majority():
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), 2, "replicated", masks_per_axis=(1, 2))
    cov = covers(ms, (1, 2))[0]
    common = np.flatnonzero(cov[0])[:2]            # two masks covering position (0, 0)
    pred = np.full((3, len(ms)), 4)
    pred[0, common] = 1                             # exactly k=2 voters sharing a position -> 1
    pred[1, :3] = 2                                 # three voters for 2: not exactly k -> majority
    pred[2, 0] = 3                                  # one voter: not exactly k -> majority 4
    out = defend(pred, ms, "paper").output
    assert out[0] == 1
    assert out[1] == (2 if 3 > len(ms) - 3 else 4)
    assert out[2] == 4


def test_recovery_second_round_accepts_a_consistent_disagreer():
    pred = np.array([[1, 2]])
    # majority of a tie is the smaller label 1; disagreer mask 1 (label 2) is accepted if its pair says 2
    assert defend(pred, STRIP, "recovery", pair_predictor=constant_pairs(2)).output.tolist() == [2]
    assert defend(pred, STRIP, "recovery", pair_predictor=constant_pairs(0)).output.tolist() == [1]
    with pytest.raises(CertMaskError, match="needs a callable pair_predictor"):
        defend(pred, STRIP, "recovery")
    with pytest.raises(CertMaskError, match="pair_predictor returned 3 predictions for 1 pairs"):
        defend(pred, STRIP, "recovery", pair_predictor=lambda b, pairs: np.zeros(3, int))


def test_recovery_certificate_uses_early_exit():
    ms = make_maskset(PatchThreat(12, 2), 1, "patchcleanser", masks_per_axis=3)  # 9 masks, 36 pairs
    calls = []

    def predictor(b, pairs):
        calls.append(len(pairs))
        out = np.full(len(pairs), 5)
        if b == 1:
            out[0] = 0  # a wrong label in the very first chunk
        return out

    pred = np.full((3, 9), 5)
    pred[2, 4] = 6  # fails the one-mask certificate: no pair is asked for
    rep = certify(pred, np.array([5, 5, 5]), ms, "recovery", pair_predictor=predictor, pair_chunk=10,
                  recovery_certificate="all_pairs")
    assert rep.certified.tolist() == [True, False, False]
    assert rep.certificate_passes.tolist() == [9 + 36, 9 + 10, 9]
    assert len(all_pairs(9)) == 36
    # the hitting set needs every mask good here (each is the only cover of some position): the first
    # candidate's wrong pair (its first row, 8 pairs) already rules image 1 out
    rep = certify(pred, np.array([5, 5, 5]), ms, "recovery", pair_predictor=predictor)
    assert rep.certified.tolist() == [True, False, False]
    assert rep.certificate_passes.tolist() == [9 + 36, 9 + 8, 9]


def test_certify_summary_and_records():
    pred = np.array([[3, 3], [3, 4], [2, 2]])
    rep = certify(pred, np.array([3, 3, 3]), STRIP, "detection")
    s = rep.summary()
    assert s["certified_accuracy"] == pytest.approx(1 / 3) and s["clean_accuracy"] == pytest.approx(1 / 3)
    assert s["alert_rate"] == pytest.approx(1 / 3) and s["guarantee"] == "label-or-alert"
    record = per_image_records(range(3), rep.labels, rep.output, {("replicated", 1, "detection"): rep})[1]
    assert record["label"] == 3 and record["runs"]["replicated/k1/detection"] == {
        "output": ALERT, "certified": False, "claim_holds": False, "min_margin": "inf", "below_margin": False,
        "certificate_passes": 2, "defence_passes": 2}
    paper_report = certify(pred, np.array([3, 3, 3]), STRIP, "paper")
    paper = paper_report.summary()
    assert not paper["sound"] and "certified_accuracy" not in paper
    assert paper["claimed_certified_accuracy_UNSOUND"] == pytest.approx(1 / 3)
    # an unsound mode never reports an image as certified, anywhere
    assert not paper_report.certified.any() and paper_report.claim_holds.tolist() == [True, False, False]
    records = per_image_records(range(3), paper_report.labels, paper_report.output,
                                {("replicated", 1, "paper"): paper_report})
    assert all(r["runs"]["replicated/k1/paper"]["certified"] is False for r in records)
    assert records[0]["runs"]["replicated/k1/paper"]["claim_holds"] is True


@pytest.mark.parametrize("call,message", [
    (lambda: defend(np.zeros((2, 3), int), STRIP), "3 columns but the mask set has 2 masks"),
    (lambda: defend(np.zeros((2,), int), STRIP), r"labels must have shape \(B, n\), got \(2,\)"),
    (lambda: defend(np.zeros((1, 2, 0)), STRIP), r"logits have 0 classes \(shape \(1, 2, 0\)\)"),
    (lambda: defend(np.zeros((1, 2)), STRIP), r"logits must have shape \(B, n, K\)"),
    (lambda: defend(np.array([[0, 12]]), STRIP, num_classes=10), r"labels must be < 10 and >= 0"),
    (lambda: defend(np.array([[0, -1]]), STRIP), r"labels must be a class index and >= 0 .or NO_VOTE = -2., "
                                                 r"found range \[-1, 0\]"),
    (lambda: defend(np.array([[0, 0]]), STRIP, "vote"), "mode must be one of"),
    (lambda: defend(np.array([[0, 0]]), STRIP, k=2), r"not 2-fold: patch position \(0, 0\) is covered by 1"),
    (lambda: certify(np.array([[0, 0]]), [0, 1], STRIP), "1 prediction rows but 2 labels"),
    (lambda: certify(np.array([[0, 0]]), [11], STRIP, num_classes=10), r"labels must be >= 0 and < 10, "
                                                                          r"found \[11, 11\]"),
    (lambda: defend(np.array([[0]]), MaskSet((4, 4), [[0, 0]], [[2, 2]])), "needs patch="),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(CertMaskError, match=message):
        call()


def test_user_maskset_not_covering_is_refused():
    holes = MaskSet((1, 6), [[0, 0]], [[1, 3]])
    with pytest.raises(CertMaskError, match="not 1-fold"):
        certify(np.array([[0]]), [0], holes, patch=(1, 2))


def test_pair_union_can_cover_what_no_single_mask_covers():
    ms = MaskSet((1, 4), [[0, 0], [0, 2]], [[1, 2], [1, 2]])
    assert not covers(ms, (1, 2))[0, 1].any() and pair_covers(ms, (1, 2))[0, 1, 0, 1]


@given(st.data())
def test_random_attacks_never_break_sound_certificates(data):
    """Hypothesis twin of the exhaustive checker on larger sets: random attacks, real 2-D geometry."""
    t = PatchThreat((data.draw(st.integers(6, 14)), data.draw(st.integers(6, 14))),
                    data.draw(st.integers(1, 3)))
    k = data.draw(st.integers(1, 3))
    ms = make_maskset(t, k, data.draw(st.sampled_from(["replicated", "offset"])), masks_per_axis=2)
    cov = covers(ms, t.patch_size)
    a, b = data.draw(st.integers(0, cov.shape[0] - 1)), data.draw(st.integers(0, cov.shape[1] - 1))
    y = data.draw(st.integers(0, 3))
    free = ~cov[a, b]
    attacked = np.full(len(ms), y)
    attacked[free] = data.draw(st.lists(st.integers(0, 3), min_size=int(free.sum()),
                                        max_size=int(free.sum())))
    for mode in ("detection", "covering_consensus"):
        assert defend(attacked[None], ms, mode).output[0] in (y, ALERT)
    forced = pair_covers(ms, t.patch_size)[a, b]
    table = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(ms) ** 2,
                                        max_size=len(ms) ** 2))).reshape(len(ms), len(ms))
    table = np.where(forced, y, np.minimum(table, table.T))  # one answer per unordered pair
    out = defend(attacked[None], ms, "recovery",
                 pair_predictor=lambda _, p: table[p[:, 0], p[:, 1]]).output[0]
    assert out == y
