"""Every installed backend keeps the contract of :mod:`certmask_core.contract`.

One small classifier (a two-layer perceptron on the flattened input) is defined once by its numpy
weights and run the way each backend runs models: an ``nn.Module`` for torch, a callable for numpy, an
``.onnx`` file exported by ``torch.onnx.export`` for onnx. Every backend must give the labels and logits
of a float64 numpy reference that masks with ``np.where`` over the core's own rasterisation
(``MaskSet.dense``), refuse the same hostile inputs with the same messages, give the same empty-batch
shapes, and give ``run_certification`` the same per-image results. A backend whose framework is not
installed is skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from certmask_core import CertMaskError, PatchThreat, combination_groups, make_maskset
from certmask_core.array_backend import NumpyBackend
from certmask_core.certification import MODES, NO_VOTE
from certmask_core.multipatch import MaskGroups
from certmask_core.run.config import RunConfig
from certmask_core.run.experiment import run_certification

BACKENDS = ("torch", "numpy", "onnx")
CLASSES = 5
HIDDEN = 16


@dataclass(frozen=True)
class Weights:
    """A two-layer perceptron ``relu(x W1 + b1) W2 + b2`` on ``(C, *spatial)`` items, and the ways a
    hostile model misbehaves: ``poison`` gives NaN logits wherever the first input value is 0 (a mask
    hides it), ``flat`` returns the logits flattened to ``(N K,)``."""

    item_shape: tuple
    seed: int = 0
    poison: bool = False
    flat: bool = False

    def arrays(self):
        rng = np.random.default_rng(self.seed)
        size = int(np.prod(self.item_shape))
        return (rng.normal(0, 1 / np.sqrt(size), (size, HIDDEN)).astype(np.float32),
                rng.normal(0, 0.1, HIDDEN).astype(np.float32),
                rng.normal(0, 10 / np.sqrt(HIDDEN), (HIDDEN, CLASSES)).astype(np.float32),
                rng.normal(0, 1, CLASSES).astype(np.float32))


def numpy_model(weights: Weights, dtype=np.float32):
    """The perceptron as a numpy callable (float64 for the reference)."""
    w1, b1, w2, b2 = (a.astype(dtype) for a in weights.arrays())

    def model(x):
        flat = np.asarray(x, dtype).reshape(len(x), -1)
        out = np.maximum(flat @ w1 + b1, 0) @ w2 + b2
        if weights.poison:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = out + np.log(flat[:, :1]) * 0  # log(0) * 0 = NaN; 0 elsewhere
        return out.reshape(-1) if weights.flat else out

    return model


def torch_module(weights: Weights):
    torch = pytest.importorskip("torch")

    class Perceptron(torch.nn.Module):
        def __init__(self):
            super().__init__()
            w1, b1, w2, b2 = (torch.from_numpy(a) for a in weights.arrays())
            self.fc1, self.fc2 = torch.nn.Linear(*w1.shape), torch.nn.Linear(*w2.shape)
            with torch.no_grad():
                self.fc1.weight.copy_(w1.T)
                self.fc1.bias.copy_(b1)
                self.fc2.weight.copy_(w2.T)
                self.fc2.bias.copy_(b2)

        def forward(self, x):
            flat = x.flatten(1)
            out = self.fc2(torch.relu(self.fc1(flat)))
            if weights.poison:
                out = out + torch.log(flat[:, :1]) * 0
            return out.reshape(-1) if weights.flat else out

    return Perceptron().eval()


def export_onnx(module, item_shape, path, fixed_batch: int | None = None):
    """``module`` as an ``.onnx`` file (the TorchScript exporter), with a free batch dimension unless
    ``fixed_batch``."""
    import warnings

    import torch
    example = torch.zeros((fixed_batch or 2,) + tuple(item_shape))
    dynamic = None if fixed_batch else {"x": {0: "N"}, "logits": {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes=dynamic)
    return path


class Harness:
    """Makes one backend and runs the perceptron on it."""

    def __init__(self, name: str, tmp_dir):
        self.name, self.tmp_dir, self._models = name, tmp_dir, {}
        if name == "torch":
            pytest.importorskip("torch")
        if name == "onnx":
            pytest.importorskip("onnxruntime")
            pytest.importorskip("torch", reason="the onnx models are exported from torch")

    def backend(self, **options):
        if self.name == "torch":
            from certmask_backends.pytorch import TorchBackend
            return TorchBackend(device="cpu", **options)
        if self.name == "onnx":
            from certmask_backends.onnx import OnnxBackend
            return OnnxBackend(device="cpu", **options)
        return NumpyBackend(**options)

    def model(self, weights: Weights, backend=None):
        if weights not in self._models:
            if self.name == "numpy":
                self._models[weights] = numpy_model(weights)
            elif self.name == "torch":
                self._models[weights] = torch_module(weights)
            else:
                path = self.tmp_dir / f"model-{len(self._models)}.onnx"
                export_onnx(torch_module(weights), weights.item_shape, path)
                self._models[weights] = (backend or self.backend()).load_model(str(path))
        return self._models[weights]


@pytest.fixture(scope="module", params=BACKENDS)
def harness(request, tmp_path_factory):
    return Harness(request.param, tmp_path_factory.mktemp(f"models-{request.param}"))


def normalised(message: str, backend) -> str:
    """A message with the backend's own names taken out: dtypes as numpy names them (``torch.int64``
    -> ``int64``) and the backend's class as ``Backend``."""
    return re.sub(r"\btorch\.(?=[a-z]+\d*\b)", "", message).replace(type(backend).__name__, "Backend")


# ------------------------------------------------------------------------------ the cases
def case_1d():
    ms = make_maskset(PatchThreat((12,), (3,)), 2, "replicated", masks_per_axis=3)
    return Weights((2, 12), seed=1), ms, {"fill": 0.5}


def case_2d():
    ms = make_maskset(PatchThreat((8, 8), (2, 2)), 1, "patchcleanser", masks_per_axis=3)
    return Weights((3, 8, 8), seed=2), ms, {"fill": (0.1, 0.6, 0.9)}


def case_3d():
    ms = make_maskset(PatchThreat((4, 6, 6), (2, 2, 2)), 1, "patchcleanser", masks_per_axis=2)
    return Weights((1, 4, 6, 6), seed=3), ms, {"fill": 0.0}


def case_groups():
    weights, ms, options = case_2d()
    return weights, combination_groups(ms, 2), options


CASES = {"1d": case_1d, "2d": case_2d, "3d": case_3d, "groups": case_groups}


def images_for(weights: Weights, count: int, seed: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).random((count,) + weights.item_shape).astype(np.float32)


def reference_logits(weights: Weights, images, maskset, fill) -> np.ndarray:
    """``(B, n, K)`` float64 logits of every image under every mask: ``np.where`` over ``dense()``."""
    hidden = maskset.dense()  # the core's rasterisation, not the backends'
    fill = np.asarray(fill, np.float64).reshape((-1,) + (1,) * maskset.ndim)
    masked = np.where(hidden[None, :, None], fill, images[:, None].astype(np.float64))
    logits = numpy_model(weights, np.float64)(masked.reshape((-1,) + images.shape[1:]))
    return logits.reshape(len(images), len(hidden), -1)


def reference_pairs(weights: Weights, images, maskset, fill, image_indices, pairs) -> np.ndarray:
    hidden = maskset.dense()
    union = hidden[pairs[:, 0]] | hidden[pairs[:, 1]]
    fill = np.asarray(fill, np.float64).reshape((-1,) + (1,) * maskset.ndim)
    masked = np.where(union[:, None], fill, images[image_indices].astype(np.float64))
    return numpy_model(weights, np.float64)(masked)


def assert_labels_match(labels, reference_logits_):
    """Equal argmax wherever the reference's top-2 margin clears float32 noise (nearly everywhere)."""
    top2 = np.sort(reference_logits_, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], reference_logits_.argmax(-1)[clear])


# ------------------------------------------------------------------------------ predictions
@pytest.mark.parametrize("case", list(CASES))
def test_predictions_equal_the_numpy_reference(harness, case):
    weights, ms, options = CASES[case]()
    backend = harness.backend(batch_size=7, **options)  # 7: chunks cut through images and pairs
    model = harness.model(weights, backend)
    images = images_for(weights, 5)
    expected = reference_logits(weights, images, ms, options["fill"])

    logits = backend.masked_predictions(model, images, ms, return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    labels = backend.masked_predictions(model, images, ms)
    assert labels.dtype == np.int64 and labels.shape == expected.shape[:2]
    assert_labels_match(labels, expected)

    plain = numpy_model(weights, np.float64)(images)
    np.testing.assert_allclose(backend.predict(model, images, return_logits=True), plain,
                               rtol=1e-5, atol=1e-5)
    assert_labels_match(backend.predict(model, images), plain)

    rng = np.random.default_rng(len(ms))
    pairs = rng.integers(0, len(ms), (11, 2))
    image_indices = rng.integers(0, len(images), 11)
    predictor = backend.pair_predictor(model, images, ms)
    expected_pairs = reference_pairs(weights, images, ms, options["fill"], image_indices, pairs)
    np.testing.assert_allclose(predictor.many(image_indices, pairs, return_logits=True), expected_pairs,
                               rtol=1e-5, atol=1e-5)
    assert_labels_match(predictor.many(image_indices, pairs), expected_pairs)
    one = reference_pairs(weights, images, ms, options["fill"], np.full(len(pairs), 3), pairs)
    np.testing.assert_allclose(predictor(3, pairs, return_logits=True), one, rtol=1e-5, atol=1e-5)
    assert_labels_match(predictor(3, pairs), one)
    # an image under one mask "paired" with itself is that mask alone
    same = np.stack([np.arange(len(ms))] * 2, 1)
    np.testing.assert_allclose(predictor(1, same, return_logits=True), expected[1], rtol=1e-5, atol=1e-5)
    assert backend.effective_batch(model, images) >= 1


def test_normalized_models_see_normalised_pixels(harness):
    weights, ms, _ = case_2d()
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.5, 2.0]
    backend = harness.backend(batch_size=16, fill=0.2)
    model = backend.normalized(harness.model(weights, backend), mean, std)
    images = images_for(weights, 3)
    shift = np.reshape(mean, (1, 1, 3, 1, 1)), np.reshape(std, (1, 1, 3, 1, 1))
    hidden = ms.dense()[None, :, None]
    masked = (np.where(hidden, 0.2, images[:, None].astype(np.float64)) - shift[0]) / shift[1]
    expected = numpy_model(weights, np.float64)(masked.reshape((-1, 3, 8, 8))).reshape(3, len(ms), -1)
    np.testing.assert_allclose(backend.masked_predictions(model, images, ms, return_logits=True), expected,
                               rtol=1e-5, atol=1e-5)


def test_nan_logits_are_no_vote(harness):
    weights, ms, _ = case_2d()
    poisoned = replace(weights, poison=True)
    backend = harness.backend(batch_size=8, fill=0.0)
    model = harness.model(poisoned, backend)
    images = images_for(weights, 4) * 0.5 + 0.25  # no pixel is 0 until a mask hides it
    logits = backend.masked_predictions(model, images, ms, return_logits=True)
    labels = backend.masked_predictions(model, images, ms)
    hides_first = ms.dense()[:, 0, 0]  # masks hiding the first pixel (fill 0) poison the logits
    assert hides_first.any() and not hides_first.all()
    assert np.isnan(logits[:, hides_first]).all()
    assert (labels[:, hides_first] == NO_VOTE).all()
    expected = reference_logits(weights, images, ms, 0.0)
    assert_labels_match(labels[:, ~hides_first], expected[:, ~hides_first])
    pairs = np.array([[int(np.argmax(hides_first)), int(np.argmin(hides_first))]])
    assert backend.pair_predictor(model, images, ms)(0, pairs).tolist() == [NO_VOTE]


# ------------------------------------------------------------------------------ hostile inputs
N_MASKS = 9  # case_2d: 3 x 3 masks

HOSTILE = {
    "nan and inf": (lambda x: _poke(x, nan=(0, 0, 0, 0), inf=(1, 2, 3, 4)), "masked",
                    "images must be finite, found 1 NaN and 1 inf pixels; the finite pixels lie in "
                    "[0.25, 0.25] (no option skips this check)"),
    "all nan": (lambda x: np.full_like(x, np.nan), "masked",
                "images must be finite, found 384 NaN and 0 inf pixels (no option skips this check)"),
    "integers": (lambda x: np.zeros(x.shape, np.int64), "masked",
                 "images must be floating point in [0, 1], got dtype int64"),
    "booleans": (lambda x: np.zeros(x.shape, bool), "predict",
                 "images must be floating point in [0, 1], got dtype bool"),
    "strings": (lambda x: [["a"]], "predict",
                "images must be a numeric array or tensor, got list of dtype <U1"),
    "wrong rank": (lambda x: x[:, 0], "masked", "images must have shape (B, C, H, W), got (2, 8, 8)"),
    "rank 6": (lambda x: x[..., None, None], "predict",
               "images must have shape (B, C, H, W), got (2, 3, 8, 8, 1, 1)"),
    "wrong size": (lambda x: np.full((2, 3, 8, 9), 0.25, np.float32), "masked",
                   "images of shape (B, C, H, W) = (2, 3, 8, 9) have (H, W) = (8, 9) but the mask set is "
                   "for (H, W) = (8, 8)"),
    "channels last": (lambda x: x.transpose(0, 2, 3, 1), "pairs",
                      "images of shape (2, 8, 8, 3) look channels-last (B, H, W, C) for the mask set's "
                      "(H, W) = (8, 8); pass images.transpose(0, 3, 1, 2) (torch: "
                      "images.permute(0, 3, 1, 2)) for (B, C, H, W)"),
    "out of range": (lambda x: _poke(x, value=1.5), "masked",
                     "images must lie in [0.0, 1.0] (pixel space), found [0.25, 1.5]: scale the images to "
                     "[0.0, 1.0], or pass --mean/--std so the model normalises inside; in Python, "
                     "Backend(value_range=None) skips this check"),
    "out of range, predict": (lambda x: x - 1, "predict",
                              "images must lie in [0.0, 1.0] (pixel space), found [-0.75, -0.75]: scale the "
                              "images to [0.0, 1.0], or pass --mean/--std so the model normalises inside; "
                              "in Python, Backend(value_range=None) skips this check"),
}


def _poke(x, nan=None, inf=None, value=None):
    x = x.copy()
    if nan is not None:
        x[nan] = np.nan
    if inf is not None:
        x[inf] = np.inf
    if value is not None:
        x[1, 2, 3, 4] = value
    return x


def _message(call) -> str:
    with pytest.raises(CertMaskError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_images_are_refused_with_the_same_message(harness, what):
    make, method, expected = HOSTILE[what]
    weights, ms, _ = case_2d()
    backend = harness.backend(batch_size=8)
    model = harness.model(weights, backend)
    bad = make(np.full((2,) + weights.item_shape, 0.25, np.float32))
    call = {"masked": lambda: backend.masked_predictions(model, bad, ms),
            "predict": lambda: backend.predict(model, bad),
            "pairs": lambda: backend.pair_predictor(model, bad, ms)}[method]
    assert normalised(_message(call), backend) == expected


NOT_PAIRS = "pairs must be an integer array of shape (m, 2), got shape"
BAD_PAIRS = {
    "floats": ([[0.0, 1.0]], f"{NOT_PAIRS} (1, 2), dtype float64"),
    "booleans": ([[True, False]], f"{NOT_PAIRS} (1, 2), dtype bool"),
    "one axis": ([0, 1, 2], f"{NOT_PAIRS} (3,), dtype int64"),
    "three columns": ([[0, 1, 2]], f"{NOT_PAIRS} (1, 3), dtype int64"),
    "too large": ([[0, N_MASKS]], f"pair indices must lie in [0, {N_MASKS}), got [0, {N_MASKS}]"),
    "negative": ([[-1, 0]], f"pair indices must lie in [0, {N_MASKS}), got [-1, 0]"),
    "text": ([["a", "b"]], "pairs must be a numeric array or tensor, got list of dtype <U1"),
}


@pytest.mark.parametrize("what", list(BAD_PAIRS))
@pytest.mark.parametrize("method", ["call", "many"])
def test_bad_pairs_are_refused_with_the_same_message(harness, what, method):
    pairs, expected = BAD_PAIRS[what]
    weights, ms, _ = case_2d()
    backend = harness.backend(batch_size=8)
    predictor = backend.pair_predictor(harness.model(weights, backend), images_for(weights, 2), ms)
    call = (lambda: predictor(0, pairs)) if method == "call" else (lambda: predictor.many([0] * 3, pairs))
    assert normalised(_message(call), backend) == expected


NOT_TWO_INDICES = "image_indices must be 2 integers, one per pair, got shape"
BAD_INDICES = {
    "past the end": ("call", 2, "pair_predictor: image index must be an integer in [0, 2), got 2"),
    "negative": ("call", -1, "pair_predictor: image index must be an integer in [0, 2), got -1"),
    "a bool": ("call", True, "pair_predictor: image index must be an integer in [0, 2), got True"),
    "a float": ("call", 1.0, "pair_predictor: image index must be an integer in [0, 2), got 1.0"),
    "too few": ("many", [0], f"{NOT_TWO_INDICES} (1,) dtype int64"),
    "floats": ("many", [0.0, 1.0], f"{NOT_TWO_INDICES} (2,) dtype float64"),
    "2-D": ("many", [[0, 1]], f"{NOT_TWO_INDICES} (1, 2) dtype int64"),
    "out of range": ("many", [0, 2], "pair_predictor: image indices must lie in [0, 2), got [0, 2]"),
}


@pytest.mark.parametrize("what", list(BAD_INDICES))
def test_bad_image_indices_are_refused_with_the_same_message(harness, what):
    method, index, expected = BAD_INDICES[what]
    weights, ms, _ = case_2d()
    backend = harness.backend(batch_size=8)
    predictor = backend.pair_predictor(harness.model(weights, backend), images_for(weights, 2), ms)
    pairs = np.array([[0, 1], [1, 2]])
    call = (lambda: predictor(index, pairs)) if method == "call" else (lambda: predictor.many(index, pairs))
    assert normalised(_message(call), backend) == expected


BAD_OPTIONS = {
    "batch size 0": ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    "batch size 2.5": ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
    "reversed range": ({"value_range": (1, 0)},
                       "value_range must be None or two finite numbers (lo, hi) with lo < hi, got (1, 0)"),
    "text range": ({"value_range": "01"},
                   "value_range must be None or two finite numbers (lo, hi) with lo < hi, got '01'"),
    "nan fill": ({"fill": float("nan")}, "fill must be one or more finite numbers, got nan"),
    "empty fill": ({"fill": []}, "fill must be one or more finite numbers, got []"),
    "fill out of range": ({"fill": 2.0}, "fill 2.0 lies outside the pixel range [0.0, 1.0] the images must "
                                         "lie in; use a fill in [0.0, 1.0]"),
    "normalized fill out of range": (
        {"fill": -3, "fill_space": "normalized", "mean": [0.5], "std": [0.25]},
        "fill -3 ([-0.25] in pixel space) lies outside the pixel range [0.0, 1.0] the images must lie in; "
        "use a fill in [0.0, 1.0]"),
    "fill space": ({"fill_space": "model"}, "fill_space must be 'pixel' or 'normalized', got 'model'"),
    "normalized without mean": ({"fill_space": "normalized"}, "fill_space='normalized' needs mean and std"),
}


@pytest.mark.parametrize("what", list(BAD_OPTIONS))
def test_bad_options_are_refused_with_the_same_message(harness, what):
    options, expected = BAD_OPTIONS[what]
    assert _message(lambda: harness.backend(**options)) == expected


def test_options_every_backend_takes(harness):
    weights, ms, _ = case_2d()
    images = _poke(np.full((2,) + weights.item_shape, 0.25, np.float32), value=7.0)
    backend = harness.backend(batch_size=8, value_range=None, fill=(0.0, 0.5, 1.0))
    model = harness.model(weights, backend)
    np.testing.assert_allclose(backend.masked_predictions(model, images, ms, return_logits=True),
                               reference_logits(weights, images, ms, (0.0, 0.5, 1.0)), rtol=1e-5, atol=1e-5)
    wide = harness.backend(batch_size=8, value_range=(0, 255), fill=128.0)
    assert wide.masked_predictions(model, images * 10, ms).shape == (2, len(ms))
    # fill in normalised units: 0 is the mean, in pixel space
    centred = harness.backend(fill=0.0, fill_space="normalized", mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    clean = images_for(weights, 2)
    np.testing.assert_allclose(centred.masked_predictions(model, clean, ms, return_logits=True),
                               reference_logits(weights, clean, ms, (0.5, 0.4, 0.3)), rtol=1e-5, atol=1e-5)
    assert 0 <= backend.margin_tolerance < 1


def test_a_fill_per_channel_must_match_the_channels(harness):
    weights, ms, _ = case_2d()
    backend = harness.backend(fill=(0.0, 0.5))
    model = harness.model(weights, backend)
    assert (_message(lambda: backend.masked_predictions(model, images_for(weights, 2), ms))
            == "fill has 2 values but images have 3 channels")


def test_a_mask_set_must_be_one(harness):
    weights, _, _ = case_2d()
    backend = harness.backend()
    model = harness.model(weights, backend)
    assert (_message(lambda: backend.masked_predictions(model, images_for(weights, 2), "masks"))
            == "expected a MaskSet or MaskGroups, got str")


# ------------------------------------------------------------------------------ hostile models
def test_a_model_returning_the_wrong_shape_is_named(harness):
    weights, ms, _ = case_2d()
    backend = harness.backend(batch_size=64)
    model = harness.model(replace(weights, flat=True), backend)
    images = images_for(weights, 2)
    assert (normalised(_message(lambda: backend.predict(model, images)), backend)
            == "model must return (batch, classes) logits with classes >= 1, got shape (10,) for input of "
               "shape (2, 3, 8, 8)")
    assert (normalised(_message(lambda: backend.masked_predictions(model, images, ms)), backend)
            == "model must return (batch, classes) logits with classes >= 1, got shape (90,) for input of "
               "shape (18, 3, 8, 8)")


def _python_model(harness, forward):
    """A model running arbitrary Python (torch and numpy only: an ONNX graph runs no Python)."""
    if harness.name == "onnx":
        pytest.skip("an ONNX graph runs no Python")
    if harness.name == "numpy":
        return forward
    import torch

    class Module(torch.nn.Module):
        def forward(self, x):
            out = forward(x.numpy())
            return torch.from_numpy(np.asarray(out)) if isinstance(out, np.ndarray) else out

    return Module()


def test_a_model_returning_no_array_is_named(harness):
    weights, _, _ = case_2d()
    backend = harness.backend()
    model = _python_model(harness, lambda x: None)
    assert (normalised(_message(lambda: backend.predict(model, images_for(weights, 2))), backend)
            == "model must return (batch, classes) logits, got a NoneType for input of shape (2, 3, 8, 8)")


def test_a_failing_model_is_named(harness):
    weights, _, _ = case_2d()
    backend = harness.backend()

    def forward(x):
        raise ValueError("boom")

    model = _python_model(harness, forward)
    assert (normalised(_message(lambda: backend.predict(model, images_for(weights, 2))), backend)
            == "the model failed on input of shape (2, 3, 8, 8), dtype float32: boom")


def test_a_model_changing_its_class_count_is_named(harness):
    weights, _, _ = case_2d()
    backend = harness.backend(batch_size=3)
    model = _python_model(harness, lambda x: np.zeros((len(x), 2 if len(x) == 3 else 3), np.float32))
    assert (_message(lambda: backend.predict(model, images_for(weights, 4)))
            == "model returned 2 classes for one batch and 3 for another")


# ------------------------------------------------------------------------------ empty batches
def test_empty_batches(harness):
    weights, ms, _ = case_2d()
    backend = harness.backend()
    model = harness.model(weights, backend)
    empty = np.zeros((0,) + weights.item_shape, np.float32)
    shapes = {
        "predict": (backend.predict(model, empty), backend.predict(model, empty, return_logits=True)),
        "masked": (backend.masked_predictions(model, empty, ms),
                   backend.masked_predictions(model, empty, ms, return_logits=True)),
    }
    assert [(a.shape, a.dtype, b.shape, b.dtype) for a, b in shapes.values()] == [
        ((0,), np.int64, (0, 0), np.float32), ((0, N_MASKS), np.int64, (0, N_MASKS, 0), np.float32)]
    predictor = backend.pair_predictor(model, images_for(weights, 2), ms)
    no_pairs = np.zeros((0, 2), np.int64)
    no_images = np.zeros(0, np.int64)
    for answer in (predictor(1, no_pairs), predictor.many(no_images, no_pairs)):
        assert answer.shape == (0,) and answer.dtype == np.int64
    for answer in (predictor(1, no_pairs, return_logits=True),
                   predictor.many(no_images, no_pairs, return_logits=True)):
        assert answer.shape == (0, 0) and answer.dtype == np.float32
    assert backend.pair_predictor(model, empty, ms).many(no_images, []).shape == (0,)
    assert (_message(lambda: backend.pair_predictor(model, empty, ms)(0, [[0, 1]]))
            == "pair_predictor: image index must be an integer in [0, 0), got 0")


# ------------------------------------------------------------------------------ the run layer
@pytest.fixture(scope="module")
def numpy_run():
    """The numpy backend's run_certification of the 2-D case: the results every backend must give."""
    return _certify(Harness("numpy", None))


def _certify(harness):
    weights, _, _ = case_2d()
    backend = harness.backend(batch_size=32, fill=(0.1, 0.6, 0.9))
    model = harness.model(weights, backend)
    images = images_for(weights, 12, seed=4)
    # labels: the model's own clean predictions, so that every mode has images to certify
    labels = numpy_model(weights, np.float64)(images).argmax(1)
    labels[:2] = (labels[:2] + 1) % CLASSES
    config = RunConfig(patch=(2, 2), ks=(1, 2), strategies=("replicated",), modes=MODES, masks_per_axis=3,
                       image_batch=5, margin_tolerance=1e-3)
    return run_certification(backend, model, images, labels, config, show_progress=False,
                             num_classes=CLASSES)


RUN_KEY = ("strategy", "k", "mode")


def test_run_certification_gives_the_same_per_image_results(harness, numpy_run):
    results = _certify(harness)
    assert len(results["runs"]) == len(numpy_run["runs"]) == 2 * len(MODES)
    assert results["undefended_accuracy"] == numpy_run["undefended_accuracy"]
    for run, expected in zip(results["runs"], numpy_run["runs"]):
        assert [run[key] for key in RUN_KEY] == [expected[key] for key in RUN_KEY]
        got, want = run["per_image"], expected["per_image"]
        assert got["output"] == want["output"] and got["certified"] == want["certified"], run["mode"]
        assert got.get("claim_holds") == want.get("claim_holds")
        margins = [(a is None, b is None) for a, b in zip(got["min_margin"], want["min_margin"])]
        assert all(a == b for a, b in margins)
        np.testing.assert_allclose([m for m in got["min_margin"] if m is not None],
                                   [m for m in want["min_margin"] if m is not None], rtol=1e-4, atol=1e-4)
    # certificates were actually given, and withheld
    certified = [sum(run["per_image"]["certified"]) for run in numpy_run["runs"]]
    assert max(certified) > 0 and min(certified) < 12


def test_mask_groups_family_is_accepted(harness):
    """A MaskGroups of one-mask groups predicts exactly what its base set does."""
    weights, ms, _ = case_2d()
    backend = harness.backend(batch_size=16)
    model = harness.model(weights, backend)
    images = images_for(weights, 2)
    singles = MaskGroups(ms, np.arange(len(ms))[:, None])
    np.testing.assert_array_equal(backend.masked_predictions(model, images, singles, return_logits=True),
                                  backend.masked_predictions(model, images, ms, return_logits=True))


def test_the_documented_example_backend_certifies_as_the_numpy_backend():
    """docs/backends.md's 30-line backend: the same run through it and through NumpyBackend."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "channels_last_backend.py"
    spec = importlib.util.spec_from_file_location("channels_last_backend", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(3)
    images = rng.random((12, 3, 8, 8)).astype(np.float32)
    weights = rng.normal(size=(3 * 8 * 8, 5)) * 0.1
    weights[:, 0] += 0.05  # class 0 leads by a margin: some images certify
    labels = (np.moveaxis(images, 1, -1).reshape(12, -1) @ weights).argmax(1)
    config = RunConfig((2, 2), (1, 2), ("replicated",), ("detection", "recovery"), masks_per_axis=2)
    ours = run_certification(example.ChannelsLastBackend(), weights, images, labels, config)
    plain = run_certification(NumpyBackend(), lambda x: np.moveaxis(x, 1, -1).reshape(len(x), -1) @ weights,
                              images, labels, config)
    assert [r["per_image"] for r in ours["runs"]] == [r["per_image"] for r in plain["runs"]]
    assert any(any(r["per_image"]["certified"]) for r in ours["runs"])
