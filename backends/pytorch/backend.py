"""PyTorch backend: (model, images, MaskSet) -> masked prediction matrix.

Masks are applied on the device inside each batch: for a chunk of ``b`` images and ``m`` masks the
``(m, 1, H, W)`` rectangles are rasterised from the mask set's origins and sizes with broadcast
comparisons, and ``torch.where`` writes the fill into the ``(b, m, C, H, W)`` model input. No host
copy of masked images is ever made.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from certmask_core import CertMaskError, MaskSet


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class TorchBackend:
    """Run a torch classifier under masks.

    Parameters
    ----------
    device : str or torch.device
        Any device; ``"cuda"`` when available is the fast path.
    batch_size : int
        Masked images per forward pass (upper limit).
    memory_budget_mb : float, optional
        When given, the batch is also capped so that the input plus the model's measured per-image
        activations fit the budget (measured once per model with forward hooks).
    fill : float or sequence of float
        Constant written into masked pixels, one value or one per channel.
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
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False):
        if fill_space not in ("pixel", "normalized"):
            raise CertMaskError(f"fill_space must be 'pixel' or 'normalized', got {fill_space!r}")
        if fill_space == "normalized" and (mean is None or std is None):
            raise CertMaskError("fill_space='normalized' needs mean and std")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise CertMaskError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if memory_budget_mb is not None and not memory_budget_mb > 0:
            raise CertMaskError(f"memory_budget_mb must be > 0, got {memory_budget_mb!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.memory_budget_mb = memory_budget_mb
        fill_t = torch.as_tensor(fill, dtype=torch.float32).reshape(-1)
        if fill_space == "normalized":
            fill_t = (torch.as_tensor(mean, dtype=torch.float32)
                      + torch.as_tensor(std, dtype=torch.float32) * fill_t)
        if torch.isnan(fill_t).any():
            raise CertMaskError(f"fill must not be NaN, got {fill!r}")
        self.fill = fill_t
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self._activation_bytes: dict[int, int] = {}

    def init_distributed(self):
        """Join the ``torch.distributed`` group that ``torchrun`` describes in the environment.

        Uses gloo on CPU and nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). Returns
        ``(rank, world_size, gather, close)``: ``gather(obj)`` collects every rank's picklable
        ``obj`` on rank 0 (a list ordered by rank) and returns None elsewhere; ``close()`` waits for
        every rank and destroys the group (a rank exiting with a live gloo group can abort).
        """
        import torch.distributed as dist
        use_nccl = self.device.type == "cuda"
        if use_nccl:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_nccl else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()

        def gather(obj):
            bucket = [None] * world if rank == 0 else None
            dist.gather_object(obj, bucket, dst=0)
            return bucket

        def close():
            dist.barrier()
            dist.destroy_process_group()

        return rank, world, gather, close

    def attack(self, model, images, labels, patch, k, strategy, mode, **options) -> dict:
        """Adaptive patch attack on the defended model: see :func:`.attack.run_attack`."""
        from .attack import run_attack
        return run_attack(self, model, images, labels, patch, k, strategy, mode, **options)

    # ----------------------------------------------------------------- models and inputs
    def load_model(self, name: str = "bundled") -> nn.Module:
        """The bundled Fashion-MNIST CNN (``"bundled"``) or a state-dict path, on this device."""
        from .models import load_model
        model = load_model(name, self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _images(self, images) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim != 4:
            raise CertMaskError(f"images must have shape (B, C, H, W), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise CertMaskError(f"images must be floating point in [0, 1], got dtype {x.dtype}")
        if len(self.fill) not in (1, x.shape[1]):
            raise CertMaskError(f"fill has {len(self.fill)} values but images have {x.shape[1]} channels")
        return x.to(self.device)

    def _check_geometry(self, x: torch.Tensor, maskset: MaskSet) -> None:
        if tuple(x.shape[2:]) != maskset.image_size:
            raise CertMaskError(f"images are {tuple(x.shape[2:])} but the mask set is for "
                                f"{maskset.image_size}")

    def rasterise(self, rects: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``(m, 4)`` rectangles ``(y0, x0, y1, x1)`` -> ``(m, 1, H, W)`` bool, True = hidden."""
        ys = torch.arange(H, device=self.device).view(1, H, 1)
        xs = torch.arange(W, device=self.device).view(1, 1, W)
        r = rects.view(-1, 4, 1, 1)
        inside = (ys >= r[:, 0]) & (ys < r[:, 2]) & (xs >= r[:, 1]) & (xs < r[:, 3])
        return inside.unsqueeze(1)

    def _max_batch(self, model: nn.Module, x: torch.Tensor) -> int:
        if self.memory_budget_mb is None:
            return self.batch_size
        key = id(model)
        if key not in self._activation_bytes:
            total = 0

            def hook(_module, _inputs, output):
                nonlocal total
                if isinstance(output, torch.Tensor):
                    total += output.numel() * output.element_size()

            leaves = [m for m in model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                self._forward(model, x[:1])
            finally:
                for h in handles:
                    h.remove()
            self._activation_bytes[key] = total
        per_image = x[0].numel() * x.element_size() * 2 + self._activation_bytes[key]
        return max(1, min(self.batch_size, int(self.memory_budget_mb * 2**20 // per_image)))

    def _forward(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    logits = model(batch)
            else:
                logits = model(batch)
        logits = logits.float()
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise CertMaskError(f"model must return (batch, classes) logits, got {tuple(logits.shape)}")
        if torch.isnan(logits).any():
            raise CertMaskError(f"model returned NaN logits for {int(torch.isnan(logits).any(1).sum())} "
                                f"of {len(logits)} inputs")
        return logits

    def _run_chunked(self, model, count: int, make_batch: Callable[[int, int], torch.Tensor],
                     step: int, on_chunk: Callable[[int, int, torch.Tensor], bool] | None = None) -> None:
        """Evaluate ``make_batch(start, stop)`` over ``range(count)`` in steps, halving on OOM.

        ``on_chunk(start, stop, logits)`` may return True to stop early.
        """
        start = 0
        while start < count:
            stop = min(count, start + step)
            try:
                logits = self._forward(model, make_batch(start, stop))
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not _is_oom(err) or step == 1:
                    raise
                step = max(1, step // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if on_chunk(start, stop, logits):
                return
            start = stop

    # ----------------------------------------------------------------- predictions
    def predict(self, model: nn.Module, images, return_logits: bool = False) -> np.ndarray:
        """Plain (unmasked) predictions, ``(B,)`` labels or ``(B, K)`` logits."""
        x = self._images(images)
        out: list[torch.Tensor] = []
        self._run_chunked(model, len(x), lambda a, b: x[a:b], self._max_batch(model, x),
                          lambda a, b, logits: out.append(logits) and False)
        logits = torch.cat(out) if out else torch.empty(0, 0)
        return (logits if return_logits else logits.argmax(1)).cpu().numpy()

    def masked_predictions(self, model: nn.Module, images, maskset: MaskSet,
                           return_logits: bool = False) -> np.ndarray:
        """One-mask predictions.

        Parameters
        ----------
        model : nn.Module
            Maps ``(N, C, H, W)`` pixel-space inputs to ``(N, K)`` logits.
        images : array or tensor, shape (B, C, H, W), float
        maskset : MaskSet

        Returns
        -------
        ndarray, shape (B, n) int64 labels, or (B, n, K) float32 logits
        """
        x = self._images(images)
        self._check_geometry(x, maskset)
        B, C, H, W = x.shape
        n = len(maskset)
        hidden = self.rasterise(torch.as_tensor(maskset.rectangles(), device=self.device), H, W)
        fill = self.fill.to(self.device, x.dtype).view(1, -1, 1, 1)
        flat_index = torch.arange(B * n, device=self.device)
        results: list[torch.Tensor] = []

        def make_batch(a, b):
            idx = flat_index[a:b]
            return torch.where(hidden[idx % n], fill, x[idx // n])

        self._run_chunked(model, B * n, make_batch, self._max_batch(model, x),
                          lambda a, b, logits: results.append(logits) and False)
        logits = torch.cat(results).view(B, n, -1) if results else torch.empty(B, n, 0)
        return (logits if return_logits else logits.argmax(2)).cpu().numpy()

    def pair_predictions(self, model: nn.Module, image, maskset: MaskSet, pairs) -> np.ndarray:
        """Two-mask predictions ``(m,)`` of one ``(C, H, W)`` image under the unions of ``pairs``.

        ``pairs`` is an ``(m, 2)`` array of mask indices; the core asks for them in chunks and stops
        at the first chunk holding a wrong label (early exit).
        """
        x = self._images(torch.as_tensor(image)[None])
        self._check_geometry(x, maskset)
        pairs = torch.as_tensor(np.asarray(pairs), device=self.device).long().view(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(maskset)):
            raise CertMaskError(f"pair indices must lie in [0, {len(maskset)}), got "
                                f"[{int(pairs.min())}, {int(pairs.max())}]")
        H, W = maskset.image_size
        hidden = self.rasterise(torch.as_tensor(maskset.rectangles(), device=self.device), H, W)
        fill = self.fill.to(self.device, x.dtype).view(1, -1, 1, 1)
        out: list[torch.Tensor] = []

        def make_batch(a, b):
            union = hidden[pairs[a:b, 0]] | hidden[pairs[a:b, 1]]
            return torch.where(union, fill, x)

        self._run_chunked(model, len(pairs), make_batch, self._max_batch(model, x),
                          lambda a, b, logits: out.append(logits.argmax(1)) and False)
        return torch.cat(out).cpu().numpy() if out else np.empty(0, np.int64)

    def pair_predictor(self, model: nn.Module, images, maskset: MaskSet):
        """The core's ``pair_predictor(image_index, pairs)`` for a batch of images."""
        def predict(index: int, pairs: np.ndarray) -> np.ndarray:
            return self.pair_predictions(model, images[index], maskset, pairs)
        return predict
