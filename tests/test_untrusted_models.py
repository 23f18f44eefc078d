"""Files are data: model files and training checkpoints that would run code when loaded are refused
unless the user opts in, and bad backend options are named.

Each payload test first shows that the planted file really runs code on the unguarded path (the
marker file appears), so that "refused, marker absent" is not vacuous.
"""
import io
import logging
import pathlib
import re
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.models import load_model, save_model  # noqa: E402
from certmask_backends.pytorch.training import TrainConfig, _latest_checkpoint, train  # noqa: E402

from certmask_core import CertMaskError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")

REFUSED = "loading it runs code stored in the file. Load it only if you trust where it came from"


class Touch:
    """Unpickles as ``pathlib.Path(marker).touch()``: the stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class EmptyDictAfterTouch:
    """Unpickles as ``{}`` after touching the marker (``dict.fromkeys((), None)``), so that the file
    still loads and works: nothing tells the user that code ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return dict.fromkeys, ((), Touch(self.marker))


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()


def export(path):
    program = torch.export.export(tiny(), (torch.rand(2, 1, 4, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def plant_pt2(genuine, evil, marker):
    """``evil``: ``genuine`` whose sample inputs unpickle the marker payload. torch.export.load reads
    them with ``weights_only=True`` and on failure falls back to ``weights_only=False``."""
    with zipfile.ZipFile(genuine) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data/sample_inputs/model.pt"))
        sample = torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    payload = io.BytesIO()
    torch.save((sample[0], EmptyDictAfterTouch(marker)), payload)
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, payload.getvalue() if info.filename == name else src.read(info))
    return evil


class EvilScript(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by torch.jit.load) creates the file ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        return x.flatten(1)[:, :3]

    @torch.jit.export
    def __getstate__(self):
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.path = state[0]
        # from_file with shared=True creates the file; the comparison keeps the call from being optimised away
        self.training = torch.from_file(self.path, shared=True, size=1).numel() < 0 or state[1]


# ----------------------------------------------------------------- model files
def test_a_planted_pt2_runs_code_in_torch_export_load_but_is_refused_without_trust(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    evil = plant_pt2(export(tmp_path / "good.pt2"), tmp_path / "evil.pt2", marker)
    # torch logs the fallback with a malformed format string, which pytest's log capture turns into an
    # error after the payload ran; silence that logger so the load completes as it does outside pytest
    monkeypatch.setattr(logging.getLogger("torch._export.serde.serialize"), "disabled", True)
    # the unguarded path: the payload runs and the program loads and predicts as if nothing happened
    program = torch.export.load(str(evil))
    assert marker.exists() and program.module()(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    marker.unlink()
    for load in (lambda: load_model(str(evil)), lambda: TorchBackend().load_model(str(evil))):
        with pytest.raises(CertMaskError, match=re.escape(f"model file '{evil}' is a torch.export program: "
                                                          f"{REFUSED}")) as caught:
            load()
        assert not marker.exists()
    assert "--trust-model-code on the command line, trust_code=True in Python" in str(caught.value)


def test_a_genuine_pt2_loads_and_predicts_with_trust(tmp_path):
    path = export(tmp_path / "good.pt2")
    with pytest.raises(CertMaskError, match="is a torch.export program: loading it runs code"):
        load_model(str(path))
    x = torch.rand(5, 1, 4, 4)
    model = TorchBackend().load_model(str(path), trust_code=True)
    with torch.no_grad():
        assert torch.allclose(model(x), tiny()(x))
    assert (TorchBackend().predict(model, x) == TorchBackend().predict(tiny(), x)).all()


def test_a_torchscript_payload_runs_in_jit_load_but_is_refused_without_trust(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(EvilScript(str(marker))), str(evil))
    assert not marker.exists()  # saving calls __getstate__ only
    torch.jit.load(str(evil))
    assert marker.exists()  # the unguarded path ran the archive's code
    marker.unlink()
    with pytest.raises(CertMaskError, match=re.escape(f"model file '{evil}' is a TorchScript archive: "
                                                      f"{REFUSED}")):
        load_model(str(evil))
    with pytest.raises(CertMaskError, match="is a TorchScript archive"):
        TorchBackend().load_model(str(evil), weights=None)
    assert not marker.exists()


def test_a_genuine_torchscript_model_loads_and_saves_back_with_trust(tmp_path):
    scripted = torch.jit.script(tiny())
    path = tmp_path / "s.pt"
    torch.jit.save(scripted, str(path))
    x = torch.rand(4, 1, 4, 4)
    model = load_model(str(path), trust_code=True)
    assert isinstance(model, torch.jit.ScriptModule)
    with torch.no_grad():
        assert torch.equal(model(x), scripted(x))
    # the command line that loads a saved TorchScript model back carries the opt-in
    saved, spec = save_model(model, tmp_path / "again.pt", str(path))
    assert spec == f"{saved} --trust-model-code"


def test_state_dicts_and_bundled_models_need_no_opt_in(tmp_path):
    from certmask_backends.pytorch.models import FashionCNN
    path = tmp_path / "w.pt"
    torch.save(FashionCNN().state_dict(), path)
    assert isinstance(load_model(str(path)), FashionCNN)
    assert isinstance(load_model("bundled"), FashionCNN)


def test_a_state_dict_with_a_payload_is_refused_without_torch_advice_to_unpickle(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "w.pt"
    torch.save({"weight": Touch(marker)}, path)
    with pytest.raises(CertMaskError, match=r"cannot load '.*w.pt' as a FashionCNN state_dict: it holds more "
                                            r"than tensors and plain data") as caught:
        load_model(str(path))
    assert not marker.exists() and "weights_only" not in str(caught.value)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------- training checkpoints
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((64, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, 64)


CONFIG = TrainConfig(epochs=2, batch_size=32)


def run(model, data, folder, **kwargs):
    return train(model, *data, CONFIG, checkpoint_dir=folder, show_progress=False, log=lambda _: None,
                 **kwargs)


def test_a_planted_checkpoint_runs_code_in_full_torch_load_but_is_refused_on_resume(tmp_path, data):
    marker = tmp_path / "ran"
    folder = tmp_path / "ckpt"
    run(tiny(), data, folder)
    state = torch.load(folder / "epoch-002.pt", weights_only=True)
    state["epochs"][0]["note"] = Touch(marker)
    torch.save(state, folder / "epoch-003.pt")
    torch.load(folder / "epoch-003.pt", weights_only=False)
    assert marker.exists()  # the old way of reading it ran the payload
    marker.unlink()
    with pytest.raises(CertMaskError, match=re.escape(f"cannot resume from '{folder / 'epoch-003.pt'}': it "
                                                      f"holds more than tensors and plain data")):
        run(tiny(), data, folder, resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "': not a file torch.save wrote, or a damaged one"),
    (lambda p: p.write_text("not a torch file"), "': not a file torch.save wrote, or a damaged one"),
    (lambda p: torch.save([1, 2], p),
     r"': not a certmask training checkpoint \(missing or mistyped: everything\); delete it or train into"),
    (lambda p: torch.save({"config": {}}, p),
     r"missing or mistyped: model, optimizer, schedule, generator, torch_rng, epochs\)"),
])
def test_a_damaged_checkpoint_is_named(tmp_path, data, damage, message):
    folder = tmp_path / "ckpt"
    run(tiny(), data, folder)
    damage(folder / "epoch-002.pt")
    with pytest.raises(CertMaskError, match=message) as caught:
        run(tiny(), data, folder, resume=True)
    assert str(folder / "epoch-002.pt") in str(caught.value)


def test_a_checkpoint_of_another_model_or_with_bad_types_is_named(tmp_path, data):
    folder = tmp_path / "ckpt"
    run(tiny(), data, folder)
    state = torch.load(folder / "epoch-002.pt", weights_only=True)
    state["epochs"] = [{"epoch": 1}]
    torch.save(state, folder / "epoch-002.pt")
    with pytest.raises(CertMaskError, match=r"missing or mistyped: epochs\)"):
        run(tiny(), data, folder, resume=True)
    run(tiny(), data, tmp_path / "other")
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 3))
    with pytest.raises(CertMaskError, match="epoch-002.pt': its state does not fit this model and config"):
        run(wide, data, tmp_path / "other", resume=True)


def test_resume_reads_a_genuine_checkpoint_and_ignores_other_names(tmp_path, data):
    whole = tiny()
    run(whole, data, tmp_path / "a")
    folder = tmp_path / "b"
    run(tiny(), data, folder)
    (folder / "epoch-002.pt").unlink()
    (folder / "epoch-final.pt").write_text("not a checkpoint")
    (folder / "epoch-1.pt.bak").write_text("")
    assert _latest_checkpoint(folder) == folder / "epoch-001.pt"
    resumed = tiny()
    torch.manual_seed(99)
    run(resumed, data, folder, resume=True)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert _latest_checkpoint(tmp_path) is None


# ----------------------------------------------------------------- device and fill
def test_a_device_this_machine_lacks_is_named():
    with pytest.raises(CertMaskError, match=r"device 'nonsense' is not a torch device; this machine has cpu"):
        TorchBackend(device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(CertMaskError, match=re.escape(f"cuda is not available on this machine (torch "
                                                          f"{torch.__version__}): use --device cpu")):
            TorchBackend(device="cuda")
    else:
        count = torch.cuda.device_count()
        with pytest.raises(CertMaskError, match=f"device 'cuda:{count}' is not available: this machine has"):
            TorchBackend(device=f"cuda:{count}")
    assert TorchBackend(device=torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.parametrize("options,message", [
    ({"fill": 5}, r"fill 5 lies outside the pixel range \[0.0, 1.0\] the images must lie in"),
    ({"fill": [0.5, -0.1, 0.5]}, r"fill \[0.5, -0.1, 0.5\] lies outside the pixel range \[0.0, 1.0\]"),
    ({"fill": 0.5, "value_range": (0, 0.25)}, r"fill 0.5 lies outside the pixel range \[0.0, 0.25\]"),
    ({"fill": 3.0, "fill_space": "normalized", "mean": [0.5], "std": [0.25]},
     r"fill 3.0 \(\[1.25\] in pixel space\) lies outside the pixel range \[0.0, 1.0\]"),
    ({"fill": float("nan")}, "fill must be one or more finite numbers, got nan"),
    ({"fill": float("inf"), "value_range": None}, "fill must be one or more finite numbers, got inf"),
    ({"fill": []}, r"fill must be one or more finite numbers, got \[\]"),
    ({"fill": "black"}, "fill must be a number or one number per channel"),
])
def test_a_fill_outside_the_value_range_or_not_finite_is_named(options, message):
    with pytest.raises(CertMaskError, match=message):
        TorchBackend(**options)


def test_any_finite_fill_goes_without_a_value_range():
    assert TorchBackend(fill=5, value_range=None).fill.tolist() == [5.0]
    assert TorchBackend(fill=255, value_range=(0, 255)).fill.tolist() == [255.0]
    assert TorchBackend(fill=0, fill_space="normalized", mean=[0.5], std=[0.2]).fill.tolist() == [0.5]


# ----------------------------------------------------------------- hand-edited checkpoint values
@pytest.fixture(scope="module")
def genuine(tmp_path_factory, data):
    """A two-epoch run's weights and its checkpoint after epoch 1 (an interrupted run)."""
    folder = tmp_path_factory.mktemp("genuine")
    whole = tiny()
    record = run(whole, data, folder)
    return whole.state_dict(), record, torch.load(folder / "epoch-001.pt", weights_only=True)


def _group(state):
    return state["optimizer"]["param_groups"][0]


def _steps_to_nan(state):
    for entry in state["optimizer"]["state"].values():
        entry["step"] = torch.tensor(float("nan"))


# the reviewer's edits (each a raw traceback or a silently wrong run before), then a few more of the kind
@pytest.mark.parametrize("edit,message", [
    (lambda s: _group(s).update(lr="x"), r"optimizer\.param_groups\[0\]\.lr is 'x', not a finite number"),
    (lambda s: s["schedule"].update(last_epoch=10**9), r"schedule\.last_epoch is 1000000000, not 2 "),
    (lambda s: s["schedule"].update(total_steps=-5), r"schedule\.total_steps is -5, not 4 "),
    (lambda s: _group(s).update(betas=[2.0]), r"optimizer\.param_groups\[0\]\.betas is \[2\.0\], not "),
    (lambda s: s.update(epochs=[{"seconds": 1.0, "loss": "fake"}] * 5),
     r"epochs is a list of 5 epoch records, not at most 2 "),
    (lambda s: s.update(epochs=[{"seconds": float("nan")}]),
     r"epochs\[0\]\.seconds is nan, not a finite number"),
    (_steps_to_nan, r"optimizer\.state\[0\]\.step is tensor\(nan\), not a whole float tensor scalar in "
                    r"\[1, 2\]"),
    (lambda s: s.update(generator=torch.zeros(3, dtype=torch.uint8)),
     r"generator is a torch\.uint8 tensor of shape \(3,\), not a torch\.uint8 tensor of shape"),
    (lambda s: s["epochs"][0].update(loss="fake"), r"epochs\[0\]\.loss is 'fake', not a finite number"),
    (lambda s: s["epochs"][0].update(epoch=2), r"epochs\[0\]\.epoch is 2, not 1 "),
    (lambda s: _group(s).update(weight_decay=0.1),
     r"optimizer\.param_groups\[0\]\.weight_decay is 0\.1, not 0\.0005 "),
    (lambda s: _group(s).update(eps=float("nan")), r"optimizer\.param_groups\[0\]\.eps is nan, not 1e-08 "),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)),
     r"optimizer\.state\[0\]\.exp_avg is a torch\.float32 tensor of shape \(2,\), not a finite float tensor "
     r"of shape \(3, 16\)"),
    (lambda s: s["optimizer"]["state"][1].update(exp_avg_sq=-torch.ones(3)),
     r"optimizer\.state\[1\]\.exp_avg_sq is a torch\.float32 tensor of shape \(3,\), not a finite float "
     r"tensor of shape \(3,\) >= 0"),
    (lambda s: s.update(torch_rng=s["torch_rng"].float()), r"torch_rng is a torch\.float32 tensor of shape"),
    (lambda s: s.update(greedy_forward_passes=-1), r"greedy_forward_passes is -1, not an integer >= 0"),
], ids=["lr_str", "sched_last", "sched_bad", "betas", "epochs_many", "epochs_nan", "step_str", "gen_bad",
        "loss_str", "epoch_renumbered", "weight_decay", "eps_nan", "exp_avg_shape", "exp_avg_sq_negative",
        "torch_rng_float", "greedy_passes_negative"])
def test_a_checkpoint_with_hand_edited_values_is_named_before_training(tmp_path, data, genuine, edit,
                                                                       message):
    state = genuine[2]
    edited = {**state, "optimizer": {"state": {k: dict(v) for k, v in state["optimizer"]["state"].items()},
                                     "param_groups": [dict(g) for g in state["optimizer"]["param_groups"]]},
              "schedule": dict(state["schedule"]), "epochs": [dict(e) for e in state["epochs"]]}
    edit(edited)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(edited, folder / "epoch-001.pt")
    logged = []
    with pytest.raises(CertMaskError, match=re.escape(f"cannot resume from '{folder / 'epoch-001.pt'}': ")
                       + message) as caught:
        train(tiny(), *data, CONFIG, checkpoint_dir=folder, resume=True, show_progress=False,
              log=logged.append)
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith("delete it or train into a new folder")
    assert not logged and sorted(p.name for p in folder.iterdir()) == ["epoch-001.pt"]  # nothing trained


def test_a_genuine_interrupted_checkpoint_still_resumes_to_identical_weights(tmp_path, data, genuine):
    weights, record, state = genuine
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(state, folder / "epoch-001.pt")
    resumed = tiny()
    torch.manual_seed(99)  # a fresh process: other random state
    again = run(resumed, data, folder, resume=True)
    for key, value in weights.items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [e["loss"] for e in again["epochs"]] == [e["loss"] for e in record["epochs"]]
