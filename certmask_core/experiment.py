"""End-to-end certification of a dataset: plan mask sets, ask a backend for predictions, certify.

Framework-free: the backend object (see :mod:`certmask_core.registry`) does all model work. A run may
be sharded over processes: each takes the images ``rank::world`` and ``gather`` (supplied by the
launcher, e.g. ``torch.distributed``) brings the per-image results to rank 0, where they are merged
once, by image index.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .certification import (
    DEFAULT_MARGIN_TOLERANCE,
    GUARANTEES,
    MODES,
    RECOVERY_CERTIFICATES,
    SOUND,
    CertificationReport,
    certify,
)
from .constructions import make_maskset, plan_summary
from .datasets import FASHION_MNIST_CLASSES, load_bundled_subset, load_fashion_mnist, load_npz
from .errors import CertMaskError
from .geometry import PatchThreat
from .progress import Progress

DATASETS = ("fashion-mnist", "fashion-mnist-subset")


def load_dataset(name: str, root: str | None = None, limit: int | None = None, split: str = "test"):
    """Images as float32 ``(N, C, H, W)`` in ``[0, 1]``, int64 labels and a source string.

    ``name`` is one of :data:`DATASETS` or a path to an ``.npz`` file (see
    :func:`certmask_core.datasets.load_npz`); ``split`` picks Fashion-MNIST's ``"test"`` or ``"train"``.
    """
    if limit is not None and limit < 1:
        raise CertMaskError(f"limit must be >= 1, got {limit}")
    if str(name).endswith(".npz"):
        images, labels, source = load_npz(name)
    elif name == "fashion-mnist":
        images, labels, source = load_fashion_mnist(split, root=root)
        images = images[:, None].astype(np.float32) / 255.0
    elif name == "fashion-mnist-subset":
        if split != "test":
            raise CertMaskError(f"the bundled subset holds test images only, not split {split!r}")
        images, labels, source = load_bundled_subset()
        images = images[:, None].astype(np.float32) / 255.0
    else:
        raise CertMaskError(f"unknown dataset {name!r}; choose one of {DATASETS} or a path to an .npz file")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(images) == 0:
        raise CertMaskError(f"dataset {name!r} from {source} is empty")
    return images, labels, source


@dataclass
class RunConfig:
    """What to certify: one patch size, one mask size rule, several strategies, ks and modes."""

    patch: tuple[int, int]
    ks: Sequence[int] = (1,)
    strategies: Sequence[str] = ("replicated",)
    modes: Sequence[str] = ("detection",)
    masks_per_axis: tuple[int, int] | None = (4, 4)
    mask_size: tuple[int, int] | None = None
    image_batch: int = 100
    margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE
    recovery_certificate: str = "hitting_set"

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise CertMaskError(f"unknown modes {bad}; choose from {MODES}")
        if self.recovery_certificate not in RECOVERY_CERTIFICATES:
            raise CertMaskError(f"unknown recovery certificate {self.recovery_certificate!r}; choose from "
                                f"{RECOVERY_CERTIFICATES}")
        if self.mask_size is not None:
            self.masks_per_axis = None


@dataclass
class _Partial:
    """Per-image results of one shard, keyed by (strategy, k, mode)."""

    indices: np.ndarray
    undefended: np.ndarray
    reports: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def _certify_shard(backend, model, images, labels, indices, config: RunConfig, threat, masksets,
                   show_progress) -> _Partial:
    part = _Partial(indices, backend.predict(model, images[indices]))
    total_masks = sum(len(ms) for ms in masksets.values())
    with Progress(len(indices) * total_masks, "certify (image x mask)", show_progress) as bar:
        for (strategy, k), ms in masksets.items():
            chunks: dict[str, list[CertificationReport]] = {m: [] for m in config.modes}
            first_round_seconds = 0.0
            for start in range(0, len(indices), config.image_batch):
                idx = indices[start:start + config.image_batch]
                x, y = images[idx], labels[idx]
                t0 = time.perf_counter()
                first = backend.masked_predictions(model, x, ms, return_logits=True)
                first_round_seconds += time.perf_counter() - t0
                for mode in config.modes:
                    t0 = time.perf_counter()
                    kwargs = {"margin_tolerance": config.margin_tolerance}
                    if mode == "recovery":
                        kwargs.update(pair_predictor=backend.pair_predictor(model, x, ms, return_logits=True),
                                      pair_chunk=backend.batch_size,
                                      recovery_certificate=config.recovery_certificate)
                    chunks[mode].append(certify(first, y, ms, mode, k=k, **kwargs))
                    part.seconds[(strategy, k, mode)] = (part.seconds.get((strategy, k, mode), 0.0)
                                                         + time.perf_counter() - t0)
                bar.update(len(idx) * len(ms))
            for mode in config.modes:
                part.seconds[(strategy, k, mode)] += first_round_seconds
                part.reports[(strategy, k, mode)] = _concat(chunks[mode])
    return part


def _concat(reports: list[CertificationReport], order: np.ndarray | None = None) -> CertificationReport:
    """One report holding the images of ``reports`` in turn, optionally reordered by ``order``."""
    r0 = reports[0]
    cols = {name: np.concatenate([getattr(r, name) for r in reports]) for name in r0.PER_IMAGE}
    if order is not None:
        cols = {name: col[order] for name, col in cols.items()}
    return CertificationReport(r0.mode, r0.guarantee, r0.sound, **cols, margin_tolerance=r0.margin_tolerance,
                               certificate=r0.certificate, num_masks=r0.num_masks)


def _merge(parts: list[_Partial]) -> _Partial:
    """Merge shards by image index; every index must appear exactly once."""
    indices = np.concatenate([p.indices for p in parts])
    order = np.argsort(indices, kind="stable")
    if len(np.unique(indices)) != len(indices):
        raise CertMaskError("shards overlap: an image was certified by two processes")
    merged = _Partial(indices[order], np.concatenate([p.undefended for p in parts])[order])
    for key in parts[0].reports:
        merged.reports[key] = _concat([p.reports[key] for p in parts], order)
        # wall time of a sharded run is the slowest shard's
        merged.seconds[key] = max(p.seconds[key] for p in parts)
    return merged


def run_certification(backend, model, images: np.ndarray, labels: np.ndarray, config: RunConfig,
                      rank: int = 0, world: int = 1,
                      gather: Callable[[object], list | None] | None = None,
                      show_progress: bool | None = None) -> dict | None:
    """Certify ``images`` under every (strategy, k, mode) of ``config``.

    Parameters
    ----------
    backend
        An object with ``predict``, ``masked_predictions``, ``pair_predictor`` and ``batch_size``
        (e.g. :class:`certmask_backends.pytorch.TorchBackend`).
    model
        Whatever the backend runs.
    images : ndarray, shape (N, C, H, W), float32 in [0, 1]
    labels : ndarray, shape (N,)
    config : RunConfig
    rank, world : int
        This process's shard: images ``rank::world``.
    gather : callable, optional
        ``gather(obj)`` returns the list of every rank's ``obj`` on rank 0 and None elsewhere.
        Required when ``world > 1``.

    Returns
    -------
    dict or None
        The JSON-ready results on rank 0; None on other ranks.
    """
    if images.ndim != 4 or len(images) != len(labels):
        raise CertMaskError(f"images must be (N, C, H, W) with N = len(labels), got {images.shape} "
                            f"and {len(labels)} labels")
    if len(images) == 0:
        raise CertMaskError("no images to certify")
    if world > 1 and gather is None:
        raise CertMaskError("a sharded run (world > 1) needs a gather function")
    threat = PatchThreat(images.shape[2:], config.patch)
    masksets = {(s, k): make_maskset(threat, k, s, mask_size=config.mask_size,
                                     masks_per_axis=config.masks_per_axis)
                for s in config.strategies for k in config.ks}
    indices = np.arange(len(images))[rank::world]
    part = _certify_shard(backend, model, images, labels, indices, config, threat, masksets,
                          show_progress)
    if world > 1:
        parts = gather(part)
        if parts is None:
            return None
        part = _merge(parts)
    undefended = float((part.undefended == labels[part.indices]).mean())
    runs = []
    for (strategy, k), ms in masksets.items():
        plan = plan_summary(ms)
        for mode in config.modes:
            report = part.reports[(strategy, k, mode)]
            summary = report.summary()
            summary["images_per_second"] = len(report.labels) / max(part.seconds[(strategy, k, mode)],
                                                                    1e-9)
            per_image = {"output": report.output.tolist(), "certified": report.certified.tolist(),
                         "min_margin": [float(m) if np.isfinite(m) else None for m in report.min_margin]}
            if not report.sound:
                per_image["claim_holds"] = report.claim_holds.tolist()
            runs.append({"strategy": strategy, "k": k, **summary, "plan": plan, "per_image": per_image})
    return {"patch": list(config.patch), "images": len(part.indices), "world_size": world,
            "undefended_accuracy": undefended, "runs": runs,
            "guarantees": {m: GUARANTEES[m] for m in config.modes},
            "unsound_modes": [m for m in config.modes if not SOUND[m]]}


def results_table(results: dict) -> str:
    """Human-readable Markdown table of a results dict."""
    lines = [f"patch {results['patch'][0]}x{results['patch'][1]}, {results['images']} images, "
             f"undefended accuracy {results['undefended_accuracy']:.4f}", "",
             "| strategy | k | masks | bound | mode | certificate | clean acc | certified acc | alert rate | "
             "passes/img | img/s | guarantee |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        cert = r.get("certified_accuracy")
        cert_text = f"{cert:.4f}" if cert is not None else \
            f"{r['claimed_certified_accuracy_UNSOUND']:.4f} (UNSOUND claim)"
        lines.append(f"| {r['strategy']} | {r['k']} | {r['plan']['num_masks']} | "
                     f"{r['plan']['lower_bound']} | {r['mode']} | {r['certificate']} | "
                     f"{r['clean_accuracy']:.4f} | "
                     f"{cert_text} | {r['alert_rate']:.4f} | "
                     f"{r['certificate_passes_per_image']:.1f} | {r['images_per_second']:.1f} | "
                     f"{r['guarantee']} |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out_dir: str | os.PathLike, images=None, plots: bool = True) -> Path:
    """Write ``results.json``, ``results.md`` and PNGs into ``out_dir`` atomically.

    Everything is written into a temporary folder beside ``out_dir`` and renamed into place at the
    end, so an interrupted run never leaves a complete-looking ``results.json``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (tmp / "results.md").write_text(results_table(results))
    if plots:
        from . import plots as _plots
        _plots.accuracy_vs_k(results, tmp / "accuracy_vs_k.png")
        if images is not None:
            first = results["runs"][0]
            threat = PatchThreat(images.shape[2:], results["patch"])
            ms = make_maskset(threat, first["k"], first["strategy"],
                              mask_size=tuple(first["plan"]["mask_size"]))
            _plots.example_images(images[:8], ms, first["per_image"]["output"][:8],
                                  FASHION_MNIST_CLASSES, tmp / "examples.png")
    (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if out.exists():
        if any(out.iterdir()) and not (out / "results.json").exists():
            shutil.rmtree(tmp)
            raise CertMaskError(f"{str(out)!r} exists and holds no results.json; not overwriting it")
        shutil.rmtree(out)
    tmp.rename(out)
    return out
