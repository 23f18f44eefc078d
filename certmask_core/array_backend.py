"""Framework-free backends: masking and batching in numpy, the model behind one method.

:class:`ArrayBackend` implements the prediction part of the :class:`~certmask_core.contract.Backend`
protocol on top of one abstract method, :meth:`ArrayBackend._logits` (a chunk of masked inputs in,
logits out). It is the slow, obviously correct twin of the torch backend's masking: every masked input
is ``np.where(hidden, fill, image)`` with ``hidden`` rasterised from the mask set's boxes, built on the
host one chunk at a time. Validation and messages are the shared checks of
:mod:`certmask_core.contract`, so every backend refuses the same inputs with the same words.

:class:`NumpyBackend` runs any plain callable ``model(batch) -> logits`` (numpy, JAX, TensorFlow,
scikit-learn behind a factory). The ONNX backend (``certmask_backends.onnx``) is another subclass.
This module imports numpy and the core only: never a framework.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from .contract import (
    check_class_count,
    check_fill_space,
    check_images,
    check_maskset,
    checked_batch_size,
    checked_fill,
    checked_image_index,
    checked_image_indices,
    checked_logits,
    checked_margin_tolerance,
    checked_normalization,
    checked_pairs,
    checked_value_range,
    is_out_of_memory,
    model_failure,
    model_from_factory,
    predictions_of,
)
from .errors import CertMaskError
from .geometry import MaskSet
from .multipatch import MaskGroups
from .predictions import DEFAULT_MARGIN_TOLERANCE


class NormalizedModel:
    """A model behind pixel-space input: the backend feeds it ``(x - mean) / std`` per channel.

    What :meth:`ArrayBackend.normalized` returns. Masks and the fill stay in pixel space; the
    normalisation happens after masking, as inside a torch model.

    Parameters
    ----------
    model
        Whatever the backend runs.
    mean, std : sequence of float
        One value, or one per channel; finite, ``std > 0``.
    """

    def __init__(self, model, mean, std):
        self.model = model
        self.mean, self.std = checked_normalization(mean, std)

    def inputs(self, batch: np.ndarray) -> np.ndarray:
        """``(batch - mean) / std`` for a ``(N, C, *spatial)`` float32 batch."""
        channels = batch.shape[1]
        if len(self.mean) not in (1, channels):
            raise CertMaskError(f"mean and std have {len(self.mean)} values but the images have {channels} "
                                f"channels")
        view = (1, -1) + (1,) * (batch.ndim - 2)
        return (batch - self.mean.reshape(view)) / self.std.reshape(view)


def unwrapped(model):
    """The model inside any :class:`NormalizedModel` wrappers."""
    while isinstance(model, NormalizedModel):
        model = model.model
    return model


class ArrayBackend:
    """Masked predictions in numpy for any model that maps a float32 batch to logits.

    The slow, obviously correct twin of :class:`certmask_backends.pytorch.TorchBackend`'s masking:
    the hidden pixels of every mask are rasterised from its box (:meth:`MaskSet.rectangles`; a group of
    :class:`~certmask_core.multipatch.MaskGroups` hides the union of its members' boxes), and a masked
    input is exactly ``np.where(hidden, fill, image)``. Inputs are built on the host in chunks of at
    most ``batch_size``, and no more than one chunk of masked inputs exists at a time; a subclass only
    says how a chunk becomes logits (:meth:`_logits`).

    Images are validated by :func:`~certmask_core.contract.check_images` (the messages every backend
    gives) and cast to float32. A model error other than out-of-memory becomes a CertMaskError naming
    the input's shape and dtype; out-of-memory halves the chunk and retries. Labels are int64 (the
    argmax; ``NO_VOTE`` where the logits are not all finite), logits float32 as the model gave them;
    an empty batch gives labels ``(0,)`` / ``(0, n)`` and logits ``(0, 0)`` / ``(0, n, 0)``.

    Parameters
    ----------
    batch_size : int
        Most inputs per call of the model.
    fill : float or sequence of float
        Written into hidden pixels: one value or one per channel, finite, inside ``value_range``.
    fill_space : {"pixel", "normalized"}
        ``normalized``: ``fill`` is given after normalisation and mapped back with ``mean + std * fill``.
    mean, std : sequence of float, optional
        Required for ``fill_space="normalized"``.
    value_range : (float, float) or None
        Pixel range every image must lie in (``(0, 1)``); None skips that check (never the finite one).
    margin_tolerance : float
        The logit margin at or below which predictions are not reproducible enough to certify.
    """

    name = "array"

    def __init__(self, batch_size: int = 512, fill=0.0, fill_space: str = "pixel", mean=None, std=None,
                 value_range: tuple[float, float] | None = (0.0, 1.0),
                 margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE):
        check_fill_space(fill_space, mean, std)
        self.batch_size = checked_batch_size(batch_size)
        self.value_range = checked_value_range(value_range)
        self.fill = checked_fill(fill, fill_space, mean, std, self.value_range)
        self._margin_tolerance = checked_margin_tolerance(margin_tolerance)

    @property
    def margin_tolerance(self) -> float:
        """The logit margin under which predictions are not reproducible enough to certify (the
        constructor's ``margin_tolerance``)."""
        return self._margin_tolerance

    # ----------------------------------------------------------------- models
    def load_model(self, spec: str, weights=None, *, trust_code: bool = False):
        """The model of ``spec``; each subclass says which specs it reads."""
        raise NotImplementedError(f"{type(self).__name__} loads no models; pass one to its methods")

    def input_channels(self, model) -> int | None:
        """Channels the model takes: unknown to a plain array backend."""
        return None

    def normalized(self, model, mean, std) -> NormalizedModel:
        """``model`` behind pixel-space input: it is fed ``(x - mean) / std``, per channel."""
        return NormalizedModel(model, mean, std)

    def model_fingerprint(self, model) -> str | None:
        """Unknown to a plain array backend (a callable's weights are its own business)."""
        return None

    @staticmethod
    def versions() -> dict:
        """Versions that decide this backend's numbers (for run records)."""
        return {"numpy": np.__version__}

    # ----------------------------------------------------------------- inputs
    def prepare_images(self, model, images, maskset: MaskSet | MaskGroups | None = None) -> np.ndarray:
        """Validate ``images`` (:func:`~certmask_core.contract.check_images`) and return them as
        float32 ``(B, C, *spatial)``, checked against what ``model`` takes (:meth:`_check_input`)."""
        x = check_images(images, maskset, fill_count=len(self.fill), value_range=self.value_range,
                         backend_class=type(self).__name__)
        self._check_input(model, x.shape)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_input(self, model, shape: tuple) -> None:
        """CertMaskError when ``model`` cannot take items of ``shape[1:]`` (a subclass that can tell)."""

    def hidden_pixels(self, maskset: MaskSet | MaskGroups) -> np.ndarray:
        """``(n, *image_size)`` bool, True where mask ``i`` (or group ``i``: the union of its members'
        masks) hides a pixel; rasterised box by box from :meth:`MaskSet.rectangles`."""
        check_maskset(maskset)
        if isinstance(maskset, MaskGroups):
            return self.hidden_pixels(maskset.base)[maskset.members].any(1)
        d = maskset.ndim
        hidden = np.zeros((len(maskset),) + tuple(maskset.image_size), dtype=bool)
        for i, box in enumerate(maskset.rectangles().tolist()):
            hidden[(i,) + tuple(slice(box[axis], box[d + axis]) for axis in range(d))] = True
        return hidden

    def masked_inputs(self, images: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """``np.where(hidden, fill, images)``: ``(N, C, *spatial)`` images under ``(N, *spatial)`` masks."""
        fill = self.fill.reshape((-1,) + (1,) * (images.ndim - 2))
        return np.where(hidden[:, None], fill, images)

    # ----------------------------------------------------------------- running the model
    def _logits(self, model, batch: np.ndarray):
        """Logits of one chunk.

        Parameters
        ----------
        model
            What :meth:`load_model` returned (never a :class:`NormalizedModel`: the base applies it).
        batch : ndarray, shape (N, C, *spatial), float32
            ``1 <= N <= batch_size`` inputs, C-contiguous.

        Returns
        -------
        array_like, shape (N, K)
            Checked and converted to float32 by the caller.
        """
        raise NotImplementedError

    def _chunk_size(self, model) -> int:
        """Inputs per call of :meth:`_logits` for ``model``."""
        return self.batch_size

    def effective_batch(self, model, images) -> int:
        """Inputs per forward pass for ``model`` on inputs like ``images``."""
        self.prepare_images(model, images)
        return self._chunk_size(unwrapped(model))

    def _forward(self, model, batch: np.ndarray) -> np.ndarray:
        """``(N, K)`` float32 logits of a pixel-space batch; out-of-memory errors pass through raw."""
        inputs = batch
        for wrapper in _wrappers(model):  # normalisation after masking: the fill stays in pixel space
            inputs = wrapper.inputs(inputs)
        try:
            answer = self._logits(unwrapped(model), np.ascontiguousarray(inputs, dtype=np.float32))
        except CertMaskError:
            raise
        except Exception as err:
            if is_out_of_memory(err):
                raise  # the caller halves the chunk
            raise model_failure(err, batch.shape, batch.dtype) from err
        return checked_logits(answer, batch.shape)

    def _chunked_logits(self, model, count: int, make_batch: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """``(count, K)`` float32 logits of ``make_batch(start, stop)`` over ``range(count)``, in chunks
        of :meth:`_chunk_size`, halving a chunk on out-of-memory; ``(0, 0)`` when ``count`` is 0."""
        out: list[np.ndarray] = []
        step = self._chunk_size(unwrapped(model))
        start = 0
        while start < count:
            stop = min(count, start + step)
            batch = None
            try:
                batch = make_batch(start, stop)
                logits = self._forward(model, batch)
            except CertMaskError:
                raise
            except Exception as err:
                if not is_out_of_memory(err):  # the model's other errors are CertMaskErrors by now
                    raise
                if step == 1:
                    if batch is None:  # the host cannot hold one masked input
                        raise
                    raise model_failure(err, batch.shape, batch.dtype) from err
                step = max(1, step // 2)
                continue
            finally:
                batch = None  # one chunk of masked inputs at a time
            if out:
                check_class_count(out[0].shape[1], logits.shape[1])
            out.append(logits)
            start = stop
        return np.concatenate(out) if out else np.empty((0, 0), np.float32)

    # ----------------------------------------------------------------- predictions
    def predict(self, model, images, return_logits: bool = False) -> np.ndarray:
        """Plain (unmasked) predictions: ``(B,)`` int64 labels or ``(B, K)`` float32 logits."""
        x = self.prepare_images(model, images)
        return predictions_of(self._chunked_logits(model, len(x), lambda a, b: x[a:b]), return_logits)

    def masked_predictions(self, model, images, maskset: MaskSet | MaskGroups,
                           return_logits: bool = False) -> np.ndarray:
        """One-mask predictions.

        Parameters
        ----------
        model
            What the backend runs (see :meth:`_logits`).
        images : array_like, shape (B, C, *spatial), floating point
            One spatial axis per axis of ``maskset``.
        maskset : MaskSet or MaskGroups

        Returns
        -------
        ndarray
            ``(B, n)`` int64 labels or ``(B, n, K)`` float32 logits (``(0, n, 0)`` for an empty batch);
            row ``b``, column ``i`` is image ``b`` under mask (or group) ``i``.
        """
        x = self.prepare_images(model, images, maskset)
        hidden = self.hidden_pixels(maskset)
        n = len(hidden)

        def make_batch(a, b):
            rows = np.arange(a, b)
            return self.masked_inputs(x[rows // n], hidden[rows % n])

        logits = self._chunked_logits(model, len(x) * n, make_batch)
        return predictions_of(logits.reshape(len(x), n, logits.shape[-1]), return_logits)

    def _pair_logits(self, model, x: np.ndarray, hidden: np.ndarray, image_indices: np.ndarray,
                     pairs: np.ndarray) -> np.ndarray:
        def make_batch(a, b):
            return self.masked_inputs(x[image_indices[a:b]], hidden[pairs[a:b, 0]] | hidden[pairs[a:b, 1]])

        return self._chunked_logits(model, len(pairs), make_batch)

    def pair_predictor(self, model, images, maskset: MaskSet | MaskGroups, return_logits: bool = False):
        """Two-mask predictions of ``images`` (validated once, here).

        ``predictor(image_index, pairs)`` gives ``(m,)`` labels or ``(m, K)`` logits of one image under
        the unions of the ``(m, 2)`` mask indices ``pairs``; ``predictor.many(image_indices, pairs)``
        answers row ``t`` for image ``image_indices[t]`` under ``pairs[t]``, all rows in shared chunks.
        Both take ``return_logits`` per call too.
        """
        x = self.prepare_images(model, images, maskset)
        hidden = self.hidden_pixels(maskset)

        def predict(index, pairs, return_logits: bool = return_logits) -> np.ndarray:
            i = checked_image_index(index, len(x))
            p = checked_pairs(pairs, len(hidden))
            logits = self._pair_logits(model, x, hidden, np.full(len(p), i, np.int64), p)
            return predictions_of(logits, return_logits)

        def many(image_indices, pairs, return_logits: bool = return_logits) -> np.ndarray:
            """Row ``t``: image ``image_indices[t]`` under the union of the masks ``pairs[t]``."""
            p = checked_pairs(pairs, len(hidden))
            index = checked_image_indices(image_indices, len(p), len(x))
            return predictions_of(self._pair_logits(model, x, hidden, index, p), return_logits)

        predict.many = many
        return predict


def _wrappers(model) -> list[NormalizedModel]:
    """The :class:`NormalizedModel` wrappers around a model, innermost first (applied in that order)."""
    found = []
    while isinstance(model, NormalizedModel):
        found.append(model)
        model = model.model
    return found[::-1]


FACTORY_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
"""``package.module:factory``."""


class NumpyBackend(ArrayBackend):
    """Any plain callable as a classifier: ``model(batch) -> logits``.

    ``batch`` is a float32 ndarray ``(N, C, *spatial)``; the answer is anything ``np.asarray`` reads as
    ``(N, K)`` real numbers (a JAX or TensorFlow array, a scikit-learn ``decision_function``'s output),
    converted to float32. The model is called from the run layer's threads as it is; it must be
    deterministic and must not learn. Masking and validation: :class:`ArrayBackend`.

    Parameters
    ----------
    **options
        Those of :class:`ArrayBackend` (``batch_size``, ``fill``, ``fill_space``, ``mean``, ``std``,
        ``value_range``, ``margin_tolerance``).

    Examples
    --------
    >>> import numpy as np
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat(8, 2), masks_per_axis=2)
    >>> weights = np.ones((64, 3), np.float32)
    >>> model = lambda x: x.reshape(len(x), -1) @ weights
    >>> NumpyBackend().masked_predictions(model, np.zeros((5, 1, 8, 8), np.float32), ms).shape
    (5, 4)
    """

    name = "numpy"

    def load_model(self, spec: str, weights=None, *, trust_code: bool = False):
        """The model a factory returns: ``spec`` is ``"package.module:factory"``.

        The module is imported and ``factory()`` called with no arguments: this runs the code the user
        names (the module's import-time code too), as the torch backend's factory specs do, so it needs
        no ``trust_code``. The factory loads its own weights: ``weights`` is refused.
        """
        if weights is not None:
            raise CertMaskError(f"weights (--weights) do not apply to the numpy backend: the factory "
                                f"{spec!r} loads its own")
        if not isinstance(spec, str) or not FACTORY_SPEC.fullmatch(spec):
            raise CertMaskError(f"the numpy backend loads models from 'package.module:factory' specs (the "
                                f"module imported and factory() called), got {spec!r}")
        model = model_from_factory(spec)
        attr = spec.partition(":")[2]
        if not callable(model):
            raise CertMaskError(f"model spec {spec!r}: {attr}() returned a {type(model).__name__}, not a "
                                f"callable model(batch) -> logits")
        return model

    def _logits(self, model, batch: np.ndarray):
        return model(batch)
