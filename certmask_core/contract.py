"""The backend contract: what the run layer asks of a backend, and the rules every backend keeps.

A backend runs a user's classifier under masks. The core decides (certificates, defences) from the
predictions a backend returns; the run layer (:mod:`certmask_core.run`) uses a backend only through
the members of :class:`Backend`. A new backend is done when it passes the conformance suite
(``tests/test_backend_conformance.py``), parametrised over every installed backend.

Rules every backend keeps
-------------------------
* **Inputs.** Images are floating point, ``(B, C, *spatial)`` with one spatial axis per axis of the
  mask set (``(B, C, L)`` signals, ``(B, C, H, W)`` images, ``(B, C, T, H, W)`` clips), in pixel
  space: every pixel finite and inside ``value_range`` (``[0, 1]`` by default). Anything else is a
  :class:`~certmask_core.errors.CertMaskError` naming the shape, dtype or values (the messages of
  :func:`check_images`).
* **Masking.** Mask ``i`` hides the pixels of its box on every channel: they take the ``fill`` (one
  value, or one per channel, in pixel space), every other pixel keeps its value, exactly
  (``np.where(hidden, fill, image)``). A pair hides the union of its two masks.
* **Inference.** Deterministic and in inference mode (no dropout, no batch statistics, nothing
  learnt): a prediction must not depend on which other inputs share its batch beyond floating-point
  noise below :attr:`Backend.margin_tolerance`.
* **Outputs.** Logits are returned as the model gave them, float32, shape ``(..., K)``; labels are
  int64, the argmax, and :data:`~certmask_core.certification.NO_VOTE` where the logits are not all
  finite. An empty batch gives labels ``(0,)`` / ``(0, n)`` and logits ``(0, 0)`` / ``(0, n, 0)``.
  A model that returns anything but ``(batch, K)`` logits with ``K >= 1`` is a CertMaskError.
"""
from __future__ import annotations

import importlib
import math
import operator
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np


class PairPredictor(Protocol):
    """Two-mask predictions of a batch of images (what :meth:`Backend.pair_predictor` returns).

    ``predictor(image_index, pairs)`` answers one image: ``pairs`` is ``(m, 2)`` mask indices, the
    answer ``(m,)`` labels or ``(m, K)`` logits. ``predictor.many(image_indices, pairs)`` answers
    row ``t`` for image ``image_indices[t]`` under the union of masks ``pairs[t]``, all rows in
    shared full batches; the core asks through it.
    """

    def __call__(self, image_index: int, pairs) -> np.ndarray: ...

    many: Callable[..., np.ndarray]


@runtime_checkable
class Backend(Protocol):
    """What the run layer (``certify``, ``tune``, the command line) needs of a backend.

    Attributes
    ----------
    name : str
        The backend's name in :func:`certmask_core.get_backend` (``"torch"``, ``"numpy"``, ...).
    batch_size : int
        Most inputs per forward pass.
    margin_tolerance : float
        The top-1 minus top-2 logit margin at or below which this backend's predictions are not
        reproducible enough to certify (floating-point noise of the device and precision).
    """

    name: str
    batch_size: int

    @property
    def margin_tolerance(self) -> float: ...

    # --- models
    def load_model(self, spec: str, weights=None, *, trust_code: bool = False):
        """The model of ``spec`` (a file, a bundled name, ``package.module:factory``), ready to run.
        Loading a file must never run code stored in it unless ``trust_code``."""

    def input_channels(self, model) -> int | None:
        """Channels the model takes, when it can tell (else None)."""

    def normalized(self, model, mean, std):
        """``model`` behind pixel-space input: ``model((x - mean) / std)``, per channel."""

    def model_fingerprint(self, model) -> str | None:
        """sha256 of the model's weights, when it can tell (decides whether ``--resume`` may go on)."""

    def versions(self) -> dict:
        """Versions that decide the backend's numbers (for run records)."""

    # --- predictions
    def effective_batch(self, model, images) -> int:
        """Inputs per forward pass for ``model`` on inputs like ``images`` (at most ``batch_size``)."""

    def predict(self, model, images, return_logits: bool = False) -> np.ndarray:
        """Plain predictions of ``(B, C, *spatial)`` images: ``(B,)`` labels or ``(B, K)`` logits."""

    def masked_predictions(self, model, images, maskset, return_logits: bool = False) -> np.ndarray:
        """One-mask predictions: ``(B, n)`` labels or ``(B, n, K)`` logits for the ``n`` masks (or
        groups) of ``maskset``."""

    def pair_predictor(self, model, images, maskset, return_logits: bool = False) -> PairPredictor:
        """Two-mask predictions of ``images`` under unions of pairs of ``maskset``'s members."""


# ------------------------------------------------------------------------------------------------------
# Shared checks: the input validation and the messages every backend gives.
#
# Framework-free (numpy only). Each check comes in two forms where a framework would rather compute the
# figures itself (on its device, in its own dtype): ``check_*`` takes precomputed shapes, dtypes and
# counts and raises the CertMaskError, and a numpy form (``check_images``, ``checked_pairs``, ...) that
# computes those figures from an array and calls it. Dtypes are named as ``str(dtype)`` gives them
# (``int64`` for numpy, ``torch.int64`` for torch): the messages are otherwise the same text.
# ------------------------------------------------------------------------------------------------------

from .errors import CertMaskError  # noqa: E402
from .geometry import MaskSet  # noqa: E402
from .multipatch import MaskGroups  # noqa: E402
from .predictions import NO_VOTE  # noqa: E402 (below the Protocol, which needs none of this)
from .validation import positive_int  # noqa: E402


def spatial_names(ndim: int) -> str:
    """The names of ``ndim`` spatial axes: ``"L"``, ``"H, W"``, ``"T, H, W"``."""
    return {1: "L", 2: "H, W", 3: "T, H, W"}.get(ndim, f"{ndim} spatial axes")


def spatial_axes(ndim: int) -> str:
    """The spatial axes as a tuple's text: ``"(L,)"``, ``"(H, W)"``, ``"(T, H, W)"``."""
    return f"({spatial_names(ndim)},)" if ndim == 1 else f"({spatial_names(ndim)})"


def image_layout(ndim: int, channels_last: bool = False) -> str:
    """The batch layout: ``"(B, C, H, W)"`` (or ``"(B, H, W, C)"`` channels-last) for ``ndim = 2``."""
    return f"(B, {spatial_names(ndim)}, C)" if channels_last else f"(B, C, {spatial_names(ndim)})"


# ----------------------------------------------------------------- options
def checked_batch_size(batch_size) -> int:
    """``batch_size`` when it is an integer >= 1, else CertMaskError."""
    return positive_int("batch_size", batch_size, whole_range=True)


def checked_margin_tolerance(tolerance) -> float:
    """``tolerance`` as a float when it is a finite number >= 0, else CertMaskError."""
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating))
            or not 0 <= tolerance < math.inf):
        raise CertMaskError(f"margin_tolerance must be a finite number >= 0, got {tolerance!r}")
    return float(tolerance)


def checked_value_range(value_range) -> tuple[float, float] | None:
    """``value_range`` as ``(lo, hi)`` floats (or None), else CertMaskError."""
    if value_range is None:
        return None
    try:
        if isinstance(value_range, (str, bytes)):
            raise TypeError
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CertMaskError(f"value_range must be None or two finite numbers (lo, hi) with lo < hi, "
                            f"got {value_range!r}")
    return lo, hi


def check_fill_space(fill_space: str, mean, std) -> None:
    """CertMaskError unless ``fill_space`` is ``"pixel"`` or ``"normalized"`` (with mean and std)."""
    if fill_space not in ("pixel", "normalized"):
        raise CertMaskError(f"fill_space must be 'pixel' or 'normalized', got {fill_space!r}")
    if fill_space == "normalized" and (mean is None or std is None):
        raise CertMaskError("fill_space='normalized' needs mean and std")


def check_fill_values(fill, pixels: np.ndarray, fill_space: str, value_range) -> None:
    """CertMaskError unless the fill's pixel values are finite and inside ``value_range``.

    Parameters
    ----------
    fill
        The fill as the user gave it (for the message).
    pixels : ndarray, shape (c,), float32
        Its pixel-space values, one or one per channel.
    fill_space : {"pixel", "normalized"}
    value_range : (float, float) or None
        As :func:`checked_value_range` returns it.
    """
    if pixels.size == 0 or not np.isfinite(pixels).all():
        raise CertMaskError(f"fill must be one or more finite numbers, got {fill!r}")
    where = f"{pixels.tolist()} in pixel space" if fill_space == "normalized" else None
    if value_range is not None:
        lo, hi = value_range
        if float(pixels.min()) < lo or float(pixels.max()) > hi:
            raise CertMaskError(f"fill {fill!r}{f' ({where})' if where else ''} lies outside the pixel "
                                f"range [{lo}, {hi}] the images must lie in; use a fill in [{lo}, {hi}]")


def checked_fill(fill, fill_space: str = "pixel", mean=None, std=None,
                 value_range: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """The fill as float32 pixel values, shape ``(c,)`` with ``c`` 1 or one per channel.

    ``fill_space="normalized"`` maps ``fill`` back to pixel space (``mean + std * fill``). The values
    must be finite and inside ``value_range`` (see :func:`check_fill_values`); call
    :func:`check_fill_space` first.
    """
    try:
        if fill is None or isinstance(fill, (str, bytes)):  # numpy would read None as NaN, "0.5" as 0.5
            raise TypeError(f"a {type(fill).__name__} is not a number")
        values = np.asarray(fill, dtype=np.float32).reshape(-1)
        pixels = values
        if fill_space == "normalized":
            pixels = (np.asarray(mean, dtype=np.float32).reshape(-1)
                      + np.asarray(std, dtype=np.float32).reshape(-1) * values)
    except (TypeError, ValueError) as err:
        raise CertMaskError(f"fill must be a number or one number per channel (with mean and std of "
                            f"matching length), got fill={fill!r}, mean={mean!r}, std={std!r}: "
                            f"{err}") from None
    check_fill_values(fill, pixels, fill_space, value_range)
    return pixels


def checked_normalization(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as float32 ``(c,)`` arrays: the same length, finite, ``std > 0``."""
    try:
        mean_a = np.asarray(mean, dtype=np.float32).reshape(-1)
        std_a = np.asarray(std, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        mean_a = std_a = np.zeros(0, np.float32)
    if (len(mean_a) != len(std_a) or len(mean_a) == 0 or not np.isfinite(mean_a).all()
            or not (std_a > 0).all()):
        raise CertMaskError(f"mean and std need the same length, finite values and std > 0, got "
                            f"mean={_listed(mean)}, std={_listed(std)}")
    return mean_a, std_a


def _listed(values):
    """``values`` as a list for a message (as given when a list or tuple; plain Python numbers)."""
    if isinstance(values, (list, tuple)):
        return list(values)
    try:
        return np.ravel(values).tolist()
    except (TypeError, ValueError):
        return values


# ----------------------------------------------------------------- arrays and mask sets
def numeric_array(value, what: str) -> np.ndarray:
    """``value`` as a numeric ndarray (booleans, integers, floats, complex), else CertMaskError."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as err:  # ragged nested lists; a tensor needing grad
        raise CertMaskError(f"{what} must be a numeric array or tensor, got {type(value).__name__}: "
                            f"{err}") from err
    if arr.dtype.kind not in "biufc":
        raise CertMaskError(f"{what} must be a numeric array or tensor, got {type(value).__name__} "
                            f"of dtype {arr.dtype}")
    return arr


def check_maskset(maskset):
    """``maskset`` when it is a MaskSet or MaskGroups, else CertMaskError."""
    if not isinstance(maskset, (MaskSet, MaskGroups)):
        raise CertMaskError(f"expected a MaskSet or MaskGroups, got {type(maskset).__name__}")
    return maskset


# ----------------------------------------------------------------- images
def check_image_rank(shape: tuple, maskset_ndim: int | None) -> None:
    """CertMaskError unless ``shape`` is ``(B, C, *spatial)`` with one spatial axis per mask-set axis
    (without a mask set: 1 to 3 spatial axes)."""
    axes = maskset_ndim if maskset_ndim is not None else 2
    if len(shape) != axes + 2 and not (maskset_ndim is None and 3 <= len(shape) <= 5):
        raise CertMaskError(f"images must have shape {image_layout(axes)}, got {tuple(shape)}")


def check_floating(is_floating: bool, dtype, value_range) -> None:
    """CertMaskError unless the images are floating point (``dtype`` names what they are)."""
    if not is_floating:
        where = f" in [{value_range[0]:g}, {value_range[1]:g}]" if value_range else ""
        raise CertMaskError(f"images must be floating point{where}, got dtype {dtype}")


def check_image_geometry(shape: tuple, image_size: tuple, fill_count: int) -> None:
    """CertMaskError unless ``shape[2:]`` is the mask set's ``image_size`` and the fill suits ``C``.

    Channels-last input, ``(B, *image_size, C)`` with 1, 3 or 4 channels, is recognised and named with
    the transpose that fixes it.
    """
    shape, size = tuple(shape), tuple(image_size)
    if shape[2:] != size:
        if shape[1:-1] == size and shape[-1] in (1, 3, 4):
            order = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
            raise CertMaskError(f"images of shape {shape} look channels-last {image_layout(len(size), True)} "
                                f"for the mask set's "
                                f"{spatial_axes(len(size))} = {size}; pass images.transpose{order} "
                                f"(torch: images.permute{order}) for {image_layout(len(size))}")
        raise CertMaskError(f"images of shape {image_layout(len(size))} = {shape} have "
                            f"{spatial_axes(len(size))} = {shape[2:]} but the mask set is for "
                            f"{spatial_axes(len(size))} = {size}")
    if fill_count not in (1, shape[1]):
        raise CertMaskError(f"fill has {fill_count} values but images have {shape[1]} channels")


def check_pixel_statistics(nan_count: int, inf_count: int, finite_min: float | None,
                           finite_max: float | None, value_range, backend_class: str) -> None:
    """CertMaskError unless every pixel is finite and inside ``value_range``.

    Parameters
    ----------
    nan_count, inf_count : int
        NaN pixels and infinite (+inf or -inf) pixels.
    finite_min, finite_max : float or None
        The extremes of the finite pixels (None when there are none).
    value_range : (float, float) or None
        None skips the range check; non-finite pixels are refused either way.
    backend_class : str
        The backend's class name, for the hint that skips the range check (``TorchBackend``).
    """
    if nan_count or inf_count:
        span = (f"; the finite pixels lie in [{float(finite_min)}, {float(finite_max)}]"
                if finite_min is not None else "")
        raise CertMaskError(f"images must be finite, found {nan_count} NaN and {inf_count} "
                            f"inf pixels{span} (no option skips this check)")
    if value_range is not None and finite_min is not None:
        lo, hi = float(finite_min), float(finite_max)
        want_lo, want_hi = value_range
        if lo < want_lo or hi > want_hi:
            raise CertMaskError(f"images must lie in [{want_lo}, {want_hi}] (pixel space), found "
                                f"[{lo}, {hi}]: scale the images to [{want_lo}, {want_hi}], or pass "
                                f"--mean/--std so the model normalises inside; in Python, "
                                f"{backend_class}(value_range=None) skips this check")


def check_images(images, maskset=None, *, fill_count: int = 1,
                 value_range: tuple[float, float] | None = (0.0, 1.0),
                 backend_class: str = "ArrayBackend") -> np.ndarray:
    """Validate a batch of images the way every backend does; return it as an ndarray (not cast).

    Parameters
    ----------
    images : array_like, shape (B, C, *spatial), floating point
        ``(B, C, L)``, ``(B, C, H, W)`` or ``(B, C, T, H, W)``: one spatial axis per axis of
        ``maskset`` (without a mask set, any of the three).
    maskset : MaskSet or MaskGroups, optional
        When given, ``images.shape[2:]`` must be its image size and ``fill_count`` must suit ``C``.
    fill_count : int
        Values of the backend's fill (1, or one per channel).
    value_range : (float, float) or None
    backend_class : str
        Named in the hint of an out-of-range message.

    Returns
    -------
    ndarray, shape (B, C, *spatial)
        The images, in their own floating-point dtype.

    Raises
    ------
    CertMaskError
        In this order: not numeric; the wrong number of axes; not floating point; the wrong spatial
        size (channels-last named) or a fill of the wrong length; NaN or inf pixels; pixels outside
        ``value_range``.
    """
    x = numeric_array(images, "images")
    ndim = check_maskset(maskset).ndim if maskset is not None else None
    check_image_rank(x.shape, ndim)
    check_floating(x.dtype.kind == "f", x.dtype, value_range)
    if maskset is not None:
        check_image_geometry(x.shape, maskset.image_size, fill_count)
    if x.size:
        finite = np.isfinite(x)
        if finite.all():
            check_pixel_statistics(0, 0, x.min(), x.max(), value_range, backend_class)
        else:
            nan = int(np.isnan(x).sum())
            seen = x[finite]
            check_pixel_statistics(nan, int(x.size - finite.sum()) - nan,
                                   seen.min() if seen.size else None, seen.max() if seen.size else None,
                                   value_range, backend_class)
    return x


# ----------------------------------------------------------------- pairs and image indices
def check_pairs_layout(shape: tuple, dtype, is_integer: bool) -> None:
    """CertMaskError unless non-empty pairs are an ``(m, 2)`` integer array (booleans refused)."""
    if len(shape) != 2 or shape[1] != 2 or not is_integer:
        raise CertMaskError(f"pairs must be an integer array of shape (m, 2), got shape "
                            f"{tuple(shape)}, dtype {dtype}")


def check_pair_range(lo: int, hi: int, count: int) -> None:
    """CertMaskError unless the smallest and largest pair index lie in ``[0, count)``."""
    if lo < 0 or hi >= count:
        raise CertMaskError(f"pair indices must lie in [0, {count}), got [{lo}, {hi}]")


def checked_pairs(pairs, count: int) -> np.ndarray:
    """``pairs`` as an ``(m, 2)`` int64 array of indices of the ``count`` masks (or groups) of a set.

    Empty pairs, of any shape, are ``(0, 2)``.
    """
    p = numeric_array(pairs, "pairs")
    if p.size == 0:
        return np.empty((0, 2), np.int64)
    check_pairs_layout(p.shape, p.dtype, p.dtype.kind in "iu")
    check_pair_range(int(p.min()), int(p.max()), count)
    return p.astype(np.int64, copy=False)


def checked_image_index(index, count: int) -> int:
    """``index`` as an int in ``[0, count)`` (booleans refused), else CertMaskError."""
    try:
        i = operator.index(index)
    except TypeError:
        i = None
    if i is None or isinstance(index, (bool, np.bool_)) or not 0 <= i < count:
        raise CertMaskError(f"pair_predictor: image index must be an integer in [0, {count}), got {index!r}")
    return i


def check_image_indices_layout(shape: tuple, dtype, is_integer: bool, pair_count: int) -> None:
    """CertMaskError unless the image indices are ``(pair_count,)`` integers, one per pair."""
    if len(shape) != 1 or shape[0] != pair_count or not is_integer:
        raise CertMaskError(f"image_indices must be {pair_count} integers, one per pair, got shape "
                            f"{tuple(shape)} dtype {dtype}")


def check_image_indices_range(lo: int, hi: int, count: int) -> None:
    """CertMaskError unless the smallest and largest image index lie in ``[0, count)``."""
    if not (0 <= lo and hi < count):
        raise CertMaskError(f"pair_predictor: image indices must lie in [0, {count}), got [{lo}, {hi}]")


def checked_image_indices(image_indices, pair_count: int, count: int) -> np.ndarray:
    """``image_indices`` as ``(pair_count,)`` int64 indices of the ``count`` images."""
    index = numeric_array(image_indices, "image_indices")
    check_image_indices_layout(index.shape, index.dtype, index.dtype.kind in "iu", pair_count)
    if len(index):
        check_image_indices_range(int(index.min()), int(index.max()), count)
    return index.astype(np.int64, copy=False)


# ----------------------------------------------------------------- the model's answers
def model_failure(err: BaseException, input_shape: tuple, dtype) -> CertMaskError:
    """The CertMaskError for a model that raised ``err`` on an input of ``input_shape`` and ``dtype``."""
    return CertMaskError(f"the model failed on input of shape {tuple(input_shape)}, dtype {dtype}: {err}")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says a device or the host ran out of memory (the batch may be halved)."""
    message = str(err).lower()
    return (isinstance(err, MemoryError) or "out of memory" in message
            or "can't allocate memory" in message or "failed to allocate memory" in message)


def logits_type_error(answer, input_shape: tuple) -> CertMaskError:
    """The CertMaskError for a model that returned something other than an array of logits."""
    return CertMaskError(f"model must return (batch, classes) logits, got a {type(answer).__name__} "
                         f"for input of shape {tuple(input_shape)}")


def check_logits_shape(shape: tuple, input_shape: tuple) -> None:
    """CertMaskError unless ``shape`` is ``(batch, K)`` with ``batch = input_shape[0]`` and ``K >= 1``."""
    if len(shape) != 2 or shape[0] != input_shape[0] or shape[1] < 1:
        raise CertMaskError(f"model must return (batch, classes) logits with classes >= 1, got shape "
                            f"{tuple(shape)} for input of shape {tuple(input_shape)}")


def check_class_count(first: int, other: int) -> None:
    """CertMaskError unless two batches of one call gave the same number of classes."""
    if other != first:
        raise CertMaskError(f"model returned {first} classes for one batch and {other} for another")


def checked_logits(answer, input_shape: tuple) -> np.ndarray:
    """A model's answer to an input of ``input_shape`` as ``(batch, K)`` float32 logits.

    Anything ``np.asarray`` reads as real numbers is taken (an ndarray, a JAX or TensorFlow array, a
    nested list); anything else, or another shape, is a CertMaskError.
    """
    try:
        arr = np.asarray(answer)
    except Exception:  # an object whose __array__ fails: not logits
        raise logits_type_error(answer, input_shape) from None
    if arr.dtype.kind not in "biuf":
        raise logits_type_error(answer, input_shape)
    check_logits_shape(arr.shape, input_shape)
    return arr.astype(np.float32, copy=False)


def predictions_of(logits: np.ndarray, return_logits: bool) -> np.ndarray:
    """float32 logits ``(..., K)`` as they are, or int64 labels ``(...)``: the argmax, and
    :data:`~certmask_core.certification.NO_VOTE` where the logits are not all finite.

    With ``K = 0`` (an empty batch: no forward pass, so no class count) the labels are zeros of shape
    ``logits.shape[:-1]``, e.g. ``(0,)`` or ``(0, n)``.
    """
    logits = np.asarray(logits, np.float32)
    if return_logits:
        return logits
    if logits.shape[-1] == 0:
        return np.zeros(logits.shape[:-1], np.int64)
    labels = logits.argmax(-1).astype(np.int64)
    return np.where(np.isfinite(logits).all(-1), labels, np.int64(NO_VOTE))


def model_from_factory(spec: str):
    """What the factory of a ``package.module:factory`` spec returns: the module is imported and the
    factory called with no arguments (code the user names: it runs). Any failure is a CertMaskError
    naming the spec; the caller checks that the answer is a model it can run."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CertMaskError(f"model spec {spec!r}: cannot import {attr!r} from {module_name!r}: "
                            f"{err}") from None
    try:
        return factory()
    except Exception as err:
        raise CertMaskError(f"model spec {spec!r}: calling {attr}() failed: {err}") from err
