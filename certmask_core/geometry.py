"""Discrete geometry of patches and masks (DESIGN.md section 1).

Axis order is always ``(h, w)``. A patch of size ``ph x pw`` sits at a top-left position ``(a, b)``
with ``0 <= a <= H - ph`` and ``0 <= b <= W - pw``. A mask is an axis-aligned rectangle inside the
image; it *covers* position ``(a, b)`` iff the patch lies wholly inside it (theorem T1).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .errors import CertMaskError

STRATEGIES = ("patchcleanser", "replicated", "offset")


MAX_SIDE = 2**14
"""Largest image side (pixels) the package accepts (16,384): far above any classifier's input, small
enough that every sum of coordinates fits int64 many times over and that every construction stays
cheap."""
MAX_MASKS = 2**22
"""Largest mask set a construction will build (about 4 million masks)."""


def _positive_int(name: str, value, limit: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise CertMaskError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise CertMaskError(f"{name} must be >= 1, got {value}")
    if limit is not None and value > limit:
        raise CertMaskError(f"{name} must be <= {limit}, got {value}")
    return int(value)


def _pair(name: str, value, limit: int | None = MAX_SIDE) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value, value)
    if isinstance(value, (dict, set, frozenset, str, bytes)):  # iterable, but not a pair
        raise CertMaskError(f"{name} must be an int or a pair (h, w), got {value!r}")
    try:
        h, w = value
    except (TypeError, ValueError):
        raise CertMaskError(f"{name} must be an int or a pair (h, w), got {value!r}") from None
    return _positive_int(f"{name}[0] (h)", h, limit), _positive_int(f"{name}[1] (w)", w, limit)


@dataclass(frozen=True)
class PatchThreat:
    """One patch of known size at an unknown position.

    Parameters
    ----------
    image_size : (H, W) or int
    patch_size : (ph, pw) or int
        Full patch size in pixels (not a half-size).

    Examples
    --------
    >>> t = PatchThreat((28, 28), (3, 3))
    >>> t.num_positions
    (26, 26)
    """

    image_size: tuple[int, int]
    patch_size: tuple[int, int]

    def __post_init__(self):
        image, patch = _pair("image_size", self.image_size), _pair("patch_size", self.patch_size)
        if patch[0] > image[0] or patch[1] > image[1]:
            raise CertMaskError(f"patch {patch[0]}x{patch[1]} is larger than the image "
                                f"{image[0]}x{image[1]}")
        object.__setattr__(self, "image_size", image)
        object.__setattr__(self, "patch_size", patch)

    @property
    def num_positions(self) -> tuple[int, int]:
        """``(P_h, P_w) = (H - ph + 1, W - pw + 1)``, the patch positions per axis."""
        return (self.image_size[0] - self.patch_size[0] + 1,
                self.image_size[1] - self.patch_size[1] + 1)


@dataclass(frozen=True)
class MaskSpec:
    """How to build a mask set: a strategy, the coverage multiplicity ``k`` and a mask size.

    Give exactly one of ``mask_size`` (pixels) and ``masks_per_axis`` (the single-cover grid's
    count per axis, PatchCleanser's parametrisation); the other is derived.
    """

    strategy: str = "patchcleanser"
    k: int = 1
    mask_size: tuple[int, int] | None = None
    masks_per_axis: tuple[int, int] | None = None

    def __post_init__(self):
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise CertMaskError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        object.__setattr__(self, "k", _positive_int("k", self.k))
        if (self.mask_size is None) == (self.masks_per_axis is None):
            raise CertMaskError("give exactly one of mask_size and masks_per_axis, got "
                                f"mask_size={self.mask_size!r}, masks_per_axis={self.masks_per_axis!r}")
        if self.strategy == "patchcleanser" and self.k != 1:
            raise CertMaskError(f"strategy 'patchcleanser' is a single cover (k=1), got k={self.k}; "
                                "use 'replicated' or 'offset' for k > 1")
        if self.mask_size is not None:
            object.__setattr__(self, "mask_size", _pair("mask_size", self.mask_size))
        else:
            object.__setattr__(self, "masks_per_axis", _pair("masks_per_axis", self.masks_per_axis))

    def resolve_mask_size(self, threat: PatchThreat) -> tuple[int, int]:
        """The mask size in pixels for ``threat`` (T1: window ``w = ceil(P / n)``, ``m = w + p - 1``)."""
        if self.mask_size is not None:
            for axis, (m, p) in enumerate(zip(self.mask_size, threat.patch_size)):
                if m < p:
                    raise CertMaskError(f"mask_size {self.mask_size} is smaller than the patch "
                                        f"{threat.patch_size} on axis {'hw'[axis]} ({m} < {p})")
            return self.mask_size
        return tuple(math.ceil(P / n) + p - 1 for P, n, p in
                     zip(threat.num_positions, self.masks_per_axis, threat.patch_size))


def effective_coverage(mask_size, patch_size) -> tuple[int, int]:
    """Positions covered per axis by one unclipped mask: ``w = m - p + 1`` (theorem T1).

    Examples
    --------
    >>> effective_coverage((7, 9), (3, 3))
    (5, 7)
    """
    mask, patch = _pair("mask_size", mask_size), _pair("patch_size", patch_size)
    if mask[0] < patch[0] or mask[1] < patch[1]:
        raise CertMaskError(f"patch {patch} is larger than the mask {mask}")
    return mask[0] - patch[0] + 1, mask[1] - patch[1] + 1


def lower_bound(threat: PatchThreat, mask_size, k: int = 1) -> int:
    """Fewest masks of size ``mask_size`` giving k-fold coverage (theorem T2).

    ``n >= k * ceil(P_h / w_h) * ceil(P_w / w_w)``: the positions ``(i w_h, j w_w)`` are pairwise
    too far apart for one mask to cover two of them, and each needs ``k`` masks. Exact when repeated
    masks are allowed; distinct masks may need more (see :func:`make_maskset`).

    Examples
    --------
    >>> lower_bound(PatchThreat(28, 3), (7, 7), k=2)
    72
    """
    k = _positive_int("k", k)
    w_h, w_w = effective_coverage(mask_size, threat.patch_size)
    P_h, P_w = threat.num_positions
    return k * math.ceil(P_h / w_h) * math.ceil(P_w / w_w)


def _coordinates(values, name: str, low: int, high: tuple[int, int]) -> np.ndarray:
    """A read-only ``(n, 2)`` int64 array whose column ``j`` lies in ``[low, high[j]]``.

    Every range check happens on the values as given (Python ints, floats or any numeric dtype),
    before the cast to int64, so that no value can wrap around and slip past them.
    """
    try:
        # nested lists as objects: np.asarray would silently turn [[True, 0]] into [[1, 0]]
        # (np.asarray also turns subclasses such as np.matrix into plain arrays)
        arr = np.asarray(values) if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    except (TypeError, ValueError) as err:
        raise CertMaskError(f"{name} is not an (n, 2) array: {err}") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise CertMaskError(f"{name} must have shape (n, 2), got {arr.shape}")
    if arr.dtype == object:  # e.g. JSON: check each value as a Python number before any cast
        for index, v in enumerate(arr.ravel().tolist()):
            if (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)
                    or not -2**53 <= v <= 2**53):
                raise CertMaskError(f"{name}[{index // 2}] holds {v!r}: coordinates must be integers "
                                    f"in [{low}, {max(high)}] for this image")
        integral = all(isinstance(v, numbers.Integral) for v in arr.ravel().tolist())
        arr = arr.astype(np.int64 if integral else np.float64)
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise CertMaskError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        fractional = ~finite | (np.mod(np.where(finite, arr, 0), 1) != 0)
        if fractional.any():
            raise CertMaskError(f"{name} must hold integers, got {arr[fractional][0].item()!r}")
    outside = (arr < low) | (arr > np.array(high))
    if outside.any():
        i, j = (int(v) for v in np.argwhere(outside)[0])
        raise CertMaskError(f"mask {i} has {name[:-1]} {tuple(arr[i].tolist())}: its {'hw'[j]} value must "
                            f"lie in [{low}, {high[j]}] for this image ({int(outside.any(1).sum())} such "
                            f"masks)")
    owner = arr.astype(np.int64)
    owner.setflags(write=False)
    # a view of a read-only owner cannot be made writeable again (setflags(write=True) raises)
    return owner.view()


@dataclass(frozen=True, eq=False)
class MaskSet:
    """An immutable set of rectangular masks inside an ``H x W`` image.

    Parameters
    ----------
    image_size : (H, W)
    origins : array_like, shape (n, 2)
        Top-left pixel ``(y, x)`` of each mask; stored as a read-only int64 array.
    sizes : array_like, shape (n, 2)
        ``(mh, mw)`` of each mask, already clipped to the image.
    spec : MaskSpec, optional
        The request the set was built from (``None`` for a user-supplied set).
    threat : PatchThreat, optional
        The threat the set was built for.

    Examples
    --------
    >>> ms = MaskSet((4, 4), [[0, 0], [0, 2]], [[4, 2], [4, 2]])
    >>> len(ms), ms.dense().shape
    (2, (2, 4, 4))
    """

    image_size: tuple[int, int]
    origins: np.ndarray
    sizes: np.ndarray
    spec: MaskSpec | None = None
    threat: PatchThreat | None = None
    _key: bytes = field(init=False, repr=False, compare=False)
    # derived geometry (coverage, covering sets) per patch size, computed once per set
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        H, W = _pair("image_size", self.image_size)
        origins = _coordinates(self.origins, "origins", 0, (H - 1, W - 1))
        sizes = _coordinates(self.sizes, "sizes", 1, (H, W))
        if origins.shape != sizes.shape:
            raise CertMaskError(f"origins {origins.shape} and sizes {sizes.shape} differ in shape")
        if len(origins) == 0:
            raise CertMaskError("a mask set needs at least one mask")
        # both terms are at most MAX_SIDE here, so the sum cannot overflow
        bad = np.flatnonzero((origins[:, 0] + sizes[:, 0] > H) | (origins[:, 1] + sizes[:, 1] > W))
        if bad.size:
            i = int(bad[0])
            raise CertMaskError(f"mask {i} (origin {tuple(origins[i].tolist())}, size "
                                f"{tuple(sizes[i].tolist())}) leaves the {H}x{W} image "
                                f"({bad.size} such masks)")
        if self.spec is not None and not isinstance(self.spec, MaskSpec):
            raise CertMaskError(f"spec must be a MaskSpec or None, got {type(self.spec).__name__}")
        if self.threat is not None and (not isinstance(self.threat, PatchThreat)
                                        or self.threat.image_size != (H, W)):
            raise CertMaskError(f"threat must be a PatchThreat for the {H}x{W} image, got {self.threat!r}")
        object.__setattr__(self, "image_size", (H, W))
        object.__setattr__(self, "origins", origins)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "_key", np.concatenate([origins, sizes], 1).tobytes())
        object.__setattr__(self, "_cache", {})

    def __len__(self) -> int:
        return len(self.origins)

    def __eq__(self, other) -> bool:
        return (isinstance(other, MaskSet) and self.image_size == other.image_size
                and self._key == other._key)

    def __hash__(self) -> int:
        return hash((self.image_size, self._key))

    @property
    def k(self) -> int | None:
        """The multiplicity the set was built for, or ``None`` for a user-supplied set."""
        return None if self.spec is None else self.spec.k

    def rectangles(self) -> np.ndarray:
        """``(n, 4)`` array of ``(y0, x0, y1, x1)`` with exclusive ends."""
        return np.concatenate([self.origins, self.origins + self.sizes], axis=1)

    def is_distinct(self) -> bool:
        """True when no two masks are the same rectangle."""
        return len(np.unique(self.rectangles(), axis=0)) == len(self)

    def dense(self) -> np.ndarray:
        """Boolean masks of shape ``(n, H, W)``, True where a mask hides the pixel."""
        H, W = self.image_size
        ys, xs = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
        y0, x0, y1, x1 = (self.rectangles()[:, i, None, None] for i in range(4))
        return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)

    def to_dict(self) -> dict:
        """JSON-ready description (the format ``certmask plan --json`` writes)."""
        out = {"image_size": list(self.image_size), "origins": self.origins.tolist(),
               "sizes": self.sizes.tolist()}
        if self.spec is not None:
            out["spec"] = {"strategy": self.spec.strategy, "k": self.spec.k,
                           "mask_size": list(self.spec.mask_size or []) or None,
                           "masks_per_axis": list(self.spec.masks_per_axis or []) or None}
        if self.threat is not None:
            out["patch_size"] = list(self.threat.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> MaskSet:
        """Inverse of :meth:`to_dict`; ``spec`` and ``patch_size`` are optional.

        Any malformed field (wrong type, missing, out of range) raises :class:`CertMaskError`. A
        ``spec`` or ``patch_size`` in the file is a description, never trusted: certification always
        re-verifies coverage from the rectangles themselves.
        """
        if not isinstance(data, dict):
            raise CertMaskError(f"mask-set JSON must be an object, got {type(data).__name__}")
        missing = [key for key in ("image_size", "origins", "sizes") if key not in data]
        if missing:
            raise CertMaskError(f"mask-set JSON lacks the field {missing[0]!r}")
        spec, patch = data.get("spec"), data.get("patch_size")
        if spec is not None and not isinstance(spec, dict):
            raise CertMaskError(f"mask-set JSON: spec must be an object, got {spec!r}")
        unknown = sorted(map(repr, set(spec or {}) - {"strategy", "k", "mask_size", "masks_per_axis"}))
        if unknown:
            raise CertMaskError(f"mask-set JSON: unknown spec fields {unknown}")
        image = _pair("image_size", data["image_size"] if not isinstance(data["image_size"], list)
                      else tuple(data["image_size"]))
        return cls(image, data["origins"], data["sizes"], MaskSpec(**spec) if spec else None,
                   PatchThreat(image, patch if not isinstance(patch, list) else tuple(patch))
                   if patch is not None else None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> MaskSet:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError, TypeError) as err:  # JSONDecodeError, huge ints, bad bytes
            raise CertMaskError(f"mask-set JSON does not parse: {err}") from None
        return cls.from_dict(data)
