"""The torch backend against third-party models and hostile inputs: named errors, reproducible answers."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.attack import PatchAttack, attack_undefended, run_attack  # noqa: E402
from certmask_backends.pytorch.models import load_model  # noqa: E402
from torch import nn  # noqa: E402

from certmask_core import CertMaskError, PatchThreat, make_maskset  # noqa: E402
from certmask_core.certification import NO_VOTE, all_pairs  # noqa: E402
from tests.test_attack import BrightSpot  # noqa: E402

MS = make_maskset(PatchThreat(28, 4), 1, "replicated", masks_per_axis=3)
TINY_MS = make_maskset(PatchThreat((1, 6), (1, 2)), 1, "patchcleanser", masks_per_axis=(1, 2))


def linear(classes: int = 3, channels: int = 1, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * 28 * 28, classes)).to(dtype).eval()


def images(count: int = 3, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, channels, 28, 28), dtype=np.float32)


class Spy(nn.Module):
    """Records (own training flag, child's training flag, input dtype) at every forward pass."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append((self.training, self.inner.training, x.dtype))
        return self.inner(x)


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# ----------------------------------------------------------------- 1. train/eval state
def batchnorm_dropout_model() -> nn.Module:
    """float64 BatchNorm + Dropout network left in train mode, with one submodule in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 4)).double()
    model[2].running_mean.normal_()
    model[2].running_var.uniform_(0.5, 2.0)
    model.train()
    model[1].eval()  # mixed flags must come back as they were
    return model


def test_a_train_mode_model_predicts_the_same_under_any_batching():
    model = batchnorm_dropout_model()
    before, stats = flags(model), model[2].running_mean.clone()
    x = images(7)
    perm = np.random.default_rng(1).permutation(7)
    small, large = TorchBackend(batch_size=2), TorchBackend(batch_size=64)
    logits = large.predict(model, x, return_logits=True)
    np.testing.assert_allclose(small.predict(model, x, return_logits=True), logits, rtol=1e-6)
    assert (small.predict(model, x[perm]) == logits.argmax(1)[perm]).all()
    masked = large.masked_predictions(model, x, MS)
    assert (small.masked_predictions(model, x[perm], MS) == masked[perm]).all()
    pairs = all_pairs(len(MS))
    assert (small.pair_predictions(model, x[3], MS, pairs)
            == large.pair_predictor(model, x, MS)(3, pairs)).all()
    assert flags(model) == before and before[2] is False and before[0] is True  # [2]: model[1]
    assert torch.equal(model[2].running_mean, stats)  # train-mode BatchNorm would update its statistics


def test_every_model_call_runs_in_eval_mode_and_restores_every_flag():
    spy = Spy(BrightSpot()).train()
    spy.inner.eval()
    clean = np.full((2, 1, 1, 6), 0.5, np.float32)
    backend = TorchBackend(memory_budget_mb=1.0)
    backend.predict(spy, clean)
    backend.masked_predictions(spy, clean, TINY_MS)
    backend.pair_predictions(spy, clean[0], TINY_MS, [[0, 1]])
    backend.pair_predictor(spy, clean, TINY_MS)(1, [[0, 1]])
    backend.effective_batch(spy, clean)
    PatchAttack(backend, spy, TINY_MS, (1, 2), "detection", steps=2, stride=1).attack_image(clean[0], 1)
    attack_undefended(backend, spy, clean[0], 1, (1, 2), steps=2, stride=1)
    assert spy.calls and not any(own or child for own, child, _ in spy.calls)
    assert spy.training and not spy.inner.training

    class Failing(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    failing = Failing().train()
    with pytest.raises(CertMaskError, match="boom"):
        backend.predict(failing, clean)
    assert failing.training  # restored after an error too


# ----------------------------------------------------------------- 2. dtypes
def test_float16_and_float64_images_are_cast_to_the_model_dtype():
    x = images()
    spy = Spy(linear())
    backend = TorchBackend()
    def logits(x):
        return backend.masked_predictions(spy, x, MS, return_logits=True)

    np.testing.assert_array_equal(logits(x.astype(np.float64)), logits(x))
    half = x.astype(np.float16)
    np.testing.assert_array_equal(logits(half), logits(half.astype(np.float32)))
    assert {dtype for *_, dtype in spy.calls} == {torch.float32}
    wide = Spy(linear(dtype=torch.float64))
    backend.predict(wide, torch.as_tensor(x))
    parameterless = Spy(nn.Flatten())
    backend.predict(parameterless, x.astype(np.float64))
    assert wide.calls[-1][2] == torch.float64 and parameterless.calls[-1][2] == torch.float32


@pytest.mark.parametrize("bad", [np.zeros((2, 1, 28, 28), np.uint8), np.zeros((2, 1, 28, 28), bool),
                                 torch.zeros(2, 1, 28, 28, dtype=torch.int64)])
def test_integer_and_bool_images_are_refused(bad):
    with pytest.raises(CertMaskError, match=r"images must be floating point in \[0, 1\], got dtype torch\."):
        TorchBackend().masked_predictions(linear(), bad, MS)


@pytest.mark.parametrize("junk,named", [("a picture", "str of dtype <U9"), (None, "NoneType of dtype object"),
                                        ([[0.0, 1.0], [0.5]], "list: setting an array element"),
                                        ({"x": 1}, "dict of dtype object")])
def test_non_array_junk_is_refused(junk, named):
    with pytest.raises(CertMaskError, match=f"images must be a numeric array or tensor, got {named}"):
        TorchBackend().predict(linear(), junk)


def test_flipped_arrays_are_accepted():
    x, model, backend = images()[:, :, ::-1], linear(), TorchBackend()
    assert (backend.masked_predictions(model, x, MS) == backend.masked_predictions(model, x.copy(), MS)).all()


# ----------------------------------------------------------------- 3. value range
def test_pixels_outside_the_value_range_are_refused_with_the_range_found():
    x = images()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    model, backend = linear(), TorchBackend()
    message = (r"images must lie in \[0.0, 1.0\] \(pixel space\), found \[0.0, 255.0\]: scale the images to "
               r"\[0.0, 1.0\], or pass --mean/--std so the model normalises inside; in Python, "
               r"TorchBackend\(value_range=None\) skips this check")
    with pytest.raises(CertMaskError, match=message):
        backend.masked_predictions(model, x * 255, MS)
    with pytest.raises(CertMaskError, match=r"found \[-0.5, 0.5\]"):
        backend.predict(model, x - 0.5)
    unchecked = TorchBackend(value_range=None).masked_predictions(model, x * 255, MS)
    assert (TorchBackend(value_range=(0, 255)).masked_predictions(model, x * 255, MS) == unchecked).all()


@pytest.mark.parametrize("bad,count", [(np.nan, "2 NaN and 0 inf"), (np.inf, "0 NaN and 2 inf"),
                                       (-np.inf, "0 NaN and 2 inf")])
def test_nan_and_inf_pixels_are_refused_even_without_a_range_check(bad, count):
    x = images()
    x[0, 0, 3, 4] = x[2, 0, 0, 0] = bad
    message = (f"images must be finite, found {count} pixels; the finite pixels lie in "
               r"\[\S+, \S+\] \(no option skips this check\)")
    for value_range in ((0.0, 1.0), None):
        with pytest.raises(CertMaskError, match=message):
            TorchBackend(value_range=value_range).masked_predictions(linear(), x, MS)


@pytest.mark.parametrize("value_range", [(1.0, 0.0), (0.0, 0.0), (0.0, float("inf")), (float("nan"), 1.0),
                                         (0.0,), (0.0, 1.0, 2.0), "01", 1.0, ("a", 1.0)])
def test_a_bad_value_range_is_named(value_range):
    with pytest.raises(CertMaskError, match=r"value_range must be None or two finite numbers \(lo, hi\) "
                                            r"with lo < hi, got "):
        TorchBackend(value_range=value_range)


# ----------------------------------------------------------------- 4. shapes
def test_an_empty_batch_gives_empty_predictions():
    model, backend, empty = linear(), TorchBackend(memory_budget_mb=1.0), np.zeros((0, 1, 28, 28), np.float32)
    checks = [(backend.predict(model, empty), (0,), np.int64),
              (backend.predict(model, empty, return_logits=True), (0, 0), np.float32),
              (backend.masked_predictions(model, empty, MS), (0, len(MS)), np.int64),
              (backend.masked_predictions(model, empty, MS, return_logits=True), (0, len(MS), 0), np.float32),
              (backend.pair_predictions(model, images()[0], MS, np.empty((0, 2), np.int64)), (0,), np.int64),
              (backend.pair_predictor(model, images(), MS, return_logits=True)(0, []), (0, 0), np.float32)]
    for got, shape, dtype in checks:
        assert got.shape == shape and got.dtype == dtype


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_channels_last_images_are_recognised(channels):
    x = images(2, channels).transpose(0, 2, 3, 1)
    message = (rf"images of shape \(2, 28, 28, {channels}\) look channels-last \(B, H, W, C\) for the mask "
               r"set's \(H, W\) = \(28, 28\); pass images.transpose\(0, 3, 1, 2\)")
    with pytest.raises(CertMaskError, match=message):
        TorchBackend(fill=[0.0] * channels).masked_predictions(linear(channels=channels), x, MS)


def test_other_geometry_mismatches_name_the_image_shape_and_the_mask_set_size():
    message = (r"images of shape \(B, C, H, W\) = \(2, 1, 28, 1\) have \(H, W\) = \(28, 1\) but the mask set "
               r"is for \(H, W\) = \(28, 28\)")
    with pytest.raises(CertMaskError, match=message):
        TorchBackend().masked_predictions(linear(), np.zeros((2, 1, 28, 1), np.float32), MS)


def test_model_errors_are_named_with_the_input_shape_and_dtype():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    message = r"the model failed on input of shape \(4, 3, 28, 28\), dtype torch.float32: .*channels"
    with pytest.raises(CertMaskError, match=message) as info:
        TorchBackend(batch_size=4).masked_predictions(conv, images(2, 3), MS)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(CertMaskError, match=r"shape \(2, 3, 28, 28\), dtype torch.float32"):
        TorchBackend().predict(conv, images(2, 3))


class Returns(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(x)


@pytest.mark.parametrize("make,named", [
    (lambda x: torch.zeros(len(x)), r"got shape \(\d+,\)"),
    (lambda x: torch.zeros(len(x), 0), r"got shape \(\d+, 0\)"),
    (lambda x: torch.zeros(len(x), 3, 1), r"got shape \(\d+, 3, 1\)"),
    (lambda x: torch.zeros(len(x) + 1, 3), r"got shape \(28, 3\) for input of shape \(27, 1, 28, 28\)"),
    (lambda x: (torch.zeros(len(x), 3),), "got a tuple"),
])
def test_model_outputs_that_are_not_batch_by_classes_are_named(make, named):
    with pytest.raises(CertMaskError, match=f"model must return \\(batch, classes\\) logits.*{named}"):
        TorchBackend().masked_predictions(Returns(make), images(), MS)


# ----------------------------------------------------------------- 5. non-finite logits
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_vote_for_no_class_and_come_back_raw(bad):
    """Class 0's logit is ``bad`` whenever the top-left pixel is 0 (hidden by a mask, or dark)."""
    def poisoned(x):
        mean = x.flatten(1).mean(1)
        logits = torch.stack([mean, 1 - mean, torch.full_like(mean, 0.25)], 1)
        logits[x[:, 0, 0, 0] == 0, 0] = bad
        return logits

    model, backend, x = Returns(poisoned), TorchBackend(), images()
    x[1, 0, 0, 0] = 0.0
    plain = backend.predict(model, x, return_logits=True)
    assert np.isnan(plain[1, 0]) if np.isnan(bad) else plain[1, 0] == bad
    assert backend.predict(model, x).tolist() == [plain[0].argmax(), NO_VOTE, plain[2].argmax()]
    hides_origin = MS.dense()[:, 0, 0]
    assert hides_origin.any() and not hides_origin.all()
    logits = backend.masked_predictions(model, x, MS, return_logits=True)
    labels = backend.masked_predictions(model, x, MS)
    assert logits.dtype == np.float32 and (np.isfinite(logits[..., 0]) == ~hides_origin).all(1)[[0, 2]].all()
    assert (labels[:, hides_origin] == NO_VOTE).all() and (labels[1] == NO_VOTE).all()
    assert (labels[0, ~hides_origin] == logits[0, ~hides_origin].argmax(1)).all()
    pairs = all_pairs(len(MS))
    expect = np.where(hides_origin[pairs].any(1), NO_VOTE, -1)
    got = backend.pair_predictions(model, x[0], MS, pairs)
    assert (got[expect == NO_VOTE] == NO_VOTE).all() and (got[expect != NO_VOTE] >= 0).all()


# ----------------------------------------------------------------- 6. pair predictions
def test_pair_predictions_and_the_pair_predictor_can_return_logits():
    model, backend, x = linear(classes=5), TorchBackend(batch_size=4), images()
    pairs = all_pairs(len(MS))[::3]
    logits = backend.pair_predictions(model, x[2], MS, pairs, return_logits=True)
    assert logits.shape == (len(pairs), 5) and logits.dtype == np.float32
    labels = backend.pair_predictions(model, x[2], MS, pairs)
    assert labels.dtype == np.int64 and (labels == logits.argmax(1)).all()
    np.testing.assert_array_equal(backend.pair_predictor(model, x, MS, return_logits=True)(2, pairs), logits)
    by_labels = backend.pair_predictor(model, x, MS)
    assert (by_labels(2, pairs) == labels).all()
    np.testing.assert_array_equal(by_labels(np.int64(2), pairs, return_logits=True), logits)


@pytest.mark.parametrize("pairs,message", [
    ([0, 1, 2], r"pairs must be an integer array of shape \(m, 2\), got shape \(3,\), dtype torch.int64"),
    ([[0, 1, 2]], r"pairs must be an integer array of shape \(m, 2\), got shape \(1, 3\)"),
    ([[0.0, 1.5]], r"got shape \(1, 2\), dtype torch.float64"),
    ([[True, False]], "dtype torch.bool"),
    ([[0, 9]], r"pair indices must lie in \[0, 9\), got \[0, 9\]"),
    ([[-1, 2]], r"pair indices must lie in \[0, 9\), got \[-1, 2\]"),
    ([[0, 1], [2]], "pairs must be a numeric array or tensor, got list"),
])
def test_bad_pairs_are_named(pairs, message):
    model, backend = linear(), TorchBackend()
    with pytest.raises(CertMaskError, match=message):
        backend.pair_predictions(model, images()[0], MS, pairs)
    with pytest.raises(CertMaskError, match=message):
        backend.pair_predictor(model, images(), MS)(0, pairs)


@pytest.mark.parametrize("index", [-1, 3, 1.0, "0", True, None])
def test_a_bad_image_index_is_named(index):
    predictor = TorchBackend().pair_predictor(linear(), images(), MS)
    with pytest.raises(CertMaskError, match=r"pair_predictor: image index must be an integer in \[0, 3\), "
                                            f"got {index!r}"):
        predictor(index, [[0, 1]])


# ----------------------------------------------------------------- 7. review items
class Wide(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.Linear(width, 3))

    def forward(self, x):
        return self.body(x)


def test_the_activation_measure_is_per_live_model():
    """A model created where a dead one lived (same ``id``) is measured afresh, not given the old size."""
    x = images()
    backend = TorchBackend(batch_size=100_000, memory_budget_mb=0.5)
    fresh = {w: TorchBackend(batch_size=100_000, memory_budget_mb=0.5).effective_batch(Wide(w), x)
             for w in (4, 4096)}
    assert fresh[4] > fresh[4096] > 1
    for _ in range(5):  # temporaries: CPython tends to give each the address of the one before
        for width in (4096, 4):
            assert backend.effective_batch(Wide(width), x) == fresh[width]
    assert TorchBackend(batch_size=7).effective_batch(Wide(4), x) == 7


def test_masked_inputs_match_the_dense_masks_and_pass_gradients():
    backend = TorchBackend(fill=0.25)
    x = torch.as_tensor(images(2)).requires_grad_(True)
    hidden = backend.hidden_pixels(MS)
    masked = backend.masked_inputs(x.unsqueeze(1), hidden.unsqueeze(0))
    dense = torch.as_tensor(MS.dense())
    assert masked.shape == (2, len(MS), 1, 28, 28) and torch.equal(hidden[:, 0], dense)
    expect = torch.where(dense[None, :, None], 0.25, x.detach()[:, None])
    assert torch.equal(masked.detach(), expect)
    masked.sum().backward()
    assert torch.equal(x.grad, (~dense).sum(0).float().expand_as(x))


# ----------------------------------------------------------------- 8. attack: claims of the unsound mode
def test_the_attack_reports_claims_for_the_unsound_mode_and_certificates_for_sound_ones():
    clean = np.full((1, 1, 1, 6), 0.5, np.float32)
    common = dict(patch=(1, 2), k=1, strategy="patchcleanser", steps=4, stride=1, masks_per_axis=(1, 2),
                  show_progress=False)
    paper = run_attack(TorchBackend(), BrightSpot(), clean, np.array([1]), mode="paper", **common)
    assert paper["claim_broken_UNSOUND"] == 1 and paper["claim_broken_UNSOUND_images"] == [0]
    assert paper["claimed_certified_accuracy_UNSOUND"] == 1.0
    assert "certified_broken" not in paper and "certified_accuracy" not in paper
    assert paper["per_image"][0]["claim_holds"] and "certified" not in paper["per_image"][0]
    sound = run_attack(TorchBackend(), BrightSpot(), clean, np.array([1]), mode="detection", **common)
    assert sound["certified_broken"] == 0 and sound["certified_accuracy"] == 1.0
    assert sound["per_image"][0]["certified"] and "claim_holds" not in sound["per_image"][0]


def test_unloadable_weights_are_named(tmp_path):
    junk, other = tmp_path / "junk.pt", tmp_path / "other.pt"
    junk.write_text("not a torch file")
    torch.save(linear().state_dict(), other)
    for path in (junk, other):
        message = re.escape(f"cannot load '{path}' as a FashionCNN state_dict: ")
        with pytest.raises(CertMaskError, match=message):
            load_model(str(path))


@pytest.mark.parametrize("error", [MemoryError, lambda: RuntimeError(
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes.")])
def test_host_out_of_memory_also_halves_the_batch(error):
    inner, seen = linear(), []

    def limited(x):
        if len(x) > 5:
            raise error()
        seen.append(len(x))
        return inner(x)

    x = images()
    labels = TorchBackend(batch_size=64).masked_predictions(Returns(limited), x, MS)
    assert (labels == TorchBackend().masked_predictions(inner, x, MS)).all()
    assert sum(seen) == len(x) * len(MS) and max(seen) <= 5


def test_the_margin_tolerance_follows_device_and_precision():
    from certmask_core.certification import DEFAULT_MARGIN_TOLERANCE
    assert TorchBackend().margin_tolerance == DEFAULT_MARGIN_TOLERANCE
    assert TorchBackend(autocast_dtype=torch.bfloat16).margin_tolerance == 0.25
    on_gpu = TorchBackend()
    on_gpu.device = torch.device("cuda")  # the rule only, without a GPU: TF32 noise needs 0.02
    assert on_gpu.margin_tolerance == 0.02
