"""The files of a run: the results table, results and figures written atomically (a certify run's, an
attack's), the output folder's lock and its preparation for a fresh, resumed or overwritten run."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constructions import make_maskset
from ..errors import CertMaskError
from ..geometry import MaskSet, PatchThreat
from ..validation import shape_text
from .files import read_json_file, write_atomically, write_json_atomically  # noqa: F401 (re-exported)
from .records import SEAL_FILE, SHARD_GLOB

TABLE_LEGEND = (
    "Columns: **k**: every patch position is covered by at least k masks; **masks**: masks in the set;",
    "**bound**: the proven lower bound on the masks of any k-fold set of that mask size (T2, `k *",
    "ceil(P_h / w_h) * ceil(P_w / w_w)`; `certmask plan` gives the exact minimum, T16); **mode**: the",
    "defence; **certificate**: the check that certifies an image;",
    "**clean acc**: share of the (unattacked) images whose defended output is the true label;",
    "**certified acc**: share of the images certified: the guarantee holds whatever patch of that size",
    "is placed anywhere, with any content; **alert rate**: share of the images answered ALERT;",
    "**passes/img**: model evaluations per image for the certificate (one per mask, recovery adds its",
    "two-mask passes); **img/s**: images per second, each run charged the whole shared first round",
    "(about the job's throughput); **guarantee**: what a certified image is guaranteed: `label-or-alert`",
    "(the true label or ALERT), `label` (the true label), `none` (an unsound claim, never certified).",
)
"""The legend printed under the results table (README, "Set-up on a fresh machine", says the same)."""


def results_table(results: dict) -> str:
    """Human-readable Markdown table of a results dict, with a legend of its columns."""
    several = f" ({results['patches']} patches)" if results.get("patches", 1) > 1 else ""
    lines = [f"patch {shape_text(results['patch'])}{several}, {results['images']} images, "
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
    lines += ["", *TABLE_LEGEND]
    if results.get("sizes"):
        sizes = [shape_text(size) for size in results["sizes"]]
        patch = shape_text(results["patch"])
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
                  maskset: MaskSet | None = None, labels=None) -> Path:
    """Write ``results.json`` and ``results.md``, then the PNG figures, into ``out_dir``.

    ``examples.png`` shows ``images[:8]`` (2-D images only) under ``maskset`` (default: the first run's
    set, rebuilt from its plan), each titled with its true label (``labels[:8]``, when given), the first
    run's defended output and whether it certified the image, the figure with that run's strategy, k
    and mode; ``certified_vs_size.png`` appears when the run certified several sizes.

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
        if images is not None and images.ndim == 4:  # pictures of 2-D images; clips and signals have none
            first = results["runs"][0]
            ms = maskset or make_maskset(PatchThreat(images.shape[2:], results["patch"]), first["k"],
                                         first["strategy"], mask_size=tuple(first["plan"]["mask_size"]))
            classes = results.get("classes") or [str(c) for c in range(max(results["num_classes"], 1))]
            shown = min(8, len(images))
            certified = first["per_image"].get("certified")
            unsound = first.get("certified_accuracy") is None
            title = (f"{first['strategy']} k={first['k']}, {first['mode']}"
                     + (" (unsound: never certified)" if unsound else "")
                     + f": true label, defended output, certified ({results['images']} images in all)")
            _plots.example_images(images[:shown], ms, first["per_image"]["output"][:shown], classes,
                                  tmp / "examples.png",
                                  labels=None if labels is None else [int(y) for y in labels[:shown]],
                                  certified=None if certified is None else certified[:shown], title=title)

    write_atomically(out, write_results, last="results.json")
    if plots:
        _draw_after_results(out, draw, "accuracy_vs_k.png", "the figures were not drawn",
                            "results.json and results.md are written")
    return out


def _draw_after_results(out: Path, draw: Callable[[Path], None], last: str, failed: str, kept: str) -> bool:
    """``draw`` the figures into ``out`` atomically (``last`` last), once the results are written.

    A figure that cannot be drawn (matplotlib missing, odd data) is reported on stderr, ``failed`` and
    ``kept`` saying what was lost and what is safe, and never raises: the results are worth more.
    Returns whether the figures were drawn.
    """
    try:
        write_atomically(out, draw, last=last)
    except Exception as err:  # noqa: BLE001 (a figure is never worth the results: they are written)
        print(f"certmask: warning: {failed} ({type(err).__name__}: {err}); {kept}", file=sys.stderr)
        return False
    return True


@dataclass(frozen=True)
class AttackExamples:
    """The first attacked images of an attack, with the patches it found pasted in (2-D images).

    Attributes
    ----------
    images : ndarray, shape (n, C, H, W)
        The attacked images, pixels in ``[0, 1]``.
    outputs : sequence of int
        The defended output on each attacked image (``-1``: ALERT).
    patch_boxes : sequence of list of ((a, b), (ph, pw))
        Each image's patches: top-left pixel and size, in the order they were pasted.
    maskset : MaskSet
        The mask set the defence ran (outlined on each image).
    """

    images: np.ndarray
    outputs: Sequence[int]
    patch_boxes: Sequence[list]
    maskset: MaskSet


ATTACK_FILE = "attack.json"
ATTACK_FIGURE = "attack.png"
"""What ``certmask attack`` writes into its output folder: the results, then the attacked images."""


def write_attack_outputs(results: dict, out_dir: str | os.PathLike, examples: AttackExamples | None = None,
                         classes: Sequence[str] | None = None) -> list[str]:
    """Write an attack's ``attack.json``, then ``attack.png`` (its first attacked images), into ``out_dir``.

    Parameters
    ----------
    results : dict
        The attack's results (:func:`certmask_backends.pytorch.attack.run_attack`), written as they are.
    out_dir : str or path-like
        The folder, created when missing.
    examples : AttackExamples, optional
        The attacked images to draw; without them (clips, signals, no image attacked) no figure.
    classes : sequence of str, optional
        The data's class names in label order, which title each image; without them (data that name
        no classes, e.g. an ``.npz``) a class is named by its index.

    Returns
    -------
    list of str
        The names of the files written, ``attack.json`` first.

    ``attack.json`` is written beside its final name and renamed into place, so it is whole or absent.
    The figure comes after it: a figure that cannot be drawn is reported on stderr and never loses the
    results.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / ATTACK_FILE, results)
    written = [ATTACK_FILE]
    if examples is None:
        return written

    def draw(tmp: Path) -> None:
        from . import plots as _plots
        # an empty list names every class by its index (plots.example_titles)
        _plots.example_images(examples.images, examples.maskset, examples.outputs, list(classes or []),
                              tmp / ATTACK_FIGURE, patch_boxes=examples.patch_boxes)

    if _draw_after_results(out, draw, ATTACK_FIGURE, "the figure was not drawn", f"{ATTACK_FILE} is written"):
        written.append(ATTACK_FIGURE)
    return written


def _refuse_foreign(out: Path) -> None:
    """CertMaskError when ``out`` is a file, or a non-empty folder holding nothing a run writes."""
    if out.exists() and not out.is_dir():
        raise CertMaskError(f"--out {str(out)!r} is a file, not a folder")
    # what a killed run can leave besides its files: its lock and half-written files being renamed in
    leftovers = (LOCK_FILE, ".partial-", f".{PER_IMAGE_FILE}.partial", ".per_image.rank-")
    if (out.is_dir() and any(not p.name.startswith(leftovers) for p in out.iterdir())
            and not any((out / name).exists() for name in RUN_FILES if name != LOCK_FILE)
            and not any(out.glob(SHARD_GLOB))):
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
    previous += sorted(path.name for path in out.glob(SHARD_GLOB))  # per-process files of a sharded run
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
