"""End-to-end certification of a dataset: plan mask sets, ask a backend for predictions, certify.

Framework-free: the backend object (see :mod:`certmask_core.registry`) does all model work. A run may
be sharded over processes: each takes the images ``rank::world`` and ``gather`` (supplied by the
launcher, e.g. ``torch.distributed``) brings the per-image results to rank 0, where they are merged
once, by image index.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..certification import (
    CERTIFICATES,
    DEFAULT_MARGIN_TOLERANCE,
    GUARANTEES,
    MODES,
    RECOVERY_CERTIFICATES,
    SOUND,
    CertificationReport,
    certify,
)
from ..constructions import make_maskset, plan_summary
from ..coverage import coverage_extremes
from ..errors import CertMaskError
from ..geometry import MaskSet, PatchThreat
from ..multipatch import MaskGroups, base_set, check_patches, combination_groups
from ..sizes import PairCache, SizeReport, certify_sizes, patch_sizes
from .datasets import DATA_SPECS, Dataset, load_data, load_dataset  # noqa: F401 (the run layer's API)
from .progress import progress_bar


@dataclass
class RunConfig:
    """What to certify: one patch size, one mask size rule, several strategies, ks and modes.

    ``mask_files`` adds user mask-set files (``certmask plan --json``), each certified with the
    coverage it verifiably gives ``patch``. ``patches`` > 1 certifies that many patches over the
    groups of that many masks of each set (T15). ``sizes`` also certifies every listed patch size from
    the same predictions (T14).
    """

    patch: tuple[int, int]
    ks: Sequence[int] = (1,)
    strategies: Sequence[str] = ("replicated",)
    modes: Sequence[str] = ("detection",)
    masks_per_axis: tuple[int, int] | None = (4, 4)
    mask_size: tuple[int, int] | None = None
    image_batch: int = 100
    margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE
    recovery_certificate: str = "hitting_set"
    mask_files: Sequence[str] = ()
    patches: int = 1
    sizes: Sequence[tuple[int, int]] | None = None

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise CertMaskError(f"unknown modes {bad}; choose from {MODES}")
        if self.recovery_certificate not in RECOVERY_CERTIFICATES:
            raise CertMaskError(f"unknown recovery certificate {self.recovery_certificate!r}; choose from "
                                f"{RECOVERY_CERTIFICATES}")
        if self.mask_size is not None:
            self.masks_per_axis = None
        self.patches = check_patches(self.patches)
        if self.patches > 1 and "paper" in self.modes:
            raise CertMaskError("mode 'paper' is defined for one patch only")
        if self.sizes is not None:
            self.sizes = [list(size) for size in patch_sizes(self.sizes)]
        if not self.strategies and not self.mask_files:
            raise CertMaskError("nothing to certify: give a strategy or a mask-set file")


@dataclass
class _Partial:
    """Per-image results of one shard, keyed by (strategy, k, mode)."""

    indices: np.ndarray
    undefended: np.ndarray
    reports: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # SizeReport per key, when the run certifies sizes


def read_maskset(path_text: str) -> MaskSet:
    """A mask set from a JSON file (``certmask plan --json``); any defect is a CertMaskError."""
    path = Path(path_text)
    if not path.is_file():
        raise CertMaskError(f"mask-set file not found: {str(path)!r}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CertMaskError(f"cannot read the mask-set file {str(path)!r}: {err}") from None
    return MaskSet.from_json(text)


def masksets_of(config: RunConfig, image_size) -> dict:
    """The mask family of every (strategy, k) of ``config`` for images of ``image_size``.

    A mask-set file is keyed ``("file:NAME", k)`` with ``k`` the coverage it verifiably gives the
    patch (a file that leaves a position uncovered is refused). With ``patches > 1`` each set is
    replaced by its groups of ``patches`` masks.
    """
    threat = PatchThreat(tuple(image_size), config.patch)
    sets = {(s, k): make_maskset(threat, k, s, mask_size=config.mask_size,
                                 masks_per_axis=config.masks_per_axis)
            for s in config.strategies for k in config.ks}
    for path in config.mask_files:
        ms = read_maskset(path)
        if ms.image_size != threat.image_size:
            raise CertMaskError(f"{path}: the mask set is for {ms.image_size[0]}x{ms.image_size[1]} images, "
                                f"the data are {threat.image_size[0]}x{threat.image_size[1]}")
        low, _, position = coverage_extremes(ms, threat)
        if low == 0:
            raise CertMaskError(f"{path}: no mask covers the {config.patch[0]}x{config.patch[1]} patch at "
                                f"position {position}; nothing could be certified")
        sets[(f"file:{Path(path).name}", low)] = ms
    if config.patches > 1:
        sets = {key: combination_groups(ms, config.patches) for key, ms in sets.items()}
    return sets


def family_plan(family, threat: PatchThreat) -> dict:
    """:func:`plan_summary` of the (base) set for ``threat``, with the group count for several patches."""
    plan = plan_summary(base_set(family), threat)
    if isinstance(family, MaskGroups):
        plan.update(groups=len(family), masks_per_group=int(family.members.shape[1]))
    return plan


def _certify_shard(backend, model, images, labels, indices, config: RunConfig, masksets,
                   show_progress, on_batch: Callable | None = None) -> _Partial:
    """Certify ``images[indices]``, one batch of images at a time under every set and mode, calling
    ``on_batch(indices, undefended, reports, size_reports)`` after each batch (per-image results are
    streamed)."""
    part = _Partial(indices, np.zeros(len(indices), np.int64))
    chunks: dict[tuple, list[CertificationReport]] = {}
    size_chunks: dict[tuple, list[SizeReport]] = {}
    total_masks = sum(len(ms) for ms in masksets.values())
    with progress_bar(len(indices) * total_masks, "certify (image x mask)", show_progress) as bar:
        for start in range(0, len(indices), config.image_batch):
            idx = indices[start:start + config.image_batch]
            x, y = images[idx], labels[idx]
            part.undefended[start:start + len(idx)] = backend.predict(model, x)
            batch_reports, batch_sizes = {}, {}
            for (strategy, k), ms in masksets.items():
                t0 = time.perf_counter()
                first = backend.masked_predictions(model, x, ms, return_logits=True)
                first_round_seconds = time.perf_counter() - t0
                # one cache per set: the defence, the certificate and every patch size share pair answers
                cache = (PairCache(backend.pair_predictor(model, x, ms, return_logits=True), len(idx))
                         if "recovery" in config.modes else None)
                for mode in config.modes:
                    t0 = time.perf_counter()
                    kwargs = {"margin_tolerance": config.margin_tolerance}
                    if mode == "recovery":
                        kwargs.update(recovery_certificate=config.recovery_certificate)
                    key = (strategy, k, mode)
                    batch_reports[key] = certify(
                        first, y, ms, mode, k=k if config.patches == 1 else 1, patches=config.patches,
                        pair_predictor=cache.view(np.arange(len(idx))) if mode == "recovery" else None,
                        pair_chunk=backend.batch_size, **kwargs)
                    chunks.setdefault(key, []).append(batch_reports[key])
                    if config.sizes is not None and SOUND[mode]:
                        batch_sizes[key] = certify_sizes(first, y, ms, config.sizes, mode, patch=config.patch,
                                                         pair_cache=cache, patches=config.patches, **kwargs)
                        size_chunks.setdefault(key, []).append(batch_sizes[key])
                    part.seconds[key] = (part.seconds.get(key, 0.0) + first_round_seconds
                                         + time.perf_counter() - t0)
            if on_batch is not None:
                on_batch(idx, part.undefended[start:start + len(idx)], batch_reports, batch_sizes)
            bar.update(len(idx) * total_masks)
    part.reports = {key: _concat(reports) for key, reports in chunks.items()}
    part.sizes = {key: _concat_sizes(reports) for key, reports in size_chunks.items()}
    return part


def _run_key(strategy: str, k: int, mode: str) -> str:
    return f"{strategy}/k{k}/{mode}"


def _json_float(value: float):
    return float(value) if np.isfinite(value) else repr(float(value))  # "inf", "nan": exact, valid JSON


def per_image_lines(indices, labels, undefended, reports: dict, names=None, sizes: dict | None = None
                    ) -> list[str]:
    """:func:`per_image_records` as JSON lines."""
    records = per_image_records(indices, labels, undefended, reports, names, sizes)
    return [json.dumps(record) + "\n" for record in records]


def per_image_records(indices, labels, undefended, reports: dict, names=None, sizes: dict | None = None
                      ) -> list[dict]:
    """One record per image: id (its index), name (``names[index]``, e.g. a relative path, when
    given), label, undefended prediction and every run's per-image fields; with ``sizes`` (SizeReports
    by run) also ``sizes_certified`` (one 0/1 per patch size) and ``sizes_passes``."""
    records = []
    for row, index in enumerate(indices):
        runs = {}
        for (strategy, k, mode), report in reports.items():
            fields = {name: getattr(report, name)[row] for name in report.PER_IMAGE if name != "labels"}
            run = runs[_run_key(strategy, k, mode)] = {
                name: (_json_float(v) if name == "min_margin" else bool(v) if v.dtype == bool else int(v))
                for name, v in fields.items()}
            if sizes and (strategy, k, mode) in sizes:
                by_size = sizes[(strategy, k, mode)]
                run.update(sizes_certified=by_size.certified[row].astype(int).tolist(),
                           sizes_passes=int(by_size.passes[row]))
        named = {"name": names[index]} if names is not None else {}
        records.append({"id": int(index), **named, "label": int(labels[index]),
                        "undefended": int(undefended[row]), "runs": runs})
    return records


def read_per_image(path) -> dict[int, dict]:
    """The complete lines of a ``per_image.jsonl`` by image id. A torn last line (the process was killed
    while writing it) is dropped from the file; any other unreadable line is an error."""
    path = Path(path)
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    keep = raw[:raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        path.write_bytes(keep)
    records = {}
    for number, line in enumerate(keep.decode().splitlines(), 1):
        try:
            record = json.loads(line)
            records[int(record["id"])] = record
        except (ValueError, KeyError, TypeError) as err:
            raise CertMaskError(f"{str(path)!r} line {number} is not a per-image record: {err}") from None
    return records


def _part_from_records(records: dict[int, dict], config: RunConfig, masksets: dict) -> _Partial:
    """The per-image results of ``records`` as certification reports (inverse of per_image_records)."""
    order = sorted(records)
    part = _Partial(np.array(order, np.int64), np.array([records[i]["undefended"] for i in order], np.int64))
    for (strategy, k), ms in masksets.items():
        for mode in config.modes:
            key = _run_key(strategy, k, mode)
            try:
                rows = [records[i]["runs"][key] for i in order]
            except KeyError:
                raise CertMaskError(f"the per-image results hold no run {key!r}: they were written by a run "
                                    f"with other settings") from None
            cols = {"labels": np.array([records[i]["label"] for i in order], np.int64)}
            for name in CertificationReport.PER_IMAGE[1:]:
                values = [row[name] for row in rows]
                cols[name] = np.array(values, np.float64 if name == "min_margin" else
                                      bool if isinstance(values[0], bool) else np.int64)
            certificate = CERTIFICATES.get(mode, config.recovery_certificate)
            part.reports[(strategy, k, mode)] = CertificationReport(
                mode, GUARANTEES[mode], SOUND[mode], **cols, margin_tolerance=config.margin_tolerance,
                certificate=certificate, num_masks=len(ms))
            if config.sizes is not None and SOUND[mode]:
                # no image: the sizes' geometry only (recovery's is detection's: both are size-free)
                geometry = certify_sizes(np.zeros((0, len(ms)), np.int64), np.zeros(0, np.int64), ms,
                                         config.sizes, mode if mode != "recovery" else "detection",
                                         patch=config.patch, patches=config.patches)
                part.sizes[(strategy, k, mode)] = dataclasses.replace(
                    geometry, mode=mode, guarantee=GUARANTEES[mode], labels=cols["labels"],
                    certified=np.array([row["sizes_certified"] for row in rows], bool).reshape(
                        len(rows), len(geometry.sizes)),
                    passes=np.array([row["sizes_passes"] for row in rows], np.int64))
    return part


def _concat_sizes(reports: list[SizeReport], order: np.ndarray | None = None) -> SizeReport:
    r0 = reports[0]
    cols = {name: np.concatenate([getattr(r, name) for r in reports]) for name in ("labels", "certified",
                                                                                   "passes")}
    if order is not None:
        cols = {name: col[order] for name, col in cols.items()}
    return dataclasses.replace(r0, **cols)


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
    for key in parts[0].sizes:
        merged.sizes[key] = _concat_sizes([p.sizes[key] for p in parts], order)
    return merged


def run_certification(backend, model, images: np.ndarray, labels: np.ndarray, config: RunConfig,
                      rank: int = 0, world: int = 1,
                      gather: Callable[[object], list | None] | None = None,
                      show_progress: bool | None = None, per_image_path=None,
                      resume: bool = False, names=None) -> dict | None:
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
    per_image_path : path, optional
        Stream one JSON line per image (see :func:`per_image_lines`) to this file as each batch of
        images is certified (a sharded run writes it on rank 0 at the end).
    resume : bool
        Keep the images already in ``per_image_path`` and certify only the others; the results equal
        an uninterrupted run's (certificates do not depend on batch make-up).
    names : sequence of str, optional
        Each image's name (e.g. its path in an image folder), kept in the per-image results.

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
    masksets = masksets_of(config, images.shape[2:])
    if resume and (world > 1 or per_image_path is None):
        raise CertMaskError("resume needs per_image_path and a single process (world = 1)")
    done = read_per_image(per_image_path) if resume else {}
    if any(not 0 <= i < len(images) for i in done):
        raise CertMaskError(f"{str(per_image_path)!r} holds image ids outside [0, {len(images)}): "
                            f"written for other data")
    streaming = per_image_path is not None and world == 1
    if per_image_path is not None and not resume:
        Path(per_image_path).write_text("")
    stream = open(per_image_path, "a") if streaming else None  # noqa: SIM115 (closed below)

    def write_batch(idx, undefended, reports, sizes):
        stream.writelines(per_image_lines(idx, labels, undefended, reports, names, sizes))
        stream.flush()

    indices = np.array([i for i in range(rank, len(images), world) if i not in done], np.int64)
    try:
        part = _certify_shard(backend, model, images, labels, indices, config, masksets, show_progress,
                              write_batch if streaming else None)
    finally:
        if stream is not None:
            stream.close()
    if world > 1:
        parts = gather(part)
        if parts is None:
            return None
        part = _merge(parts)
        if per_image_path is not None:
            Path(per_image_path).write_text("".join(per_image_lines(part.indices, labels, part.undefended,
                                                                    part.reports, names, part.sizes)))
    if done:
        seconds = part.seconds
        new = per_image_records(part.indices, labels, part.undefended, part.reports, sizes=part.sizes)
        part = _part_from_records({**done, **{r["id"]: r for r in new}}, config, masksets)
        part.seconds = seconds
    undefended = float((part.undefended == labels[part.indices]).mean())
    runs = []
    threat = PatchThreat(images.shape[2:], config.patch)
    for (strategy, k), ms in masksets.items():
        plan = family_plan(ms, threat)
        for mode in config.modes:
            report = part.reports[(strategy, k, mode)]
            summary = report.summary()
            seconds = part.seconds.get((strategy, k, mode))
            # over the images certified by this process (a resumed run: the new ones only)
            summary["images_per_second"] = ((len(part.indices) - len(done)) / max(seconds, 1e-9)
                                            if seconds else None)
            per_image = {"output": report.output.tolist(), "certified": report.certified.tolist(),
                         "min_margin": [float(m) if np.isfinite(m) else None for m in report.min_margin]}
            if not report.sound:
                per_image["claim_holds"] = report.claim_holds.tolist()
            by_size = {}
            if (strategy, k, mode) in part.sizes:
                size_report = part.sizes[(strategy, k, mode)]
                size_summary = size_report.summary()
                by_size = {"sizes": size_summary["sizes"],
                           "sizes_defence_deployed_for": size_summary["defence_deployed_for"],
                           "sizes_passes_per_image": size_summary["passes_per_image"]}
                per_image["largest_certified"] = size_report.largest_certified().tolist()
            runs.append({"strategy": strategy, "k": k, **summary, "plan": plan, **by_size,
                         "per_image": per_image})
    return {"patch": list(config.patch), "patches": config.patches, "sizes": config.sizes,
            "images": len(part.indices), "world_size": world,
            "num_classes": int(max(labels.max(), part.undefended.max()) + 1),
            "resumed_images": len(done),
            "undefended_accuracy": undefended, "runs": runs,
            "guarantees": {m: GUARANTEES[m] for m in config.modes},
            "unsound_modes": [m for m in config.modes if not SOUND[m]]}


def results_table(results: dict) -> str:
    """Human-readable Markdown table of a results dict."""
    several = f" ({results['patches']} patches)" if results.get("patches", 1) > 1 else ""
    lines = [f"patch {results['patch'][0]}x{results['patch'][1]}{several}, {results['images']} images, "
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
                     f"{r['certificate_passes_per_image']:.1f} | "
                     f"{'-' if r['images_per_second'] is None else format(r['images_per_second'], '.1f')} | "
                     f"{r['guarantee']} |")
    if results.get("sizes"):
        sizes = [f"{h}x{w}" for h, w in results["sizes"]]
        patch = f"{results['patch'][0]}x{results['patch'][1]}"
        lines += ["", "Certified accuracy by patch size (T14: one set of predictions; plurality and "
                  f"covering_consensus as deployed for the {patch} patch; `-`: the set does not cover that "
                  "size, or that deployment cannot answer for it)", "",
                  "| strategy | k | mode | passes/img | " + " | ".join(sizes) + " |",
                  "|---|---|---|---|" + "---|" * len(sizes)]
        for r in results["runs"]:
            if "sizes" in r:
                cells = [f"{s['certified_accuracy']:.4f}" if s["certifiable"] else "-" for s in r["sizes"]]
                lines.append(f"| {r['strategy']} | {r['k']} | {r['mode']} | "
                             f"{r['sizes_passes_per_image']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


RUN_FILES = ("results.json", "run.json", PER_IMAGE_FILE := "per_image.jsonl")


def write_outputs(results: dict, out_dir: str | os.PathLike, images=None, plots: bool = True,
                  maskset: MaskSet | None = None) -> Path:
    """Write ``results.json``, ``results.md`` and PNGs into ``out_dir``.

    ``examples.png`` shows ``images[:8]`` under ``maskset`` (default: the first run's set, rebuilt
    from its plan); ``certified_vs_size.png`` appears when the run certified several sizes.

    Each file is written beside its final name and renamed into place, ``results.json`` last, so an
    interrupted run never leaves a complete-looking ``results.json``. ``out_dir`` may already hold this
    run's ``run.json`` and ``per_image.jsonl``; a non-empty folder holding none of the run files is
    refused.
    """
    out = Path(out_dir)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        (tmp / "results.md").write_text(results_table(results))
        if plots:
            from . import plots as _plots
            _plots.accuracy_vs_k(results, tmp / "accuracy_vs_k.png")
            if results.get("sizes"):
                _plots.certified_vs_size(results, tmp / "certified_vs_size.png")
            if images is not None:
                first = results["runs"][0]
                ms = maskset or make_maskset(PatchThreat(images.shape[2:], results["patch"]), first["k"],
                                             first["strategy"], mask_size=tuple(first["plan"]["mask_size"]))
                classes = results.get("classes") or [str(c) for c in range(max(results["num_classes"], 1))]
                _plots.example_images(images[:8], ms, first["per_image"]["output"][:8], classes,
                                      tmp / "examples.png")
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_atomically(out, write, last="results.json")
    return out


def write_atomically(out: Path, write: Callable[[Path], None], last: str) -> None:
    """``write(folder)`` into a fresh folder beside ``out``'s files, then rename each into ``out``,
    ``last`` last: an interrupted run never leaves a complete-looking ``last`` file."""
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        write(tmp)
        for name in sorted(p.name for p in tmp.iterdir() if p.name != last) + [last]:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    """CertMaskError when ``out`` is a non-empty folder that no certify run wrote (never overwrite it)."""
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in RUN_FILES):
        raise CertMaskError(f"{str(out)!r} exists and holds no results.json; not overwriting it")
