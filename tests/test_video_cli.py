"""Clips and signals certified by the command line equal the certificates of the library called directly.

The figures of the video section of docs/results.md come from ``certmask certify`` runs
(``experiments/video.sh``); these tests tie such a run to :func:`certmask_core.certify` on the same
items, with the backend's one-mask predictions and pair predictor: the slow twin of the run layer's
batching, streaming and record keeping.
"""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch.backend import TorchBackend  # noqa: E402

from certmask_core import PatchThreat, certify, make_maskset  # noqa: E402
from certmask_core.run.cli import main  # noqa: E402
from certmask_core.run.datasets import FASHION_MNIST_ROOT  # noqa: E402
from certmask_core.run.video import fashion_mnist_clips  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ("clean_accuracy", "certified_accuracy", "alert_rate", "refused_for_margin",
           "certificate_passes_per_image", "defence_passes_per_image", "all_pairs_passes", "margin_tolerance")


def factory():
    """A tiny 1-D net for 3 classes by signal level (``--model tests.test_video_cli:factory``): a
    smoothing convolution, then the mean; fixed weights, so that masking a stretch of a signal changes
    some predictions and not others (a random net would certify nothing or everything)."""
    conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)
    linear = torch.nn.Linear(1, 3)
    with torch.no_grad():
        conv.weight.fill_(1 / 3)
        linear.weight.copy_(torch.tensor([[-20.0], [0.0], [20.0]]))
        linear.bias.copy_(torch.tensor([6.0, 0.0, -6.0]))
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
                               linear)


def run_cli(out: Path, *args) -> dict:
    assert main(["certify", *args, "--out", str(out), "--quiet", "--no-plots"]) == 0
    return json.loads((out / "results.json").read_text())


def assert_run_equals(run: dict, report) -> None:
    """One run of results.json against a CertificationReport of the same set, mode and items."""
    summary = report.summary()
    assert {key: run[key] for key in SUMMARY if key in summary} == {key: summary[key] for key in SUMMARY
                                                                    if key in summary}
    assert run["per_image"]["output"] == report.output.tolist()
    assert run["per_image"]["certified"] == report.certified.tolist()
    # the margins come from logits of other batches (float noise); certificates within the margin
    # tolerance of a flip are refused, so the ones above do not depend on it
    np.testing.assert_allclose(run["per_image"]["min_margin"], report.min_margin, atol=1e-3)


def direct(backend, model, x, labels, ms, k, modes) -> dict:
    logits = backend.masked_predictions(model, x, ms, return_logits=True)
    reports = {}
    for mode in modes:
        # with logits: the run layer refuses pair predictions within the margin tolerance too
        extra = ({"pair_predictor": backend.pair_predictor(model, x, ms, return_logits=True)}
                 if mode == "recovery" else {})
        reports[mode] = certify(logits, labels, ms, mode, k=k, margin_tolerance=backend.margin_tolerance,
                                **extra)
    return reports


@pytest.mark.skipif(not (FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="the clips need the Fashion-MNIST test split (dataset-fashion-mnist package)")
def test_clips_certified_by_the_cli_equal_the_direct_certificates(tmp_path):
    results = run_cli(tmp_path / "clips", "--data", "fashion-mnist-clips", "--model", "bundled-video",
                      "--patch", "4", "3", "3", "--masks-per-axis", "2", "3", "3", "--k", "1",
                      "--mode", "detection", "recovery", "--limit", "4")
    clips, labels, _, _ = fashion_mnist_clips("test", 4)
    x = clips.astype(np.float32) / 255.0
    backend = TorchBackend()
    model = backend.load_model("bundled-video")
    ms = make_maskset(PatchThreat((16, 28, 28), (4, 3, 3)), 1, "replicated", masks_per_axis=(2, 3, 3))
    reports = direct(backend, model, x, labels, ms, 1, ("detection", "recovery"))
    assert results["images"] == 4 and [r["mode"] for r in results["runs"]] == ["detection", "recovery"]
    assert results["undefended_accuracy"] == float((backend.predict(model, x) == labels).mean())
    for run in results["runs"]:
        assert run["plan"]["num_masks"] == len(ms) == 18 and run["plan"]["mask_size"] == [10, 11, 11]
        assert_run_equals(run, reports[run["mode"]])


def test_signals_of_an_ncl_npz_with_a_factory_model_equal_the_direct_certificates(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # the factory is this module: tests.test_video_cli
    rng = np.random.default_rng(0)
    # signals at three levels with noise: the level is the class; some sit near a decision boundary
    levels = rng.uniform(0.05, 0.6, 12)
    signals = np.clip(levels[:, None, None] + rng.normal(0, 0.05, (12, 1, 64)), 0, 1)
    images = np.rint(signals * 255).astype(np.uint8)
    labels = np.digitize(levels, [0.25, 0.35]).astype(np.int64)
    np.savez(tmp_path / "signals.npz", images=images, labels=labels)
    modes = ("detection", "plurality", "recovery")
    results = run_cli(tmp_path / "signals", "--data", str(tmp_path / "signals.npz"), "--layout", "NCL",
                      "--model", "tests.test_video_cli:factory", "--patch", "5", "--masks-per-axis", "4",
                      "--k", "1", "2", "--mode", *modes)
    x = images.astype(np.float32) / 255.0
    backend = TorchBackend()
    model = backend.load_model("tests.test_video_cli:factory")
    runs = {(r["k"], r["mode"]): r for r in results["runs"]}
    assert set(runs) == {(k, m) for k in (1, 2) for m in modes}
    certified = 0
    for k in (1, 2):
        ms = make_maskset(PatchThreat((64,), (5,)), k, "replicated", masks_per_axis=4)
        for mode, report in direct(backend, model, x, labels, ms, k, modes).items():
            assert runs[(k, mode)]["plan"]["num_masks"] == len(ms)
            assert_run_equals(runs[(k, mode)], report)
            certified += int(report.certified.sum())
    assert 0 < certified < 12 * 6  # the comparison has certified and uncertified signals to tell apart
