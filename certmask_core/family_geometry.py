"""One geometry object per (mask family, patch size, number of patches): what the decisions need.

A defence or certificate asks of a family only its coverage and its covering sets ``S(l)`` (the
masks, or groups, covering patch position ``l``; for several patches, tuples of positions, T15).
:func:`family_geometry` computes them in one place from the rectangles (a mask set's own claims are
never trusted) and returns a :class:`FamilyGeometry` that the decisions take whole, so a family's way
through :func:`~certmask_core.certification.certify` is geometry -> decision -> report. The object
is cached on the family, and each covering-set view is computed on first use, so every mode, ``k``
and batch of a run computes it once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .bitsets import unpack
from .coverage import covering_set_bits, minimal_covering_set_bits, threat_for
from .errors import CertMaskError
from .geometry import MaskSet
from .multipatch import MaskGroups, base_set, check_patches, family_coverage, tuple_minimal_sets
from .validation import positive_int


@dataclass(frozen=True, eq=False)
class FamilyGeometry:
    """The coverage and covering sets of a family for one threat.

    Attributes
    ----------
    family : MaskSet or MaskGroups
        One member per prediction: a mask, or a group of masks hidden together.
    patch : tuple of int
        Patch size per axis.
    patches : int
        Number of patches (T15): covering sets are those of ``patches``-tuples of positions.
    min_coverage : int
        The fewest members covering a position (or tuple of positions).
    least_covered : tuple
        A position (or tuple of positions) covered by ``min_coverage`` members.
    """

    family: MaskSet | MaskGroups
    patch: tuple[int, ...]
    patches: int
    min_coverage: int
    least_covered: tuple

    @property
    def n(self) -> int:
        """Number of members (columns of the predictions)."""
        return len(self.family)

    @property
    def single(self) -> bool:
        """One patch and single masks: the covering sets of :mod:`.coverage`, not of tuples."""
        return self.patches == 1 and isinstance(self.family, MaskSet)

    @cached_property
    def minimal_sets(self) -> np.ndarray:
        """The inclusion-minimal covering sets as bitsets over the members, ``(m, words)`` uint64."""
        if self.single:
            return minimal_covering_set_bits(self.family, self.patch)
        return tuple_minimal_sets(self.family, self.patch, self.patches)

    @cached_property
    def all_sets(self) -> np.ndarray:
        """Every distinct covering set as bitsets (mode ``paper``: one patch, single masks only)."""
        if not self.single:
            raise CertMaskError("mode 'paper' is defined for one patch and single masks only")
        return covering_set_bits(self.family, self.patch)

    @cached_property
    def membership(self) -> np.ndarray:
        """``(n, m)`` bool: member ``i`` lies in minimal covering set ``s``."""
        return np.ascontiguousarray(unpack(self.minimal_sets, self.n).T)

    @cached_property
    def member_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ptr, idx)``: minimal set ``s`` holds members ``idx[ptr[s]:ptr[s + 1]]`` (int64)."""
        sets, members = np.nonzero(self.membership.T)
        ptr = np.searchsorted(sets, np.arange(self.membership.shape[1] + 1))
        return ptr.astype(np.int64), members.astype(np.int64)

    def require(self, k: int) -> None:
        """Refuse a claimed coverage ``k`` the family does not have, naming a position covered less."""
        if self.min_coverage >= k:
            return
        if self.single:
            raise CertMaskError(f"the mask set is not {k}-fold: patch position {self.least_covered} is "
                                f"covered by {self.min_coverage} masks")
        raise CertMaskError(f"the family is not {k}-fold for {self.patches} patches: the positions "
                            f"{self.least_covered} are covered by {self.min_coverage} of its {self.n} "
                            f"members")


def check_family(family) -> None:
    """Refuse anything but a MaskSet or MaskGroups as the family of a decision."""
    if not isinstance(family, (MaskSet, MaskGroups)):
        raise CertMaskError(f"maskset must be a MaskSet or MaskGroups, got {type(family).__name__}")


def geometry_of(family: MaskSet | MaskGroups, patch, patches: int = 1) -> FamilyGeometry:
    """The family's geometry for ``patches`` patches of size ``patch``, computed once per family.

    ``patch`` is a size or a :class:`~certmask_core.geometry.PatchThreat`; ``None`` takes the
    family's own threat (a user's mask set has none, and then it must be given).
    """
    check_family(family)
    patches = check_patches(patches)
    return _cached(family, _patch_size(family, patch), patches)


def family_geometry(family: MaskSet | MaskGroups, patch, k, patches: int = 1) -> tuple[FamilyGeometry, int]:
    """The geometry of a family and the coverage ``k`` it is claimed to have, checked (T1, T15).

    ``k`` defaults to the family's own (a MaskSet made by ``make_maskset``) or 1; a family some
    position of which fewer than ``k`` members cover is refused.

    Examples
    --------
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    >>> geometry, k = family_geometry(ms, None, None)
    >>> geometry.min_coverage, k, geometry.membership.tolist()
    (1, 1, [[True, False], [False, True]])
    """
    check_family(family)
    patches = check_patches(patches)
    size = _patch_size(family, patch)
    claimed = positive_int("k", k if k is not None else (getattr(family, "k", None) or 1), whole_range=True)
    geometry = _cached(family, size, patches)
    geometry.require(claimed)
    return geometry, claimed


def _patch_size(family, patch) -> tuple[int, ...]:
    """``patch`` (a size, a threat, or None for the family's own threat) as a checked size."""
    base = base_set(family)
    patch = patch if patch is not None else base.threat
    if patch is None:
        raise CertMaskError("a user-supplied mask set needs patch=(ph, pw)")
    return threat_for(base, patch).patch_size


def _cached(family, size: tuple[int, ...], patches: int) -> FamilyGeometry:
    def compute():
        low, where = family_coverage(family, size, patches)
        return FamilyGeometry(family, size, patches, int(low), where)

    return family.cached(("geometry", size, patches), compute)
