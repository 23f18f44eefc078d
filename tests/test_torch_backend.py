import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.models import FashionCNN, load_model  # noqa: E402

from certmask_core import CertMaskError, PatchThreat, get_backend, make_maskset  # noqa: E402
from certmask_core.certification import NO_VOTE, all_pairs  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = FashionCNN().double().eval()  # float64: batch composition cannot flip an argmax
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 28, 28))
    ms = make_maskset(PatchThreat(28, 4), 2, "replicated", masks_per_axis=3)
    return model, images, ms


def reference_logits(model, images, ms, fill=0.0):
    """Dense numpy masks, one masked image at a time."""
    dense = ms.dense()
    out = np.zeros((len(images), len(ms), 10))
    with torch.no_grad():
        for i, x in enumerate(images):
            for j, hidden in enumerate(dense):
                masked = np.where(hidden[None], fill, x)
                out[i, j] = model(torch.from_numpy(masked[None])).numpy()[0]
    return out


def test_masked_predictions_match_the_dense_reference(setup):
    model, images, ms = setup
    ref = reference_logits(model, images, ms)
    backend = TorchBackend(batch_size=7)
    logits = backend.masked_predictions(model, images, ms, return_logits=True)
    assert logits.shape == (3, len(ms), 10)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    assert (backend.masked_predictions(model, images, ms) == ref.argmax(2)).all()
    # deterministic and channels-last gives the same answer
    again = backend.masked_predictions(model, images, ms)
    assert (backend.masked_predictions(model, images, ms) == again).all()
    cl = TorchBackend(channels_last=True).masked_predictions(model, images, ms, return_logits=True)
    np.testing.assert_allclose(cl, ref, rtol=1e-5, atol=1e-5)


class Flatten(torch.nn.Module):
    """Its logits are its input: the masked inputs themselves, compared bit for bit."""

    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("batch_size", [7, 18, 64, 4096])  # rows of part of an image, whole images
def test_masked_inputs_equal_numpy_where_bit_for_bit(batch_size):
    rng = np.random.default_rng(1)
    images = rng.random((5, 3, 9, 11)).astype(np.float32)
    ms = make_maskset(PatchThreat((9, 11), (2, 3)), 2, "offset", masks_per_axis=3)
    fill = np.array([0.25, 0.5, 1.0], np.float32)
    got = TorchBackend(batch_size=batch_size, fill=fill.tolist()).masked_predictions(
        Flatten(), images, ms, return_logits=True)
    want = np.where(ms.dense()[None, :, None], fill[None, None, :, None, None], images[:, None])
    assert np.array_equal(got, want.reshape(5, len(ms), -1))


def test_fill_in_normalized_space(setup):
    model, images, ms = setup
    backend = TorchBackend(fill=1.0, fill_space="normalized", mean=[0.25], std=[0.5])
    ref = reference_logits(model, images[:1], ms, fill=0.75)
    np.testing.assert_allclose(backend.masked_predictions(model, images[:1], ms, return_logits=True),
                               ref, rtol=1e-5, atol=1e-5)


def test_pair_predictions_match_the_dense_reference(setup):
    model, images, ms = setup
    pairs = all_pairs(len(ms))[::5]
    dense = ms.dense()
    with torch.no_grad():
        ref = [model(torch.from_numpy(np.where(dense[i] | dense[j], 0.0, images[1])[None])).argmax(1).item()
               for i, j in pairs]
    got = TorchBackend(batch_size=4).pair_predictions(model, images[1], ms, pairs)
    assert got.tolist() == ref
    predictor = TorchBackend().pair_predictor(model, images, ms)
    assert predictor(1, pairs).tolist() == ref
    # ``many``: rows of several images in shared batches, equal to asking image by image
    rows = np.tile(pairs[:7], (3, 1))
    owners = np.repeat([2, 0, 1], 7)
    batched = TorchBackend(batch_size=5).pair_predictor(model, images, ms).many(owners, rows)
    assert batched.tolist() == [predictor(int(b), p[None])[0] for b, p in zip(owners, rows)]
    with pytest.raises(CertMaskError, match=r"image indices must lie in \[0, 3\), got \[0, 3\]"):
        predictor.many([0, 3], pairs[:2])
    with pytest.raises(CertMaskError, match="image_indices must be 2 integers, one per pair"):
        predictor.many([0.0, 1.0], pairs[:2])


class FlakyMemoryModel(torch.nn.Module):
    """Raises an out-of-memory error for batches above a limit, like a full GPU."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.seen = inner, limit, []

    def forward(self, x):
        if len(x) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.seen.append(len(x))
        return self.inner(x)


def test_out_of_memory_halves_the_chunk_and_loses_nothing(setup):
    model, images, ms = setup
    flaky = FlakyMemoryModel(model, limit=5)
    labels = TorchBackend(batch_size=64).masked_predictions(flaky, images, ms)
    assert (labels == reference_logits(model, images, ms).argmax(2)).all()
    assert sum(flaky.seen) == len(images) * len(ms) and max(flaky.seen) <= 5


def test_other_runtime_errors_propagate(setup):
    """Only out-of-memory is retried; any other model error reaches the caller, named and chained."""
    model, images, ms = setup

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(CertMaskError, match=r"the model failed on input of shape \(\d+, 1, 28, 28\), "
                       r"dtype torch.float32: shape mismatch") as info:
        TorchBackend().masked_predictions(Broken(), images, ms)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_memory_budget_caps_the_batch(setup):
    model, images, ms = setup
    flaky = FlakyMemoryModel(model, limit=10_000)
    backend = TorchBackend(batch_size=512, memory_budget_mb=1.0)
    labels = backend.masked_predictions(flaky, images, ms)
    cap = backend.effective_batch(flaky, images)
    assert 1 <= cap < 512 and max(flaky.seen[1:]) <= cap  # seen[0] is the one-image probe
    assert cap < TorchBackend(batch_size=512, memory_budget_mb=4.0).effective_batch(flaky, images)
    assert TorchBackend(batch_size=512).effective_batch(flaky, images) == 512
    assert (labels == reference_logits(model, images, ms).argmax(2)).all()


@pytest.mark.parametrize("spec", ["bundled", "bundled-cutout"])
def test_bundled_models_load_are_accurate_and_have_their_record(spec):
    import json

    from certmask_backends.pytorch.models import BUNDLED, bundled_weights_path

    from certmask_core.run.datasets import load_dataset
    x, y, _ = load_dataset("fashion-mnist-subset", limit=300)
    backend = get_backend("torch")
    pred = backend.predict(backend.load_model(spec), x)
    assert (pred == y).mean() > 0.85
    record = json.loads(bundled_weights_path(BUNDLED[spec]).with_suffix(".json").read_text())
    assert record["command"].split()[0] in ("certmask", "python")


def test_autocast_bf16_runs_and_mostly_agrees():
    from certmask_core.run.datasets import load_dataset
    x, _, _ = load_dataset("fashion-mnist-subset", limit=20)
    model = load_model("bundled")
    ms = make_maskset(PatchThreat(28, 3), 1, "patchcleanser", masks_per_axis=3)
    full = TorchBackend().masked_predictions(model, x, ms)
    bf16 = TorchBackend(autocast_dtype=torch.bfloat16).masked_predictions(model, x, ms)
    assert bf16.shape == full.shape and (bf16 == full).mean() > 0.9


@pytest.mark.parametrize("images,fill,message", [
    (np.zeros((2, 28, 28), np.float32), 0.0, r"images must have shape \(B, C, H, W\), got \(2, 28, 28\)"),
    (np.zeros((2, 1, 28, 28), np.uint8), 0.0, "images must be floating point"),
    (np.zeros((2, 1, 20, 28), np.float32), 0.0,
     r"images of shape \(B, C, H, W\) = \(2, 1, 20, 28\) have \(H, W\) = \(20, 28\) but the mask set is "
     r"for \(H, W\) = \(28, 28\)"),
    (np.zeros((2, 3, 28, 28), np.float32), [0.0, 0.0], "fill has 2 values but images have 3 channels"),
])
def test_bad_images_are_named(setup, images, fill, message):
    model, _, ms = setup
    with pytest.raises(CertMaskError, match=message):
        TorchBackend(fill=fill).masked_predictions(model, images, ms)


def test_nan_model_and_bad_options_are_named(setup):
    _, images, ms = setup

    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan"), dtype=x.dtype)

    # NaN logits are no error: they vote for no class, and raw logits go to the core as they are
    assert (TorchBackend().masked_predictions(NaNModel(), images, ms) == NO_VOTE).all()
    assert np.isnan(TorchBackend().masked_predictions(NaNModel(), images, ms, return_logits=True)).all()
    with pytest.raises(CertMaskError, match="needs mean and std"):
        TorchBackend(fill_space="normalized")
    with pytest.raises(CertMaskError, match="batch_size must be an integer >= 1, got 0"):
        TorchBackend(batch_size=0)
    with pytest.raises(CertMaskError, match=r"pair indices must lie in \[0, 18\)"):
        TorchBackend().pair_predictions(NaNModel(), images[0], ms, [[0, 99]])
    with pytest.raises(CertMaskError, match="model weights not found"):
        load_model("/nonexistent/weights.pt")
    with pytest.raises(CertMaskError, match="unknown backend 'jax'"):
        get_backend("jax")


@pytest.mark.parametrize("factor_bytes", [0, 1 << 40])  # broadcast bool masks, or float factors
def test_both_whole_image_paths_equal_numpy_where_also_for_negative_zero(factor_bytes, monkeypatch):
    from certmask_backends.pytorch import backend as torch_backend
    monkeypatch.setattr(torch_backend, "MASK_FACTOR_BYTES", factor_bytes)
    images = np.random.default_rng(2).random((4, 2, 6, 7)).astype(np.float32)
    images[:, :, ::2] = -0.0  # read as 0.0 by every path
    ms = make_maskset(PatchThreat((6, 7), (2, 2)), 1, "patchcleanser", masks_per_axis=2)
    got = TorchBackend(batch_size=64, fill=[0.5, 1.0]).masked_predictions(Flatten(), images, ms,
                                                                         return_logits=True)
    want = np.where(ms.dense()[None, :, None], np.array([0.5, 1.0], np.float32)[None, None, :, None, None],
                    images[:, None] + np.float32(0.0))
    assert np.array_equal(got, want.reshape(4, len(ms), -1))
    assert not np.signbit(got).any()
