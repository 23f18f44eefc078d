"""Coverage verification for any mask set (theorem T1 applied to every mask).

:func:`coverage_counts` is the fast path (numba, 2-D difference array, ``O(n + H W)``);
:func:`coverage_counts_bruteforce` is its obviously correct twin (the definition, ``O(n H W)``) and
the oracle of the tests.
"""
from __future__ import annotations

import numba
import numpy as np

from .errors import CertMaskError
from .geometry import MaskSet, PatchThreat


def _threat_for(maskset: MaskSet, patch) -> PatchThreat:
    if isinstance(patch, PatchThreat):
        if patch.image_size != maskset.image_size:
            raise CertMaskError(f"threat image {patch.image_size} differs from the mask set's "
                                f"image {maskset.image_size}")
        threat = patch
    else:
        threat = PatchThreat(maskset.image_size, patch)
    small = np.flatnonzero((maskset.sizes < np.array(threat.patch_size)).any(1))
    if small.size:
        i = int(small[0])
        raise CertMaskError(f"patch {threat.patch_size} is larger than mask {i} of size "
                            f"{tuple(maskset.sizes[i].tolist())} ({small.size} masks smaller than the patch)")
    return threat


def covered_windows(maskset: MaskSet, patch) -> np.ndarray:
    """Per mask, the inclusive range of patch positions it covers: ``(n, 4)`` ``(a0, b0, a1, b1)``.

    By T1 a mask at ``(y, x)`` of size ``(mh, mw)`` covers ``a in [y, y + mh - ph]`` and
    ``b in [x, x + mw - pw]``; masks are inside the image so the ranges are inside the position grid.
    """
    threat = _threat_for(maskset, patch)
    ph, pw = threat.patch_size
    o, s = maskset.origins, maskset.sizes
    return np.stack([o[:, 0], o[:, 1], o[:, 0] + s[:, 0] - ph, o[:, 1] + s[:, 1] - pw], axis=1)


# no cache=True: concurrent ranks of a distributed run race on numba's cache files (numba#10128)
@numba.njit
def _difference_array_counts(windows, P_h, P_w):  # pragma: no cover - compiled
    diff = np.zeros((P_h + 1, P_w + 1), dtype=np.int64)
    for i in range(windows.shape[0]):
        a0, b0, a1, b1 = windows[i, 0], windows[i, 1], windows[i, 2], windows[i, 3]
        diff[a0, b0] += 1
        diff[a0, b1 + 1] -= 1
        diff[a1 + 1, b0] -= 1
        diff[a1 + 1, b1 + 1] += 1
    out = np.empty((P_h, P_w), dtype=np.int64)
    for a in range(P_h):
        row = 0
        for b in range(P_w):
            row += diff[a, b]
            out[a, b] = row + (out[a - 1, b] if a > 0 else 0)
    return out


def coverage_counts(maskset: MaskSet, patch) -> np.ndarray:
    """Number of masks covering each patch position.

    Parameters
    ----------
    maskset : MaskSet
        Any mask set, constructed or user-supplied.
    patch : (ph, pw), int or PatchThreat

    Returns
    -------
    ndarray, shape (P_h, P_w), int64
        ``counts[a, b]`` = number of masks containing the patch at top-left ``(a, b)``.

    Examples
    --------
    >>> from certmask_core import make_maskset, PatchThreat
    >>> ms = make_maskset(PatchThreat(28, 3), k=2, strategy="replicated", masks_per_axis=4)
    >>> int(coverage_counts(ms, 3).min())
    2
    """
    threat = _threat_for(maskset, patch)
    P_h, P_w = threat.num_positions
    return _difference_array_counts(np.ascontiguousarray(covered_windows(maskset, threat)), P_h, P_w)


def coverage_counts_bruteforce(maskset: MaskSet, patch) -> np.ndarray:
    """Reference twin of :func:`coverage_counts`: test the covering definition for every pair."""
    threat = _threat_for(maskset, patch)
    (P_h, P_w), (ph, pw) = threat.num_positions, threat.patch_size
    a = np.arange(P_h)[:, None]
    b = np.arange(P_w)[None, :]
    counts = np.zeros((P_h, P_w), dtype=np.int64)
    for (y, x), (mh, mw) in zip(maskset.origins, maskset.sizes):
        counts += (y <= a) & (a + ph <= y + mh) & (x <= b) & (b + pw <= x + mw)
    return counts


def is_k_covered(maskset: MaskSet, patch, k: int = 1) -> bool:
    """True when every patch position is covered by at least ``k`` masks."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CertMaskError(f"k must be an integer >= 1, got {k!r}")
    return bool(coverage_counts(maskset, patch).min() >= k)


def covering_sets(maskset: MaskSet, patch) -> np.ndarray:
    """The distinct covering sets ``S(l)`` over all positions, as a boolean incidence matrix.

    Positions between two consecutive window boundaries on both axes share their covering set, so
    only one representative per cell of the boundary grid is evaluated.

    Returns
    -------
    ndarray, shape (m, n), bool
        Row ``r`` marks the masks of one distinct covering set; rows are unique.
    """
    threat = _threat_for(maskset, patch)
    win = covered_windows(maskset, threat)
    reps = []
    for axis, P in enumerate(threat.num_positions):
        cuts = np.concatenate([[0], win[:, axis], win[:, axis + 2] + 1])
        reps.append(np.unique(cuts[cuts < P]))
    a, b = reps[0][:, None, None], reps[1][None, :, None]
    inc = ((win[:, 0] <= a) & (a <= win[:, 2]) & (win[:, 1] <= b) & (b <= win[:, 3]))
    return np.unique(inc.reshape(-1, len(maskset)), axis=0)
