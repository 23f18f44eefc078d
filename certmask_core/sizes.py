"""Unknown patch size: one run of masked predictions certifies every patch size (theorem T14).

A patch of size ``(qh, qw) <= (ph, pw)`` (both sides no larger) can do nothing a ``ph x pw`` patch
cannot: the larger patch may copy the clean pixels it does not need. So a certificate against
``ph x pw`` also holds against every smaller patch, and against any patch *shape* that fits inside a
``ph x pw`` box (T14(b)). A smaller patch is also covered by more masks at each position (T14(a):
``S_q(l') ⊇ S_p(l)`` whenever the ``p`` box at ``l`` holds the ``q`` patch at ``l'``), so every minimal
covering set for ``q`` contains one for ``p``.

What a size's certificate may use depends on the defence. ``detection`` and ``recovery`` never look at
the patch size, so each size has its own certificate, and the hitting set of recovery needs fewer
good masks for a smaller patch. ``plurality`` and ``covering_consensus`` decide with the minimal sets
of the size they are deployed for; their certificate is the deployed size's, and it extends to
every size whose minimal sets each contain a deployed minimal set (T14(c)), which includes every
smaller size and possibly some larger ones. Sizes a set does not cover are certified for nothing.

:func:`certify_sizes` does this from one set of one-mask predictions; for ``recovery`` the pair
predictions live in one cache shared by every size, so no pair is evaluated twice.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .certification import (
    CERTIFICATES,
    DEFAULT_MARGIN_TOLERANCE,
    GUARANTEES,
    SOUND,
    PairPredictor,
    certificate_check,
    certify_inputs,
)
from .double_masking import PairAsker
from .errors import CertMaskError
from .family_geometry import geometry_of
from .geometry import MaskSet, PatchThreat, check_sizes
from .multipatch import MaskGroups, base_set, check_patches


def patch_sizes(sizes, ndim: int = 2) -> tuple[tuple[int, ...], ...]:
    """Validated, de-duplicated patch sizes of ``ndim`` axes sorted by volume (area for images), then
    by axis (an int is the same size on every axis).

    Examples
    --------
    >>> patch_sizes([3, (2, 4), 1, 3])
    ((1, 1), (2, 4), (3, 3))
    """
    if (isinstance(sizes, (numbers.Integral, str, bytes, dict)) or not hasattr(sizes, "__iter__")
            or isinstance(sizes, np.ndarray) and sizes.ndim == 0):
        raise CertMaskError(f"sizes must be a list of patch sizes (ints or sizes per axis such as (ph, pw)), "
                            f"got {sizes!r}")
    out = {check_sizes(f"sizes[{i}]", s, ndim) for i, s in enumerate(sizes)}
    if not out:
        raise CertMaskError("sizes is empty: give at least one patch size")
    return tuple(sorted(out, key=lambda s: (math.prod(s), s)))


class PairCache:
    """A pair predictor that evaluates each (image, unordered pair) once and remembers the answer.

    Wraps a :data:`~certmask_core.certification.PairPredictor` (using its ``many`` when present;
    without it, the predictor is called once per image with that image's new pairs); ``rows`` maps
    the image indices it is asked about to the wrapped predictor's (for certifying a subset of a
    batch). ``evaluated[b]`` counts the pairs actually evaluated for image ``b``.

    Answers are held in arrays, without a Python object per pair: a dense slot table
    ``(num_images, pair id) -> row`` of a growing answer array (-1: not asked yet). Mask indices are
    numbered in the order the cache first meets them (so a cache over a large union of masks of which
    few are ever paired stays small), and the unordered pair of local numbers ``a <= b`` has id
    ``b (b + 1) / 2 + a``: ids do not depend on how many masks there are, so the table grows by
    appending columns. It holds 2 L (L + 1) bytes per image for the L masks met (about 2 KB at 32
    masks, 19 KB at 96; room for half again as many masks when they are met a few at a time).

    Slow twin: :class:`certmask_core.reference.PairCacheReference` (a dict keyed by ``(image, i, j)``).
    """

    def __init__(self, pair_predictor, num_images: int):
        if not callable(pair_predictor):
            raise CertMaskError(f"mode 'recovery' needs a callable pair_predictor, got {pair_predictor!r}")
        self.pair_predictor = pair_predictor
        self.row_shape: tuple | None = None  # () for labels, (K,) for logits
        self.evaluated = np.zeros(num_images, dtype=np.int64)
        self._masks = np.empty(0, np.int64)  # the mask indices met, sorted
        self._numbers = np.empty(0, np.int64)  # their local numbers, in the order they were met
        self._identity = True  # every mask met so far is numbered as itself
        self._slots = np.full((num_images, 0), -1, dtype=np.int32)  # (image, pair id) -> answer row
        self._room = 0  # local masks whose pairs the slot table has columns for
        self._answers: np.ndarray | None = None
        self._stored = 0

    def view(self, rows: np.ndarray):
        """A pair predictor for images ``rows`` of the batch (local index ``t`` = image ``rows[t]``)."""
        rows = np.asarray(rows, dtype=np.int64)

        def predict(index, pairs):
            return self.many(np.full(len(pairs), index), pairs, rows)

        predict.many = lambda image_indices, pairs: self.many(image_indices, pairs, rows)
        return predict

    @staticmethod
    def _checked(answer, m: int) -> np.ndarray:
        try:
            answer = np.asarray(answer)
        except ValueError as err:  # a ragged answer
            raise CertMaskError(f"pair_predictor's answer is not an array: {err}") from None
        if answer.ndim not in (1, 2) or len(answer) != m:
            raise CertMaskError(f"pair_predictor must return labels (m,) or logits (m, K) for m = {m} pairs, "
                                f"got shape {answer.shape}")
        return answer

    def _number(self, masks: np.ndarray) -> np.ndarray:
        """Local numbers of ``masks``; masks met for the first time are numbered after the others."""
        if len(masks) and self._identity and 0 <= masks.min() and masks.max() < len(self._masks):
            return masks  # masks 0 .. L - 1 met in order, the core's case: numbered as themselves
        where = np.searchsorted(self._masks, masks)
        met = where < len(self._masks)
        met[met] = self._masks[where[met]] == masks[met]
        if not met.all():
            new = np.unique(masks[~met])
            if new[0] < 0:
                raise CertMaskError(f"pair indices must be >= 0, got {int(new[0])}")
            masks_, numbers = np.concatenate([self._masks, new]), np.concatenate(
                [self._numbers, len(self._masks) + np.arange(len(new))])
            order = np.argsort(masks_, kind="stable")
            self._masks, self._numbers = masks_[order], numbers[order]
            self._identity = bool((self._masks == np.arange(len(self._masks))).all()
                                  and (self._numbers == self._masks).all())
            self._grow_columns(len(self._masks))
            where = np.searchsorted(self._masks, masks)
        return self._numbers[where]

    def _grow_columns(self, count: int) -> None:
        """Room in the slot table for the pairs of ``count`` local masks (half again as many, so that
        masks met a few at a time do not copy the table each time)."""
        if count <= self._room:
            return
        self._room = max(count, 3 * self._room // 2)
        slots = np.full((len(self._slots), self._room * (self._room + 1) // 2), -1, dtype=self._slots.dtype)
        slots[:, :self._slots.shape[1]] = self._slots
        self._slots = slots

    def _store(self, answer: np.ndarray) -> np.ndarray:
        """Append ``answer``'s rows to the answer array; returns their row numbers."""
        if self._answers is None:
            self._answers = np.empty((max(1024, len(answer)),) + answer.shape[1:], dtype=answer.dtype)
        if answer.dtype != self._answers.dtype:  # e.g. float32 logits, then float64: keep both exact
            try:
                dtype = np.result_type(self._answers.dtype, answer.dtype)
            except TypeError:
                raise CertMaskError(f"pair_predictor answered {answer.dtype} after "
                                    f"{self._answers.dtype}") from None
            widened = np.empty(self._answers.shape, dtype)
            widened[:self._stored] = self._answers[:self._stored]
            self._answers = widened
        end = self._stored + len(answer)
        if end > len(self._answers):
            grown = np.empty((max(end, 2 * len(self._answers)),) + self._answers.shape[1:],
                             self._answers.dtype)
            grown[:self._stored] = self._answers[:self._stored]
            self._answers = grown
        if end > np.iinfo(self._slots.dtype).max:
            self._slots = self._slots.astype(np.int64)
        self._answers[self._stored:end] = answer
        self._stored = end
        return np.arange(end - len(answer), end)

    def many(self, image_indices, pairs, rows=None) -> np.ndarray:
        """Answers of ``pairs[t]`` on image ``image_indices[t]``, evaluating only the (image,
        unordered pair) not asked before, each once: in one call of the wrapped predictor's ``many``,
        else in one call per image.

        Parameters
        ----------
        image_indices : array of int, shape (m,)
        pairs : array of int, shape (m, 2)
            Mask indices (>= 0), in either order.
        rows : array of int, optional
            The image of the wrapped predictor for each index (as :meth:`view` passes it).

        Returns
        -------
        ndarray
            ``(m,)`` labels or ``(m, K)`` logits as the wrapped predictor gave them (an empty int64
            array for no pairs).
        """
        image_indices = np.asarray(image_indices, dtype=np.int64).reshape(-1)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        images = image_indices if rows is None else rows[image_indices]
        if not len(pairs):
            return np.empty(0, np.int64)
        if len(images) != len(pairs):
            raise CertMaskError(f"{len(images)} image indices for {len(pairs)} pairs")
        if images.min() < 0 or images.max() >= len(self.evaluated):
            raise CertMaskError(f"image indices must lie in [0, {len(self.evaluated)}), got "
                                f"[{images.min()}, {images.max()}]")
        i, j = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
        a, b = self._number(i), self._number(j)
        if not self._identity:
            a, b = np.minimum(a, b), np.maximum(a, b)
        ids = b * (b + 1) // 2 + a
        slots = self._slots[images, ids]
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            new = self._first_of_each(missing, images, i, j)
            new_images, new_pairs = images[new], np.stack([i[new], j[new]], axis=1)
            many = getattr(self.pair_predictor, "many", None)
            if callable(many):
                answers = [self._checked(many(new_images, new_pairs), len(new))]
            else:
                starts = np.flatnonzero(np.r_[True, new_images[1:] != new_images[:-1]])
                answers = [self._checked(self.pair_predictor(int(new_images[s]), new_pairs[s:e]), e - s)
                           for s, e in zip(starts, np.r_[starts[1:], len(new)])]
            for answer in answers:
                if self.row_shape is None:
                    self.row_shape = answer.shape[1:]
                if answer.shape[1:] != self.row_shape:
                    raise CertMaskError(f"pair_predictor answered rows of shape {answer.shape[1:]} after "
                                        f"{self.row_shape}: labels on one call and logits on another?")
            self._slots[new_images, ids[new]] = self._store(np.concatenate(answers))
            self.evaluated += np.bincount(new_images, minlength=len(self.evaluated))
            slots = self._slots[images, ids]
        return self._answers[slots]

    def _first_of_each(self, rows, images, i, j) -> np.ndarray:
        """``rows`` sorted by (image, i, j), each (image, pair) once: the order the wrapped predictor
        is asked in."""
        top = int(self._masks[-1]) + 1
        if len(self.evaluated) * top * top < 2**62:  # one int64 key per row
            key = (images[rows] * top + i[rows]) * top + j[rows]
            if (key[1:] > key[:-1]).all():
                return rows  # already in order, no repeat (the defence's requests)
            order = np.argsort(key, kind="stable")
            key = key[order]
        else:
            order = np.lexsort((j[rows], i[rows], images[rows]))
            key = np.stack([images[rows], i[rows], j[rows]], axis=1)[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (key[1:] != key[:-1]).reshape(len(order) - 1, -1).any(1)
        return rows[order[first]]


def _larger(sizes, s: int) -> list[int]:
    """Indices of the sizes other than ``sizes[s]`` that are at least as large on every axis."""
    return [t for t, size in enumerate(sizes) if t != s and all(a >= b for a, b in zip(size, sizes[s]))]


@dataclass(frozen=True)
class SizeReport:
    """Certificates of one mode for several patch sizes, from one set of predictions.

    Attributes
    ----------
    mode, guarantee : str
    sizes : tuple of (ph, pw)
        Sorted by area (:func:`patch_sizes`).
    min_coverage : ndarray, shape (S,)
        Fewest masks covering a position of each size; 0 means the set does not cover that size, and
        nothing is certified for it.
    labels : ndarray, shape (B,)
    certified : ndarray, shape (B, S), bool
        Certified for each size: by that size's own certificate or, by T14(b), because a size at
        least as large on both sides is certified.
    passes : ndarray, shape (B,)
        Forward passes over every size: ``n`` one-mask predictions plus each pair evaluated once.
    num_masks : int
    deployed : (ph, pw) or None
        The size a size-dependent defence (``plurality``, ``covering_consensus``) runs with; every
        column is a promise about that one deployment. None for the size-free defences.
    certifiable : ndarray, shape (S,), bool
        Sizes this deployment can certify at all: covered, and for a size-dependent defence every
        minimal set of the size holds a deployed one (T14(c)). Elsewhere nothing is certified.
    """

    mode: str
    guarantee: str
    sizes: tuple
    min_coverage: np.ndarray
    labels: np.ndarray
    certified: np.ndarray
    passes: np.ndarray
    num_masks: int
    deployed: tuple | None
    certifiable: np.ndarray

    @property
    def inherited(self) -> np.ndarray:
        """``(S,)`` images certified for a size through a strictly larger certified size (T14(b))."""
        return np.array([self.certified[:, _larger(self.sizes, s)].any(1).sum()
                         for s in range(len(self.sizes))], dtype=np.int64)

    def certified_accuracy(self) -> np.ndarray:
        """``(S,)`` share of images certified at each size."""
        return self.certified.mean(0) if len(self.labels) else np.zeros(len(self.sizes))

    def largest_certified(self) -> np.ndarray:
        """``(B,)`` side of the largest square patch certified (0: none); needs the squares listed.

        A square is a patch with equal sides on every axis (a cube for clips, any length for signals).
        By T14(b) a certified ``s x s`` implies every smaller square, so this is the largest ``s``
        whose square is in :attr:`sizes` and certified.
        """
        sides = np.array([size[0] if len(set(size)) == 1 else 0 for size in self.sizes])
        return np.where(self.certified, sides, 0).max(1, initial=0)

    def summary(self) -> dict:
        """JSON-ready per-size figures."""
        accuracy = self.certified_accuracy()
        n = max(len(self.labels), 1)
        return {"mode": self.mode, "guarantee": self.guarantee, "images": len(self.labels),
                "num_masks": self.num_masks, "passes_per_image": float(self.passes.sum() / n),
                "defence_deployed_for": list(self.deployed) if self.deployed else "any size",
                "sizes": [{"patch": list(size), "min_coverage": int(cov), "covered": bool(cov > 0),
                           "certifiable": bool(ok), "certified_accuracy": float(acc), "inherited": int(inh)}
                          for size, cov, ok, acc, inh in zip(self.sizes, self.min_coverage, self.certifiable,
                                                             accuracy, self.inherited)]}


SIZE_FREE_DEFENCES = ("detection", "recovery")
"""Defences that never look at the patch size: unanimity and double masking run the same whatever
size they are told, so each size may be certified by its own certificate. ``plurality`` and
``covering_consensus`` decide with the minimal covering sets of the size they are deployed for."""


def _contains_one_of(sets: np.ndarray, smaller: np.ndarray) -> bool:
    """Every row of ``sets`` contains some row of ``smaller`` (bitsets over the same members)."""
    inside = ((smaller[None, :, :] & ~sets[:, None, :]) == 0).all(2)
    return bool(inside.any(1).all())


def certify_sizes(predictions, labels, maskset: MaskSet | MaskGroups, sizes, mode: str = "detection", *,
                  patch=None, pair_predictor: PairPredictor | None = None, num_classes: int | None = None,
                  margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE,
                  recovery_certificate: str = "hitting_set", pair_cache: PairCache | None = None,
                  patches: int = 1) -> SizeReport:
    """Certify every patch size in ``sizes`` from one set of one-mask predictions, for one deployment.

    A certificate is a promise about a defence as it runs. ``detection`` and ``recovery`` do not depend
    on the patch size, so each size gets its own certificate (a smaller patch needs less of the
    model), and by inclusion (T14(b)) every size inside a certified one is certified. ``plurality``
    and ``covering_consensus`` run with the minimal covering sets of the size they are deployed for,
    ``patch``: size ``q`` is certified when the deployed certificate holds and every minimal covering
    set of ``q`` contains a minimal covering set of ``patch`` (always so for ``q <= patch``, T14(a)),
    so that under a ``q`` patch one of the deployed defence's minimal sets stays clean (T14(c)). Their
    own certificate at another size would promise nothing for the deployed defence.

    Parameters
    ----------
    predictions : array, shape (B, n) or (B, n, K)
        One-mask predictions on the clean images (logits to have margins checked).
    labels : array, shape (B,)
    maskset : MaskSet or MaskGroups
        Any set; each size's coverage is verified, and a size some position of which no mask covers
        is certified for no image (sizes larger than the image are refused). MaskGroups with
        ``patches`` certify ``patches`` patches of each size (T15; inclusion holds patch by patch).
    sizes : iterable of int or (ph, pw)
    mode : {"detection", "plurality", "covering_consensus", "recovery"}
        ``paper`` is refused: it certifies nothing.
    patch : (ph, pw), optional
        The size ``plurality`` and ``covering_consensus`` are deployed for (default: the set's
        threat); ignored by the size-free defences.
    pair_predictor : callable, optional
        Required for ``recovery``; each pair is evaluated at most once over all sizes.
    pair_cache : PairCache, optional
        Share one cache between modes (``recovery`` under both certificates, say).
    num_classes, margin_tolerance, recovery_certificate, patches
        As in :func:`~certmask_core.certification.certify`.

    Returns
    -------
    SizeReport

    Examples
    --------
    >>> from certmask_core import make_maskset
    >>> ms = make_maskset(PatchThreat((1, 8), (1, 3)), masks_per_axis=(1, 2))
    >>> report = certify_sizes(np.array([[2, 2]]), [2], ms, [(1, 1), (1, 3), (1, 6)])
    >>> report.min_coverage.tolist(), report.certified.tolist()
    ([1, 1, 0], [[True, True, False]])
    """
    mode, num_classes, tolerance, y, first, margins = certify_inputs(
        predictions, labels, maskset, mode, num_classes, recovery_certificate, margin_tolerance)
    if not SOUND[mode]:
        raise CertMaskError(f"mode {mode!r} certifies nothing (its claim is refuted, proofs/t9); "
                            "choose a sound mode")
    patches = check_patches(patches)
    base = base_set(maskset)
    sizes = patch_sizes(sizes, base.ndim)
    for size in sizes:
        PatchThreat(maskset.image_size, size)  # a size larger than the image is an error, not "uncovered"
    deployed = None
    if mode not in SIZE_FREE_DEFENCES:
        if patch is None and base.threat is None:
            raise CertMaskError(f"mode {mode!r} depends on the patch size it is deployed for: give patch=")
        deployed = PatchThreat(maskset.image_size, patch if patch is not None else base.threat.patch_size
                               ).patch_size
    B = len(y)
    if pair_cache is not None:
        if pair_predictor is not None:
            raise CertMaskError("give pair_predictor or pair_cache (which holds its own predictor), not both")
        if not isinstance(pair_cache, PairCache) or len(pair_cache.evaluated) != B:
            raise CertMaskError(f"pair_cache must be a PairCache for these {B} images, got {pair_cache!r}")
    if mode == "recovery" and pair_cache is None:
        pair_cache = PairCache(pair_predictor, B)
    geometries = [geometry_of(maskset, size, patches) for size in sizes]
    coverage = np.array([geometry.min_coverage for geometry in geometries], dtype=np.int64)
    certified = np.zeros((B, len(sizes)), dtype=bool)
    certificate = recovery_certificate if mode == "recovery" else CERTIFICATES[mode]
    certifiable = coverage > 0
    if deployed is not None:
        deployed_geometry = geometry_of(maskset, deployed, patches)
        deployed_geometry.require(1)  # the deployed defence must cover every position
        certifiable &= [ok and _contains_one_of(geometry.minimal_sets, deployed_geometry.minimal_sets)
                        for ok, geometry in zip(certifiable, geometries)]
        if certifiable.any():
            held = certificate_check(mode, first, margins, y, deployed_geometry, None, tolerance, certificate,
                                     1024)[0]
            certified[:, certifiable] = held[:, None]
    else:
        # largest first: an image certified for a size is certified for every size inside it (T14(b))
        for s in sorted(range(len(sizes)), key=lambda t: -math.prod(sizes[t])):
            implied = certified[:, _larger(sizes, s)].any(1)
            certified[:, s] = implied
            rows = np.flatnonzero(~implied)
            if coverage[s] == 0 or not len(rows):
                continue
            ask = PairAsker(pair_cache.view(rows), num_classes, tolerance) if mode == "recovery" else None
            certified[rows, s] = certificate_check(mode, first[rows], margins[rows], y[rows], geometries[s],
                                                   ask, tolerance, certificate, 1024)[0]
    passes = np.full(B, len(maskset), dtype=np.int64)
    if mode == "recovery":
        passes += pair_cache.evaluated
    return SizeReport(mode, GUARANTEES[mode], sizes, coverage, y, certified, passes, len(maskset), deployed,
                      certifiable)
