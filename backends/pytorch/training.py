"""Training for certification: mask-set augmentation, greedy worst-case masks, resumable training.

Certified accuracy is decided by how well the model predicts under the very masks its certificate
uses: one mask for detection and plurality, every candidate pair for recovery. The augmentations
here show the model those masks during training, filled exactly as :class:`TorchBackend` fills them
at certification time (same fill, same pixel space, same rasteriser).

Every augmentation is a callable ``augment(model, images, labels, generator) -> images`` taking and
returning ``(B, C, H, W)`` pixel-space tensors; only :class:`GreedyMasks` looks at the model.

Examples
--------
>>> import torch
>>> from certmask_core import PatchThreat, make_maskset
>>> masks = make_maskset(PatchThreat(28, 3), masks_per_axis=4)
>>> augment = MaskSetAugment(masks, p_none=0.0, p_single=0.0, p_pair=1.0)
>>> x = augment(None, torch.ones(2, 1, 28, 28), None, torch.Generator().manual_seed(0))
>>> int((x == 0).sum(dim=(1, 2, 3)).max()) <= 2 * 9 * 9
True
"""
from __future__ import annotations

import math
import platform
import re
import reprlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import certmask_core
from certmask_core import CertMaskError, MaskSet, contract
from certmask_core.run.progress import progress_bar

from .backend import TorchBackend, eval_mode

AUGMENTATIONS = ("none", "cutout", "maskset", "greedy")


def _probabilities(p_none: float, p_single: float, p_pair: float) -> torch.Tensor:
    p = torch.tensor([p_none, p_single, p_pair], dtype=torch.float64)
    if not (torch.isfinite(p).all() and (p >= 0).all() and p.sum() > 0):
        raise CertMaskError(f"p_none, p_single, p_pair must be finite, >= 0 and not all 0, got "
                            f"{p_none!r}, {p_single!r}, {p_pair!r}")
    return p / p.sum()


class MaskSetAugment:
    """Hide each training image under nothing, one random mask, or the union of a random pair of masks
    of the certification mask set(s).

    Parameters
    ----------
    masksets : MaskSet or sequence of MaskSet
        The masks to train for, all for one image size. A pair is always two distinct masks of one
        set (the pairs recovery's second round evaluates); with several sets, the first mask is drawn
        uniformly over all their masks.
    p_none, p_single, p_pair : float
        Relative frequencies of the three cases (normalised to sum to 1).
    backend : TorchBackend, optional
        Supplies the fill (its ``fill`` and ``fill_space``) and the device; use the backend you
        certify with, so training and certification hide pixels identically. Default ``TorchBackend()``:
        fill 0.0 in pixel space.
    """

    def __init__(self, masksets, p_none: float = 0.2, p_single: float = 0.4, p_pair: float = 0.4,
                 backend: TorchBackend | None = None):
        sets = [masksets] if isinstance(masksets, MaskSet) else list(masksets)
        if not sets or not all(isinstance(ms, MaskSet) for ms in sets):
            raise CertMaskError(f"masksets must be a MaskSet or a non-empty sequence of MaskSets, got "
                                f"{type(masksets).__name__}")
        sizes = {ms.image_size for ms in sets}
        if len(sizes) != 1:
            raise CertMaskError(f"all mask sets must be for one image size, got {sorted(sizes)}")
        self.image_size = sizes.pop()
        self.masksets = sets
        self.backend = backend if backend is not None else TorchBackend()
        self.probabilities = _probabilities(p_none, p_single, p_pair)
        hidden = torch.cat([self.backend.hidden_pixels(ms) for ms in sets])  # (n, 1, H, W)
        self._count = len(hidden)
        # row -1 is the empty mask, so "no mask" needs no special case
        self._table = torch.cat([hidden, torch.zeros_like(hidden[:1])])
        counts = torch.tensor([len(ms) for ms in sets])
        # for mask t: where its set starts and how many masks it has, so a partner stays in its set
        self._set_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        self._set_size = torch.repeat_interleave(counts, counts)

    def check_images(self, images: torch.Tensor) -> None:
        """CertMaskError unless ``images`` are ``(B, C, H, W)`` (``(B, C, *image_size)``) of the mask
        sets' size and suit the fill."""
        if images.ndim != len(self.image_size) + 2:
            raise CertMaskError(f"training images must have shape (B, C, *{self.image_size}) for these "
                                f"mask sets, got {tuple(images.shape)}")
        contract.check_image_geometry(tuple(images.shape), self.masksets[0].image_size,
                                      len(self.backend.fill))

    def draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ``(first, second)`` mask indices per image; -1 means "no mask".

        ``first == -1`` leaves the image clean, ``second == -1`` means one mask.
        """
        case = torch.multinomial(self.probabilities, batch, replacement=True, generator=generator)
        first = torch.randint(0, self._count, (batch,), generator=generator)
        second = self.draw_partner(first, generator)
        second = torch.where((case == 2) & (second != first), second, torch.full_like(second, -1))
        first = torch.where(case == 0, torch.full_like(first, -1), first)
        return first, second

    def draw_partner(self, first: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random other mask of ``first``'s set (``first`` itself in a one-mask set)."""
        size = self._set_size[first]
        offset = 1 + (torch.rand(first.shape, generator=generator) * (size - 1).clamp(min=1)).long()
        return self._set_start[first] + (first - self._set_start[first] + offset) % size

    def hidden_of(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Bool ``(*first.shape, 1, H, W)`` on the backend's device: the union of masks ``first`` and
        ``second`` (-1 = none) per entry."""
        device = self._table.device
        return self._table[first.to(device)] | self._table[second.to(device)]

    def __call__(self, model, images: torch.Tensor, labels, generator: torch.Generator) -> torch.Tensor:
        self.check_images(images)
        first, second = self.draw(len(images), generator)
        return self.backend.masked_inputs(images, self.hidden_of(first, second).to(images.device),
                                          len(self.image_size))


class GreedyMasks(MaskSetAugment):
    """Train on the worst masks: for each image, the highest-loss single mask of ``samples`` random
    ones, then the highest-loss pair of it with ``samples`` random partners; the image is trained
    under whichever of the two hurts more.

    This is greedy Cutout as used to train PatchCleanser models (Saha et al., 2023), restricted to the
    certification mask set. It costs ``2 * samples`` extra forward passes per masked training image
    (no gradient, eval mode); ``p_none`` of the images stay clean.
    """

    def __init__(self, masksets, samples: int = 4, p_none: float = 0.2, backend: TorchBackend | None = None):
        if not 0.0 <= p_none <= 1.0:
            raise CertMaskError(f"p_none must lie in [0, 1], got {p_none!r}")
        super().__init__(masksets, p_none=p_none, p_single=0.0, p_pair=1.0 - p_none, backend=backend)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise CertMaskError(f"samples must be an integer >= 1, got {samples!r}")
        self.samples = samples
        self.forward_passes = 0  # scoring forward passes so far, for the training record

    def _losses(self, model, images, labels, first, second) -> torch.Tensor:
        """``(b, s)``: the loss of image i under masks ``first[i, j] | second[i, j]``."""
        b, s = first.shape
        x = self.backend.masked_inputs(images[:, None], self.hidden_of(first, second), len(self.image_size))
        with torch.no_grad(), eval_mode(model):
            logits = _checked_logits(model(x.flatten(0, 1)), b * s, None)
        self.forward_passes += b * s
        return nn.functional.cross_entropy(logits, labels.repeat_interleave(s), reduction="none").view(b, s)

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        self.check_images(images)
        B, s = len(images), self.samples
        masked = torch.rand(B, generator=generator) >= float(self.probabilities[0])
        rows = masked.nonzero().flatten()
        first = torch.full((B,), -1, dtype=torch.long)
        second = torch.full((B,), -1, dtype=torch.long)
        if len(rows):
            x, y = images[rows.to(images.device)], labels[rows.to(labels.device)]
            singles = torch.randint(0, self._count, (len(rows), s), generator=generator)
            single_loss = self._losses(model, x, y, singles, torch.full_like(singles, -1))
            worst = singles.gather(1, single_loss.argmax(1, keepdim=True).cpu())[:, 0]
            partners = self.draw_partner(worst[:, None].expand(-1, s), generator)
            pair_loss = self._losses(model, x, y, worst[:, None].expand(-1, s), partners)
            best = pair_loss.argmax(1, keepdim=True)
            use_pair = (pair_loss.gather(1, best)[:, 0] > single_loss.max(1).values).cpu()
            first[rows] = worst
            second[rows] = torch.where(use_pair & (partners[:, 0] != worst),
                                       partners.gather(1, best.cpu())[:, 0], -1)
        return self.backend.masked_inputs(images, self.hidden_of(first, second).to(images.device),
                                          len(self.image_size))


class Cutout:
    """Classic Cutout (DeVries and Taylor, 2017): one ``size x size`` square, centred on a uniformly
    random pixel and clipped at the border, filled with the backend's fill; for comparison. Inputs
    ``(B, C, L)`` and ``(B, C, T, H, W)`` get a segment or a cube of side ``size``.

    Parameters
    ----------
    size : int
    p : float
        Probability that an image gets the square.
    backend : TorchBackend, optional
    """

    def __init__(self, size: int = 12, p: float = 1.0, backend: TorchBackend | None = None):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CertMaskError(f"cutout size must be an integer >= 1, got {size!r}")
        if not 0.0 <= p <= 1.0:
            raise CertMaskError(f"cutout probability must lie in [0, 1], got {p!r}")
        self.size, self.p = size, p
        self.backend = backend if backend is not None else TorchBackend()

    def __call__(self, model, images: torch.Tensor, labels, generator: torch.Generator) -> torch.Tensor:
        if not 3 <= images.ndim <= 5:
            raise CertMaskError(f"training images must have shape (B, C, H, W), (B, C, L) or "
                                f"(B, C, T, H, W), "
                                f"got {tuple(images.shape)}")
        (B, C), spatial = images.shape[:2], tuple(images.shape[2:])
        if len(self.backend.fill) not in (1, C):
            raise CertMaskError(f"fill has {len(self.backend.fill)} values but images have {C} channels")
        centres = [torch.randint(0, n, (B,), generator=generator) for n in spatial]
        on = torch.rand(B, generator=generator) < self.p
        lows = [(c - self.size // 2).clamp(min=0) for c in centres]
        highs = [(c - self.size // 2 + self.size).clamp(max=n) for c, n in zip(centres, spatial)]
        highs[0] = torch.where(on, highs[0], lows[0])  # an empty box where the image gets none
        hidden = self.backend.rasterise(torch.stack(lows + highs, 1).to(self.backend.device), *spatial)
        return self.backend.masked_inputs(images, hidden.to(images.device), len(spatial))


# ---------------------------------------------------------------------------------------- training
MAX_LR = 1e6
"""Largest learning rate accepted: far beyond any that trains, and its step sizes stay inside float32."""


@dataclass
class TrainConfig:
    """How to train. Everything that changes the weights is here, so a checkpoint can refuse to resume
    under different settings."""

    epochs: int = 7
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    hflip: bool = False
    seed: int = 0
    augmentation: str = "none"
    augmentation_options: dict | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CertMaskError(f"{name} must be an integer >= 1, got {value!r}")
        rules = {"lr": (lambda v: v > 0, "> 0"), "weight_decay": (lambda v: v >= 0, ">= 0"),
                 "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)")}
        for name, (holds, wanted) in rules.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and np.isfinite(value) and holds(value)):
                raise CertMaskError(f"{name} must be a finite number {wanted}, got {value!r}")
        if self.lr > MAX_LR:  # the optimiser computes in float32: 1e300 overflowed inside its step
            raise CertMaskError(f"lr must be at most {MAX_LR:g}, got {self.lr!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise CertMaskError(f"unknown augmentation {self.augmentation!r}; choose from {AUGMENTATIONS}")


def make_augmentation(config: TrainConfig, masksets=None, backend: TorchBackend | None = None):
    """The augmentation ``config`` names (None for ``"none"``), built with its options."""
    options = dict(config.augmentation_options or {})
    if config.augmentation == "none":
        return None
    if config.augmentation == "cutout":
        return Cutout(backend=backend, **options)
    if masksets is None:
        raise CertMaskError(f"augmentation {config.augmentation!r} needs the mask set(s) to train for")
    if config.augmentation == "maskset":
        return MaskSetAugment(masksets, backend=backend, **options)
    return GreedyMasks(masksets, backend=backend, **options)


def _labels_tensor(labels, count: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels))
    if y.ndim != 1 or len(y) != count or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise CertMaskError(f"labels must be {count} integers, got shape {tuple(y.shape)} dtype {y.dtype}")
    if count and int(y.min()) < 0:
        raise CertMaskError(f"labels must be >= 0, got {int(y.min())}")
    return y.long()


def _checked_logits(logits, batch: int, num_classes: int | None) -> torch.Tensor:
    """``logits`` when they are ``(batch, num_classes)`` (any class count when None), else CertMaskError."""
    ok = (isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[0] == batch
          and logits.shape[1] >= 1 and num_classes in (None, logits.shape[1]))
    if not ok:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        want = f"({batch}, {num_classes})" if num_classes else f"({batch}, classes)"
        raise CertMaskError(f"model must return {want} logits for training, got {shape}")
    return logits


def masked_accuracy(backend: TorchBackend, model, images, labels, maskset: MaskSet) -> dict:
    """Clean accuracy, mean one-mask accuracy and the fraction of images every one of whose masks is
    right (what detection certifies on labels alone) for ``(N, C, *image_size)`` images."""
    labels = np.asarray(labels)
    clean = backend.predict(model, images)
    masked = backend.masked_predictions(model, images, maskset)
    right = masked == labels[:, None]
    return {"clean_accuracy": float((clean == labels).mean()),
            "single_mask_accuracy": float(right.mean()),
            "all_masks_right": float(right.all(1).mean())}


def _environment() -> dict:
    return {"certmask": certmask_core.__version__, "python": platform.python_version(),
            **TorchBackend.versions()}


def _latest_checkpoint(folder: Path) -> Path | None:
    """The ``epoch-NNN.pt`` in ``folder`` with the highest epoch; other names (``epoch-final.pt``) are
    not checkpoints of this run and are ignored."""
    epochs = {}
    for path in folder.glob("epoch-*.pt"):
        match = re.fullmatch(r"epoch-(\d+)\.pt", path.name)
        if match:
            epochs[int(match[1])] = path
    return epochs[max(epochs)] if epochs else None


# what train() writes into a checkpoint, with the type each entry must have
_CHECKPOINT = {"config": dict, "model": dict, "optimizer": dict, "schedule": dict, "generator": torch.Tensor,
               "torch_rng": torch.Tensor, "epochs": list}


def _read_checkpoint(path: Path) -> dict:
    """The state of checkpoint ``path``, read as data.

    ``weights_only=True`` unpickles tensors and plain containers only: everything :func:`train` saves
    (the config, state dicts of the model, AdamW and OneCycleLR, random states, the epoch records) is
    made of them, so nothing is allow-listed and a crafted checkpoint cannot run code.
    """
    from .models import load_failure
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged, not a torch file, or asks for objects beyond plain data
        raise CertMaskError(f"cannot resume from {str(path)!r}: {load_failure(err)}") from err
    if not isinstance(state, dict):
        wrong = ["everything"]
    else:
        wrong = [key for key, kind in _CHECKPOINT.items() if not isinstance(state.get(key), kind)]
        if isinstance(state.get("epochs"), list) and not all(
                isinstance(e, dict) and isinstance(e.get("seconds"), (int, float)) for e in state["epochs"]):
            wrong.append("epochs")
        if not isinstance(state.get("greedy_forward_passes", 0), int):  # optional: 0 when absent
            wrong.append("greedy_forward_passes")
    if wrong:
        raise CertMaskError(f"cannot resume from {str(path)!r}: not a certmask training checkpoint (missing "
                            f"or mistyped: {', '.join(wrong)}); delete it or train into a new folder")
    return state


# entries of the optimiser and schedule state that move as training goes (checked on their own below);
# every other entry follows from the config and torch's defaults, so a genuine checkpoint equals the fresh one
_PROGRESS = frozenset({"state", "lr", "betas", "last_epoch", "_step_count", "_last_lr"})
# what an epoch record holds besides "epoch": loss and timings, and the optional evaluation
_EPOCH_NUMBERS = ("loss", "seconds", "step_seconds",
                  "clean_accuracy", "single_mask_accuracy", "all_masks_right")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value):
    """The type to compare; int and float are one kind (``lr=1`` and ``lr=1.0`` are one config)."""
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value)


def _shown(value) -> str:
    if isinstance(value, torch.Tensor):
        return repr(value) if value.numel() == 1 else f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return reprlib.repr(value)


def _check_checkpoint(state: dict, opt, sched, config: TrainConfig, steps_per_epoch: int, path: Path) -> None:
    """CertMaskError naming ``path`` and the field unless ``state`` holds what this run would have written
    after ``len(state["epochs"])`` epochs.

    ``load_state_dict`` copies the optimiser's and schedule's values unchecked, so a mistyped value
    (an lr of ``'x'``, a schedule stepped past its end) would fail only as a raw error inside the first
    training step, and a forged epoch list would end training early with a made-up record. ``opt`` and
    ``sched`` are the freshly built ones, not yet loaded.
    """
    def refuse(field, got, wanted):
        raise CertMaskError(f"cannot resume from {str(path)!r}: {field} is {got}, not {wanted} as this run "
                            f"would write it; delete it or train into a new folder")

    def compare(field, value, fresh):
        """Same structure, keys and kinds as ``fresh``, equal values outside the moving entries."""
        if _kind(value) != _kind(fresh):
            kind = _kind(fresh)
            refuse(field, _shown(value), f"a {kind if kind == 'number' else kind.__name__}")
        if isinstance(fresh, dict):
            if value.keys() != fresh.keys():
                refuse(field, f"a dict of {sorted(map(str, value))}", f"one of {sorted(map(str, fresh))}")
            for key in fresh.keys() - _PROGRESS:
                compare(f"{field}.{key}", value[key], fresh[key])
        elif isinstance(fresh, (list, tuple)):
            if len(value) != len(fresh):
                refuse(field, _shown(value), f"{len(fresh)} entries")
            for i, (v, f) in enumerate(zip(value, fresh)):
                compare(f"{field}[{i}]", v, f)
        elif value != fresh:  # also refuses nan
            refuse(field, _shown(value), _shown(fresh))

    epochs = state["epochs"]
    if len(epochs) > config.epochs:
        refuse("epochs", f"a list of {len(epochs)} epoch records", f"at most {config.epochs} (config epochs)")
    for i, entry in enumerate(epochs):
        required = ("epoch", *_EPOCH_NUMBERS[:3])
        for key in [*entry, *(k for k in required if k not in entry)]:  # missing ones last
            value = entry.get(key)
            if key == "epoch" and not (type(value) is int and value == i + 1):
                wanted = str(i + 1)
            elif key != "epoch" and not (key in entry and _finite(value) and value >= 0):
                wanted = "a finite number >= 0" if key in _EPOCH_NUMBERS else "absent"
            else:
                continue
            refuse(f"epochs[{i}].{key}", _shown(value) if key in entry else "missing", wanted)
    done = len(epochs) * steps_per_epoch  # optimiser and schedule steps taken so far

    schedule, fresh = state["schedule"], sched.state_dict()
    # total_steps, phases, base_lrs: from the config and the number of images (steps per epoch)
    compare("schedule", schedule, fresh)
    if type(schedule["last_epoch"]) is not int or schedule["last_epoch"] != done:
        refuse("schedule.last_epoch", _shown(schedule["last_epoch"]),
               f"{done} ({len(epochs)} recorded epoch(s) x {steps_per_epoch} steps)")
    if type(schedule["_step_count"]) is not int or schedule["_step_count"] != done + 1:
        refuse("schedule._step_count", _shown(schedule["_step_count"]), str(done + 1))
    last_lr = schedule["_last_lr"]
    if not (isinstance(last_lr, list) and len(last_lr) == len(fresh["_last_lr"])
            and all(map(_finite, last_lr))):
        refuse("schedule._last_lr", _shown(last_lr), f"a list of {len(fresh['_last_lr'])} finite numbers")

    optimizer, fresh = state["optimizer"], opt.state_dict()
    compare("optimizer", optimizer, fresh)  # eps, weight_decay, amsgrad, max_lr, ..., params
    for i, (group, fresh_group) in enumerate(zip(optimizer["param_groups"], fresh["param_groups"])):
        if not (_finite(group["lr"]) and group["lr"] >= 0):  # set by the schedule each step
            refuse(f"optimizer.param_groups[{i}].lr", _shown(group["lr"]), "a finite number >= 0")
        betas, beta2 = group["betas"], fresh_group["betas"][1]  # beta1 is the momentum the schedule cycles
        if not (isinstance(betas, tuple) and len(betas) == 2 and _finite(betas[0]) and 0 <= betas[0] < 1
                and _finite(betas[1]) and betas[1] == beta2):
            refuse(f"optimizer.param_groups[{i}].betas", _shown(betas), f"(a momentum in [0, 1), {beta2})")
    params = [p for group in opt.param_groups for p in group["params"]]
    moments = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opt.defaults.get("amsgrad") else ())
    if not isinstance(optimizer["state"], dict):
        refuse("optimizer.state", _shown(optimizer["state"]), "a dict")
    for index, entry in optimizer["state"].items():  # a parameter that never had a gradient has none
        field = f"optimizer.state[{index!r}]"
        if type(index) is not int or not 0 <= index < len(params):
            refuse(field, "present", f"absent (the model has {len(params)} parameters)")
        if not isinstance(entry, dict) or entry.keys() != {"step", *moments}:
            refuse(field, _shown(entry), f"a dict of step, {', '.join(moments)}")
        step = entry["step"]
        if not (isinstance(step, torch.Tensor) and step.ndim == 0 and step.is_floating_point()
                and torch.isfinite(step) and step == step.round() and 1 <= step <= done):
            refuse(f"{field}.step", _shown(step), f"a whole float tensor scalar in [1, {done}]")
        for name in moments:  # a nan or a negative second moment would poison the weights at once
            value, shape = entry[name], tuple(params[index].shape)
            if not (isinstance(value, torch.Tensor) and tuple(value.shape) == shape
                    and value.is_floating_point() and torch.isfinite(value).all()
                    and (name == "exp_avg" or (value >= 0).all())):
                refuse(f"{field}.{name}", _shown(value), f"a finite float tensor of shape {shape}"
                       + ("" if name == "exp_avg" else " >= 0"))

    # torch only checks the length of a random state, and only when set: check both before anything loads
    for key, fresh in (("generator", torch.Generator().get_state()), ("torch_rng", torch.get_rng_state())):
        if state[key].dtype != torch.uint8 or state[key].shape != fresh.shape:
            refuse(key, _shown(state[key]), f"a torch.uint8 tensor of shape {tuple(fresh.shape)}")
    passes = state.get("greedy_forward_passes", 0)
    if type(passes) is not int or passes < 0:
        refuse("greedy_forward_passes", _shown(passes), "an integer >= 0")
    # the model's state is left to load_state_dict: buffers may rightly hold -inf (attention masks)


def train(model: nn.Module, images, labels, config: TrainConfig | dict, *, masksets=None,
          backend: TorchBackend | None = None, eval_images=None, eval_labels=None,
          eval_maskset: MaskSet | None = None, checkpoint_dir=None, resume: bool = False,
          show_progress: bool | None = None, log=print) -> dict:
    """Train ``model`` in place (AdamW, one-cycle learning rate) and return the training record.

    Parameters
    ----------
    model : nn.Module
        Maps ``(B, C, H, W)`` pixel-space images to ``(B, K)`` logits; trained from its current
        weights (fine-tuning when they are trained already).
    images : array or tensor, shape (N, C, H, W), float in the backend's ``value_range``
    labels : array, shape (N,), int in ``[0, K)``
    config : TrainConfig or dict of its fields
    masksets : MaskSet or sequence of MaskSet, optional
        The certification mask set(s), needed by the ``maskset`` and ``greedy`` augmentations.
    backend : TorchBackend, optional
        Fill, device and validation (default ``TorchBackend()``).
    eval_images, eval_labels : optional
        Held-out data evaluated after each epoch: clean accuracy, and with ``eval_maskset`` the mean
        one-mask accuracy and the fraction of images all of whose masks are right.
    checkpoint_dir : path, optional
        A checkpoint ``epoch-NNN.pt`` (model, optimiser, schedule, random states, record) is written
        after every epoch.
    resume : bool
        Continue from the latest checkpoint in ``checkpoint_dir`` (the highest ``epoch-NNN.pt``; other
        names are ignored); the result equals an uninterrupted run with the same config. The checkpoint
        is read as data (``torch.load(weights_only=True)``, so it cannot run code); one that cannot be
        read, lacks what :func:`train` writes, holds values this run would not have written (a mistyped
        learning rate, a schedule or epoch list that disagrees with the config), was written under
        another config or does not fit the model is refused with a :class:`CertMaskError` naming it
        and the field.

    Returns
    -------
    dict
        ``config``, ``environment``, ``epochs`` (per epoch: loss, seconds, step seconds and the
        evaluation), ``train_seconds`` and, for greedy training, its extra forward passes.
    """
    backend = backend if backend is not None else TorchBackend()
    if isinstance(config, dict):
        config = TrainConfig(**config)
    from .models import ExportedModel
    if not isinstance(model, nn.Module) or isinstance(model, ExportedModel):
        raise CertMaskError(f"model must be a trainable torch nn.Module, got {type(model).__name__} (a "
                            f"torch.export program is inference-only: train the module, then export it)")
    x = backend.prepare_images(model, images)
    y = _labels_tensor(labels, len(x)).to(backend.device)
    if len(x) < config.batch_size:
        raise CertMaskError(f"{len(x)} training images is fewer than one batch of {config.batch_size}")
    augment = make_augmentation(config, masksets, backend)
    if isinstance(augment, MaskSetAugment):
        augment.check_images(x[:1])
    with torch.no_grad(), eval_mode(model):
        num_classes = _checked_logits(model(x[:2]), 2, None).shape[1]
    if int(y.max()) >= num_classes:
        raise CertMaskError(f"labels reach {int(y.max())} but the model returns {num_classes} classes")

    steps_per_epoch = len(x) // config.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr,
                                                total_steps=config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout and other in-model randomness
    record = {"config": asdict(config), "environment": _environment(), "epochs": [],
              "train_images": len(x), "num_classes": num_classes}
    start_epoch = 0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if folder is None:
            raise CertMaskError("resume needs a checkpoint_dir")
        latest = _latest_checkpoint(folder)
        if latest is not None:
            state = _read_checkpoint(latest)
            if state["config"] != asdict(config):
                raise CertMaskError(f"{str(latest)!r} was written with config {state['config']}, not "
                                    f"{asdict(config)}; resume with the same settings or a new folder")
            try:
                model.load_state_dict(state["model"])  # first, so that another architecture is named so
                _check_checkpoint(state, opt, sched, config, steps_per_epoch, latest)
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["schedule"])
                generator.set_state(state["generator"])
                torch.set_rng_state(state["torch_rng"])
            except CertMaskError:
                raise
            except Exception as err:  # another architecture, or states of the wrong size
                raise CertMaskError(f"cannot resume from {str(latest)!r}: its state does not fit this model "
                                    f"and config: {err}") from err
            record["epochs"] = state["epochs"]
            start_epoch = len(record["epochs"])
            if isinstance(augment, GreedyMasks):
                augment.forward_passes = state.get("greedy_forward_passes", 0)
            log(f"resumed from {latest} after epoch {start_epoch}")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total_loss = 0.0
        with progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", show_progress) as bar:
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size:(step + 1) * config.batch_size].to(backend.device)
                xb, yb = x[idx], y[idx]
                if config.hflip:
                    flip = (torch.rand(len(xb), generator=generator) < 0.5).to(xb.device)
                    xb = torch.where(flip.view((-1,) + (1,) * (xb.ndim - 1)), xb.flip(-1), xb)
                if augment is not None:
                    xb = augment(model, xb, yb, generator)
                loss = loss_fn(_checked_logits(model(xb), len(xb), num_classes), yb)
                if not torch.isfinite(loss):
                    raise CertMaskError(f"training loss became {loss.item()} at epoch {epoch + 1}, step "
                                        f"{step + 1}; lower the learning rate (lr={config.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item()
                bar.update()
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "loss": total_loss / steps_per_epoch, "seconds": round(seconds, 2),
                 "step_seconds": seconds / steps_per_epoch}
        if eval_images is not None:
            if eval_maskset is not None:
                entry.update(masked_accuracy(backend, model, eval_images, eval_labels, eval_maskset))
            else:
                entry["clean_accuracy"] = float((backend.predict(model, eval_images)
                                                 == np.asarray(eval_labels)).mean())
        record["epochs"].append(entry)
        log(" ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in entry.items()))
        if folder is not None:
            state = {"config": asdict(config), "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "schedule": sched.state_dict(), "generator": generator.get_state(),
                     "torch_rng": torch.get_rng_state(), "epochs": record["epochs"],
                     "greedy_forward_passes": getattr(augment, "forward_passes", 0)}
            tmp = folder / f".epoch-{epoch + 1:03d}.pt.partial"
            torch.save(state, tmp)
            tmp.replace(folder / f"epoch-{epoch + 1:03d}.pt")  # a kill mid-write leaves no torn checkpoint
    model.eval()
    record["train_seconds"] = round(sum(e["seconds"] for e in record["epochs"]), 1)
    record["step_seconds"] = record["train_seconds"] / (config.epochs * steps_per_epoch)
    if isinstance(augment, GreedyMasks):
        seen = config.epochs * steps_per_epoch * config.batch_size
        record["greedy_scoring_passes_per_image"] = augment.forward_passes / seen
    return record

