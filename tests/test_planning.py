"""Planning for a budget: exact minimum of distinct masks (T16), offset at the minimum, the planner
and ``tune``."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import (
    CertMaskError,
    PatchThreat,
    certify,
    coverage_counts,
    exact_minimum,
    lower_bound,
    make_maskset,
    plan_layouts,
)
from certmask_core.constructions import shift_classes
from certmask_core.planning import pareto_front, passes_per_image, tune_candidates
from certmask_core.reference import fewest_by_search, front_by_building, milp_minimum, pareto_front_reference


@pytest.mark.parametrize("P,w", [((1, 5), (1, 2)), ((1, 6), (1, 3)), ((2, 3), (2, 2)), ((3, 3), (2, 2)),
                                 ((2, 4), (2, 3)), ((3, 2), (3, 1))])
def test_exact_minimum_equals_exhaustive_subset_search(P, w):
    threat = PatchThreat((P[0], P[1]), (1, 1))
    for k in range(1, w[0] * w[1] + 2):
        expected = fewest_by_search(P, w, k) if k <= w[0] * w[1] else None
        assert exact_minimum(threat, w, k) == expected, (P, w, k)


def test_exact_minimum_equals_integer_programming():
    """The closed form against scipy's milp (a test-only dependency) on every small 1-D and 2-D case."""
    pytest.importorskip("scipy")
    checked = 0
    for P_h, P_w in itertools.product(range(1, 6), range(1, 7)):
        for w_h, w_w in itertools.product(range(1, P_h + 1), range(1, P_w + 1)):
            for k in range(1, w_h * w_w + 1, max(1, (w_h * w_w) // 4)):
                threat = PatchThreat((P_h, P_w), (1, 1))
                assert exact_minimum(threat, (w_h, w_w), k) == milp_minimum((P_h, P_w), (w_h, w_w), k)
                checked += 1
    assert checked > 300


def test_documented_examples_reach_the_exact_minimum():
    t = PatchThreat(8, 1)  # was 81 masks with the stride grid; the optimum is 56
    for strategy in ("replicated", "offset"):
        ms = make_maskset(t, 3, strategy, mask_size=2)
        assert len(ms) == exact_minimum(t, 2, 3) == 56 and lower_bound(t, 2, 3) == 48
    t = PatchThreat(28, 3)  # was 364
    ms = make_maskset(t, 6, "offset", masks_per_axis=6)
    assert len(ms) == exact_minimum(t, ms.spec.mask_size, 6) == 216 == lower_bound(t, ms.spec.mask_size, 6)


def test_no_distinct_set_is_reported_not_built():
    t = PatchThreat(10, 3)
    assert exact_minimum(t, 4, 4) == 4 * 4 * 4 // 4 * 1 or exact_minimum(t, 4, 4) is not None
    assert exact_minimum(t, 4, 5) is None  # w = 2 per axis: four distinct masks over position (0, 0)
    with pytest.raises(CertMaskError, match=r"only 4 = prod min\(w_i, P_i\)"):
        make_maskset(t, 5, "offset", mask_size=4)
    with pytest.raises(CertMaskError, match="k must be >= 1, got 0"):
        exact_minimum(t, 4, 0)


@given(H=st.integers(3, 30), W=st.integers(3, 30), ph=st.integers(1, 4), pw=st.integers(1, 4),
       n_h=st.integers(1, 5), n_w=st.integers(1, 5), k=st.integers(1, 9))
def test_replicated_and_offset_build_the_exact_minimum(H, W, ph, pw, n_h, n_w, k):
    t = PatchThreat((H, W), (min(ph, H), min(pw, W)))
    sets = {}
    for strategy in ("replicated", "offset"):
        try:
            sets[strategy] = make_maskset(t, k, strategy, masks_per_axis=(n_h, n_w))
        except CertMaskError:
            sets[strategy] = None
    if sets["replicated"] is None:
        assert sets["offset"] is None
        assert exact_minimum(t, make_maskset(t, 1, "replicated", masks_per_axis=(n_h, n_w)).spec.mask_size,
                             k) is None
        return
    for ms in sets.values():
        counts = coverage_counts(ms, t)
        assert counts.min() >= k and ms.is_distinct()
        assert len(ms) == exact_minimum(t, ms.spec.mask_size, k) >= lower_bound(t, ms.spec.mask_size, k)


def test_offset_spreads_its_copies_where_cost_allows():
    t = PatchThreat(25, 1)  # w = 8: ceil((25 + o) / 8) = 4 for every shift o < 8, all equally cheap
    w = (8, 8)
    assert shift_classes(t, w, 2, "replicated") == [(0, 0), (0, 1)]
    assert shift_classes(t, w, 2, "offset") == [(0, 0), (4, 4)]  # the paper's stride w / k
    four = shift_classes(t, w, 4, "offset")
    assert len(set(four)) == 4 and {o for o, _ in four} | {o for _, o in four} >= {0, 4}


@pytest.mark.parametrize("image,patch,k", [(12, 2, 1), (12, 2, 3), ((9, 14), (2, 3), 2), (20, 5, 4)])
def test_plan_layouts_equal_building_every_size(image, patch, k):
    threat = PatchThreat(image, patch)
    got = [(d["num_masks"], d["mask_size"]) for d in plan_layouts(threat, k)]
    assert got == front_by_building(threat, k, make_maskset)


def test_plan_layouts_any_shape_counts_equal_the_constructions():
    threat = PatchThreat((10, 13), (2, 3))
    for layout in plan_layouts(threat, 3, "offset", shape="any"):
        ms = make_maskset(threat, 3, "offset", mask_size=tuple(layout["mask_size"]))
        assert len(ms) == layout["num_masks"] and coverage_counts(ms, threat).min() >= 3


def test_plan_layouts_constraints():
    threat = PatchThreat(28, 3)
    for limits, check in [({"max_mask_side": 9}, lambda d: max(d["mask_size"]) <= 9),
                          ({"max_mask_fraction": 0.05}, lambda d: d["mask_fraction"] <= 0.05),
                          ({"max_masks": 50}, lambda d: d["num_masks"] <= 50),
                          ({"max_passes": 100, "passes_for": "recovery"},
                           lambda d: d["passes_recovery_worst"] <= 100)]:
        layouts = plan_layouts(threat, 2, **limits)
        assert layouts and all(check(d) for d in layouts), limits
        counts = [d["num_masks"] for d in layouts]
        areas = [d["mask_fraction"] for d in layouts]
        assert counts == sorted(set(counts)) and areas == sorted(areas, reverse=True)
    assert passes_per_image(10, "recovery") == 55 and passes_per_image(10) == 10


@pytest.mark.parametrize("kwargs,message", [
    ({"max_passes": 2}, r"no 2-fold layout .* satisfies \{'max_passes': 2\}.*the fewest masks are 8"),
    ({"max_mask_fraction": 1.5}, r"max_mask_fraction is a share of the image in \(0, 1\], got 1.5"),
    ({"max_masks": 0}, r"max_masks must be a positive number, got 0"),
    ({"max_mask_side": 2.5}, r"max_mask_side must be a positive number, got 2.5"),
    ({"max_mask_fraction": float("nan")}, r"max_mask_fraction must be a positive number, got nan"),
    ({"passes_for": "two_rounds"}, r"passes_for must be one of"),
    ({"shape": "round"}, r"shape must be 'square' or 'any', got 'round'"),
    ({"strategy": "patchcleanser"}, r"single cover \(k=1\), got k=2"),
])
def test_plan_layouts_errors_name_the_values(kwargs, message):
    with pytest.raises(CertMaskError, match=message):
        plan_layouts(PatchThreat(28, 3), 2, **kwargs)


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 10)), min_size=1, max_size=25))
def test_pareto_front_equals_quadratic_twin(points):
    passes, accuracy = zip(*points)
    front = pareto_front(passes, accuracy).tolist()
    kept = {(passes[i], accuracy[i]) for i in front}
    assert kept == {points[i] for i in pareto_front_reference(passes, accuracy)}
    assert [passes[i] for i in front] == sorted(passes[i] for i in front)


class LinearBackend:
    """A numpy model (fixed random linear map of the masked image, mask fill 0): a twin of a backend."""

    batch_size = 64

    def __init__(self, shape, classes=3, seed=0):
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(size=(int(np.prod(shape)), classes))
        self.masked_calls = 0

    def _logits(self, images, hidden):
        kept = images[:, None] * ~hidden[None, :, None]
        return (kept.reshape(*kept.shape[:2], -1) @ self.weights).astype(np.float32)

    @staticmethod
    def _hidden(maskset, shape):
        out = np.zeros((len(maskset),) + tuple(shape), bool)
        for i, ((y, x), (h, w)) in enumerate(zip(maskset.origins, maskset.sizes)):
            out[i, y:y + h, x:x + w] = True
        return out

    def predict(self, model, images, return_logits=False):
        logits = images.reshape(len(images), -1) @ self.weights
        return logits if return_logits else logits.argmax(1)

    def masked_predictions(self, model, images, maskset, return_logits=False):
        self.masked_calls += len(images) * len(maskset)
        logits = self._logits(images, self._hidden(maskset, images.shape[2:]))
        return logits if return_logits else logits.argmax(2)

    def pair_predictor(self, model, images, maskset, return_logits=False):
        hidden = self._hidden(maskset, images.shape[2:])

        def many(image_indices, pairs):
            pairs = np.asarray(pairs).reshape(-1, 2)
            both = hidden[pairs[:, 0]] | hidden[pairs[:, 1]]
            kept = images[np.asarray(image_indices)] * ~both[:, None]
            logits = (kept.reshape(len(kept), -1) @ self.weights).astype(np.float32)
            return logits if return_logits else logits.argmax(1)

        def predict(index, pairs):
            return many(np.full(len(np.asarray(pairs).reshape(-1, 2)), index), pairs)
        predict.many = many
        return predict


def test_tune_equals_certifying_each_candidate_alone():
    from certmask_core.run.tune import tune
    rng = np.random.default_rng(1)
    images = rng.random((10, 1, 12, 12)).astype(np.float32)
    backend = LinearBackend(images.shape[1:])
    labels = backend.predict(None, images)
    labels[:2] = (labels[:2] + 1) % 3  # two wrong clean predictions
    results = tune(backend, None, images, labels, (2, 2), budget=40, ks=(1, 2, 3), show_progress=False,
                   check_images=images[:4], check_labels=labels[:4])
    assert results["unique_masks"] < results["candidate_masks"]
    checked = {c["candidate"] for roles in results["check"].values() for c in roles.values()}
    assert backend.masked_calls == len(images) * results["unique_masks"] + sum(  # each set predicted once
        4 * results["candidates"][i]["num_masks"] for i in checked)
    assert results["pairs_evaluated"] <= results["pairs_asked"]
    threat = PatchThreat(12, 2)
    for c in results["candidates"]:
        ms = make_maskset(threat, c["k"], c["strategy"], mask_size=tuple(c["mask_size"]))
        first = backend.masked_predictions(None, images, ms, return_logits=True)
        for mode, got in c["modes"].items():
            recovery = mode == "recovery"
            pairs = backend.pair_predictor(None, images, ms, return_logits=True) if recovery else None
            alone = certify(first, labels, ms, mode, k=c["k"], pair_predictor=pairs).summary()
            assert got["certified_accuracy"] == alone["certified_accuracy"], (c, mode)
            assert got["passes"] == (passes_per_image(len(ms), "recovery") if mode == "recovery" else len(ms))
            assert got["passes"] <= 40
    for mode, front in results["fronts"].items():
        pts = [(results["candidates"][i]["modes"][mode]["passes"],
                results["candidates"][i]["modes"][mode]["certified_accuracy"]) for i in front]
        everyone = [(c["modes"][mode]["passes"], c["modes"][mode]["certified_accuracy"])
                    for c in results["candidates"] if mode in c["modes"]]
        assert not any(p <= q and a > b for p, a in everyone for q, b in pts)
        best = max(a for _, a in everyone)
        chosen = results["candidates"][results["recommended"][mode]]["modes"][mode]
        assert chosen["certified_accuracy"] >= best - np.sqrt(best * (1 - best) / len(images)) - 1e-12
        most = results["candidates"][results["most_accurate"][mode]]["modes"][mode]
        assert most["certified_accuracy"] == best
        assert {role: c["images"] for role, c in results["check"][mode].items()} == {
            "recommended": 4, "most_accurate": 4}


def test_tune_refuses_the_unsound_mode_and_bad_data():
    from certmask_core.run.tune import tune
    images = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(CertMaskError, match="sound modes"):
        tune(LinearBackend(images.shape[1:]), None, images, np.zeros(2, int), (2, 2), 20, modes=["paper"])
    with pytest.raises(CertMaskError, match=r"N labels, got shapes \(2, 1, 8, 8\) and \(3,\)"):
        tune(LinearBackend(images.shape[1:]), None, images, np.zeros(3, int), (2, 2), 20)
    with pytest.raises(CertMaskError, match="fits 1 passes per image"):
        tune_candidates(PatchThreat(8, 2), 1)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "certmask_core.run.cli", *args], capture_output=True,
                          text=True)


def test_plan_cli_without_a_mask_size_uses_the_planner():
    out = _cli("plan", "--image", "28", "28", "--patch", "3", "3", "--k", "3")
    assert out.returncode == 0, out.stderr
    chosen = [line.split() for line in out.stdout.splitlines() if line.startswith("*")]
    assert "planner (max-mask-fraction 0.1" in out.stdout and chosen[0][1:3] == ["75", "8x8"]
    assert "masks 75  lower bound 75  exact minimum 75" in out.stdout
    budget = _cli("plan", "--image", "28", "28", "--patch", "3", "3", "--k", "2", "--max-passes", "300",
                  "--passes-for", "recovery", "--json")
    data = json.loads(budget.stdout)
    chosen = data["planner"]["layouts"][data["planner"]["chosen"]]
    assert chosen == data["planner"]["layouts"][-1] and chosen["passes_recovery_worst"] <= 300
    assert len(data["origins"]) == chosen["num_masks"] == data["summary"]["exact_minimum"]
    mixed = _cli("plan", "--image", "28", "28", "--patch", "3", "3", "--mask", "9", "9", "--max-masks", "3")
    assert mixed.returncode == 2 and "--max-* constraints choose the mask size" in mixed.stderr
    none = _cli("plan", "--image", "28", "28", "--patch", "3", "3", "--k", "2", "--max-masks", "3")
    assert none.returncode == 2 and "the fewest masks are 8 of 16x16" in none.stderr


def test_tune_cli_writes_json_table_and_plot(tmp_path):
    pytest.importorskip("torch")
    out = _cli("tune", "--patch", "5", "5", "--tune-images", "12", "--check-images", "6", "--budget", "12",
               "--k", "1", "2", "--mode", "detection", "plurality", "recovery", "--out", str(tmp_path / "t"),
               "--quiet")
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert set(saved["recommended"]) == {"detection", "plurality", "recovery"}
    assert saved["tuning_images"] == [0, 12] and saved["check_images"] == [12, 18]
    assert all(saved["check"][mode]["recommended"]["images"] == 6 for mode in saved["recommended"])
    assert (tmp_path / "t" / "tune_front.png").stat().st_size > 0
    assert "Pareto front, detection" in (tmp_path / "t" / "tune.md").read_text()


def test_review_windows_wider_than_1024_reach_the_exact_minimum_quickly():
    """Found by review: shifts were capped at 1,024 per axis (3,952 masks where 3,000 suffice, a
    refused k that exists) and offset's farthest-point choice took O(k x ties) (24 s at k = 400)."""
    t = PatchThreat(2000, 1)
    for strategy in ("replicated", "offset"):
        ms = make_maskset(t, 1500, strategy, mask_size=(1999, 2000))
        assert len(ms) == exact_minimum(t, (1999, 2000), 1500) == 3000
    tall = PatchThreat((2000, 1), 1)
    built = make_maskset(tall, 1025, "replicated", mask_size=(2000, 1))
    assert len(built) == exact_minimum(tall, (2000, 1), 1025) == 2049
    assert len(make_maskset(PatchThreat(1024, 1), 400, "offset", mask_size=1023)) == 1600


def test_review_planner_tries_every_window_on_long_axes():
    assert plan_layouts(PatchThreat(2000, 1), 2, max_masks=8)[-1]["mask_size"] == [1001, 1001]
    assert plan_layouts(PatchThreat((1100, 600), 1), 1, max_masks=2, shape="any")[-1]["num_masks"] == 2
    with pytest.raises(CertMaskError, match=r"shape='any' prices every \(w_h, w_w\) pair: 8192 x 8192"):
        plan_layouts(PatchThreat(8192, 1), 1, shape="any")
    with pytest.raises(CertMaskError, match="only masks hiding the whole image give it"):
        plan_layouts(PatchThreat(1, 1))
    with pytest.raises(CertMaskError, match="at most 16 distinct masks lie over the corner position"):
        plan_layouts(PatchThreat(4, 1), 17)


@pytest.mark.parametrize("call,message", [
    (lambda: exact_minimum(PatchThreat(28, 3), 7, 2**63), None),
    (lambda: plan_layouts(PatchThreat(28, 3), 2**63), r"k must be <= 4194304"),
    (lambda: make_maskset(PatchThreat(28, 3), 2**63, "offset", mask_size=7), r"only 25 = prod min"),
    (lambda: plan_layouts(PatchThreat(28, 3), 2, strategy=0), r"strategy must be"),
    (lambda: tune_candidates(PatchThreat(28, 3), 50, ks=[0, 2]), r"ks\[\] must be >= 1, got 0"),
    (lambda: tune_candidates(PatchThreat(28, 3), 50, ks=[2, 2]), r"ks lists a value twice: \[2, 2\]"),
    (lambda: tune_candidates(PatchThreat(28, 3), 50, strategies="offset"), r"strategies must be a list"),
    (lambda: tune_candidates(PatchThreat(28, 3), 50, strategies=["bogus"]), r"got strategies \['bogus'\]"),
    (lambda: tune_candidates(PatchThreat(28, 3), 50, ks=[1], strategies=["offset"]), r"nothing to try"),
    (lambda: tune_candidates(PatchThreat(28, 3), 50, shape="bogus"), r"shape must be 'square' or 'any'"),
    (lambda: tune_candidates(None, 50), r"threat must be a PatchThreat, got NoneType"),
    (lambda: pareto_front([1, 2], [0.5]), r"shapes \(2,\) and \(1,\)"),
    (lambda: pareto_front([float("nan"), 2], [0.9, 0.5]), r"finite 1-D arrays"),
    (lambda: pareto_front(None, None), r"finite 1-D arrays"),
])
def test_review_hostile_arguments_get_named_errors(call, message):
    if message is None:
        assert call() is None
        return
    with pytest.raises(CertMaskError, match=message):
        call()


class _ShortBackend(LinearBackend):
    def masked_predictions(self, model, images, maskset, return_logits=False):
        return super().masked_predictions(model, images, maskset, return_logits)[:, 1:]


def test_review_tune_refuses_hostile_backends_and_data():
    from certmask_core.run.tune import tune
    images = np.zeros((3, 1, 8, 8), np.float32)
    labels = np.zeros(3, int)
    backend = LinearBackend(images.shape[1:])
    cases = [
        (lambda: tune(_ShortBackend(images.shape[1:]), None, images, labels, (2, 2), 20, ks=(1,)),
         r"masked_predictions returned shape \(3, \d+, 3\), not logits \(3, \d+, K\)"),
        (lambda: tune(backend, None, images, None, (2, 2), 20),
         r"non-empty \(N, C, \*spatial\) array with N labels"),
        (lambda: tune(backend, None, images, labels, (2, 2), 20, check_images=images), "go together"),
        (lambda: tune(backend, None, images, labels, (2, 2), 20, check_images=images[:0],
                      check_labels=labels[:0]), r"check_images must be a non-empty"),
        (lambda: tune(backend, None, images, labels, (2, 2), 20, modes=None), r"modes must be a list"),
    ]
    for call, message in cases:
        with pytest.raises(CertMaskError, match=message):
            call()


def test_review_tune_cli_checks_its_output_folder_first(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    out = _cli("tune", "--patch", "3", "3", "--out", str(target))
    assert out.returncode == 2 and "is a file, not a folder" in out.stderr and target.read_text() == "keep"
    huge = _cli("plan", "--image", "28", "28", "--patch", "3", "3", "--k", str(2**63))
    assert huge.returncode == 2 and "k must be <= 4194304" in huge.stderr


def test_cli_output_cut_short_by_the_reader_is_not_an_error():
    proc = subprocess.run(f"{sys.executable} -m certmask_core.run.cli plan --image 224 224 --patch 32 32 "
                          f"--k 3 | head -1", shell=True, capture_output=True, text=True)
    assert proc.stdout.startswith("planner") and "error" not in proc.stderr
