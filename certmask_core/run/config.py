"""What a certification run certifies: its settings (:class:`RunConfig`) and its mask families.

:func:`masksets_of` builds every family of a run once (constructions, the user's mask-set files
checked against the run's patch, and the groups of several patches); :func:`family_plan` describes
one for the results.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..certification import DEFAULT_MARGIN_TOLERANCE, MODES, RECOVERY_CERTIFICATES
from ..constructions import make_maskset, plan_summary
from ..coverage import coverage_extremes
from ..errors import CertMaskError
from ..geometry import MaskSet, PatchThreat
from ..multipatch import MaskGroups, base_set, check_patches, combination_groups
from ..sizes import patch_sizes
from ..validation import shape_text
from .datasets import read_small_text


@dataclass
class RunConfig:
    """What to certify: one patch size, one mask size rule, several strategies, ks and modes.

    ``patch`` has one size per axis of the data (``(ph, pw)`` for images, ``(pt, ph, pw)`` for clips,
    ``(pl,)`` for signals); ``masks_per_axis`` and ``mask_size`` take an int (every axis) or one value
    per axis. ``mask_files`` adds user mask-set files (``certmask plan --json``), each certified with
    the coverage it verifiably gives ``patch``. ``patches`` > 1 certifies that many patches over the
    groups of that many masks of each set (T15). ``sizes`` also certifies every listed patch size from
    the same predictions (T14). ``image_batch`` is the number of images certified together (None:
    chosen from the backend's effective batch, see :func:`auto_image_batch`).
    """

    patch: tuple[int, ...]
    ks: Sequence[int] = (1,)
    strategies: Sequence[str] = ("replicated",)
    modes: Sequence[str] = ("detection",)
    masks_per_axis: int | tuple[int, ...] | None = 4
    mask_size: int | tuple[int, ...] | None = None
    image_batch: int | None = None
    margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE
    recovery_certificate: str = "hitting_set"
    mask_files: Sequence[str] = ()
    patches: int = 1
    sizes: Sequence[tuple[int, ...]] | None = None

    def __post_init__(self):
        if isinstance(self.patch, (int, np.integer)):
            self.patch = (self.patch,)
        self.patch = tuple(self.patch)
        if not self.patch or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1
                                 for p in self.patch):
            raise CertMaskError(f"patch must be one integer >= 1 per axis, got {self.patch!r}")
        self.patch = tuple(int(p) for p in self.patch)
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise CertMaskError(f"unknown modes {bad}; choose from {MODES}")
        if self.recovery_certificate not in RECOVERY_CERTIFICATES:
            raise CertMaskError(f"unknown recovery certificate {self.recovery_certificate!r}; choose from "
                                f"{RECOVERY_CERTIFICATES}")
        if self.mask_size is not None:
            self.masks_per_axis = None
        for name in ("masks_per_axis", "mask_size"):
            value = getattr(self, name)
            one_for_all = value is None or isinstance(value, (int, np.integer))
            if not one_for_all and len(value) != len(self.patch):
                raise CertMaskError(f"{name} {tuple(value)} has {len(value)} values; the patch "
                                    f"{shape_text(self.patch)} has {len(self.patch)} axes (give one per "
                                    f"axis, or one for every axis)")
        batch = self.image_batch
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                                  or batch < 1):
            raise CertMaskError(f"image_batch must be an integer >= 1 (or None: from the backend), got "
                                f"{batch!r}")
        tolerance = self.margin_tolerance  # checked here too, so a bad one fails before --out is touched
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < math.inf):
            raise CertMaskError(f"margin_tolerance must be a finite number >= 0, got {tolerance!r}")
        self.patches = check_patches(self.patches)
        if self.patches > 1 and "paper" in self.modes:
            raise CertMaskError("mode 'paper' is defined for one patch only")
        if self.sizes is not None:
            self.sizes = [list(size) for size in patch_sizes(self.sizes, len(self.patch))]
        if not self.strategies and not self.mask_files:
            raise CertMaskError("nothing to certify: give a strategy or a mask-set file")


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
            raise CertMaskError(f"{path}: the mask set is for {shape_text(ms.image_size)} images, the data "
                                f"are {shape_text(threat.image_size)}")
        low, _, position = coverage_extremes(ms, threat)
        if low == 0:
            raise CertMaskError(f"{path}: no mask covers the {shape_text(config.patch)} patch at "
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
