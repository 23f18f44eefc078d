"""PyTorch backend: (model, images, MaskSet) -> masked prediction matrix.

Masks are applied on the device inside each batch: for a chunk of ``b`` images and ``m`` masks the
``(m, 1, H, W)`` rectangles are rasterised from the mask set's origins and sizes with broadcast
comparisons, and ``torch.where`` writes the fill into the ``(b, m, C, H, W)`` model input. No host
copy of masked images is ever made. The same code path serves signals ``(B, C, L)`` and clips
``(B, C, T, H, W)``: the masks are boxes over the trailing axes, as many as the mask set has.

Third-party models and inputs are not trusted: every call validates what it is given, runs the model
in eval mode, and reports any failure as a :class:`CertMaskError` naming the shapes, dtypes or values.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import nn

from certmask_core import CertMaskError, MaskSet, contract
from certmask_core.multipatch import MaskGroups
from certmask_core.predictions import DEFAULT_MARGIN_TOLERANCE, NO_VOTE

from .distributed import join_process_group
from .models import Normalized
from .models import load_model as load_model_spec

MASK_FACTOR_BYTES = 1 << 26
"""Most bytes of float mask factors :meth:`TorchBackend.masked_predictions` precomputes (64 MiB)."""


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or contract.is_out_of_memory(err)


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _modules(model) -> list[nn.Module]:
    # a plain callable has no submodules, flags or parameters: it is run as it is
    return list(model.modules()) if isinstance(model, nn.Module) else []


_EVAL_LOCK = threading.Lock()
_EVAL_HOLDERS: dict[int, tuple[int, list]] = {}  # id(model) -> (entries, saved flags)


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Run ``model`` in eval mode, then restore every submodule's own ``training`` flag.

    ``model.train(flag)`` would set one flag on the whole tree, so a model whose submodules had mixed
    flags (a frozen BatchNorm inside a training network) is restored flag by flag. Reentrant and
    thread-safe: the first entry saves the flags and the last exit restores them, so threads that
    run the same model at once (a certification's first round beside its pair passes) never see it
    in training mode.
    """
    modules = _modules(model)
    if not modules:
        yield
        return
    key = id(model)
    with _EVAL_LOCK:
        entries, flags = _EVAL_HOLDERS.get(key, (0, None))
        if entries == 0:
            flags = [m.training for m in modules]
            model.eval()  # through eval(), so that a model overriding train() keeps its own rules
        _EVAL_HOLDERS[key] = (entries + 1, flags)
    try:
        yield
    finally:
        with _EVAL_LOCK:
            entries, flags = _EVAL_HOLDERS[key]
            if entries == 1:
                del _EVAL_HOLDERS[key]
                for module, flag in zip(modules, flags):
                    module.training = flag
            else:
                _EVAL_HOLDERS[key] = (entries - 1, flags)


def model_dtype(model) -> torch.dtype:
    """dtype of the model's first floating-point parameter; float32 when it has none."""
    params = model.parameters() if isinstance(model, nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), torch.float32)


def _as_tensor(value, what: str) -> torch.Tensor:
    """A tensor of numeric ``value`` (tensors pass through untouched), else CertMaskError."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged nested lists
        raise CertMaskError(f"{what} must be a numeric array or tensor, got {type(value).__name__}: "
                            f"{err}") from err
    if arr.dtype.kind not in "biufc":
        raise CertMaskError(f"{what} must be a numeric array or tensor, got {type(value).__name__} "
                            f"of dtype {arr.dtype}")
    if any(s < 0 for s in arr.strides):  # torch cannot view flipped arrays
        arr = arr.copy()
    try:
        return torch.as_tensor(arr)
    except (TypeError, RuntimeError) as err:  # dtypes torch lacks, e.g. float128
        raise CertMaskError(f"{what}: torch cannot hold dtype {arr.dtype}: {err}") from err


class TorchBackend:
    """Run a torch classifier under masks.

    The backend puts the model in eval mode for each call and restores its previous mode (each
    submodule's ``training`` flag as it was), so predictions never depend on how images are batched.
    Images are validated (see :meth:`prepare_images`) and cast to the dtype of the model's first
    floating-point parameter (float32 if it has none), so float16 or float64 images feed a float32
    model. Any error raised by the model other than out-of-memory becomes a :class:`CertMaskError`
    naming the input's shape and dtype; out-of-memory halves the batch and retries.

    Predictions come as int64 labels or float32 logits. A prediction whose logits are not all finite
    (NaN, +inf or -inf) gets the label ``NO_VOTE``; logits are returned raw, non-finite values
    included, and the core decides. An empty batch (``B = 0``) gives labels of shape ``(0,)`` or
    ``(0, n)`` and logits of shape ``(0, 0)`` or ``(0, n, 0)``: with no forward pass the number of
    classes is unknown.

    Parameters
    ----------
    device : str or torch.device
        A device this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); ``"cuda"`` when
        available is the fast path.
    batch_size : int
        Masked images per forward pass (upper limit).
    memory_budget_mb : float, optional
        When given, the batch is also capped so that the input plus the model's measured per-image
        activations fit the budget (measured once per model with forward hooks); see
        :meth:`effective_batch`.
    fill : float or sequence of float
        Constant written into masked pixels, one value or one per channel; finite, and (in pixel
        space) inside ``value_range`` when one is set.
    fill_space : {"pixel", "normalized"}
        ``pixel`` (default): ``fill`` is a pixel value, as the model's input sees it. The bundled model
        normalises inside ``forward`` and was trained with Cutout fill ``0.0`` in pixel space, which
        is also Fashion-MNIST's background, so ``0.0`` is the default.
        ``normalized``: ``fill`` is given after normalisation; ``mean`` and ``std`` map it back to
        pixel space (``mean + std * fill``), e.g. ``fill=0`` for "the dataset mean".
    mean, std : sequence of float, optional
        Per-channel normalisation, required for ``fill_space="normalized"``.
    autocast_dtype : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16`` to run the model under autocast.
    channels_last : bool
        Feed the model channels-last tensors (faster convolutions on GPUs).
    value_range : (float, float) or None
        Pixel range every image must lie in, ``(0.0, 1.0)`` by default: images in ``[0, 255]`` fed to
        a model trained on ``[0, 1]`` give confident nonsense, not an error. ``None`` skips the check;
        NaN and inf pixels are refused either way.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat(8, 2), masks_per_axis=2)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> TorchBackend().masked_predictions(model, np.zeros((5, 1, 8, 8), np.float32), ms).shape
    (5, 4)
    """

    name = "torch"

    def __init__(self, device="cpu", batch_size: int = 512, memory_budget_mb: float | None = None,
                 fill=0.0, fill_space: str = "pixel", mean=None, std=None,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
                 value_range: tuple[float, float] | None = (0.0, 1.0)):
        contract.check_fill_space(fill_space, mean, std)
        self.batch_size = contract.checked_batch_size(batch_size)
        if memory_budget_mb is not None and not memory_budget_mb > 0:
            raise CertMaskError(f"memory_budget_mb must be > 0, got {memory_budget_mb!r}")
        self.device = self._checked_device(device)
        self.memory_budget_mb = memory_budget_mb
        self.value_range = contract.checked_value_range(value_range)
        self.fill = torch.from_numpy(contract.checked_fill(fill, fill_space, mean, std, self.value_range))
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        # weak keys: a model's entry goes with the model, and a new model reusing its id() is measured
        self._activation_bytes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def _checked_device(device) -> torch.device:
        """``torch.device(device)`` when this machine has it, else CertMaskError naming what it has.

        Checked here because torch accepts ``"cuda"`` on a machine without CUDA and fails only at the
        first tensor moved there, deep inside a run.
        """
        def machine() -> str:
            have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            have += ["mps"] if torch.backends.mps.is_available() else []
            return f"this machine has {', '.join(have)} (torch {torch.__version__})"

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise CertMaskError(f"device {device!r} is not a torch device; {machine()}") from None
        if dev.type == "meta":  # shapes only: nothing can be predicted there
            raise CertMaskError(f"device 'meta' holds no data; {machine()}")
        # other device types (xpu, ...) are left to torch
        available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(dev.type)
        if available is not None and not available():
            raise CertMaskError(f"{dev.type} is not available on this machine (torch {torch.__version__}): "
                                f"use --device cpu (device='cpu' in Python)")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CertMaskError(f"device {str(dev)!r} is not available: {machine()}")
        return dev

    @property
    def margin_tolerance(self) -> float:
        """The logit margin under which this backend's predictions are not reproducible enough to
        certify (pass it to :func:`certmask_core.certify`), measured in ``docs/theory.md``:

        * float32 on CPU: ``1e-3`` (batch make-up moved logits by at most 1.4e-6);
        * float32 on CUDA: ``0.02`` (TF32 convolutions: batch make-up moved logits by up to 2.1e-3 on
          an H100 and flipped 1 argmax in 32,000);
        * bf16 or fp16 autocast: ``0.25`` (bf16 moved logits by up to 0.075 against float32).
        """
        if self.autocast_dtype is not None:
            return 0.25
        return 0.02 if self.device.type == "cuda" else DEFAULT_MARGIN_TOLERANCE

    def init_distributed(self):
        """Join the process group ``torchrun`` describes: see :func:`.distributed.join_process_group`
        (on CUDA this backend moves to the rank's own device)."""
        rank, world, gather, close, self.device = join_process_group(self.device)
        return rank, world, gather, close

    @staticmethod
    def versions() -> dict:
        """Versions that decide this backend's numbers (for run records)."""
        return {"torch": torch.__version__, "numpy": np.__version__,
                "cuda": torch.version.cuda, "threads": torch.get_num_threads()}

    @staticmethod
    def normalized(model, mean, std) -> nn.Module:
        """``model`` behind pixel-space input: see :class:`.models.Normalized`."""
        return Normalized(model, mean, std).eval()

    @staticmethod
    def input_channels(model) -> int | None:
        """Channels the model's first convolution takes; None when it has none (or is TorchScript)."""
        first = next((m for m in _modules(model) if isinstance(m, nn.modules.conv._ConvNd)), None)
        return None if first is None else int(first.in_channels)

    @staticmethod
    def model_fingerprint(model) -> str | None:
        """sha256 of the model's state (names, dtypes, shapes and values); None for a plain callable."""
        if not isinstance(model, nn.Module):
            return None
        import hashlib
        digest = hashlib.sha256()
        for name, value in model.state_dict().items():
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # ----------------------------------------------------------------- models and inputs
    def load_model(self, name: str = "bundled", weights=None, *, trust_code: bool = False) -> nn.Module:
        """A model spec (see :func:`.models.load_model`) loaded on this device, in eval mode.

        ``trust_code=True`` (the command line's ``--trust-model-code``) allows ``.pt2`` and TorchScript
        files, whose loading runs code stored in the file; without it they are refused.
        """
        model = load_model_spec(name, self.device, weights, trust_code=trust_code)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_images(self, model, images, maskset: MaskSet | None = None) -> torch.Tensor:
        """Validate ``images`` and return them as the model's input: on the device, in its dtype.

        Parameters
        ----------
        model : nn.Module
            Its first floating-point parameter gives the dtype (float32 if it has none).
        images : array or tensor, shape (B, C, H, W), floating point
            ``(B, C, L)`` or ``(B, C, T, H, W)`` for 1-D or 3-D mask sets (one spatial axis per axis
            of the mask set; without a mask set any of the three).
        maskset : MaskSet, optional
            When given, ``(H, W)`` (its trailing axes) must be its image size and ``fill`` must suit ``C``.

        Raises
        ------
        CertMaskError
            Non-numeric input, the wrong number of axes, not floating point, the wrong ``(H, W)``
            (channels-last input is recognised and named), NaN or inf pixels, or pixels outside
            ``value_range``.
        """
        x = _as_tensor(images, "images")
        shape = tuple(x.shape)
        axes = contract.check_maskset(maskset).ndim if maskset is not None else None
        contract.check_image_rank(shape, axes)
        contract.check_floating(torch.is_floating_point(x), x.dtype, self.value_range)
        if maskset is not None:
            contract.check_image_geometry(shape, maskset.image_size, len(self.fill))
        self._check_values(x)
        # + 0.0 reads -0.0 as 0.0: every masking path then gives the same bits (see masked_predictions)
        return x.to(self.device, model_dtype(model)) + 0.0

    def _check_values(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        finite = torch.isfinite(x)
        nan = inf = 0
        seen = x
        if not finite.all():  # the counts are needed only for the message
            nan = int(torch.isnan(x).sum())
            inf = int((~finite).sum()) - nan
            seen = x[finite]
        low, high = (float(v) for v in torch.aminmax(seen)) if seen.numel() else (None, None)
        contract.check_pixel_statistics(nan, inf, low, high, self.value_range, "TorchBackend")

    def _pairs(self, pairs, n: int) -> torch.Tensor:
        p = _as_tensor(pairs, "pairs")
        if p.numel() == 0:
            return torch.empty(0, 2, dtype=torch.long, device=self.device)
        contract.check_pairs_layout(tuple(p.shape), p.dtype, _is_integer(p))
        contract.check_pair_range(int(p.min()), int(p.max()), n)
        return p.to(self.device, torch.long)

    # ----------------------------------------------------------------- masking
    def rasterise(self, rects: torch.Tensor, *size: int) -> torch.Tensor:
        """``(m, 2 d)`` boxes (first pixels, then exclusive ends: ``(y0, x0, y1, x1)`` for images) ->
        ``(m, 1, *size)`` bool, True = hidden, for ``d = len(size)`` axes (``size = (H, W)`` for images)."""
        d = len(size)
        r = rects.view((-1, 2 * d) + (1,) * d)
        inside = torch.ones((len(r), *size), dtype=torch.bool, device=self.device)
        for axis, n in enumerate(size):
            index = torch.arange(n, device=self.device).view((1,) * (axis + 1) + (n,) + (1,) * (d - axis - 1))
            inside &= (index >= r[:, axis]) & (index < r[:, d + axis])
        return inside.unsqueeze(1)

    def hidden_pixels(self, maskset: MaskSet | MaskGroups) -> torch.Tensor:
        """``(n, 1, *image_size)`` bool on the device (``(n, 1, H, W)`` for images), True where mask
        ``i`` (or group ``i``: the union of its masks) hides a pixel."""
        if isinstance(maskset, MaskGroups):
            base = self.hidden_pixels(maskset.base)
            members = torch.as_tensor(np.array(maskset.members), device=self.device)
            return base[members].any(1)
        if not isinstance(maskset, MaskSet):
            raise CertMaskError(f"expected a MaskSet or MaskGroups, got {type(maskset).__name__}")
        rects = torch.as_tensor(maskset.rectangles(), device=self.device)
        return self.rasterise(rects, *maskset.image_size)

    def masked_inputs(self, images: torch.Tensor, hidden: torch.Tensor, axes: int = 2) -> torch.Tensor:
        """``images`` with the fill written where ``hidden`` is True (differentiable in ``images``).

        Parameters
        ----------
        images : tensor, shape (..., C, H, W)
            ``(..., C, *spatial)`` with ``axes`` spatial axes (``(..., C, T, H, W)`` for clips).
        hidden : bool tensor, shape (..., 1, H, W)
            Broadcast against ``images``, e.g. ``(b, 1, H, W)`` masks against ``(b, C, H, W)`` images,
            or ``(1, n, 1, H, W)`` against ``(P, 1, C, H, W)`` for every mask of every image.
        axes : int
            Number of spatial axes (the mask set's ``ndim``); the fill is laid along the axis before them.
        """
        channel = -axes - 1
        if (images.ndim < axes + 1 or hidden.ndim < axes + 1 or hidden.shape[channel] != 1
                or len(self.fill) != 1 and images.shape[channel] != len(self.fill)):
            raise CertMaskError(f"masked_inputs: images {tuple(images.shape)} and hidden "
                                f"{tuple(hidden.shape)} "
                                f"do not end in (C, *spatial) and (1, *spatial) with {axes} spatial axes "
                                f"and {len(self.fill)} fill values")
        fill = self.fill.to(images.device, images.dtype).view((-1,) + (1,) * axes)
        return torch.where(hidden, fill, images)

    # ----------------------------------------------------------------- running the model
    def effective_batch(self, model, images) -> int:
        """Inputs per forward pass for ``model`` on ``images``: ``batch_size``, capped by the budget."""
        x = self.prepare_images(model, images)
        with eval_mode(model):
            return self._effective_batch(model, x)

    def _effective_batch(self, model, x: torch.Tensor) -> int:
        if self.memory_budget_mb is None or len(x) == 0:
            return self.batch_size
        if model not in self._activation_bytes:
            total = 0

            def hook(_module, _inputs, output):
                nonlocal total
                if isinstance(output, torch.Tensor):
                    total += output.numel() * output.element_size()

            leaves = [m for m in _modules(model) if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                self._forward(model, x[:1])
            finally:
                for h in handles:
                    h.remove()
            self._activation_bytes[model] = total
        per_image = x[0].numel() * x.element_size() * 2 + self._activation_bytes[model]
        return max(1, min(self.batch_size, int(self.memory_budget_mb * 2**20 // per_image)))

    def _forward(self, model, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.ndim in (4, 5):
            batch = batch.contiguous(memory_format=torch.channels_last if batch.ndim == 4
                                     else torch.channels_last_3d)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        try:
            with torch.inference_mode(), autocast:
                logits = model(batch)
        except Exception as err:
            if _is_oom(err):
                raise  # the caller halves the batch
            raise contract.model_failure(err, tuple(batch.shape), batch.dtype) from err
        if not isinstance(logits, torch.Tensor):
            raise contract.logits_type_error(logits, tuple(batch.shape))
        contract.check_logits_shape(tuple(logits.shape), tuple(batch.shape))
        return logits.float()

    def _chunked_logits(self, model, x: torch.Tensor, count: int,
                        make_batch: Callable[[int, int], torch.Tensor], align: int = 1) -> torch.Tensor:
        """``(count, K)`` float32 logits of ``make_batch(start, stop)`` over ``range(count)``.

        Runs in eval mode, in chunks of :meth:`effective_batch` inputs (rounded down to a multiple of
        ``align`` when at least that large), halving the chunk on out-of-memory errors. ``(0, 0)``
        when ``count`` is 0.
        """
        out: list[torch.Tensor] = []
        with eval_mode(model):
            step = self._effective_batch(model, x) if count else 1
            step = step // align * align if step >= align else step
            start = 0
            while start < count:
                stop = min(count, start + step)
                try:
                    logits = self._forward(model, make_batch(start, stop))
                except (RuntimeError, MemoryError) as err:
                    if not _is_oom(err):
                        raise
                    if step == 1:
                        raise CertMaskError(f"out of memory on {self.device} running the model on one input "
                                            f"of shape {tuple(x.shape[1:])}: {str(err)[:200]}") from err
                    step = max(1, step // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                if out:
                    contract.check_class_count(out[0].shape[1], logits.shape[1])
                out.append(logits)
                start = stop
        return torch.cat(out) if out else torch.empty(0, 0, device=self.device)

    @staticmethod
    def _output(logits: torch.Tensor, return_logits: bool) -> np.ndarray:
        """float32 logits as they are, or int64 labels: the argmax, ``NO_VOTE`` where not all finite."""
        if return_logits:
            return logits.cpu().numpy()
        if logits.shape[-1] == 0:
            return np.zeros(logits.shape[:-1], np.int64)
        labels = torch.where(torch.isfinite(logits).all(-1), logits.argmax(-1), NO_VOTE)
        return labels.cpu().numpy()

    # ----------------------------------------------------------------- predictions
    def predict(self, model: nn.Module, images, return_logits: bool = False) -> np.ndarray:
        """Plain (unmasked) predictions, ``(B,)`` int64 labels or ``(B, K)`` float32 logits."""
        x = self.prepare_images(model, images)
        return self._output(self._chunked_logits(model, x, len(x), lambda a, b: x[a:b]), return_logits)

    def masked_predictions(self, model: nn.Module, images, maskset: MaskSet,
                           return_logits: bool = False) -> np.ndarray:
        """One-mask predictions.

        Parameters
        ----------
        model : nn.Module
            Maps ``(N, C, H, W)`` pixel-space inputs to ``(N, K)`` logits (``(N, C, T, H, W)`` for a
            3-D mask set, ``(N, C, L)`` for a 1-D one).
        images : array or tensor, shape (B, C, H, W), float
        maskset : MaskSet
            Any number of axes; they are the trailing axes of ``images``.

        Returns
        -------
        ndarray
            ``(B, n)`` int64 labels (``NO_VOTE`` where the logits are not all finite), or ``(B, n, K)``
            float32 logits as the model gave them (``(0, n, 0)`` for an empty batch).
        """
        x = self.prepare_images(model, images, maskset)
        B, n = len(x), len(maskset)
        hidden = self.hidden_pixels(maskset)
        fill = self.fill.to(x.device, x.dtype).view((-1,) + (1,) * maskset.ndim)
        flat_index = torch.arange(B * n, device=self.device)
        # A chunk of whole images takes every mask at once by broadcasting, no row gather. With the
        # masks as float factors it is one multiply-add (x * keep + fill where hidden), the fastest;
        # those factors cost 4 (C + 1) bytes per mask pixel, so a large family broadcasts the bool
        # masks instead. Both equal torch.where(hidden, fill, x) exactly: prepare_images gives finite
        # pixels with -0.0 read as 0.0, so x * 1 + 0 = x and x * 0 + fill = fill.
        factors = n * (len(self.fill) + 1) * math.prod(maskset.image_size) * x.element_size()
        if factors <= MASK_FACTOR_BYTES:
            keep = (~hidden).to(x.dtype)
            filled = hidden.to(x.dtype) * fill

        def make_batch(a, b):
            if a % n == 0 and b % n == 0:
                images = x[a // n:b // n, None]
                if factors <= MASK_FACTOR_BYTES:
                    return torch.addcmul(filled, images, keep).flatten(0, 1)
                return torch.where(hidden, fill, images).flatten(0, 1)
            idx = flat_index[a:b]
            return self.masked_inputs(x[idx // n], hidden[idx % n], maskset.ndim)

        logits = self._chunked_logits(model, x, B * n, make_batch, align=n)
        return self._output(logits.view(B, n, logits.shape[-1]), return_logits)

    def _pair_logits(self, model, x: torch.Tensor, hidden: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        def make_batch(a, b):
            return self.masked_inputs(x, hidden[pairs[a:b, 0]] | hidden[pairs[a:b, 1]], hidden.ndim - 2)

        return self._chunked_logits(model, x, len(pairs), make_batch)

    def pair_predictions(self, model: nn.Module, image, maskset: MaskSet, pairs,
                         return_logits: bool = False) -> np.ndarray:
        """Two-mask predictions of one ``(C, H, W)`` image (``(C, *image_size)``) under the unions of
        ``pairs``.

        ``pairs`` is an ``(m, 2)`` integer array of mask indices; the core asks for them in chunks and
        stops at the first chunk holding a wrong label (early exit). Returns ``(m,)`` int64 labels or
        ``(m, K)`` float32 logits.
        """
        x = _as_tensor(image, "image")
        contract.check_maskset(maskset)
        if x.ndim != maskset.ndim + 1:
            raise CertMaskError(f"image must have shape (C, {contract.spatial_names(maskset.ndim)}), got "
                                f"{tuple(x.shape)}")
        x = self.prepare_images(model, x[None], maskset)
        logits = self._pair_logits(model, x, self.hidden_pixels(maskset), self._pairs(pairs, len(maskset)))
        return self._output(logits, return_logits)

    def pair_predictor(self, model: nn.Module, images, maskset: MaskSet, return_logits: bool = False):
        """The core's ``pair_predictor(image_index, pairs)`` for a batch of images.

        ``images`` are validated once, here. The predictor returns :meth:`pair_predictions` of image
        ``image_index``: labels, or logits with ``return_logits`` (given here, or per call as a
        keyword, which the core uses for decision margins). Its ``many(image_indices, pairs)``
        answers the pairs of several images in shared batches; the core uses it to ask the second
        rounds of all undecided images in one call.
        """
        x = self.prepare_images(model, images, maskset)
        hidden = self.hidden_pixels(maskset)

        def predict(index: int, pairs, return_logits: bool = return_logits) -> np.ndarray:
            i = contract.checked_image_index(index, len(x))
            logits = self._pair_logits(model, x[i:i + 1], hidden, self._pairs(pairs, len(maskset)))
            return self._output(logits, return_logits)

        def many(image_indices, pairs, return_logits: bool = return_logits) -> np.ndarray:
            """Row ``t``: image ``image_indices[t]`` under the union of the masks ``pairs[t]``; the
            rows of all images share full batches."""
            p = self._pairs(pairs, len(maskset))
            index = _as_tensor(image_indices, "image_indices")
            contract.check_image_indices_layout(tuple(index.shape), index.dtype, _is_integer(index), len(p))
            if len(index):
                contract.check_image_indices_range(int(index.min()), int(index.max()), len(x))
            index = index.to(device=x.device, dtype=torch.long)

            def make_batch(a, b):
                return self.masked_inputs(x[index[a:b]], hidden[p[a:b, 0]] | hidden[p[a:b, 1]], maskset.ndim)
            return self._output(self._chunked_logits(model, x, len(p), make_batch), return_logits)
        predict.many = many
        return predict
