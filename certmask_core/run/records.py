"""Per-image records of a certify run: their JSON lines, the sealed files they stream to (one per
process of a sharded run), the checks a resumed run makes of them, and their merge into reports."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..certification import CERTIFICATES, GUARANTEES, NO_VOTE, SOUND, CertificationReport
from ..errors import CertMaskError
from ..sizes import SizeReport, certify_sizes
from .files import read_json_file, write_json_atomically
from .formats import open_regular_file

if TYPE_CHECKING:
    from .config import RunConfig


@dataclass
class PartialResults:
    """Per-image results of some images (a shard, a batch, resumed records), keyed by (strategy, k, mode)."""

    indices: np.ndarray
    undefended: np.ndarray
    reports: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # SizeReport per key, when the run certifies sizes


def run_key(strategy: str, k: int, mode: str) -> str:
    """The name of a run in per-image records: ``strategy/kK/mode``."""
    return f"{strategy}/k{k}/{mode}"


def _json_float(value: float):
    return float(value) if np.isfinite(value) else repr(float(value))  # "inf", "nan": exact, valid JSON


def per_image_lines(indices, labels, undefended, reports: dict, names=None, sizes: dict | None = None
                    ) -> list[str]:
    """:func:`per_image_records` as JSON lines."""
    records = per_image_records(indices, labels, undefended, reports, names, sizes)
    return [record_line(record) for record in records]


def record_line(record: dict) -> str:
    """One per-image record as a line of ``per_image.jsonl``."""
    return json.dumps(record) + "\n"


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
            run = runs[run_key(strategy, k, mode)] = {
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


def _refuse_other_than_a_file(path: Path) -> None:
    """CertMaskError when ``path`` exists as a link, a FIFO, a folder, ...: a run's files are its own
    regular files, never followed elsewhere (an edited folder could make a run truncate another file)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise CertMaskError(f"{str(path)!r} is {kind}; a run's record files must be regular files it wrote: "
                            f"rerun with --overwrite or choose another --out")


def read_run_file(path: Path) -> bytes:
    """The bytes of one of a run's own files (regular, not a link)."""
    _refuse_other_than_a_file(path)
    with open_regular_file(path, "run file") as f:
        return f.read()


def write_run_file(path: Path, data: bytes) -> None:
    """Replace one of a run's files whole (a link there is replaced, never followed)."""
    _refuse_other_than_a_file(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_per_image(path) -> dict[int, dict]:
    """The complete lines of a ``per_image.jsonl`` by image id.

    A torn last line (the process was killed while writing it) is dropped from the file; any other
    unreadable line (not UTF-8, not a JSON object with an integer ``id``) and any id seen twice is a
    CertMaskError. What the records say is checked by :func:`check_records`.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return {}
    raw = read_run_file(path)
    keep = raw[:raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        write_run_file(path, keep)
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
spot check of a resumed run detects a forger who also rewrites it)."""

SHARD_GLOB = "per_image.rank-*"
"""The per-process record files (and their seals) of a sharded run, merged into ``per_image.jsonl`` when
the run completes."""


def shard_path(per_image_path: Path, rank: int) -> Path:
    """The record file of process ``rank`` of a sharded run, beside ``per_image_path``."""
    return Path(per_image_path).with_name(f"per_image.rank-{rank}.jsonl")


def seal_path(records_path: Path) -> Path:
    """The seal of a record file: ``per_image.sha256`` beside ``per_image.jsonl``."""
    return Path(records_path).with_suffix(".sha256")


class SealedRecords:
    """A per-image record file that a run appends to, batch by batch, resealing it after each batch.

    ``SealedRecords(path, keep)`` writes ``path`` afresh with the lines ``keep`` (or continues the
    lines already there and sealed, see :func:`read_sealed`, when ``keep`` is None).
    """

    def __init__(self, path: Path, keep: list[str] | None = None):
        self.path = Path(path)
        if keep is None:
            raw = read_run_file(self.path)
            self.digest, self.lines = hashlib.sha256(raw), raw.count(b"\n")
            self._seal()
        else:
            text = "".join(keep).encode()
            self.digest, self.lines = hashlib.sha256(text), len(keep)
            # the seal first: a kill between the two leaves sealed lines of a file not yet written
            # (the lines found are then recomputed), never a file without its seal
            self._seal()
            write_run_file(self.path, text)
        self.stream = open(self.path, "ab")  # noqa: SIM115 (closed by close())

    def _seal(self) -> None:
        write_json_atomically(seal_path(self.path), {"lines": self.lines, "sha256": self.digest.hexdigest()})

    def append(self, lines: list[str]) -> None:
        text = "".join(lines).encode()
        self.stream.write(text)
        self.stream.flush()
        self.digest.update(text)
        self.lines += len(lines)
        self._seal()

    def close(self) -> None:
        self.stream.close()


def read_sealed(path: Path) -> tuple[dict[int, dict], list[int]]:
    """``(records by id, ids written after the sealed lines)`` of a record file.

    CertMaskError when the sealed lines were changed or the seal is missing or unreadable. Lines after
    the sealed ones (a kill between a batch's write and its seal: one batch at most) are unproven: the
    caller recomputes them.
    """
    path = Path(path)
    records = read_per_image(path)  # drops a torn last line
    lines = read_run_file(path).split(b"\n")[:-1]
    seal = seal_path(path)
    if not seal.is_file():
        raise CertMaskError(f"--resume: {str(path)!r} has no {seal.name} beside it, so its records cannot be "
                            f"told from edited ones; rerun with --overwrite")
    _refuse_other_than_a_file(seal)
    stored = read_json_file(seal, "the per-image seal")
    sealed = stored.get("lines") if isinstance(stored, dict) else None
    if type(sealed) is not int or not 0 <= sealed <= len(lines) or stored.get("sha256") != hashlib.sha256(
            b"".join(line + b"\n" for line in lines[:sealed])).hexdigest():
        raise CertMaskError(f"--resume: {str(path)!r} differs from what the run wrote ({seal.name}): its "
                            f"records were edited; rerun with --overwrite")
    return records, [json.loads(line)["id"] for line in lines[sealed:]]


def gather_record_files(per_image_path: Path) -> tuple[dict[int, dict], list[int], dict[int, dict]] | None:
    """Every record of a run's record files: the run's own and each process's of a sharded run.

    Returns ``(records by id, ids written after their file's seal, records found only in process
    files)``, or None when the run has no record file. CertMaskError when a file's sealed lines were
    changed (:func:`read_sealed`) or two files hold different records of one image.
    """
    per_image_path = Path(per_image_path)
    shards = sorted(per_image_path.parent.glob(SHARD_GLOB[:-1] + "*.jsonl"))
    if not per_image_path.is_file() and not shards:
        return None
    done, unsealed = read_sealed(per_image_path) if per_image_path.is_file() else ({}, [])
    from_shards = {}
    for shard in shards:
        records, shard_unsealed = read_sealed(shard)
        for index, record in records.items():
            # a kill between gathering a shard into the run's file and removing it leaves both
            if index in done and done[index] != record or index in from_shards:
                raise CertMaskError(f"--resume: image {index} has two different records "
                                    f"({str(shard)!r}); rerun with --overwrite")
            if index not in done:
                from_shards[index] = record
        unsealed += [index for index in shard_unsealed if index in from_shards]
    return {**done, **from_shards}, unsealed, from_shards


def merge_record_files(per_image_path: Path, from_shards: dict[int, dict]) -> None:
    """Append the records found only in process files to the run's record file (made if missing),
    in image order, and delete the process files and their seals."""
    per_image_path = Path(per_image_path)
    if not per_image_path.is_file():
        SealedRecords(per_image_path, []).close()
    if from_shards:
        main = SealedRecords(per_image_path)
        main.append([record_line(from_shards[index]) for index in sorted(from_shards)])
        main.close()
    for leftover in per_image_path.parent.glob(SHARD_GLOB):  # gathered shards, and orphan seals
        leftover.unlink()


BOOL_FIELDS = ("certified", "claim_holds", "below_margin")


def check_records(records: dict[int, dict], labels: np.ndarray, names, config: RunConfig, masksets: dict,
                  num_classes: int) -> None:
    """CertMaskError unless every per-image record could have been written by this run.

    Checked: ids within the data; the label is the data's; the name (when the data name their images)
    is the image's; exactly this run's keys and fields, each of its type and range; and what every
    certificate implies: a sound mode's image is certified exactly when its check holds, then with
    the true label as output and not refused for its margin; ``paper`` certifies nothing; a size
    certified implies the output is the label and every size inside it is certified too (T14). A
    record that passes may still be forged consistently: :meth:`CertificationRun.run` also recomputes a
    random sample of them.
    """
    expected = {run_key(s, k, m): (ms, m) for (s, k), ms in masksets.items() for m in config.modes}
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
            if any(type(run[name]) is not bool for name in BOOL_FIELDS):
                refuse(f"run {key}: {', '.join(BOOL_FIELDS)} must be true or false")
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



def part_from_records(records: dict[int, dict], config: RunConfig, masksets: dict) -> PartialResults:
    """The per-image results of ``records`` as certification reports (inverse of per_image_records)."""
    order = sorted(records)
    part = PartialResults(np.array(order, np.int64),
                          np.array([records[i]["undefended"] for i in order], np.int64))
    for (strategy, k), ms in masksets.items():
        for mode in config.modes:
            key = run_key(strategy, k, mode)
            try:
                rows = [records[i]["runs"][key] for i in order]
            except KeyError:
                raise CertMaskError(f"the per-image results hold no run {key!r}: they were written by a run "
                                    f"with other settings") from None
            cols = {"labels": np.array([records[i]["label"] for i in order], np.int64)}
            for name in CertificationReport.PER_IMAGE[1:]:
                values = [row[name] for row in rows]
                cols[name] = np.array(values, np.float64 if name == "min_margin" else
                                      bool if name in BOOL_FIELDS else np.int64)
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


def concat_size_reports(reports: list[SizeReport], order: np.ndarray | None = None) -> SizeReport:
    r0 = reports[0]
    cols = {name: np.concatenate([getattr(r, name) for r in reports]) for name in ("labels", "certified",
                                                                                   "passes")}
    if order is not None:
        cols = {name: col[order] for name, col in cols.items()}
    return dataclasses.replace(r0, **cols)


def concat_reports(reports: list[CertificationReport], order: np.ndarray | None = None
                   ) -> CertificationReport:
    """One report holding the images of ``reports`` in turn, optionally reordered by ``order``."""
    r0 = reports[0]
    cols = {name: np.concatenate([getattr(r, name) for r in reports]) for name in r0.PER_IMAGE}
    if order is not None:
        cols = {name: col[order] for name, col in cols.items()}
    return CertificationReport(r0.mode, r0.guarantee, r0.sound, **cols, margin_tolerance=r0.margin_tolerance,
                               certificate=r0.certificate, num_masks=r0.num_masks)


def merge_parts(parts: list[PartialResults]) -> PartialResults:
    """Merge shards by image index; every index must appear exactly once."""
    indices = np.concatenate([p.indices for p in parts])
    order = np.argsort(indices, kind="stable")
    if len(np.unique(indices)) != len(indices):
        raise CertMaskError("shards overlap: an image was certified by two processes")
    merged = PartialResults(indices[order], np.concatenate([p.undefended for p in parts])[order])
    parts = [p for p in parts if len(p.indices)]  # a process left without images has no reports
    for key in parts[0].reports if parts else ():
        merged.reports[key] = concat_reports([p.reports[key] for p in parts], order)
        # wall time of a sharded run is the slowest shard's
        merged.seconds[key] = max(p.seconds[key] for p in parts)
    for key in parts[0].sizes if parts else ():
        merged.sizes[key] = concat_size_reports([p.sizes[key] for p in parts], order)
    return merged
