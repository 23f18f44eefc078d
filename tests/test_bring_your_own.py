"""Bring your own model and data: every data spec and model spec, certified end to end by the CLI."""
import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from certmask_core import CertMaskError  # noqa: E402
from certmask_core.run.cli import main  # noqa: E402
from certmask_core.run.datasets import (  # noqa: E402
    load_data,
    load_dataset,
    read_idx,  # noqa: E402
)
from certmask_core.run.records import read_per_image  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")

RGB_FACTORY = '''
import torch
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 10))
'''


@pytest.fixture(scope="module")
def subset():
    x, y, _ = load_dataset("fashion-mnist-subset", limit=30)
    return x, y


def certify(tmp_path, *args):
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert main(["certify", *args, "--patch", "3", "3", "--mode", "detection", "--out", str(out),
                 "--no-plots", "--quiet"]) == 0
    return json.loads((out / "results.json").read_text()), read_per_image(out / "per_image.jsonl")


def test_an_image_folder_keeps_relative_paths_as_ids(tmp_path, subset):
    x, y = subset
    for i, (image, label) in enumerate(zip(x, y)):
        folder = tmp_path / "data" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(folder / f"img{i:03d}.png")
    data = load_data(str(tmp_path / "data"))
    assert data.images.shape == (30, 1, 28, 28) and data.ids[0].startswith("class_")
    classes = sorted({f"class_{label}" for label in y})
    assert data.classes == classes
    assert [data.classes[i] for i in data.labels] == [p.split("/")[0] for p in data.ids]
    results, records = certify(tmp_path, "--data", str(tmp_path / "data"), "--model", "bundled")
    assert results["images"] == 30 and {r["name"] for r in records.values()} == set(data.ids)
    resized = load_data(str(tmp_path / "data"), image_size=(20, 24))
    assert resized.images.shape == (30, 1, 20, 24) and "resized to 20x24" in resized.source


def test_cifar_batches_with_a_three_channel_factory_model(tmp_path, monkeypatch):
    (tmp_path / "rgb_models.py").write_text(RGB_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    folder.mkdir()
    data = rng.integers(0, 256, (12, 3 * 32 * 32), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": list(range(10)) + [0, 1]}, f)
    loaded = load_data(str(folder))
    assert loaded.images.shape == (12, 3, 32, 32)
    np.testing.assert_allclose(loaded.images[3].reshape(-1), data[3] / 255, rtol=1e-6)
    results, records = certify(tmp_path, "--data", str(folder), "--model", "rgb_models:make")
    assert results["images"] == 12 and len(records) == 12
    # a TorchScript save of the same model certifies alike
    scripted = torch.jit.script(__import__("rgb_models").make())
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    again, _ = certify(tmp_path, "--data", str(folder), "--model", str(tmp_path / "m.pt"),
                       "--trust-model-code")
    assert again["runs"][0]["per_image"] == results["runs"][0]["per_image"]


def test_idx_folder_and_channel_mismatch(tmp_path, subset, capsys):
    x, y = subset
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, array in (("t10k-images-idx3-ubyte", (x[:, 0] * 255).round().astype(np.uint8)),
                        ("t10k-labels-idx1-ubyte", y.astype(np.uint8))):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (folder / name).write_bytes(header + array.tobytes())
    assert read_idx(folder / "t10k-labels-idx1-ubyte").tolist() == y.tolist()
    results, _ = certify(tmp_path, "--data", str(folder), "--model", "bundled")
    assert results["images"] == 30
    (tmp_path / "rgb_models.py").write_text(RGB_FACTORY)
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["certify", "--data", str(folder), "--model", "rgb_models:make", "--patch", "3", "3",
                     "--out", str(tmp_path / "x"), "--quiet"]) == 2
    finally:
        sys.path.remove(str(tmp_path))
    assert ("takes 3-channel (RGB) input but the data has 1 channel(s) (grayscale)"
            in capsys.readouterr().err)
    with pytest.raises(CertMaskError, match="unknown data 'nowhere'"):
        load_data("nowhere")


def test_export_programs_normalisation_and_class_count(tmp_path, monkeypatch, capsys):
    (tmp_path / "rgb_models.py").write_text(RGB_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    make = __import__("rgb_models").make
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(8))
    program = torch.export.export(make().eval(), (torch.rand(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    exported, _ = certify(tmp_path, "--data", str(tmp_path / "rgb.npz"), "--model", str(tmp_path / "m.pt2"),
                          "--trust-model-code")
    plain, _ = certify(tmp_path, "--data", str(tmp_path / "rgb.npz"), "--model", "rgb_models:make")
    assert exported["runs"][0]["per_image"]["output"] == plain["runs"][0]["per_image"]["output"]
    # --mean/--std: the model sees (x - mean) / std, masks stay in pixel space
    from certmask_backends.pytorch.models import Normalized
    x = torch.rand(2, 3, 32, 32)
    wrapped = Normalized(make(), [0.5, 0.4, 0.3], [0.2, 0.2, 0.25])
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(wrapped(x), make()((x - mean) / std))
    normed, _ = certify(tmp_path, "--data", str(tmp_path / "rgb.npz"), "--model", "rgb_models:make",
                        "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.25", "--num-classes", "10")
    assert normed["images"] == 8
    base = ["certify", "--data", str(tmp_path / "rgb.npz"), "--model", "rgb_models:make", "--patch", "3", "3",
            "--out", str(tmp_path / "bad"), "--quiet"]
    assert main(base + ["--num-classes", "4"]) == 2
    assert "--num-classes 4 but model 'rgb_models:make' returns 10 logits" in capsys.readouterr().err
    assert main(base + ["--mean", "0.5", "0.5"]) == 2
    assert "--mean and --std go together" in capsys.readouterr().err
    assert main(base + ["--mean", "0.5", "0.5", "--std", "1", "1"]) == 2
    assert "--mean/--std need 1 or 3 values each" in capsys.readouterr().err


def test_an_npz_of_the_bundled_subset_certifies_like_the_subset_itself(tmp_path, subset):
    x, y = subset
    np.savez(tmp_path / "mine.npz", images=(x[:, 0, :, :, None] * 255).round().astype(np.uint8), labels=y)
    assert "NHWC, uint8 / 255" in load_data(str(tmp_path / "mine.npz")).source
    from_npz, _ = certify(tmp_path, "--data", str(tmp_path / "mine.npz"), "--model", "bundled")
    reference, _ = certify(tmp_path, "--data", "fashion-mnist-subset", "--limit", "30", "--model", "bundled")
    assert from_npz["runs"][0]["per_image"] == reference["runs"][0]["per_image"]


def test_a_model_trained_behind_mean_and_std_certifies_with_the_recorded_arguments(tmp_path, monkeypatch):
    import shlex

    from certmask_backends.pytorch.models import load_model
    from certmask_backends.pytorch.training import TrainConfig, train
    (tmp_path / "rgb_models.py").write_text(RGB_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 64))
    out = tmp_path / "trained"
    assert main(["train", "--model", "rgb_models:make", "--data", str(tmp_path / "rgb.npz"),
                 "--augment", "maskset", "--patch", "4", "4", "--epochs", "1", "--train-batch-size", "32",
                 "--mean", "0.5", "--std", "0.25", "--out", str(out), "--quiet"]) == 0
    certify_with = json.loads((out / "train.json").read_text())["certify_with"]
    assert certify_with.endswith("--mean 0.5 --std 0.25")
    results, _ = certify(tmp_path, "--data", str(tmp_path / "rgb.npz"), "--model", *shlex.split(certify_with))
    assert results["images"] == 64
    program = torch.export.export(load_model("rgb_models:make"), (torch.rand(2, 3, 32, 32),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    x, y, _ = load_dataset(str(tmp_path / "rgb.npz"))
    with pytest.raises(CertMaskError, match="a torch.export program is inference-only"):
        train(load_model(str(tmp_path / "m.pt2"), trust_code=True), x, y, TrainConfig(batch_size=32))


@pytest.mark.parametrize("size", [(0, 28), (-3, 5), (28,)])
def test_bad_image_sizes_are_named_before_any_file_is_read(size):
    with pytest.raises(CertMaskError, match=r"image size must be two integers >= 1 \(H, W\), got"):
        load_data("fashion-mnist-subset", image_size=size)
