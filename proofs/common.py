"""Small helpers shared by the theorem modules: test geometries, windows, boxes and positions.

The slow twins of core code the proofs compare with (covering sets from painted pixels
``covers``/``pair_covers``, ``dense_pixels``, ``box_containment``, the coverage brute forces, the
decision rules) are in :mod:`certmask_core.reference`; the modules here import them from there.
"""
import itertools

import numpy as np

from certmask_core import PatchThreat, make_maskset


def counts_1d(windows, P: int) -> list[int]:
    """How many inclusive windows ``(a0, a1)`` hold each position ``0..P-1`` (direct count)."""
    counts = [0] * P
    for a0, a1 in windows:
        for a in range(a0, a1 + 1):
            counts[a] += 1
    return counts


def small_threats(limit: int, patches=(1, 2, 3)):
    """Every square patch of the given sizes on every image up to ``limit x limit`` (from 2x2)."""
    for H, W in itertools.product(range(2, limit + 1), repeat=2):
        for p in patches:
            if p <= min(H, W):
                yield PatchThreat((H, W), p)


def box(image, patch, position) -> np.ndarray:
    """``(H, W)`` bool: the pixels of the ``ph x pw`` patch at ``position``."""
    out = np.zeros(image, dtype=bool)
    (a, b), (ph, pw) = position, patch
    out[a:a + ph, b:b + pw] = True
    return out


def positions(image, patch) -> list[tuple[int, int]]:
    return list(itertools.product(range(image[0] - patch[0] + 1), range(image[1] - patch[1] + 1)))


def sizes_within(image) -> list[tuple[int, int]]:
    """Every patch size ``(h, w)`` that fits in the image."""
    return [(h, w) for h in range(1, image[0] + 1) for w in range(1, image[1] + 1)]


def within(q, p) -> bool:
    """Size ``q`` fits in size ``p`` on both sides."""
    return q[0] <= p[0] and q[1] <= p[1]


def make_random_masks(rng, image, max_masks: int = 5, min_masks: int = 1):
    """A seeded random MaskSet on ``image``: ``min_masks..max_masks`` rectangles clipped at the border,
    the last a duplicate of the first; coverage is not required."""
    from certmask_core import MaskSet

    H, W = image
    n = int(rng.integers(min_masks, max_masks + 1))
    origins = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], axis=1)
    sizes = np.minimum(np.stack([rng.integers(1, H + 1, n), rng.integers(1, W + 1, n)], axis=1),
                       np.array(image) - origins)
    origins[-1], sizes[-1] = origins[0], sizes[0]
    return MaskSet(image, origins, sizes)


def small_geometries(max_masks: int = 8):
    """The geometries of the table: 1-D strips and small 2-D images, every strategy and small k."""
    cases = [((1, 6), (1, 2), "patchcleanser", 1, (1, 2)), ((1, 6), (1, 2), "patchcleanser", 1, (1, 3)),
             ((1, 7), (1, 2), "replicated", 2, (1, 2)), ((1, 7), (1, 2), "offset", 2, (1, 2)),
             ((1, 8), (1, 2), "replicated", 2, (1, 3)), ((1, 8), (1, 3), "offset", 3, (1, 2)),
             ((4, 4), (2, 2), "patchcleanser", 1, (2, 2)), ((4, 4), (2, 2), "replicated", 2, (2, 2)),
             ((5, 5), (2, 2), "offset", 2, (2, 1)), ((3, 3), (2, 2), "replicated", 2, (1, 2))]
    for image, patch, strategy, k, per_axis in cases:
        ms = make_maskset(PatchThreat(image, patch), k=k, strategy=strategy, masks_per_axis=per_axis)
        if len(ms) <= max_masks:
            yield f"{image[0]}x{image[1]} p{patch[0]}x{patch[1]} {strategy} k={k} n={len(ms)}", ms, patch
