"""Small helpers shared by the theorem modules: independent, pure-python twins of core code."""
import itertools

import numpy as np

from certmask_core import MaskSet, PatchThreat, make_maskset


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


def dense_pixels(family) -> np.ndarray:
    """``(n, H, W)`` bool, True where member ``i`` of a MaskSet or MaskGroups hides the pixel: each
    rectangle painted from its origin and size (independent of the core's ``dense``); a group hides
    the union of its masks."""
    base = getattr(family, "base", family)
    H, W = base.image_size
    masks = np.zeros((len(base), H, W), dtype=bool)
    for i, ((y, x), (mh, mw)) in enumerate(zip(base.origins.tolist(), base.sizes.tolist())):
        masks[i, y:y + mh, x:x + mw] = True
    if family is base:
        return masks
    return np.stack([masks[list(row)].any(0) for row in family.members.tolist()])


def box_containment(dense: np.ndarray, patch) -> np.ndarray:
    """``(P_h, P_w, n)`` bool: member ``i`` hides every pixel of the ``ph x pw`` box at ``(a, b)``,
    by counting its hidden pixels in the box (a summed-area table): covered iff the count is the area."""
    ph, pw = patch
    n, H, W = dense.shape
    table = np.zeros((n, H + 1, W + 1), dtype=np.int64)
    table[:, 1:, 1:] = dense.cumsum(1).cumsum(2)
    inside = (table[:, ph:, pw:] - table[:, :H - ph + 1, pw:] - table[:, ph:, :W - pw + 1]
              + table[:, :H - ph + 1, :W - pw + 1])
    return np.moveaxis(inside == ph * pw, 0, -1)


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


# Covering sets from painted pixels (T1 by definition), shared by proofs.soundness, proofs.exact and
# proofs.reference.


def _positions(maskset: MaskSet, patch):
    """Every patch position of the set's input (any number of axes), with the pixel slices it holds."""
    ranges = [range(n - p + 1) for n, p in zip(maskset.image_size, patch)]
    for position in itertools.product(*ranges):
        yield position, tuple(slice(a, a + p) for a, p in zip(position, patch))


def covers(maskset: MaskSet, patch) -> np.ndarray:
    """``(P_h, P_w, n)`` boolean (``(*P, n)`` in any number of axes): mask ``i`` covers position ``l``,
    from dense bitmaps (T1)."""
    patch = tuple(patch)
    dense = maskset.dense()
    d = maskset.ndim
    out = np.zeros(tuple(n - p + 1 for n, p in zip(maskset.image_size, patch)) + (len(maskset),), dtype=bool)
    for position, pixels in _positions(maskset, patch):
        out[position] = dense[(slice(None),) + pixels].all(axis=tuple(range(1, d + 1)))
    return out


def pair_covers(maskset: MaskSet, patch) -> np.ndarray:
    """``(*P, n, n)`` boolean: the union of masks ``i`` and ``j`` hides the patch at position ``l``."""
    patch = tuple(patch)
    dense = maskset.dense()
    d, n = maskset.ndim, len(maskset)
    union = dense[:, None] | dense[None, :]
    out = np.zeros(tuple(m - p + 1 for m, p in zip(maskset.image_size, patch)) + (n, n), dtype=bool)
    for position, pixels in _positions(maskset, patch):
        out[position] = union[(slice(None), slice(None)) + pixels].all(axis=tuple(range(2, d + 2)))
    return out


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
