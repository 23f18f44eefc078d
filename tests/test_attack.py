"""Issue 5: the adaptive patch attack against every certificate."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.attack import PatchAttack, attack_undefended, run_attack  # noqa: E402
from certmask_backends.pytorch.models import load_model  # noqa: E402

from certmask_core import ALERT, PatchThreat, certify, defend, make_maskset  # noqa: E402
from certmask_core.run.experiment import load_dataset  # noqa: E402


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
    result = run_attack(backend, model, x, y, (5, 5), k, "replicated", mode, steps=6, stride=10,
                        masks_per_axis=(3, 3), out_dir=tmp_path, show_progress=False)
    assert result["images"] == 4 and result["certified_accuracy"] > 0
    assert result["certified_broken"] == 0, result["certified_broken_images"]
    for row in result["per_image"]:
        if row["certified"]:
            assert row["attacked"] and row["attacked_output"] in ((row["label"], ALERT)
                                                                  if mode != "recovery" else (row["label"],))
    assert (tmp_path / "attack.json").exists() and (tmp_path / "attack.png").exists()


def test_the_attack_breaks_the_undefended_model(data):
    backend, model, x, y = data
    broken = [attack_undefended(backend, model, xi, int(yi), (6, 6), steps=10, stride=4, seed=i)[0]
              for i, (xi, yi) in enumerate(zip(x, y))]
    assert any(broken)
