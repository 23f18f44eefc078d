"""Training for certification: the augmentations hide exactly the intended pixels, greedy training
picks the worst masks, fine-tuning lowers the loss under masks, resume equals an uninterrupted run."""
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.models import FashionCNN, load_model, save_model  # noqa: E402
from certmask_backends.pytorch.training import (  # noqa: E402
    Cutout,
    GreedyMasks,
    MaskSetAugment,
    TrainConfig,
    masked_accuracy,
    train,
)

from certmask_core import CertMaskError, PatchThreat, make_maskset  # noqa: E402
from certmask_core.run.cli import main  # noqa: E402
from certmask_core.run.datasets import load_dataset  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")


def tiny_model(channels=1, classes=10, size=12):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * size * size, classes))


@pytest.fixture(scope="module")
def subset():
    x, y, _ = load_dataset("fashion-mnist-subset", limit=256)
    return x, y


def masks_of(first, second, dense):
    """numpy twin: the union of masks first/second (-1 = none) per image."""
    empty = np.zeros(dense.shape[1:], bool)
    return np.stack([(dense[f] if f >= 0 else empty) | (dense[s] if s >= 0 else empty)
                     for f, s in zip(first.tolist(), second.tolist())])


@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_mask_set_augmentation_hides_exactly_the_drawn_masks(fill):
    sets = [make_maskset(PatchThreat(12, 2), 1, "replicated", masks_per_axis=3),
            make_maskset(PatchThreat(12, 3), 2, "offset", masks_per_axis=2)]
    augment = MaskSetAugment(sets, p_none=1, p_single=1, p_pair=2, backend=TorchBackend(fill=fill))
    images = torch.rand(400, 2, 12, 12) * 0.4 + 0.55  # never equal to the fill
    out = augment(None, images, None, torch.Generator().manual_seed(3))
    first, second = augment.draw(400, torch.Generator().manual_seed(3))
    dense = np.concatenate([ms.dense() for ms in sets])
    expected = masks_of(first, second, dense)[:, None]
    np.testing.assert_array_equal((out == fill).numpy(), np.broadcast_to(expected, out.shape))
    np.testing.assert_array_equal(out.numpy()[~np.broadcast_to(expected, out.shape)],
                                  images.numpy()[~np.broadcast_to(expected, out.shape)])
    # the cases come in the asked proportions; a pair is two distinct masks of one set
    cases = np.where(first < 0, 0, np.where(second < 0, 1, 2))
    assert np.allclose(np.bincount(cases, minlength=3) / 400, [0.25, 0.25, 0.5], atol=0.08)
    pairs = (first >= 0) & (second >= 0)
    set_of = np.repeat([0, 1], [len(sets[0]), len(sets[1])])
    assert (first[pairs] != second[pairs]).all()
    assert (set_of[first[pairs]] == set_of[second[pairs]]).all()
    # every mask is drawn, and every partner of a mask
    assert set(first[first >= 0].tolist()) == set(range(len(dense)))


def test_cutout_hides_one_clipped_square():
    cutout = Cutout(size=5, p=0.5)
    out = cutout(None, torch.ones(300, 1, 10, 10), None, torch.Generator().manual_seed(0))
    hidden = (out[:, 0] == 0).numpy()
    assert 0.35 < hidden.any(axis=(1, 2)).mean() < 0.65
    for h in hidden[hidden.any(axis=(1, 2))]:
        rows, cols = np.nonzero(h.any(1))[0], np.nonzero(h.any(0))[0]
        assert h.sum() == len(rows) * len(cols)  # one rectangle
        assert 3 <= len(rows) <= 5 and 3 <= len(cols) <= 5  # centre inside, clipped at the border
        assert len(rows) == 5 or rows[0] == 0 or rows[-1] == 9


class OneWeakMask(torch.nn.Module):
    """Right (class 0) unless the pixel at (1, 1) is hidden (then class 1): only mask 0 hurts."""

    def forward(self, x):
        seen = (x[:, 0, 1, 1] != 0).float()
        return torch.stack([seen, 1 - seen], 1) * 5


def test_greedy_training_picks_the_highest_loss_masks():
    ms = make_maskset(PatchThreat(12, 2), 1, "replicated", masks_per_axis=3)
    assert ms.dense()[0, 1, 1] and not ms.dense()[1:, 1, 1].any()
    greedy = GreedyMasks(ms, samples=40, p_none=0.0)
    images = torch.ones(50, 1, 12, 12)
    out = greedy(OneWeakMask(), images, torch.zeros(50, dtype=torch.long), torch.Generator().manual_seed(1))
    assert (out[:, 0, 1, 1] == 0).all()  # every image is trained under the one harmful mask
    assert greedy.forward_passes == 50 * 2 * 40
    # with p_none = 1 nothing is masked and nothing is scored
    clean = GreedyMasks(ms, samples=3, p_none=1.0)
    assert torch.equal(clean(OneWeakMask(), images, torch.zeros(50, dtype=torch.long),
                             torch.Generator().manual_seed(1)), images)
    assert clean.forward_passes == 0


def masked_loss(model, x, y, ms):
    logits = TorchBackend().masked_predictions(model, x, ms, return_logits=True)
    labels = np.repeat(y[:, None], len(ms), 1)
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).flatten(0, 1),
                                                   torch.from_numpy(labels).flatten()))


@pytest.mark.parametrize("augmentation", ["maskset", "greedy"])
def test_fine_tuning_lowers_the_loss_under_masks(subset, augmentation):
    x, y = subset
    ms = make_maskset(PatchThreat(28, 3), masks_per_axis=4)
    model = load_model("bundled-cutout")
    before = masked_loss(model, x, y, ms)
    options = {"samples": 2} if augmentation == "greedy" else None
    record = train(model, x, y, TrainConfig(epochs=3, batch_size=64, lr=1e-3, augmentation=augmentation,
                                            augmentation_options=options),
                   masksets=ms, show_progress=False, log=lambda _: None)
    assert masked_loss(model, x, y, ms) < 0.8 * before
    assert len(record["epochs"]) == 3 and not model.training
    if augmentation == "greedy":
        assert 0 < record["greedy_scoring_passes_per_image"] <= 4


def test_resume_equals_an_uninterrupted_run(subset, tmp_path):
    x, y = subset
    ms = make_maskset(PatchThreat(28, 3), masks_per_axis=4)
    config = TrainConfig(epochs=3, batch_size=64, augmentation="maskset", hflip=True, seed=5)
    kwargs = {"masksets": ms, "show_progress": False, "log": lambda _: None, "eval_images": x[:50],
              "eval_labels": y[:50], "eval_maskset": ms}
    torch.manual_seed(0)
    whole = FashionCNN(width=4)
    record = train(whole, x, y, config, checkpoint_dir=tmp_path / "a", **kwargs)
    torch.manual_seed(0)
    interrupted = FashionCNN(width=4)
    train(interrupted, x, y, config, checkpoint_dir=tmp_path / "b", **kwargs)
    (tmp_path / "b" / "epoch-003.pt").unlink()
    (tmp_path / "b" / "epoch-002.pt").unlink()  # killed during epoch 2
    resumed = FashionCNN(width=4)  # a fresh process: new weights, other random state
    torch.manual_seed(123)
    again = train(resumed, x, y, config, checkpoint_dir=tmp_path / "b", resume=True, **kwargs)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [e["loss"] for e in again["epochs"]] == [e["loss"] for e in record["epochs"]]
    assert again["epochs"][-1]["all_masks_right"] == record["epochs"][-1]["all_masks_right"]
    with pytest.raises(CertMaskError, match="was written with config .* resume with the same settings"):
        train(FashionCNN(width=4), x, y, TrainConfig(epochs=4, batch_size=64), checkpoint_dir=tmp_path / "b",
              resume=True, show_progress=False, log=lambda _: None)


def test_bad_training_input_is_named(subset):
    x, y = subset
    wrong_size = make_maskset(PatchThreat(32, 3), masks_per_axis=4)
    with pytest.raises(CertMaskError, match=r"have \(H, W\) = \(28, 28\) but the mask set is for \(H, W\) = "
                                            r"\(32, 32\)"):
        train(tiny_model(size=28), x, y, TrainConfig(augmentation="maskset"), masksets=wrong_size)
    ms = make_maskset(PatchThreat(28, 3), masks_per_axis=4)
    with pytest.raises(CertMaskError, match="fill has 3 values but images have 1 channels"):
        MaskSetAugment(ms, backend=TorchBackend(fill=[0, 0, 0])).check_images(torch.zeros(1, 1, 28, 28))
    with pytest.raises(CertMaskError, match="fill has 3 values but images have 1 channels"):
        Cutout(backend=TorchBackend(fill=[0, 0, 0]))(None, torch.zeros(1, 1, 28, 28), None, torch.Generator())
    with pytest.raises(CertMaskError, match=r"model must return \(2, classes\) logits for training, got "
                                            r"\(2, 10, 1\)"):
        train(torch.nn.Sequential(tiny_model(size=28), torch.nn.Unflatten(1, (10, 1))), x, y, TrainConfig())
    with pytest.raises(CertMaskError, match="labels reach 9 but the model returns 3 classes"):
        train(tiny_model(classes=3, size=28), x, y, TrainConfig())
    with pytest.raises(CertMaskError, match="augmentation 'greedy' needs the mask set"):
        train(tiny_model(size=28), x, y, TrainConfig(augmentation="greedy"))
    with pytest.raises(CertMaskError, match="unknown augmentation 'mixup'"):
        TrainConfig(augmentation="mixup")
    with pytest.raises(CertMaskError, match="epochs must be an integer >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(CertMaskError, match="p_none, p_single, p_pair must be finite"):
        MaskSetAugment(ms, p_none=-1)
    with pytest.raises(CertMaskError, match="samples must be an integer >= 1, got 0"):
        GreedyMasks(ms, samples=0)
    with pytest.raises(CertMaskError, match="all mask sets must be for one image size"):
        MaskSetAugment([ms, make_maskset(PatchThreat(32, 3), masks_per_axis=4)])
    with pytest.raises(CertMaskError, match="images must lie in"):
        train(tiny_model(size=28), x * 255, y, TrainConfig())
    with pytest.raises(CertMaskError, match="labels must be 256 integers"):
        train(tiny_model(size=28), x, y[:10], TrainConfig())


def test_masked_accuracy_matches_the_masked_predictions(subset):
    x, y = subset
    ms = make_maskset(PatchThreat(28, 5), masks_per_axis=3)
    model, backend = load_model("bundled"), TorchBackend()
    stats = masked_accuracy(backend, model, x[:40], y[:40], ms)
    right = backend.masked_predictions(model, x[:40], ms) == y[:40, None]
    assert stats["single_mask_accuracy"] == right.mean() and stats["all_masks_right"] == right.all(1).mean()


FACTORY = '''
import torch
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 4))
'''


def test_model_specs_load_and_save_back(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("my_models:make")
    x = torch.rand(2, 3, 16, 16)
    path, spec = save_model(model, tmp_path / "w.pt", "my_models:make")
    assert spec == f"my_models:make --weights {path}"
    with torch.no_grad():
        torch.nn.init.zeros_(model[-1].weight)
        assert torch.equal(load_model("my_models:make", weights=path)(x), load_model("my_models:make")(x))
    scripted = torch.jit.script(load_model("my_models:make"))
    path, spec = save_model(scripted, tmp_path / "s.pt", "whatever")
    assert spec == f"{path} --trust-model-code"
    assert isinstance(load_model(str(path), trust_code=True), torch.jit.ScriptModule)
    with torch.no_grad():
        assert torch.equal(load_model(str(path), trust_code=True)(x), scripted(x))
    assert isinstance(load_model("fashion-cnn"), FashionCNN)
    with pytest.raises(CertMaskError, match="cannot import 'nothing' from 'my_models'"):
        load_model("my_models:nothing")
    (tmp_path / "bad_factory.py").write_text("def make():\n    return 3\n")
    with pytest.raises(CertMaskError, match="returned a int, not an nn.Module"):
        load_model("bad_factory:make")
    with pytest.raises(CertMaskError, match=r"weights \(--weights\) apply to 'fashion-cnn' and factory"):
        load_model("bundled", weights=path)
    with pytest.raises(CertMaskError, match="is neither an existing file nor a model spec: bundled, "):
        load_model("resnet")


def test_npz_layouts_are_detected_and_stated(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(5)
    cases = {"nhwc.npz": (nhwc, "NHWC, uint8 / 255, 3 channel(s)"),
             "nchw.npz": (nhwc.transpose(0, 3, 1, 2).astype(np.float64) / 255, "NCHW, float, 3 channel(s)"),
             "nhw.npz": (nhwc[..., 0], "NHW, uint8 / 255, 1 channel(s)")}
    for name, (images, stated) in cases.items():
        np.savez(tmp_path / name, images=images, labels=labels)
        x, y, source = load_dataset(str(tmp_path / name))
        assert stated in source and x.dtype == np.float32 and y.tolist() == labels.tolist()
        np.testing.assert_allclose(x[:, 0], nhwc[..., 0] / 255, rtol=1e-6)
    np.savez(tmp_path / "bad.npz", images=nhwc * 1.0, labels=labels)
    with pytest.raises(CertMaskError, match=r"float images must .* lie in \[0, 1\], found \[0.0, 25"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "nolabels.npz", images=nhwc)
    with pytest.raises(CertMaskError, match="it needs arrays 'images' and 'labels'"):
        load_dataset(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "short.npz", images=nhwc, labels=labels[:3])
    with pytest.raises(CertMaskError, match="labels must be 5 integers, got shape"):
        load_dataset(str(tmp_path / "short.npz"))


def test_cli_trains_resumes_and_certifies_a_user_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (160, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 160)
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    np.savez(tmp_path / "test.npz", images=images[:20], labels=labels[:20])
    out = tmp_path / "run"
    args = ["train", "--model", "my_models:make", "--data", str(tmp_path / "train.npz"), "--eval-data",
            str(tmp_path / "test.npz"), "--augment", "greedy", "--greedy-samples", "2", "--patch", "3", "3",
            "--patch", "2", "2", "--k", "1", "2", "--epochs", "2", "--train-batch-size", "32", "--out",
            str(out), "--quiet"]
    assert main(args) == 0
    record = json.loads((out / "train.json").read_text())
    assert record["command"].startswith("certmask train --model my_models:make")
    assert [m["patch_size"] for m in record["masks"]] == [[3, 3], [3, 3], [2, 2], [2, 2]]
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and "all_masks_right" in record["epochs"][0]
    assert record["environment"]["torch"] == torch.__version__
    assert main(args) == 2 and "already holds checkpoints; pass --resume" in capsys.readouterr().err
    first_weights = torch.load(out / "model.pt")
    (out / "checkpoints" / "epoch-002.pt").unlink()
    assert main(args + ["--resume"]) == 0

    def untimed(epochs):
        return [{key: value for key, value in e.items() if "seconds" not in key} for e in epochs]
    assert untimed(json.loads((out / "train.json").read_text())["epochs"]) == untimed(record["epochs"])
    resumed_weights = torch.load(out / "model.pt")
    assert all(torch.equal(first_weights[key], resumed_weights[key]) for key in first_weights)
    spec, weights = re.fullmatch(r"(\S+) --weights (\S+)", record["certify_with"]).groups()
    assert main(["certify", "--model", spec, "--weights", weights, "--data", str(tmp_path / "test.npz"),
                 "--patch", "3", "3", "--mode", "detection", "--out", str(tmp_path / "cert"), "--no-plots",
                 "--quiet"]) == 0
    results = json.loads((tmp_path / "cert" / "results.json").read_text())
    assert results["images"] == 20
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--greedy-samples" in capsys.readouterr().out


def test_a_torchscript_model_fine_tunes_and_saves_as_torchscript(tmp_path):
    x = torch.rand(64, 1, 12, 12)
    y = (x[:, 0, :6].mean((1, 2)) > x[:, 0, 6:].mean((1, 2))).long()  # top half brighter
    scripted = torch.jit.script(tiny_model(classes=2))
    path = tmp_path / "m.pt"
    torch.jit.save(scripted, str(path))
    model = load_model(str(path), trust_code=True)
    ms = make_maskset(PatchThreat(12, 2), masks_per_axis=2)
    before = masked_loss(model, x, y.numpy(), ms)
    train(model, x, y, TrainConfig(epochs=5, batch_size=16, lr=1e-2, augmentation="maskset"), masksets=ms,
          show_progress=False, log=lambda _: None)
    assert masked_loss(model, x, y.numpy(), ms) < before
    saved, spec = save_model(model, tmp_path / "tuned.pt", str(path))
    assert spec == f"{saved} --trust-model-code"
    with torch.no_grad():
        assert torch.equal(load_model(str(saved), trust_code=True)(x), model(x))


@pytest.mark.parametrize("field,value,message", [
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
    ("lr", "fast", "lr must be a finite number > 0, got 'fast'"),
    ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0"),
    ("label_smoothing", 1.0, r"label_smoothing must be a finite number in \[0, 1\), got 1.0"),
    ("label_smoothing", True, "label_smoothing must be a finite number in"),
])
def test_train_config_names_bad_numbers(field, value, message):
    with pytest.raises(CertMaskError, match=message):
        TrainConfig(**{field: value})
