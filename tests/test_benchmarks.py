"""The benchmark code runs and checks itself on a small case (timings are not asserted)."""
import pytest

from benchmarks.bench_coverage import random_maskset
from certmask_core import coverage_counts, coverage_counts_bruteforce


def test_random_masksets_of_the_benchmark_verify_equal():
    ms = random_maskset(128, 96, 50, 8)
    assert (coverage_counts(ms, 8) == coverage_counts_bruteforce(ms, 8)).all()


def test_reference_patchcleanser_loop_agrees_with_early_exit_certify():
    pytest.importorskip("torch")
    from certmask_backends.pytorch import TorchBackend
    from certmask_backends.pytorch.models import load_model

    from certmask_core import PatchThreat, certify, make_maskset
    from certmask_core.reference import reference_patchcleanser
    from certmask_core.run.datasets import load_dataset
    x, y, _ = load_dataset("fashion-mnist-subset", limit=6)
    backend, model = TorchBackend(), load_model("bundled")
    ms = make_maskset(PatchThreat(28, 3), 1, "patchcleanser", masks_per_axis=3)
    ref, passes = reference_patchcleanser(backend, model, x, y, ms)
    ours = certify(backend.masked_predictions(model, x, ms), y, ms, "recovery",
                   pair_predictor=backend.pair_predictor(model, x, ms), pair_chunk=8)
    assert (ref == ours.certified).all() and passes == 6 * (9 + 36)
    assert ours.certificate_passes.sum() <= passes


def test_decision_benchmark_twins_agree_on_a_small_case():
    from benchmarks.bench_decisions import grid_plus_random, predictions
    from certmask_core import defend
    from certmask_core.reference import dense_reference
    ms = grid_plus_random(12, image=64, patch=4)
    pred = predictions(len(ms), 50)
    for mode in ("covering_consensus", "paper"):
        assert (defend(pred, ms, mode).output == dense_reference(pred, ms, 4, mode)).all()


def test_recovery_benchmark_compares_both_certificates_on_one_run():
    pytest.importorskip("torch")
    from certmask_backends.pytorch import TorchBackend
    from certmask_backends.pytorch.models import load_model

    from benchmarks.bench_recovery import measure
    from certmask_core import PatchThreat, make_maskset
    from certmask_core.run.datasets import load_dataset
    x, y, _ = load_dataset("fashion-mnist-subset", limit=4)
    row = measure(TorchBackend(), load_model("bundled"), x, y, k=2, per_axis=2)
    hit, every = row["hitting_set"], row["all_pairs"]
    assert row["masks"] == len(make_maskset(PatchThreat(28, 3), 2, "replicated", masks_per_axis=2))
    assert hit["certified"] >= every["certified"]
    assert hit["pair_passes_per_image"] <= row["all_pairs_count"]
    # the same certificate asked image by image: same answers, more backend calls
    alone = row["hitting_set, one image per call"]
    assert alone["certified"] == hit["certified"] and alone["backend_calls"] >= hit["backend_calls"]


def test_training_benchmark_measures_every_recipe_in_one_run():
    pytest.importorskip("torch")
    from benchmarks.bench_training import RECIPES, measure
    from certmask_core.run.datasets import load_dataset
    x, y, _ = load_dataset("fashion-mnist-subset", limit=64)
    rows = measure(x, y, steps=2, batch=32)
    assert [r["augmentation"] for r in rows] == [a for a, _ in RECIPES]
    assert rows[0]["ratio_to_none"] == 1.0 and all(r["seconds_per_step"] > 0 for r in rows)
    # greedy scores 2 x samples candidates per masked image (p_none = 0.2 leaves a fifth clean)
    assert [r["scoring_passes_per_image"] > 0 for r in rows] == [False, False, False, True, True]
    assert rows[4]["scoring_passes_per_image"] > rows[3]["scoring_passes_per_image"]


def test_sizes_and_patches_benchmark_paths_agree_on_small_cases():
    pytest.importorskip("torch")
    from certmask_backends.pytorch import TorchBackend

    from benchmarks.bench_sizes_and_patches import sizes, verifier
    from certmask_core.run.datasets import load_dataset
    rows = verifier(cases=((10, 2, 3), (16, 3, 4)))  # asserts closed form == general == brute force
    assert [r["min_coverage"] for r in rows] == [1, 1]
    x, y, _ = load_dataset("fashion-mnist-subset", limit=3)
    backend = TorchBackend()
    row = sizes(backend, backend.load_model("bundled"), x, y, sides=(2, 3))  # asserts equal certificates
    assert row["pair_passes_one_run"] <= row["pair_passes_per_size"]


def test_planning_benchmark_twins_agree_on_small_cases():
    pytest.importorskip("scipy")
    from benchmarks.bench_planning import minimum, offset, planner
    assert minimum(max_positions=3)["cases"] > 20
    assert planner(image=20, patch=3, k=2)["layouts"] > 3
    measured = offset(image=16, patch=3)
    assert measured["cases"] > 20 and measured["worst_ratio"] >= 1.0


def test_ndim_benchmark_twins_agree_on_small_cases():
    from benchmarks.bench_ndim import cost_rows, coverage_rows, covering_set_rows
    assert len(coverage_rows(cases=(((300,), (5,), 20), ((4, 9, 9), (2, 2, 3), 15)))) == 2
    assert covering_set_rows(cases=(((4, 6, 6), (2, 2, 2), (2, 2, 2), 2),))[0]["sets"] > 1
    assert all(r["masks"] < r["naive_product"] for r in cost_rows())


def test_host_ceiling_benchmark_runs_both_implementations_on_one_case():
    """The benchmark's own check: before and after certify the same images with the same passes."""
    pytest.importorskip("torch")
    from certmask_backends.pytorch import TorchBackend

    from benchmarks.bench_recovery import cheap_model, host_ceiling
    from certmask_core.run.datasets import load_dataset
    images, labels, _ = load_dataset("fashion-mnist-subset", limit=24)
    backend = TorchBackend(batch_size=256)
    row = host_ceiling(backend, cheap_model(images, labels), images, labels, k=2, per_axis=2, image_batch=10,
                       repeats=1)
    for certificate in ("hitting_set", "all_pairs"):
        before, after = row[f"before {certificate}"], row[f"after {certificate}"]
        assert before["pair_passes"] == after["pair_passes"] > 0 and before["certified"] == after["certified"]
        assert after["ratio_to_model_alone"] > 0
