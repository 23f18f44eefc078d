"""Certification of a data set: one :class:`CertificationRun` owns what a run needs.

It holds the configuration, the mask sets (built once), the data (a stream of batches decoded ahead
in background threads), the per-image record files and the resume state. Images are certified a
batch at a time: the one-mask predictions of a batch are computed once per distinct mask family and
serve every mode and k that share it, while the decisions of the previous batch are made; the batch
size follows from the backend's effective batch. Framework-free: the backend object (see
:mod:`certmask_core.registry`) does all model work.

A run may be sharded over processes: each takes its share of the images not yet certified, streams
its records to its own sealed file (:func:`~certmask_core.run.records.shard_path`), and ``gather``
(supplied by the launcher, e.g. ``torch.distributed``) brings the per-image results to rank 0, where
they are merged once, by image index. A killed run, sharded or not, resumes from every record file
with any number of processes, to the results of one uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..certification import GUARANTEES, SOUND, certify
from ..errors import CertMaskError
from ..geometry import PatchThreat
from ..multipatch import MaskGroups, base_set
from ..sizes import PairCache, certify_sizes

# The names below that this module does not use are re-exported for code written against certmask 0.2.0,
# which found them here; code in this repository imports each from the module that owns it.
from .config import RunConfig, family_plan, masksets_of, read_maskset  # noqa: F401 (read_maskset: re-exported)
from .datasets import (  # noqa: F401 (DATA_SPECS, Dataset, load_data, load_dataset: the run layer's API)
    DATA_SPECS,
    MAX_LABEL,
    Dataset,
    load_data,
    load_dataset,
    read_small_text,
)
from .files import read_json_file, write_atomically, write_json_atomically  # noqa: F401 (re-exported)
from .outputs import (  # noqa: F401 (re-exported: the run layer's API)
    LOCK_FILE,
    PER_IMAGE_FILE,
    RUN_FILES,
    locked_out_dir,
    prepare_out_dir,
    results_table,
    shape_text,
    write_outputs,
)
from .progress import progress_bar
from .records import (  # noqa: F401 (re-exported: the run layer's API)
    SEAL_FILE,
    SHARD_GLOB,
    PartialResults,
    SealedRecords,
    check_records,
    concat_reports,
    concat_size_reports,
    gather_record_files,
    merge_parts,
    merge_record_files,
    part_from_records,
    per_image_lines,
    per_image_records,
    read_per_image,
    read_sealed,
    record_line,
    run_key,
    shard_path,
)
from .sources import prefetch


def check_labels_in_classes(labels: np.ndarray, num_classes: int) -> None:
    """CertMaskError unless ``labels`` are integers in ``[0, num_classes)``: a label the model has no
    class for would count as an error, not as the input it is."""
    if len(labels) and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes):
        raise CertMaskError(f"labels must be integers in [0, {num_classes}) for a model with {num_classes} "
                            f"classes, found {labels.dtype} in [{labels.min()}, {labels.max()}]")


class ArrayData:
    """Images held in memory, read as a data source (what :func:`run_certification` certifies).

    Parameters
    ----------
    images : ndarray, shape (N, C, *spatial)
        Any number of spatial axes: ``(N, C, H, W)`` images, ``(N, C, T, H, W)`` clips, ``(N, C, L)``
        signals.
    labels : ndarray, shape (N,)
    ids : list of str, optional
        Each item's name, kept in the per-image records.
    """

    def __init__(self, images, labels, ids=None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim < 3 or labels.ndim != 1 or len(images) != len(labels):
            raise CertMaskError(f"images must be (N, C, *spatial) with N = len(labels), got {images.shape} "
                                f"and labels of shape {labels.shape}")
        self.images, self.labels, self.ids, self.classes = images, labels, ids, None
        self.item_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices) -> np.ndarray:
        return self.images[np.asarray(indices, np.int64)]

    def fingerprint(self) -> str:
        """SHA-256 of the pixels and labels."""
        digest = hashlib.sha256()
        for array in (self.images, self.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


PASSES_PER_BATCH = 1 << 16
"""One-mask passes an automatic image batch aims at: enough that the per-batch work of the host
(decisions, records) is small beside the passes, on any device."""
BATCH_PIXEL_BYTES = 1 << 26
"""Most bytes of float32 pixels in one automatic image batch (64 MiB: 100 ImageNet images), so that
memory follows the batch and the prefetch depth, never the data set."""
PREFETCH_DEPTH = 2
"""Batches decoded ahead of the one being certified."""


PROGRESS_BATCHES = 10
"""An automatic image batch is at most this fraction of a run's images (but never less than one device
batch of passes): a short run then shows its progress and decodes, computes and decides in parallel."""


def auto_image_batch(effective_batch: int, num_masks: int, item_shape, num_images: int | None = None) -> int:
    """Images certified together: enough that their one-mask passes fill the device several times over
    (at least :data:`PASSES_PER_BATCH`, at least 8 effective batches), at most
    :data:`BATCH_PIXEL_BYTES` of pixels, and with ``num_images`` (the run's) at most a
    :data:`PROGRESS_BATCHES`-th of them unless that is less than one effective batch of passes.
    Certificates never depend on the batch (docs/theory.md, "Reproducibility"): this is speed only."""
    masks = max(1, num_masks)
    wanted = math.ceil(max(PASSES_PER_BATCH, 8 * effective_batch) / masks)
    if num_images is not None:
        one_device_batch = math.ceil(effective_batch / masks)
        wanted = min(wanted, max(one_device_batch, math.ceil(num_images / PROGRESS_BATCHES)))
    fits = BATCH_PIXEL_BYTES // (4 * math.prod(item_shape))
    return max(1, min(wanted, fits))


def _family_key(family) -> tuple:
    """Families with equal keys hide the same pixels in every member: their predictions are equal."""
    base = base_set(family)
    members = family.members.tobytes() if isinstance(family, MaskGroups) else b""
    return (base.image_size, base.origins.tobytes(), base.sizes.tobytes(), members)


_RESUME_SPOT_CHECKS = 16
"""Resumed records recomputed and compared before a resume is trusted (a forged record is refused)."""


class CertificationRun:
    """One certification of a data set under every (strategy, k, mode) of a :class:`RunConfig`.

    Parameters
    ----------
    backend
        An object with ``predict``, ``masked_predictions``, ``pair_predictor`` and ``batch_size``, and
        optionally ``effective_batch`` (e.g. :class:`certmask_backends.pytorch.TorchBackend`).
    model
        Whatever the backend runs.
    data
        A data source: ``labels`` (N,), ``ids`` (names or None), ``item_shape`` ``(C, *spatial)``,
        ``len()`` and ``read(indices) -> (len(indices), C, *spatial)`` float32 in [0, 1] (e.g.
        :func:`certmask_core.run.sources.open_data`, or :class:`ArrayData`).
    config : RunConfig
    num_classes : int, optional
        The model's class count: a label outside ``[0, num_classes)`` is refused before anything is
        certified (the CLI always passes it). Without it the results count the classes up to the
        largest label or prediction.
    rank, world : int
        This process and the number of processes of a sharded run.
    gather : callable, optional
        ``gather(obj)`` returns the list of every rank's ``obj`` on rank 0 and None elsewhere (a
        collective: every rank calls it). Required when ``world > 1``.

    Attributes
    ----------
    masksets : dict
        The mask family of every (strategy, k), built once, here.
    image_batch : int
        Images certified together.
    one_mask_right : list of two int
        Of the first mask set: one-mask predictions equal to the label, and all one-mask predictions
        so far (see :meth:`one_mask_accuracy`).
    """

    def __init__(self, backend, model, data, config: RunConfig, *, num_classes: int | None = None,
                 rank: int = 0, world: int = 1, gather: Callable[[object], list | None] | None = None):
        if world > 1 and gather is None:
            raise CertMaskError("a sharded run (world > 1) needs a gather function")
        if len(data) == 0:
            raise CertMaskError("no images to certify")
        self.backend, self.model, self.data, self.config = backend, model, data, config
        self.rank, self.world, self.gather = rank, world, gather
        self.labels = np.asarray(data.labels)
        if len(self.labels) != len(data):
            raise CertMaskError(f"{len(data)} images but {len(self.labels)} labels")
        item_shape = tuple(data.item_shape)
        if len(item_shape) != len(config.patch) + 1:
            raise CertMaskError(f"the data are items of shape {item_shape} (C, *spatial): "
                                f"{len(item_shape) - 1} spatial axes, but the patch "
                                f"{shape_text(config.patch)} has {len(config.patch)}")
        self.spatial = item_shape[1:]
        self.masksets = masksets_of(config, self.spatial)
        self.num_classes = num_classes
        if num_classes is not None:
            check_labels_in_classes(self.labels, num_classes)
        self.names = data.ids
        self.image_batch = config.image_batch or self._auto_batch()
        self.one_mask_right = [0, 0]

    def one_mask_accuracy(self) -> float | None:
        """The fraction of one-mask predictions (one per image and mask, or group of masks) of the first
        mask set that equal the label, over the images this process certified (resumed images are not
        counted); None when it certified none. Low values mean the model was not trained with masks."""
        right, asked = self.one_mask_right
        return right / asked if asked else None

    def _auto_batch(self) -> int:
        effective = getattr(self.backend, "effective_batch", None)
        per_pass = (effective(self.model, self.data.read(np.arange(1))) if callable(effective)
                    else self.backend.batch_size)
        return auto_image_batch(per_pass, max(len(ms) for ms in self.masksets.values()),
                                self.data.item_shape, len(self.data))

    # ------------------------------------------------------------------ certifying images
    def _first_round(self, indices, images) -> tuple:
        """Everything the device computes for a batch before any decision: plain predictions and the
        one-mask logits of each distinct family, with the seconds they took."""
        t0 = time.perf_counter()
        undefended = self.backend.predict(self.model, images)
        first = {}
        for ms in self.masksets.values():
            key = _family_key(ms)
            if key not in first:
                first[key] = self.backend.masked_predictions(self.model, images, ms, return_logits=True)
        return indices, images, undefended, first, time.perf_counter() - t0

    def _decide(self, part: PartialResults, batch: tuple, chunks: dict, size_chunks: dict
                ) -> tuple[dict, dict]:
        """Every mode and k of one batch whose first round is done; returns its reports."""
        config, backend = self.config, self.backend
        indices, images, _, first_rounds, first_seconds = batch
        y = self.labels[indices]
        reports, size_reports = {}, {}
        first_set = first_rounds[_family_key(next(iter(self.masksets.values())))]
        self.one_mask_right[0] += int((np.argmax(first_set, axis=-1) == y[:, None]).sum())
        self.one_mask_right[1] += first_set.shape[0] * first_set.shape[1]
        for (strategy, k), ms in self.masksets.items():
            first = first_rounds[_family_key(ms)]
            # one cache per set: the defence, the certificate and every patch size share pair answers
            cache = None
            if "recovery" in config.modes:
                predictor = backend.pair_predictor(self.model, images, ms, return_logits=True)
                cache = PairCache(predictor, len(indices))
            for mode in config.modes:
                t0 = time.perf_counter()
                kwargs = {"margin_tolerance": config.margin_tolerance}
                if mode == "recovery":
                    kwargs.update(recovery_certificate=config.recovery_certificate)
                key = (strategy, k, mode)
                reports[key] = certify(
                    first, y, ms, mode, k=k if config.patches == 1 else 1, patches=config.patches,
                    pair_predictor=cache.view(np.arange(len(indices))) if mode == "recovery" else None,
                    pair_chunk=backend.batch_size, **kwargs)
                chunks.setdefault(key, []).append(reports[key])
                if config.sizes is not None and SOUND[mode]:
                    size_reports[key] = certify_sizes(first, y, ms, config.sizes, mode, patch=config.patch,
                                                      pair_cache=cache, patches=config.patches, **kwargs)
                    size_chunks.setdefault(key, []).append(size_reports[key])
                # the first round serves every mode of the set: each run is charged all of it
                part.seconds[key] = part.seconds.get(key, 0.0) + first_seconds + time.perf_counter() - t0
        return reports, size_reports

    def certify_images(self, indices, records: SealedRecords | None = None,
                       show_progress: bool | None = None) -> PartialResults:
        """Certify the images ``indices``, a batch at a time; with ``records``, each batch's per-image
        records are appended to it as soon as the batch is certified.

        The next batch is decoded (in background threads) and its first round computed (in one
        background thread) while the decisions of the current batch are made.
        """
        indices = np.asarray(indices, np.int64)
        part = PartialResults(indices, np.zeros(len(indices), np.int64))
        chunks: dict = {}
        size_chunks: dict = {}
        batches = [indices[s:s + self.image_batch] for s in range(0, len(indices), self.image_batch)]
        total_masks = sum(len(ms) for ms in self.masksets.values())
        row = 0
        with progress_bar(len(indices) * total_masks, "certify", show_progress,
                          per_item=total_masks, item="images", unit="pass") as bar, \
                ThreadPoolExecutor(1, thread_name_prefix="certmask-first-round") as device:
            stream = prefetch(self.data, batches, depth=PREFETCH_DEPTH)
            try:
                ahead = next(stream, None)
                pending = device.submit(self._first_round, *ahead) if ahead is not None else None
                while pending is not None:
                    batch = pending.result()
                    ahead = next(stream, None)
                    pending = device.submit(self._first_round, *ahead) if ahead is not None else None
                    idx, undefended = batch[0], batch[2]
                    part.undefended[row:row + len(idx)] = undefended
                    reports, size_reports = self._decide(part, batch, chunks, size_chunks)
                    if records is not None:
                        records.append(per_image_lines(idx, self.labels, undefended, reports, self.names,
                                                       size_reports))
                    row += len(idx)
                    bar.update(len(idx) * total_masks)
            finally:
                stream.close()
        part.reports = {key: concat_reports(reports) for key, reports in chunks.items()}
        part.sizes = {key: concat_size_reports(reports) for key, reports in size_chunks.items()}
        return part

    # ------------------------------------------------------------------ resuming
    def _spot_check(self, done: dict, unsealed=()) -> None:
        """Recompute the ``unsealed`` records and a random sample of the others: a record that differs
        from its recomputation (certificates do not depend on batch make-up) was not written by this
        run and is refused."""
        sealed = sorted(set(done) - set(unsealed))
        drawn = np.random.default_rng().choice(sealed, min(_RESUME_SPOT_CHECKS, len(sealed)), replace=False)
        sample = np.unique(np.concatenate([np.asarray(list(unsealed), np.int64), drawn.astype(np.int64)]))
        part = self.certify_images(sample, show_progress=False)
        for fresh in per_image_records(sample, self.labels, part.undefended, part.reports, self.names,
                                       part.sizes):
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
                                    f"{json.dumps(fresh)[:200]} ...): the results were edited or written "
                                    f"with another model; rerun with --overwrite")

    def _resume(self, per_image_path: Path) -> dict[int, dict]:
        """Rank 0 of a resumed run: the records of every record file (the run's and each process's of
        a sharded run), checked and spot-checked, gathered into ``per_image_path``."""
        found = gather_record_files(per_image_path)
        if found is None:
            return {}
        done, unsealed, from_shards = found
        if done:
            check_records(done, self.labels, self.names, self.config, self.masksets,
                          self.num_classes or MAX_LABEL + 1)
            self._spot_check(done, unsealed)
        merge_record_files(per_image_path, from_shards)
        return done

    # ------------------------------------------------------------------ the run
    def run(self, per_image_path=None, resume: bool = False, show_progress: bool | None = None
            ) -> dict | None:
        """Certify every image not already certified; the JSON-ready results on rank 0, None elsewhere.

        Parameters
        ----------
        per_image_path : path, optional
            Stream one JSON line per image (see :func:`per_image_lines`) to this file, batch by batch
            and sealed (:data:`SEAL_FILE`); each process of a sharded run streams to its own file
            beside it, gathered into this one when the run completes. Every process of a sharded run
            gets the same path (a folder they all see).
        resume : bool
            Keep the images already in the record files and certify only the others; the results
            equal an uninterrupted run's (certificates do not depend on batch make-up), whatever the
            number of processes before and now.
        show_progress : bool, optional
            A progress bar on rank 0 (None: on a terminal outside CI).
        """
        rank, world = self.rank, self.world
        path = Path(per_image_path) if per_image_path is not None else None
        if resume and path is None:
            raise CertMaskError("resume needs per_image_path")
        done: dict[int, dict] = {}
        if rank == 0 and path is not None:
            done = self._resume(path) if resume else {}
            if not done:
                SealedRecords(path, []).close()
                for stale in path.parent.glob(SHARD_GLOB):  # a previous sharded run's, never resumed
                    stale.unlink()
        if world > 1:
            self.gather(None)  # a barrier: rank 0 has checked and gathered the previous records
            if rank != 0 and path is not None and resume:
                done = read_per_image(path)
        remaining = np.array([i for i in range(len(self.labels)) if i not in done], np.int64)
        mine = remaining[rank::world]
        records = None
        if path is not None:
            records = SealedRecords(path) if world == 1 else SealedRecords(shard_path(path, rank), [])
        try:
            part = self.certify_images(mine, records, show_progress if rank == 0 else False)
        finally:
            if records is not None:
                records.close()
        if world > 1:
            parts = self.gather(part)
            if parts is None:
                return None
            part = merge_parts(parts)
            if path is not None:
                main = SealedRecords(path)
                main.append(per_image_lines(part.indices, self.labels, part.undefended, part.reports,
                                            self.names, part.sizes))
                main.close()
                for shard in path.parent.glob(SHARD_GLOB):
                    shard.unlink()
        new_images = len(part.indices)
        if done:
            seconds = part.seconds
            new = per_image_records(part.indices, self.labels, part.undefended, part.reports,
                                    sizes=part.sizes)
            part = part_from_records({**done, **{r["id"]: r for r in new}}, self.config, self.masksets)
            part.seconds = seconds
        return self._results(part, new_images, len(done))

    def _results(self, part: PartialResults, new_images: int, resumed: int) -> dict:
        config, labels = self.config, self.labels
        undefended = float((part.undefended == labels[part.indices]).mean())
        runs = []
        threat = PatchThreat(self.spatial, config.patch)
        for (strategy, k), ms in self.masksets.items():
            plan = family_plan(ms, threat)
            for mode in config.modes:
                report = part.reports[(strategy, k, mode)]
                summary = report.summary()
                seconds = part.seconds.get((strategy, k, mode))
                # over the images certified by this process (a resumed run: the new ones only)
                summary["images_per_second"] = new_images / max(seconds, 1e-9) if seconds else None
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
                "images": len(part.indices), "world_size": self.world,
                "num_classes": self.num_classes or int(max(labels.max(), part.undefended.max()) + 1),
                "resumed_images": resumed, "image_batch": self.image_batch,
                "undefended_accuracy": undefended, "runs": runs,
                "guarantees": {m: GUARANTEES[m] for m in config.modes},
                "unsound_modes": [m for m in config.modes if not SOUND[m]]}


def run_certification(backend, model, images: np.ndarray, labels: np.ndarray, config: RunConfig,
                      rank: int = 0, world: int = 1,
                      gather: Callable[[object], list | None] | None = None,
                      show_progress: bool | None = None, per_image_path=None,
                      resume: bool = False, names=None, num_classes: int | None = None) -> dict | None:
    """Certify in-memory ``images`` under every (strategy, k, mode) of ``config``.

    The :class:`CertificationRun` of :class:`ArrayData` (``images``, ``labels``, ``names``); see
    :meth:`CertificationRun.run` for ``per_image_path``, ``resume`` and ``show_progress``.

    Parameters
    ----------
    backend
        An object with ``predict``, ``masked_predictions``, ``pair_predictor`` and ``batch_size``
        (e.g. :class:`certmask_backends.pytorch.TorchBackend`).
    model
        Whatever the backend runs.
    images : ndarray, shape (N, C, *spatial), float32 in [0, 1]
        ``(N, C, H, W)`` images, ``(N, C, T, H, W)`` clips or ``(N, C, L)`` signals: one spatial
        axis per axis of ``config.patch``.
    labels : ndarray, shape (N,)
    config : RunConfig
    rank, world, gather, num_classes
        As in :class:`CertificationRun`.
    names : sequence of str, optional
        Each image's name (e.g. its path in an image folder), kept in the per-image results.

    Returns
    -------
    dict or None
        The JSON-ready results on rank 0; None on other ranks.
    """
    data = ArrayData(images, labels, names)
    run = CertificationRun(backend, model, data, config, num_classes=num_classes, rank=rank, world=world,
                           gather=gather)
    return run.run(per_image_path, resume, show_progress)
