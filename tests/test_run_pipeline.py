"""The certification run: batches, shared first rounds, any number of axes, sharded runs that resume.

Every result is compared with a slow twin: ``certify`` called once on the whole data (no batches, no
streaming, no shards).
"""
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch import TorchBackend  # noqa: E402

from certmask_core import PatchThreat, certify, make_maskset  # noqa: E402
from certmask_core.run.config import RunConfig  # noqa: E402
from certmask_core.run.experiment import (  # noqa: E402
    ArrayData,
    CertificationRun,
    auto_image_batch,
    run_certification,
)
from certmask_core.run.records import SHARD_GLOB, read_per_image  # noqa: E402


class TinyNet(torch.nn.Module):
    """A fixed model for any number of spatial axes: the class whose brightness level is nearest the
    input's mean, plus a small random linear term of the input pooled to 2 per axis (masks move both)."""

    def __init__(self, channels: int, ndim: int, classes: int = 4, seed: int = 0):
        super().__init__()
        pool = {1: torch.nn.AdaptiveAvgPool1d, 2: torch.nn.AdaptiveAvgPool2d, 3: torch.nn.AdaptiveAvgPool3d}
        self.pool = pool[ndim](2)
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(channels * 2 ** ndim, classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) * 0.3)
            self.linear.bias.zero_()
        self.register_buffer("levels", torch.linspace(0.2, 0.8, classes))

    def forward(self, x):
        mean = x.flatten(1).mean(1, keepdim=True)
        return self.linear(self.pool(x).flatten(1)) - 200 * (mean - self.levels) ** 2


def dataset(shape, n=24, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = (0.2 + 0.2 * labels.reshape((n,) + (1,) * len(shape))
              + 0.15 * rng.standard_normal((n, *shape))).clip(0, 1).astype(np.float32)
    labels[::5] = (labels[::5] + 1) % 4  # some wrong labels: not everything certifies
    return images, labels.astype(np.int64), TinyNet(shape[0], len(shape) - 1)


def direct(backend, model, images, labels, config):
    """The slow twin: every (strategy, k, mode) certified by one ``certify`` call on all images."""
    out = {}
    threat = PatchThreat(images.shape[2:], config.patch)
    for s in config.strategies:
        for k in config.ks:
            ms = make_maskset(threat, k, s, masks_per_axis=config.masks_per_axis)
            first = backend.masked_predictions(model, images, ms, return_logits=True)
            for mode in config.modes:
                predictor = backend.pair_predictor(model, images, ms, return_logits=True)
                report = certify(first, labels, ms, mode, k=k, pair_predictor=predictor if mode == "recovery"
                                 else None, margin_tolerance=config.margin_tolerance)
                out[(s, k, mode)] = (report.output.tolist(), report.certified.tolist())
    return out


def as_runs(results):
    return {(r["strategy"], r["k"], r["mode"]): (r["per_image"]["output"], r["per_image"]["certified"])
            for r in results["runs"]}


@pytest.mark.parametrize("shape,patch,per_axis", [
    ((1, 12, 12), (3, 3), 3),
    ((2, 6, 8, 8), (2, 3, 3), 2),      # clips (C, T, H, W)
    ((3, 40), (5,), 4),                # signals (C, L)
])
def test_any_number_of_axes_batched_equals_one_call_on_everything(shape, patch, per_axis):
    images, labels, model = dataset(shape)
    backend = TorchBackend(batch_size=64)
    modes = ("detection", "plurality", "covering_consensus", "recovery")
    whole = None
    for image_batch in (1, 7, None):
        config = RunConfig(patch, (1, 2), ("replicated", "offset"), modes, masks_per_axis=per_axis,
                           image_batch=image_batch)
        results = run_certification(backend, model, images, labels, config, num_classes=4)
        if whole is None:
            whole = direct(backend, model, images, labels, config)
            assert any(any(c) for _, c in whole.values()) and not all(all(c) for _, c in whole.values())
        assert as_runs(results) == whole
        assert results["patch"] == list(patch)


def test_a_patch_of_another_rank_than_the_data_is_refused():
    images, labels, model = dataset((1, 12, 12))
    with pytest.raises(Exception, match=r"2 spatial axes, but the patch 2x3x3 has 3"):
        run_certification(TorchBackend(), model, images, labels, RunConfig((2, 3, 3)))
    with pytest.raises(Exception, match=r"masks_per_axis \(2, 2, 2\) has 3 values; the patch 3x3 has 2"):
        RunConfig((3, 3), masks_per_axis=(2, 2, 2))
    with pytest.raises(Exception, match="image_batch must be an integer >= 1"):
        RunConfig((3, 3), image_batch=0)


class CountingBackend(TorchBackend):
    """Counts first-round calls, and raises ``Killed`` after ``kill_after`` of them (a killed process)."""

    def __init__(self, kill_after=None, **options):
        super().__init__(**options)
        self.calls, self.kill_after = 0, kill_after

    def masked_predictions(self, *args, **kwargs):
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after:
            raise Killed
        return super().masked_predictions(*args, **kwargs)


class Killed(Exception):
    pass


def test_one_first_round_per_distinct_family_and_batch():
    images, labels, model = dataset((1, 12, 12), n=20)
    backend = CountingBackend(batch_size=64)
    # offset and replicated k = 1 are one set, their k = 2 sets differ: three first rounds per batch of 5
    config = RunConfig((3, 3), (1, 2), ("replicated", "offset"), ("detection", "plurality"), masks_per_axis=3,
                       image_batch=5)
    run_certification(backend, model, images, labels, config)
    assert backend.calls == 3 * 4


def test_auto_image_batch_fills_the_device_within_the_pixel_budget():
    assert auto_image_batch(512, 16, (1, 28, 28)) == 4096           # 65,536 passes of 16 masks
    assert auto_image_batch(10_000, 10, (1, 28, 28)) == 8_000       # 8 device batches
    assert auto_image_batch(100_000, 10, (1, 28, 28)) == 2 ** 26 // (4 * 28 * 28)  # pixels cap it
    assert auto_image_batch(512, 36, (3, 224, 224)) == 2 ** 26 // (4 * 3 * 224 * 224)  # 111 images
    assert auto_image_batch(512, 36, (3, 5000, 5000)) == 1
    # a short run is cut in about ten batches (progress, overlap), never below one device batch of passes
    assert auto_image_batch(512, 96, (1, 28, 28), num_images=500) == 50
    assert auto_image_batch(4096, 96, (1, 28, 28), num_images=200) == 43     # ceil(4096 / 96) > 20
    assert auto_image_batch(512, 16, (1, 28, 28), num_images=10**6) == 4096  # a long run: unchanged


class ThreadGather:
    """``gather`` for ranks run as threads of one process (what torch.distributed gives each process)."""

    def __init__(self, world):
        self.barrier, self.slots = threading.Barrier(world), [None] * world

    def for_rank(self, rank):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots) if rank == 0 else None
            self.barrier.wait()
            return out
        return gather


def run_sharded(world, images, labels, model, config, path, resume=False, kill_after=None):
    gathers, results, errors = ThreadGather(world), [None] * world, []

    def rank_main(rank):
        try:
            backend = CountingBackend(kill_after, batch_size=64)
            run = CertificationRun(backend, model, ArrayData(images, labels), config, num_classes=4,
                                   rank=rank, world=world, gather=gathers.for_rank(rank))
            results[rank] = run.run(path, resume=resume, show_progress=False)
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)
            gathers.barrier.abort()  # the other ranks stop too, as torchrun stops them

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results[0], errors


def comparable(results):
    runs = [{k: v for k, v in run.items() if k != "images_per_second"} for run in results["runs"]]
    return {**{k: v for k, v in results.items() if k not in ("runs", "resumed_images", "world_size")},
            "runs": runs}


@pytest.mark.parametrize("resume_world", [1, 2, 3])
def test_a_killed_sharded_run_resumes_to_the_single_process_results(tmp_path, resume_world):
    images, labels, model = dataset((1, 12, 12), n=40)
    config = RunConfig((3, 3), (1, 2), ("replicated",), ("detection", "recovery"), masks_per_axis=3,
                       image_batch=4, sizes=[(2, 2), (3, 3)])
    for name in ("single", "sharded"):
        (tmp_path / name).mkdir()
    single = run_certification(TorchBackend(batch_size=64), model, images, labels, config, num_classes=4,
                               per_image_path=tmp_path / "single" / "per_image.jsonl")
    path = tmp_path / "sharded" / "per_image.jsonl"
    # each rank dies after its third batch (two first rounds per batch)
    _, errors = run_sharded(2, images, labels, model, config, path, kill_after=6)
    assert errors and all(isinstance(e, (Killed, threading.BrokenBarrierError)) for e in errors)
    shards = sorted(path.parent.glob(SHARD_GLOB[:-1] + "*.jsonl"))
    kept = [len(read_per_image(shard)) for shard in shards]
    assert len(shards) == 2 and all(0 < count < 20 for count in kept)
    results, errors = run_sharded(resume_world, images, labels, model, config, path, resume=True)
    assert not errors
    assert results["resumed_images"] == sum(kept)
    assert comparable(results) == comparable(single)
    assert read_per_image(path) == read_per_image(tmp_path / "single" / "per_image.jsonl")
    assert not list(path.parent.glob(SHARD_GLOB))


def signal_model():
    """``module:factory`` model for the CLI tests: 3-channel signals of any length, 4 classes."""
    return TinyNet(3, 1)


@pytest.fixture(scope="module")
def signals_npz(tmp_path_factory):
    images, labels, _ = dataset((3, 40), n=12)
    path = tmp_path_factory.mktemp("signals") / "signals.npz"
    np.savez(path, images=images.transpose(0, 2, 1), labels=labels)  # (N, L, C): layout NLC
    return path, images, labels


def test_the_cli_certifies_tunes_attacks_and_trains_on_signals(tmp_path, signals_npz, monkeypatch, capsys):
    from certmask_core.run.cli import main
    path, images, labels = signals_npz
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent.parent))
    common = ["--data", str(path), "--layout", "NLC", "--model", "tests.test_run_pipeline:signal_model",
              "--quiet", "--no-plots"]
    assert main(["certify", *common, "--patch", "5", "--masks-per-axis", "4", "--k", "1", "2",
                 "--mode", "detection", "recovery", "--sizes", "3-6", "--out", str(tmp_path / "c")]) == 0
    results = __import__("json").loads((tmp_path / "c" / "results.json").read_text())
    config = RunConfig((5,), (1, 2), ("replicated",), ("detection", "recovery"), masks_per_axis=4)
    assert as_runs(results) == direct(TorchBackend(), signal_model(), images, labels, config)
    assert results["sizes"] == [[3], [4], [5], [6]]
    assert main(["tune", *common, "--patch", "5", "--budget", "40", "--k", "1", "2", "--tune-images", "8",
                 "--check-images", "4", "--out", str(tmp_path / "t")]) == 0
    assert "tune: patch 5 on 40" in (tmp_path / "t" / "tune.md").read_text()
    assert main(["attack", *common[:-1], "--patch", "5", "--masks-per-axis", "4", "--steps", "2",
                 "--stride", "8", "--limit", "3", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "attack.json").is_file() and not (tmp_path / "a" / "attack.png").exists()
    assert main(["train", *common[:-1], "--patch", "5", "--masks-per-axis", "4", "--epochs", "1",
                 "--train-batch-size", "4", "--augment", "maskset", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.pt").is_file()
    capsys.readouterr()
    assert main(["certify", *common, "--patch", "5", "5", "--out", str(tmp_path / "bad")]) == 2
    assert "--patch takes one integer or 1 (one per axis of the data), got [5, 5]" in capsys.readouterr().err


def test_a_process_left_without_images_merges(tmp_path):
    images, labels, model = dataset((1, 12, 12), n=2)
    config = RunConfig((3, 3), (1,), ("replicated",), ("detection",), masks_per_axis=3, image_batch=1)
    (tmp_path / "run").mkdir()
    results, errors = run_sharded(3, images, labels, model, config, tmp_path / "run" / "per_image.jsonl")
    assert not errors and results["images"] == 2
    assert len(read_per_image(tmp_path / "run" / "per_image.jsonl")) == 2


def test_a_model_in_training_mode_is_certified_in_eval_mode_and_given_back_as_it_was():
    images, labels, _ = dataset((1, 12, 12), n=30)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 10 * 10, 4))
    config = RunConfig((3, 3), (1, 2), ("replicated",), ("detection", "recovery"), masks_per_axis=3,
                       image_batch=5)
    reference = run_certification(TorchBackend(), model.eval(), images, labels, config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    again = run_certification(TorchBackend(), model, images, labels, config)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # no BatchNorm update
    assert [r["per_image"] for r in again["runs"]] == [r["per_image"] for r in reference["runs"]]


def test_record_files_that_are_links_or_fifos_are_refused(tmp_path):
    import os

    from certmask_core import CertMaskError
    images, labels, model = dataset((1, 12, 12), n=6)
    config = RunConfig((3, 3), (1,), ("replicated",), ("detection",), masks_per_axis=3)
    path = tmp_path / "per_image.jsonl"
    run_certification(TorchBackend(), model, images, labels, config, per_image_path=path)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a record, and no newline at its end")
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(CertMaskError, match="is a symbolic link"):
        run_certification(TorchBackend(), model, images, labels, config, per_image_path=path, resume=True)
    assert victim.read_text() == "not a record, and no newline at its end"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(CertMaskError, match="not a regular file"):
        run_certification(TorchBackend(), model, images, labels, config, per_image_path=path, resume=True)
