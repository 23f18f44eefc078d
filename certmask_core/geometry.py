"""Discrete geometry of patches and masks (docs/design.md section 2; docs/theory.md, notation, T1).

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
from .validation import positive_int, shape_text

STRATEGIES = ("patchcleanser", "replicated", "offset")


MAX_SIDE = 2**14
"""Largest image side (pixels) the package accepts (16,384): far above any classifier's input, small
enough that every sum of coordinates fits int64 many times over and that every construction stays
cheap."""
MAX_SIGNAL = 2**24
"""Longest 1-D input (samples) the package accepts (about 17 minutes of 16 kHz audio); every other
axis count keeps :data:`MAX_SIDE` per axis."""
MAX_MASKS = 2**22
"""Largest mask set a construction will build (about 4 million masks)."""


MAX_DIMS = 8
"""Most spatial axes a threat may have (1-D signals, 2-D images, 3-D clips, and beyond)."""
MAX_VOLUME = 2**48
"""Most pixels (product of the sides) an input may have: far above any model's input, and low enough
that volumes and products of per-axis counts stay exact in int64."""


def axis_name(axis: int, ndim: int) -> str:
    """``h``/``w`` for images, ``t``/``h``/``w`` for clips, ``l`` for signals, ``axis j`` beyond."""
    names = {1: "l", 2: "hw", 3: "thw"}.get(ndim)
    return names[axis] if names else f"axis {axis}"


def check_sizes(name: str, value, ndim: int | None = None) -> tuple[int, ...]:
    """A size per axis, checked (internal to the package: the check behind every size argument).

    A sequence of ``ndim`` positive ints, or one int for every axis (an int with
    ``ndim=None`` means a 2-D size, the first release's convention); each at most :data:`MAX_SIDE`,
    or :data:`MAX_SIGNAL` for a 1-D size."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value,) * (ndim or 2)
    if (isinstance(value, (dict, set, frozenset, str, bytes)) or not hasattr(value, "__iter__")
            or isinstance(value, np.ndarray) and value.ndim == 0):  # a 0-d array is neither
        raise CertMaskError(f"{name} must be an int or a size per axis such as (h, w), got {value!r}")
    try:
        values = tuple(value)
    except (TypeError, ValueError):
        raise CertMaskError(f"{name} must be an int or a size per axis such as (h, w), "
                            f"got {value!r}") from None
    d = len(values)
    if not 1 <= d <= MAX_DIMS or (ndim is not None and d != ndim):
        want = f"{ndim}" if ndim is not None else f"1 to {MAX_DIMS}"
        raise CertMaskError(f"{name} must have {want} axes, got {d}: {value!r}")
    limit = MAX_SIGNAL if d == 1 else MAX_SIDE
    sizes = tuple(positive_int(f"{name}[{i}] ({axis_name(i, d)})", v, high=limit)
                  for i, v in enumerate(values))
    if math.prod(sizes) > MAX_VOLUME:
        raise CertMaskError(f"{name} {shape_text(sizes)} has {math.prod(sizes)} pixels, "
                            f"more than {MAX_VOLUME}")
    return sizes


@dataclass(frozen=True)
class PatchThreat:
    """One patch of known size at an unknown position, in any number of axes.

    Parameters
    ----------
    image_size : (H, W), int, or one size per axis
        ``(T, H, W)`` for a clip, ``(L,)`` for a signal; an int means a square image ``(n, n)``.
    patch_size : sizes per axis, or int
        Full patch size in pixels (not a half-size); an int means the same size on every axis of
        the image.

    Examples
    --------
    >>> PatchThreat((28, 28), (3, 3)).num_positions
    (26, 26)
    >>> PatchThreat((16, 28, 28), (4, 3, 3)).num_positions
    (13, 26, 26)
    """

    image_size: tuple[int, ...]
    patch_size: tuple[int, ...]

    def __post_init__(self):
        image = check_sizes("image_size", self.image_size)
        patch = check_sizes("patch_size", self.patch_size, len(image))
        if any(p > i for p, i in zip(patch, image)):
            raise CertMaskError(f"patch {shape_text(patch)} is larger than the image {shape_text(image)}")
        object.__setattr__(self, "image_size", image)
        object.__setattr__(self, "patch_size", patch)

    @property
    def ndim(self) -> int:
        """Number of axes (2 for images, 3 for clips)."""
        return len(self.image_size)

    @property
    def num_positions(self) -> tuple[int, ...]:
        """``P_i = N_i - p_i + 1``, the patch positions per axis (``(P_h, P_w)`` for images)."""
        return tuple(n - p + 1 for n, p in zip(self.image_size, self.patch_size))


@dataclass(frozen=True)
class MaskSpec:
    """How to build a mask set: a strategy, the coverage multiplicity ``k`` and a mask size.

    Give exactly one of ``mask_size`` (pixels) and ``masks_per_axis`` (the single-cover grid's
    count per axis, PatchCleanser's parametrisation); the other is derived. Either is a size per
    axis, or one int for every axis of the threat it is resolved against.
    """

    strategy: str = "patchcleanser"
    k: int = 1
    mask_size: tuple[int, ...] | int | None = None
    masks_per_axis: tuple[int, ...] | int | None = None

    def __post_init__(self):
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise CertMaskError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        object.__setattr__(self, "k", positive_int("k", self.k))
        if (self.mask_size is None) == (self.masks_per_axis is None):
            raise CertMaskError("give exactly one of mask_size and masks_per_axis, got "
                                f"mask_size={self.mask_size!r}, masks_per_axis={self.masks_per_axis!r}")
        if self.strategy == "patchcleanser" and self.k != 1:
            raise CertMaskError(f"strategy 'patchcleanser' is a single cover (k=1), got k={self.k}; "
                                "use 'replicated' or 'offset' for k > 1")
        for name in ("mask_size", "masks_per_axis"):
            value = getattr(self, name)
            if value is not None:  # an int stays an int: it means "every axis" of the threat
                object.__setattr__(self, name, positive_int(name, value, high=MAX_SIGNAL)
                                   if isinstance(value, numbers.Integral) else check_sizes(name, value))

    def resolve_mask_size(self, threat: PatchThreat) -> tuple[int, ...]:
        """The mask size in pixels for ``threat`` (T1: window ``w = ceil(P / n)``, ``m = w + p - 1``)."""
        if self.mask_size is not None:
            size = check_sizes("mask_size", self.mask_size, threat.ndim)
            for axis, (m, p) in enumerate(zip(size, threat.patch_size)):
                if m < p:
                    raise CertMaskError(f"mask_size {size} is smaller than the patch "
                                        f"{threat.patch_size} on axis {axis_name(axis, threat.ndim)} "
                                        f"({m} < {p})")
            return size
        per_axis = check_sizes("masks_per_axis", self.masks_per_axis, threat.ndim)
        return tuple(math.ceil(P / n) + p - 1 for P, n, p in
                     zip(threat.num_positions, per_axis, threat.patch_size))


def effective_coverage(mask_size, patch_size) -> tuple[int, ...]:
    """Positions covered per axis by one unclipped mask: ``w = m - p + 1`` (theorem T1).

    An int stands for every axis of the other argument (both ints: a 2-D size).

    Examples
    --------
    >>> effective_coverage((7, 9), (3, 3))
    (5, 7)
    >>> effective_coverage((6, 7, 7), 3)
    (4, 5, 5)
    """
    ndim = next((len(v) for v in (mask_size, patch_size) if not isinstance(v, numbers.Integral)
                 and hasattr(v, "__len__") and not (isinstance(v, np.ndarray) and v.ndim == 0)), None)
    mask = check_sizes("mask_size", mask_size, ndim)
    patch = check_sizes("patch_size", patch_size, len(mask))
    if any(m < p for m, p in zip(mask, patch)):
        raise CertMaskError(f"patch {patch} is larger than the mask {mask}")
    return tuple(m - p + 1 for m, p in zip(mask, patch))


def lower_bound(threat: PatchThreat, mask_size, k: int = 1) -> int:
    """Fewest masks of size ``mask_size`` giving k-fold coverage (theorem T2).

    ``n >= k * prod_i ceil(P_i / w_i)`` (``k * ceil(P_h / w_h) * ceil(P_w / w_w)`` for images): the
    positions on the lattice of steps ``w_i`` are pairwise too far apart for one mask to cover two of
    them, and each needs ``k`` masks. Exact when repeated masks are allowed; distinct masks may need
    more (see :func:`~certmask_core.constructions.exact_minimum`).

    Examples
    --------
    >>> lower_bound(PatchThreat(28, 3), (7, 7), k=2)
    72
    """
    k = positive_int("k", k)
    w = effective_coverage(check_sizes("mask_size", mask_size, threat.ndim), threat.patch_size)
    return k * math.prod(math.ceil(P / wi) for P, wi in zip(threat.num_positions, w))


def _coordinates(values, name: str, low: int, high: tuple[int, ...]) -> np.ndarray:
    """A read-only ``(n, d)`` int64 array (``d = len(high)``) whose column ``j`` lies in ``[low, high[j]]``.

    Every range check happens on the values as given (Python ints, floats or any numeric dtype),
    before the cast to int64, so that no value can wrap around and slip past them.
    """
    try:
        # nested lists as objects: np.asarray would silently turn [[True, 0]] into [[1, 0]]
        # (np.asarray also turns subclasses such as np.matrix into plain arrays)
        arr = np.asarray(values) if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    except (TypeError, ValueError) as err:
        raise CertMaskError(f"{name} is not an (n, {len(high)}) array: {err}") from None
    if arr.ndim != 2 or arr.shape[1] != len(high):
        raise CertMaskError(f"{name} must have shape (n, {len(high)}), got {arr.shape}")
    if arr.dtype == object:  # e.g. JSON: check each value as a Python number before any cast
        for index, v in enumerate(arr.ravel().tolist()):
            if (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)
                    or not -2**53 <= v <= 2**53):
                raise CertMaskError(f"{name}[{index // len(high)}] holds {v!r}: coordinates must be integers "
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
        raise CertMaskError(f"mask {i} has {name[:-1]} {tuple(arr[i].tolist())}: its "
                            f"{axis_name(j, len(high))} value must "
                            f"lie in [{low}, {high[j]}] for this image ({int(outside.any(1).sum())} such "
                            f"masks)")
    owner = arr.astype(np.int64)
    owner.setflags(write=False)
    # a view of a read-only owner cannot be made writeable again (setflags(write=True) raises)
    return owner.view()


def _listed(size):
    return list(size) if isinstance(size, tuple) else size


@dataclass(frozen=True, eq=False)
class MaskSet:
    """An immutable set of rectangular masks (boxes) inside an ``H x W`` image, or any ``d``-axis input.

    Parameters
    ----------
    image_size : (H, W), or one size per axis (``(T, H, W)`` for a clip)
    origins : array_like, shape (n, d)
        First pixel of each mask per axis (``(y, x)`` for images); stored as a read-only int64 array.
    sizes : array_like, shape (n, d)
        Extent of each mask per axis (``(mh, mw)``), already clipped to the image.
    spec : MaskSpec, optional
        The request the set was built from (``None`` for a user-supplied set).
    threat : PatchThreat, optional
        The threat the set was built for.

    Examples
    --------
    >>> ms = MaskSet((4, 4), [[0, 0], [0, 2]], [[4, 2], [4, 2]])
    >>> len(ms), ms.dense().shape
    (2, (2, 4, 4))
    >>> MaskSet((8, 4, 4), [[0, 0, 0]], [[8, 2, 2]]).dense().shape
    (1, 8, 4, 4)
    """

    image_size: tuple[int, ...]
    origins: np.ndarray
    sizes: np.ndarray
    spec: MaskSpec | None = None
    threat: PatchThreat | None = None
    _key: bytes = field(init=False, repr=False, compare=False)
    # derived geometry (coverage, covering sets) per patch size, computed once per set
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        image = check_sizes("image_size", self.image_size)
        origins = _coordinates(self.origins, "origins", 0, tuple(n - 1 for n in image))
        sizes = _coordinates(self.sizes, "sizes", 1, image)
        if origins.shape != sizes.shape:
            raise CertMaskError(f"origins {origins.shape} and sizes {sizes.shape} differ in shape")
        if len(origins) == 0:
            raise CertMaskError("a mask set needs at least one mask")
        # both terms are at most MAX_SIGNAL here, so the sum cannot overflow
        bad = np.flatnonzero((origins + sizes > np.array(image)).any(1))
        if bad.size:
            i = int(bad[0])
            raise CertMaskError(f"mask {i} (origin {tuple(origins[i].tolist())}, size "
                                f"{tuple(sizes[i].tolist())}) leaves the {shape_text(image)} image "
                                f"({bad.size} such masks)")
        if self.spec is not None and not isinstance(self.spec, MaskSpec):
            raise CertMaskError(f"spec must be a MaskSpec or None, got {type(self.spec).__name__}")
        if self.threat is not None and (not isinstance(self.threat, PatchThreat)
                                        or self.threat.image_size != image):
            raise CertMaskError(f"threat must be a PatchThreat for the {shape_text(image)} image, got "
                                f"{self.threat!r}")
        object.__setattr__(self, "image_size", image)
        object.__setattr__(self, "origins", origins)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "_key", np.concatenate([origins, sizes], 1).tobytes())
        object.__setattr__(self, "_cache", {})

    def __len__(self) -> int:
        return len(self.origins)

    def cached(self, key, compute):
        """``compute()``, computed once per ``key`` and kept on the set (internal to the package).

        Derived geometry (cell grids, covering sets, membership matrices) is cached here per patch
        size, so every mode, k and batch of a run computes it once; the set itself is immutable, so
        the cache never goes stale. ``compute`` takes no argument.
        """
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = compute()
            return value

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
        """``(n, 2 d)`` array of first pixels then exclusive ends: ``(y0, x0, y1, x1)`` for images."""
        return np.concatenate([self.origins, self.origins + self.sizes], axis=1)

    def is_distinct(self) -> bool:
        """True when no two masks are the same rectangle."""
        return len(np.unique(self.rectangles(), axis=0)) == len(self)

    @property
    def ndim(self) -> int:
        """Number of axes of the input (2 for images)."""
        return len(self.image_size)

    def dense(self) -> np.ndarray:
        """Boolean masks of shape ``(n, *image_size)``, True where a mask hides the pixel."""
        hidden = np.ones((len(self),) + self.image_size, dtype=bool)
        for axis, n in enumerate(self.image_size):
            index = np.arange(n).reshape((1,) + (1,) * axis + (n,) + (1,) * (self.ndim - axis - 1))
            low = self.origins[:, axis].reshape((-1,) + (1,) * self.ndim)
            high = low + self.sizes[:, axis].reshape((-1,) + (1,) * self.ndim)
            hidden &= (index >= low) & (index < high)
        return hidden

    def to_dict(self) -> dict:
        """JSON-ready description (the format ``certmask plan --json`` writes)."""
        out = {"image_size": list(self.image_size), "origins": self.origins.tolist(),
               "sizes": self.sizes.tolist()}
        if self.spec is not None:
            out["spec"] = {"strategy": self.spec.strategy, "k": self.spec.k,
                           "mask_size": _listed(self.spec.mask_size),
                           "masks_per_axis": _listed(self.spec.masks_per_axis)}
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
        image = check_sizes("image_size", data["image_size"] if not isinstance(data["image_size"], list)
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
