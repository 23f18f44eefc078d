"""The adaptive patch attack against every certificate; two patches and a misestimated patch size; its
files, written by the run layer with the data's own class names."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.attack import (  # noqa: E402
    MultiPatchAttack,
    PatchAttack,
    attack_undefended,
    run_attack,
    run_attack_with_examples,
)
from certmask_backends.pytorch.models import load_model  # noqa: E402

from certmask_core import ALERT, CertMaskError, PatchThreat, certify, defend, make_maskset  # noqa: E402
from certmask_core.coverage import coverage_counts, coverage_extremes  # noqa: E402
from certmask_core.run import plots  # noqa: E402
from certmask_core.run.cli import main  # noqa: E402
from certmask_core.run.datasets import FASHION_MNIST_CLASSES, load_dataset  # noqa: E402
from certmask_core.run.outputs import write_attack_outputs  # noqa: E402


class BrightSpot(torch.nn.Module):
    """Class 0 when some pixel is brighter than 0.9, else class 1 (smooth in the max pixel)."""

    def forward(self, x):
        score = 20.0 * (x.flatten(1).max(1).values - 0.9)
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_tiny_classifier_realises_the_paper_counterexample():
    """The T9 counterexample, realised by a real model on a real image through the torch backend."""
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), 1, "patchcleanser", masks_per_axis=(1, 2))
    backend, model = TorchBackend(), BrightSpot()
    clean = np.full((1, 1, 1, 6), 0.5, np.float32)
    clean_preds = backend.masked_predictions(model, clean, ms)
    assert clean_preds.tolist() == [[1, 1]]
    pairs = backend.pair_predictor(model, clean, ms)
    paper = certify(clean_preds, [1], ms, "paper")
    assert paper.claim_holds[0] and not paper.certified[0]              # the paper's claim, never certified
    assert certify(clean_preds, [1], ms, "detection").certified[0]
    assert certify(clean_preds, [1], ms, "recovery", pair_predictor=pairs).certified[0]

    patched = clean.copy()
    patched[..., 0:2] = 1.0          # the patch at column 0: inside mask 0 only
    attacked = backend.masked_predictions(model, patched, ms)
    assert attacked.tolist() == [[1, 0]]
    assert defend(attacked, ms, "paper").output[0] == 0                  # wrong label: paper is broken
    assert defend(attacked, ms, "detection").output[0] == ALERT          # sound modes hold
    assert defend(attacked, ms, "covering_consensus").output[0] == ALERT
    rec = defend(attacked, ms, "recovery", pair_predictor=backend.pair_predictor(model, patched, ms))
    assert rec.output[0] == 1

    # and the adaptive attack finds that break by itself, but none against detection
    found = PatchAttack(backend, model, ms, (1, 2), "paper", steps=10, stride=1).attack_image(clean[0], 1)
    assert found["success"] and found["output"] == 0
    held = PatchAttack(backend, model, ms, (1, 2), "detection", steps=10, stride=1).attack_image(clean[0], 1)
    assert not held["success"] and held["output"] in (1, ALERT)


@pytest.fixture(scope="module")
def data():
    x, y, _ = load_dataset("fashion-mnist-subset", limit=4)
    return TorchBackend(), load_model("bundled"), x, y


@pytest.mark.parametrize("mode, k", [("detection", 1), ("covering_consensus", 1), ("recovery", 1),
                                     ("plurality", 3), ("recovery", 3)])
def test_no_certified_image_is_broken(data, mode, k, tmp_path):
    backend, model, x, y = data
    outcome = run_attack_with_examples(backend, model, x, y, (5, 5), k, "replicated", mode, steps=6,
                                       stride=10, masks_per_axis=(3, 3), show_progress=False)
    result = outcome.results
    written = write_attack_outputs(result, tmp_path, outcome.examples, classes=FASHION_MNIST_CLASSES)
    assert result["images"] == 4 and result["certified_accuracy"] > 0
    assert result["certified_broken"] == 0, result["certified_broken_images"]
    for row in result["per_image"]:
        if row["certified"]:
            assert row["attacked"] and row["attacked_output"] in ((row["label"], ALERT)
                                                                  if mode != "recovery" else (row["label"],))
    assert (tmp_path / "attack.json").exists() and (tmp_path / "attack.png").exists()
    assert written == ["attack.json", "attack.png"]
    assert json.loads((tmp_path / "attack.json").read_text()) == json.loads(json.dumps(result))


def test_the_attack_breaks_the_undefended_model(data):
    backend, model, x, y = data
    broken = [attack_undefended(backend, model, xi, int(yi), (6, 6), steps=10, stride=4, seed=i)[0]
              for i, (xi, yi) in enumerate(zip(x, y))]
    assert any(broken)


# ---------------------------------------------------------------- two patches, misestimated size
def _spots(*bright):
    """An 8x8 grey image (0.5) with the given pixels at 1.0."""
    image = np.full((1, 8, 8), 0.5, np.float32)
    for a, b in bright:
        image[0, a, b] = 1.0
    return image


def test_two_patches_break_a_weak_image_that_one_patch_cannot():
    """BrightSpot on an image with bright pixels in opposite corners (label 0): darkening both needs two
    patches. The two-patch defence does not certify it (the group hiding both corners says 1), and the
    two-patch attack flips every group, so detection outputs 1: a real break of an uncertified image.
    One patch leaves the other corner visible to some mask and detection alerts. The plain image (label
    1) is certified for two patches and stays unbroken."""
    backend, model = TorchBackend(), BrightSpot()
    images = np.stack([_spots((1, 1), (6, 6)), _spots()])
    labels = np.array([0, 1])
    kw = dict(steps=10, stride=1, masks_per_axis=(2, 2), show_progress=False, attack_all=True)
    two = run_attack(backend, model, images, labels, (2, 2), 1, "replicated", "detection", patches=2, **kw)
    assert two["patches"] == 2 and two["num_masks"] == 4 and two["num_groups"] == 6
    weak, plain = two["per_image"]
    assert not weak["certified"] and plain["certified"] and two["certified_accuracy"] == 0.5
    assert weak["success"] and weak["attacked_output"] == 1
    (a1, b1), (a2, b2) = sorted(weak["positions"])
    assert a1 <= 1 <= a1 + 1 and b1 <= 1 <= b1 + 1 and a2 <= 6 <= a2 + 1 and b2 <= 6 <= b2 + 1
    assert not plain["success"] and plain["attacked_output"] in (1, ALERT)
    assert two["certified_broken"] == 0
    assert weak["undefended_broken"] and plain["undefended_broken"]   # the plain model falls to any patch

    one = run_attack(backend, model, images, labels, (2, 2), 1, "replicated", "detection", **kw)
    assert one["patches"] == 1 and not one["per_image"][0]["success"]  # one patch cannot darken both


def test_two_patch_attack_never_breaks_a_certified_image(data, tmp_path):
    backend, model, x, y = data
    for mode, n in (("detection", 2), ("recovery", 1)):
        outcome = run_attack_with_examples(backend, model, x[:n], y[:n], (3, 3), 1, "replicated", mode,
                                           steps=3, stride=13, masks_per_axis=(3, 3), show_progress=False,
                                           attack_all=True, patches=2, pair_budget=3, group_sample=12)
        result = outcome.results
        write_attack_outputs(result, tmp_path / mode, outcome.examples)
        assert result["patches"] == 2 and result["num_groups"] == 36 and result["images"] == n
        assert result["certified_broken"] == 0, result["certified_broken_images"]
        for row in result["per_image"]:
            assert row["attacked"] and len(row["positions"]) == 2
            if row["certified"]:
                assert row["attacked_output"] in ((row["label"], ALERT) if mode != "recovery"
                                                  else (row["label"],))
        assert (tmp_path / mode / "attack.json").exists() and (tmp_path / mode / "attack.png").exists()
        assert result["certified_accuracy"] > 0 or mode == "recovery"   # detection certifies both


def test_two_patch_attack_breaks_the_undefended_model(data):
    backend, model, x, y = data
    broken = [attack_undefended(backend, model, xi, int(yi), (5, 5), steps=5, stride=10, seed=i, patches=2)
              for i, (xi, yi) in enumerate(zip(x[:2], y[:2]))]
    assert any(ok for ok, _ in broken)
    assert all(len(where) == 2 for _, where in broken)


def test_two_patches_refuse_paper_three_patches_and_bad_options():
    backend, model = TorchBackend(), BrightSpot()
    images, labels = _spots()[None], np.array([1])
    with pytest.raises(CertMaskError, match="paper"):
        run_attack(backend, model, images, labels, (2, 2), 1, "replicated", "paper", patches=2,
                   masks_per_axis=(2, 2), show_progress=False)
    with pytest.raises(CertMaskError, match="patches"):
        run_attack(backend, model, images, labels, (2, 2), 1, "replicated", "detection", patches=3,
                   masks_per_axis=(2, 2), show_progress=False)
    with pytest.raises(CertMaskError, match="not both"):
        run_attack(backend, model, images, labels, (2, 2), 1, "replicated", "detection", patches=2,
                   true_patch=(3, 3), masks_per_axis=(2, 2), show_progress=False)
    ms = make_maskset(PatchThreat((8, 8), (2, 2)), 1, "replicated", masks_per_axis=(2, 2))
    with pytest.raises(CertMaskError, match="group_sample"):
        MultiPatchAttack(backend, model, ms, (2, 2), "detection", group_sample=0)


def test_a_larger_true_patch_breaks_images_certified_for_the_planned_size():
    """The set is planned for 2x2 (masks of 4-5 pixels, overlapping by 1); a 3x3 patch at (3, 3) lies in
    no mask, so every mask sees it and a bright patch makes all of them say 0: detection outputs 0 on
    an image certified (for 2x2) as 1. The 3x3 size is not covered, so nothing is certified for it and
    no certificate is broken."""
    backend, model = TorchBackend(), BrightSpot()
    images, labels = np.stack([_spots(), _spots()]), np.array([1, 1])
    kw = dict(steps=10, stride=1, masks_per_axis=(2, 2), show_progress=False)
    ms = make_maskset(PatchThreat((8, 8), (2, 2)), 1, "replicated", masks_per_axis=(2, 2))
    uncovered = coverage_counts(ms, (3, 3)) == 0
    for mode in ("detection", "recovery"):
        result = run_attack(backend, model, images, labels, (2, 2), 1, "replicated", mode, true_patch=(3, 3),
                            **kw)
        assert result["patch"] == [2, 2] and result["true_patch"] == [3, 3]
        assert not result["true_size_covered"] and result["true_size_min_coverage"] == 0
        assert result["certified_planned_accuracy"] == 1.0 and result["certified_planned"] == 2
        assert result["certified_true_size"] == 0 and result["certified_accuracy"] == 0.0
        assert result["attack_success_on_planned_certified"] == 1.0
        assert result["planned_certified_broken"] == 2
        assert result["certified_broken"] == 0 and result["empirical_robust_accuracy"] == 0.0
        for row in result["per_image"]:
            assert row["certified_planned"] and not row["certified_true_size"] and not row["certified"]
            assert row["attacked_output"] == 0
            a, b = row["position"]
            assert uncovered[a, b]                 # the 3x3 patch lies in no mask


def test_true_size_certified_only_when_the_set_covers_it(data):
    """Smaller true sizes are covered and inherit the planned certificate (T14); larger ones are not
    covered by a replicated set and get no certificate; the attack never breaks what is certified."""
    backend, model, x, y = data
    kw = dict(steps=3, stride=10, masks_per_axis=(3, 3), show_progress=False)
    for true in ((1, 3), (6, 6)):
        result = run_attack(backend, model, x[:2], y[:2], (5, 5), 1, "replicated", "detection",
                            true_patch=true, **kw)
        covered = coverage_extremes(make_maskset(PatchThreat((28, 28), (5, 5)), 1, "replicated",
                                                 masks_per_axis=(3, 3)), true)[0] > 0
        assert result["true_size_covered"] == covered == (true == (1, 3))
        rows = result["per_image"]
        if covered:
            assert [r["certified_true_size"] for r in rows] == [r["certified_planned"] for r in rows]
        else:
            assert not any(r["certified_true_size"] for r in rows)
        assert result["certified_planned_accuracy"] > 0
        assert result["certified_broken"] == 0
        assert sorted(s["patch"] for s in result["sizes"]) == sorted([[5, 5], list(true)])


# ---------------------------------------------------------------- the files, written by the run layer
ATTACK = ["attack", "--patch", "5", "5", "--k", "1", "--masks-per-axis", "2", "--steps", "2",
          "--stride", "13", "--attack-all", "--quiet"]


@pytest.fixture
def drawn(monkeypatch):
    """What ``attack.png`` was drawn with: the class names and each image's title."""
    seen = {}
    original = plots.example_images

    def spy(images, maskset, outputs, class_names, path, **kwargs):
        seen.update(class_names=list(class_names), titles=plots.example_titles(outputs, class_names))
        return original(images, maskset, outputs, class_names, path, **kwargs)

    monkeypatch.setattr(plots, "example_images", spy)
    return seen


def test_an_npz_attack_names_classes_by_index(tmp_path, drawn, capsys):
    """An .npz names no classes: the figure titles the outputs by index, never Fashion-MNIST's names."""
    x, y, _ = load_dataset("fashion-mnist-subset", limit=2)
    np.savez(tmp_path / "mine.npz", images=(x[:, 0] * 255).round().astype(np.uint8), labels=y)
    out = tmp_path / "attack"
    assert main([*ATTACK, "--data", str(tmp_path / "mine.npz"), "--out", str(out)]) == 0
    result = json.loads((out / "attack.json").read_text())
    assert result["images"] == 2 and (out / "attack.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {out}/attack.json, attack.png" in capsys.readouterr().out
    outputs = [row["attacked_output"] for row in result["per_image"]]
    assert drawn["class_names"] == []
    assert drawn["titles"] == ["out ALERT" if c == ALERT else f"out {c}" for c in outputs]
    assert not any(name in title for title in drawn["titles"] for name in FASHION_MNIST_CLASSES)


def test_an_image_folder_attack_names_its_own_classes(tmp_path, drawn):
    Image = pytest.importorskip("PIL.Image")
    x, y, _ = load_dataset("fashion-mnist-subset", limit=2)
    names = [f"kind{c}" for c in range(10)]
    for i, (image, label) in enumerate(zip(x, y)):
        folder = tmp_path / "data" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    out = tmp_path / "attack"
    assert main([*ATTACK, "--data", str(tmp_path / "data"), "--classes", *names, "--out", str(out)]) == 0
    result = json.loads((out / "attack.json").read_text())
    assert drawn["class_names"] == names and (out / "attack.png").is_file()
    outputs = [row["attacked_output"] for row in result["per_image"]]
    assert drawn["titles"] == ["out ALERT" if c == ALERT else f"out {names[c]}" for c in outputs]


def test_a_failing_figure_never_loses_the_attack_results(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(plots, "example_images", broken)
    out = tmp_path / "attack"
    assert main([*ATTACK, "--data", "fashion-mnist-subset", "--limit", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads((out / "attack.json").read_text())
    assert result["images"] == 1 and result["per_image"][0]["attacked"]
    assert "the figure was not drawn (RuntimeError: no display); attack.json is written" in captured.err
    assert f"wrote {out}/attack.json\n" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["attack.json"]  # no figure, no half-written leftovers
