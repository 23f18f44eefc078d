"""End-to-end certification of a dataset: plan mask sets, ask a backend for predictions, certify.

Framework-free: the backend object (see :mod:`certmask_core.registry`) does all model work. A run may
be sharded over processes: each takes the images ``rank::world`` and ``gather`` (supplied by the
launcher, e.g. ``torch.distributed``) brings the per-image results to rank 0, where they are merged
once, by image index.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
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
    NO_VOTE,
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
from .datasets import (  # noqa: F401 (DATA_SPECS, Dataset, load_data, load_dataset: the run layer's API)
    DATA_SPECS,
    MAX_LABEL,
    Dataset,
    load_data,
    load_dataset,
    read_small_text,
)
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
        tolerance = self.margin_tolerance  # checked here too, so a bad one fails before --out is touched
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < math.inf):
            raise CertMaskError(f"margin_tolerance must be a finite number >= 0, got {tolerance!r}")
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


MAX_MASKSET_FILE_BYTES = 2**29
"""Largest mask-set file read (512 MiB: room for the largest set a construction builds)."""


def read_maskset(path_text: str) -> MaskSet:
    """A mask set from a JSON file (``certmask plan --json``); any defect is a CertMaskError."""
    path = Path(path_text)
    text = read_small_text(path, "mask-set file", MAX_MASKSET_FILE_BYTES)
    try:
        return MaskSet.from_json(text)
    except RecursionError:  # a field nested thousands deep; json.loads itself stops at its own limit
        raise CertMaskError(f"mask-set file {str(path)!r} nests its fields too deeply") from None


def masksets_of(config: RunConfig, image_size) -> dict:
    """The mask family of every (strategy, k) of ``config`` for images of ``image_size``.

    A mask-set file is keyed ``("file:NAME", k)`` with ``k`` the coverage it verifiably gives the
    patch (a file that leaves a position uncovered is refused); its ``spec`` and ``patch_size`` are
    dropped unread. With ``patches > 1`` each set is
    replaced by its groups of ``patches`` masks.
    """
    threat = PatchThreat(tuple(image_size), config.patch)
    sets = {(s, k): make_maskset(threat, k, s, mask_size=config.mask_size,
                                 masks_per_axis=config.masks_per_axis)
            for s in config.strategies for k in config.ks}
    for path in config.mask_files:
        ms = read_maskset(path)
        # the file's spec and patch size are descriptions, never trusted: only the rectangles and the
        # coverage verified below for this run's patch enter the certificates and the reports
        ms = MaskSet(ms.image_size, ms.origins, ms.sizes, threat=threat if ms.image_size == threat.image_size
                     else None)
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
    """The complete lines of a ``per_image.jsonl`` by image id.

    A torn last line (the process was killed while writing it) is dropped from the file; any other
    unreadable line (not UTF-8, not a JSON object with an integer ``id``) and any id seen twice is a
    CertMaskError. What the records say is checked by :func:`check_records`.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    keep = raw[:raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        path.write_bytes(keep)
    records = {}
    for number, line in enumerate(keep.split(b"\n")[:-1], 1):
        try:
            record = json.loads(line.decode("utf-8"))
            index = record["id"]
            if type(index) is not int:
                raise TypeError(f"id {index!r} is not an integer")
        except (ValueError, KeyError, TypeError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise CertMaskError(f"{str(path)!r} line {number} is not a per-image record: "
                                f"{type(err).__name__}: {err}") from None
        if index in records:
            raise CertMaskError(f"{str(path)!r} line {number} repeats image id {index}: the file was edited "
                                f"or written by two runs at once")
        records[index] = record
    return records


SEAL_FILE = "per_image.sha256"
"""Beside ``per_image.jsonl``: how many of its lines the run wrote and their SHA-256, renewed after each
batch. An edited or reordered line changes the digest (anyone can recompute it: it detects edits, the
spot check below detects a forger who also rewrites it)."""


def _write_seal(per_image_path: Path, digest, lines: int) -> None:
    write_json_atomically(Path(per_image_path).with_name(SEAL_FILE), {"lines": lines,
                                                                      "sha256": digest.hexdigest()})


def _unsealed_ids(per_image_path: Path) -> tuple[list[int], object, int]:
    """``(ids after the sealed lines, the digest of the whole file, its line count)``; CertMaskError when
    the sealed lines were changed or the seal is missing or unreadable. Lines after the sealed ones (a
    kill between a batch's write and its seal: one batch at most) are unproven and get recomputed."""
    path = Path(per_image_path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")[:-1]
    seal_path = path.with_name(SEAL_FILE)
    if not seal_path.is_file():
        raise CertMaskError(f"--resume: {str(path)!r} has no {SEAL_FILE} beside it, so its records cannot be "
                            f"told from edited ones; rerun with --overwrite")
    seal = read_json_file(seal_path, "the per-image seal")
    sealed = seal.get("lines") if isinstance(seal, dict) else None
    if type(sealed) is not int or not 0 <= sealed <= len(lines) or seal.get("sha256") != hashlib.sha256(
            b"".join(line + b"\n" for line in lines[:sealed])).hexdigest():
        raise CertMaskError(f"--resume: {str(path)!r} differs from what the run wrote ({SEAL_FILE}): its "
                            f"records were edited; rerun with --overwrite")
    return [json.loads(line)["id"] for line in lines[sealed:]], hashlib.sha256(raw), len(lines)


_BOOL_FIELDS = ("certified", "claim_holds", "below_margin")
_RESUME_SPOT_CHECKS = 16
"""Resumed records recomputed and compared before a resume is trusted (a forged record is refused)."""


def check_records(records: dict[int, dict], labels: np.ndarray, names, config: RunConfig, masksets: dict,
                  num_classes: int) -> None:
    """CertMaskError unless every per-image record could have been written by this run.

    Checked: ids within the data; the label is the data's; the name (when the data name their images)
    is the image's; exactly this run's keys and fields, each of its type and range; and what every
    certificate implies: a sound mode's image is certified exactly when its check holds, then with
    the true label as output and not refused for its margin; ``paper`` certifies nothing; a size
    certified implies the output is the label and every size inside it is certified too (T14). A
    record that passes may still be forged consistently: :func:`run_certification` also recomputes a
    random sample of them.
    """
    expected = {_run_key(s, k, m): (ms, m) for (s, k), ms in masksets.items() for m in config.modes}
    sizes = config.sizes
    inside = (None if sizes is None else
              np.array([[all(a <= b for a, b in zip(small, large)) for large in sizes] for small in sizes]))
    for index, record in records.items():
        def refuse(what: str, index=index):
            raise CertMaskError(f"per-image record of image {index} {what}: the results were edited or "
                                f"written for other data or settings; rerun with --overwrite")

        if not isinstance(record, dict):
            refuse("is not an object")
        want = {"id", "label", "undefended", "runs"} | ({"name"} if names is not None else set())
        if set(record) != want:
            refuse(f"has the fields {sorted(record)}, not {sorted(want)}")
        if not 0 <= index < len(labels):
            refuse(f"is outside the {len(labels)} images")
        if type(record["label"]) is not int or record["label"] != labels[index]:
            refuse(f"has label {record['label']!r}; the data say {int(labels[index])}")
        if names is not None and record["name"] != names[index]:
            refuse(f"is named {record['name']!r}; the data name it {names[index]!r}")
        if type(record["undefended"]) is not int or not NO_VOTE <= record["undefended"] < num_classes:
            refuse(f"has undefended prediction {record['undefended']!r}")
        runs = record["runs"]
        if not isinstance(runs, dict) or set(runs) != set(expected):
            refuse(f"holds the runs {sorted(runs) if isinstance(runs, dict) else runs!r}, not "
                   f"{sorted(expected)}")
        for key, (ms, mode) in expected.items():
            run = runs[key]
            with_sizes = sizes is not None and SOUND[mode]
            fields = set(CertificationReport.PER_IMAGE[1:]) | (
                {"sizes_certified", "sizes_passes"} if with_sizes else set())
            if not isinstance(run, dict) or set(run) != fields:
                refuse(f"run {key} has the fields {sorted(run) if isinstance(run, dict) else run!r}")
            n = len(ms)
            most_passes = n + n * (n - 1) // 2
            if type(run["output"]) is not int or not NO_VOTE <= run["output"] < num_classes:
                refuse(f"run {key} has output {run['output']!r}")
            if any(type(run[name]) is not bool for name in _BOOL_FIELDS):
                refuse(f"run {key}: {', '.join(_BOOL_FIELDS)} must be true or false")
            margin = run["min_margin"]
            if not (type(margin) in (int, float) or margin in ("inf", "-inf", "nan")):
                refuse(f"run {key} has min_margin {margin!r}")
            for name in ("certificate_passes", "defence_passes") + (("sizes_passes",) if with_sizes else ()):
                if type(run[name]) is not int or not 0 <= run[name] <= most_passes:
                    refuse(f"run {key} has {name} {run[name]!r} (a set of {n} masks needs 0 to "
                           f"{most_passes})")
            certified = run["certified"]
            if SOUND[mode] and certified != run["claim_holds"]:
                refuse(f"run {key} is certified {certified} but its check holds {run['claim_holds']}")
            if certified and (not SOUND[mode] or run["output"] != record["label"] or run["below_margin"]):
                refuse(f"run {key} is certified with output {run['output']}, label {record['label']}, "
                       f"refused for margin {run['below_margin']}")
            if with_sizes:
                bits = run["sizes_certified"]
                if (not isinstance(bits, list) or len(bits) != len(sizes)
                        or any(type(b) is not int or b not in (0, 1) for b in bits)):
                    refuse(f"run {key} has sizes_certified {bits!r}, not {len(sizes)} values 0 or 1")
                bits = np.array(bits, bool)
                if bits.any() and run["output"] != record["label"]:
                    refuse(f"run {key} certifies patch sizes with output {run['output']} != label")
                if (inside & bits[None, :] & ~bits[:, None]).any():
                    refuse(f"run {key} certifies a patch size but not a smaller one inside it")


def _spot_check(backend, model, images, labels, done: dict, config: RunConfig, masksets: dict, names,
                unsealed=()) -> None:
    """Recompute the ``unsealed`` records and a random sample of the others: a record that differs from
    its recomputation (certificates do not depend on batch make-up) was not written by this run and is
    refused."""
    sealed = sorted(set(done) - set(unsealed))
    drawn = np.random.default_rng().choice(sealed, min(_RESUME_SPOT_CHECKS, len(sealed)), replace=False)
    sample = np.unique(np.concatenate([np.asarray(list(unsealed), np.int64), drawn.astype(np.int64)]))
    part = _certify_shard(backend, model, images, labels, sample, config, masksets, show_progress=False)
    for fresh in per_image_records(sample, labels, part.undefended, part.reports, names, part.sizes):
        stored = done[fresh["id"]]
        same = {key: value for key, value in stored.items() if key != "runs"} == {
            key: value for key, value in fresh.items() if key != "runs"}
        for key, run in fresh["runs"].items():
            for name, value in run.items():
                kept = stored["runs"][key][name]
                if name == "min_margin" and not isinstance(value, str) and not isinstance(kept, str):
                    same &= bool(np.isclose(kept, value, rtol=1e-4, atol=1e-5))  # last-bit noise only
                else:
                    same &= kept == value
        if not same:
            raise CertMaskError(f"--resume: the per-image record of image {fresh['id']} differs from its "
                                f"recomputation ({json.dumps(stored)[:200]} ... recomputed "
                                f"{json.dumps(fresh)[:200]} ...): the results were edited or written with "
                                f"another model; rerun with --overwrite")


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
                                      bool if name in _BOOL_FIELDS else np.int64)
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


def check_labels_in_classes(labels: np.ndarray, num_classes: int) -> None:
    """CertMaskError unless ``labels`` are integers in ``[0, num_classes)``: a label the model has no
    class for would count as an error, not as the input it is."""
    if len(labels) and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes):
        raise CertMaskError(f"labels must be integers in [0, {num_classes}) for a model with {num_classes} "
                            f"classes, found {labels.dtype} in [{labels.min()}, {labels.max()}]")


def run_certification(backend, model, images: np.ndarray, labels: np.ndarray, config: RunConfig,
                      rank: int = 0, world: int = 1,
                      gather: Callable[[object], list | None] | None = None,
                      show_progress: bool | None = None, per_image_path=None,
                      resume: bool = False, names=None, num_classes: int | None = None) -> dict | None:
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
    num_classes : int, optional
        The model's class count: a label outside ``[0, num_classes)`` is refused before anything is
        certified (the CLI always passes it). Without it the results count the classes up to the
        largest label or prediction.

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
    labels = np.asarray(labels)
    if num_classes is not None:
        check_labels_in_classes(labels, num_classes)
    if resume and (world > 1 or per_image_path is None):
        raise CertMaskError("resume needs per_image_path and a single process (world = 1)")
    done = read_per_image(per_image_path) if resume else {}
    digest, sealed = hashlib.sha256(), 0
    if done:
        unsealed, digest, sealed = _unsealed_ids(per_image_path)
        check_records(done, labels, names, config, masksets, num_classes or MAX_LABEL + 1)
        _spot_check(backend, model, images, labels, done, config, masksets, names, unsealed)
    streaming = per_image_path is not None and world == 1
    if per_image_path is not None and not done:
        Path(per_image_path).write_text("")
    if streaming:
        _write_seal(per_image_path, digest, sealed)
    stream = open(per_image_path, "a") if streaming else None  # noqa: SIM115 (closed below)

    def write_batch(idx, undefended, reports, sizes):
        nonlocal sealed
        text = "".join(per_image_lines(idx, labels, undefended, reports, names, sizes))
        stream.write(text)
        stream.flush()
        digest.update(text.encode())
        sealed += len(idx)
        _write_seal(per_image_path, digest, sealed)

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
            text = "".join(per_image_lines(part.indices, labels, part.undefended, part.reports, names,
                                           part.sizes))
            Path(per_image_path).write_text(text)
            _write_seal(per_image_path, hashlib.sha256(text.encode()), len(part.indices))
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
            "num_classes": num_classes or int(max(labels.max(), part.undefended.max()) + 1),
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


PER_IMAGE_FILE = "per_image.jsonl"
LOCK_FILE = ".certmask.lock"
RUN_FILES = ("results.json", "results.md", "run.json", PER_IMAGE_FILE, SEAL_FILE, "accuracy_vs_k.png",
             "examples.png", "certified_vs_size.png", LOCK_FILE)
"""What a certify run writes into its output folder (``--overwrite`` removes exactly these)."""


def write_outputs(results: dict, out_dir: str | os.PathLike, images=None, plots: bool = True,
                  maskset: MaskSet | None = None) -> Path:
    """Write ``results.json`` and ``results.md``, then the PNG figures, into ``out_dir``.

    ``examples.png`` shows ``images[:8]`` under ``maskset`` (default: the first run's set, rebuilt
    from its plan); ``certified_vs_size.png`` appears when the run certified several sizes.

    Each file is written beside its final name and renamed into place, ``results.json`` last of the
    results, so an interrupted run never leaves a complete-looking ``results.json``. The figures come
    after the results: a figure that cannot be drawn is reported on stderr and never loses them.
    A non-empty folder that holds none of :data:`RUN_FILES` is refused.
    """
    out = Path(out_dir)
    _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)

    def write_results(tmp: Path) -> None:
        (tmp / "results.md").write_text(results_table(results))
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    def draw(tmp: Path) -> None:
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

    write_atomically(out, write_results, last="results.json")
    if plots:
        try:
            write_atomically(out, draw, last="accuracy_vs_k.png")
        except Exception as err:  # noqa: BLE001 (a figure is never worth the results: they are written)
            print(f"certmask: warning: the figures were not drawn ({type(err).__name__}: {err}); "
                  f"results.json and results.md are written", file=sys.stderr)
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


def write_json_atomically(path: Path, value) -> None:
    """``path`` holds either its old content or all of ``value`` as JSON, never a torn file."""
    path = Path(path)
    text = json.dumps(value, indent=1) + "\n"
    write_atomically(path.parent, lambda tmp: (tmp / path.name).write_text(text), last=path.name)


def read_json_file(path: Path, what: str):
    """The JSON value of ``path``; an unreadable or torn file is a CertMaskError naming it."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # UnicodeDecodeError, JSONDecodeError
        raise CertMaskError(f"cannot read {what} {str(path)!r}: {type(err).__name__}: {err}") from None


def _refuse_foreign(out: Path) -> None:
    """CertMaskError when ``out`` is a file, or a non-empty folder holding nothing a run writes."""
    if out.exists() and not out.is_dir():
        raise CertMaskError(f"--out {str(out)!r} is a file, not a folder")
    if (out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
            and not any((out / name).exists() for name in RUN_FILES if name != LOCK_FILE)):
        raise CertMaskError(f"{str(out)!r} exists and holds no results.json; not overwriting it")


def prepare_out_dir(out: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``out`` ready for a certify run, refusing what would mix or lose results.

    A folder holding a previous run needs ``resume`` (continue it) or ``overwrite`` (its run files,
    :data:`RUN_FILES`, are removed; nothing else is touched); a non-empty folder that no run wrote is
    always refused. Call it while holding :func:`locked_out_dir`.
    """
    if resume and overwrite:
        raise CertMaskError("--resume continues the run in --out and --overwrite replaces it: give one")
    _refuse_foreign(out)
    previous = [name for name in RUN_FILES if name != LOCK_FILE and (out / name).exists()]
    if previous and not resume and not overwrite:
        raise CertMaskError(f"{str(out)!r} holds a previous run ({', '.join(previous)}): pass --resume to "
                            f"continue it or --overwrite to replace it, or choose another --out")
    if overwrite:
        for name in previous:
            (out / name).unlink()


@contextlib.contextmanager
def locked_out_dir(out: Path):
    """Hold an exclusive lock on ``out`` (created if needed) while a run writes into it: a second run
    on the same folder is refused at once instead of interleaving its results with the first's. A
    folder that no run wrote is refused before anything is created in it."""
    _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a")  # noqa: SIM115 (closed below)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CertMaskError(f"another certmask run is writing to {str(out)!r}; wait for it to finish "
                                f"or choose another --out") from None
        yield out
    finally:
        handle.close()  # releases the lock
