"""Defences, certificates and their guarantees (DESIGN.md section 2; theorems T6-T10).

A backend turns (model, images, mask set) into a ``(B, n)`` matrix of masked predictions; this module
decides. Let ``S(l)`` be the masks covering patch position ``l``. Under a patch at ``l`` the masks of
``S(l)`` predict exactly what they predict on the clean image; every other mask may predict anything.

==================== ======== ================================================ =================
mode                 rounds   certificate (clean image, label y)              guarantee
==================== ======== ================================================ =================
detection            1        every one-mask prediction is y                   y or ALERT (T6)
covering_consensus   1        every one-mask prediction is y                   y or ALERT (T7)
recovery             2        every one- and two-mask prediction is y          y (T8)
paper                1        every one-mask prediction is y (as the paper)    NONE (T9)
==================== ======== ================================================ =================

``paper`` is the seed paper's one-round rule, kept for comparison. Its claimed recovery guarantee is
false whenever two positions have disjoint covering sets: ``proofs/t9_paper_counterexample.py``
prints a concrete attack. Its report says ``sound=False``; its check is reported as ``claim_holds``
and its ``certified`` column is always False.

Two rules make every certificate robust to what a model may emit (T10, checked by
``proofs/soundness.py``):

* A prediction whose logits are not all finite (NaN, +-inf) is ``NO_VOTE``: it votes for no class.
  Under attack only masks that miss the patch can produce it, and those are the attacker's anyway;
  on a clean image it differs from the label, so it never passes a certificate.
* A certificate is only as reproducible as its closest call: each image records the smallest
  top-1 minus top-2 logit margin among the predictions its certificate relies on, and is not
  certified when that margin is ``<= margin_tolerance`` (default :data:`DEFAULT_MARGIN_TOLERANCE`).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from .coverage import _threat_for, coverage_extremes, covering_set_bits, minimal_covering_set_bits
from .errors import CertMaskError
from .geometry import MaskSet

ALERT = -1
"""Output of a defence that refuses to answer."""
NO_VOTE = -2
"""Label of a one- or two-mask prediction whose logits are not all finite (NaN or +-inf): it votes
for no class. Backends map such predictions to ``NO_VOTE`` when they return labels."""
DEFAULT_MARGIN_TOLERANCE = 1e-3
"""Default logit margin at or below which a certificate is refused: float32 logits on a CPU moved by
at most 1.4e-6 with batch make-up. On a GPU (TF32) or under autocast the noise is far larger; backends
say what they need (``TorchBackend.margin_tolerance``; ``docs/theory.md``, "Reproducibility")."""
MODES = ("detection", "covering_consensus", "recovery", "paper")
GUARANTEES = {
    "detection": "label-or-alert",
    "covering_consensus": "label-or-alert",
    "recovery": "label",
    "paper": "none (claimed label: refuted, proofs/t9)",
}
SOUND = {mode: mode != "paper" for mode in MODES}
_INT64_MAX = np.iinfo(np.int64).max

PairPredictor = Callable[[int, np.ndarray], np.ndarray]
"""``pair_predictor(image_index, pairs)``: labels ``(m,)`` or logits ``(m, K)`` of image
``image_index`` under the union of masks ``pairs[:, 0]`` and ``pairs[:, 1]``; ``pairs`` has shape
``(m, 2)``. Logits let the certificate record decision margins."""


def _predictions(predictions, n_masks: int | None, num_classes: int | None,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(B, n)`` label matrix or ``(B, n, K)`` logit tensor.

    Returns int64 labels (``NO_VOTE`` where a logit vector is not all finite) and float64 margins
    (top-1 minus top-2 logit; ``inf`` for given labels and for one class, ``0`` for ``NO_VOTE``).
    """
    try:
        arr = np.asarray(predictions)
    except (TypeError, ValueError) as err:
        raise CertMaskError(f"{what}: not a numeric array: {err}") from None
    if arr.dtype.kind == "f":
        if arr.ndim != 3:
            raise CertMaskError(f"{what}: logits must have shape (B, n, K), got {arr.shape}")
        if arr.shape[2] == 0:
            raise CertMaskError(f"{what}: logits have 0 classes (shape {arr.shape})")
        if num_classes is not None and arr.shape[2] != num_classes:
            raise CertMaskError(f"{what}: logits have {arr.shape[2]} classes, expected {num_classes}")
        finite = np.isfinite(arr).all(2)
        labels = np.where(finite, np.where(finite[..., None], arr, 0).argmax(2), NO_VOTE)
        if arr.shape[2] == 1:
            margins = np.where(finite, np.inf, 0.0)
        else:
            top2 = np.partition(np.where(finite[..., None], arr, 0), arr.shape[2] - 2, axis=2)[..., -2:]
            margins = np.where(finite, top2[..., 1].astype(np.float64) - top2[..., 0], 0.0).astype(np.float64)
    elif arr.dtype.kind in "iu":
        if arr.ndim != 2:
            raise CertMaskError(f"{what}: labels must have shape (B, n), got {arr.shape}")
        if arr.size and (arr.max() > _INT64_MAX or ((arr < 0) & (arr != NO_VOTE)).any()
                         or (num_classes is not None and arr.max() >= num_classes)):
            upper = f"< {num_classes}" if num_classes is not None else "a class index"
            raise CertMaskError(f"{what}: labels must be {upper} and >= 0 (or NO_VOTE = {NO_VOTE}), "
                                f"found range [{arr.min()}, {arr.max()}]")
        labels, margins = arr, np.full(arr.shape, np.inf)
    else:
        raise CertMaskError(f"{what}: expected integer labels or float logits, got dtype {arr.dtype}")
    if n_masks is not None and arr.shape[1] != n_masks:
        raise CertMaskError(f"{what}: {arr.shape[1]} columns but the mask set has {n_masks} masks")
    return labels.astype(np.int64), margins


def as_labels(predictions, n_masks: int | None = None, num_classes: int | None = None,
              what: str = "predictions") -> np.ndarray:
    """Validate a ``(B, n)`` label matrix or ``(B, n, K)`` logit tensor and return int64 labels.

    Logit vectors that are not all finite become ``NO_VOTE``.
    """
    return _predictions(predictions, n_masks, num_classes, what)[0]


def _majority(row: np.ndarray) -> int:
    """Most frequent class of one row, ties to the smallest; ``ALERT`` when no mask votes."""
    votes = row[row != NO_VOTE]
    if not len(votes):
        return ALERT
    classes, counts = np.unique(votes, return_counts=True)
    return int(classes[counts.argmax()])


@numba.njit
def _one_round_kernel(labels, sets, paper, k):  # pragma: no cover - compiled
    """``covering_consensus`` (``paper=False``) or ``paper`` on every row of ``labels``.

    ``sets`` are bitsets of covering sets: the minimal ones for covering consensus (class c
    qualifies when its voters contain one), all of them for paper (c qualifies when it has exactly
    ``k`` voters and they lie inside one). Classes are visited in increasing order.
    """
    B, n = labels.shape
    m, words = sets.shape
    out = np.empty(B, dtype=np.int64)
    voters = np.zeros(words, dtype=np.uint64)
    one = np.uint64(1)
    for b in range(B):
        row = labels[b]
        order = np.argsort(row, kind="mergesort")
        found, first_found = 0, -1
        best, best_count = -1, 0
        start = 0
        while start < n:
            c = row[order[start]]
            stop = start
            while stop < n and row[order[stop]] == c:
                stop += 1
            count = stop - start
            if c != -2:  # NO_VOTE votes for no class
                if count > best_count:
                    best, best_count = c, count
                voters[:] = 0
                for t in range(start, stop):
                    i = order[t]
                    voters[i >> 6] |= one << np.uint64(i & 63)
                qualifies = False
                if not paper or count == k:
                    for s in range(m):
                        inside = True
                        for w in range(words):
                            if (sets[s, w] & ~voters[w]) if not paper else (voters[w] & ~sets[s, w]):
                                inside = False
                                break
                        if inside:
                            qualifies = True
                            break
                if qualifies:
                    found += 1
                    if first_found < 0:
                        first_found = c
            start = stop
        if not paper:
            out[b] = first_found if found == 1 else -1
        elif best_count == n:
            out[b] = best  # unanimous
        elif found:
            out[b] = first_found
        else:
            out[b] = best  # majority, ties to the smallest class; -1 (ALERT) when nobody votes
    return out


@dataclass(frozen=True)
class _Geometry:
    """What the defences need to know of a mask set for one patch size (cached on the set)."""

    maskset: MaskSet
    patch: tuple[int, int]
    k: int

    @property
    def n(self) -> int:
        return len(self.maskset)

    def minimal_sets(self) -> np.ndarray:
        return minimal_covering_set_bits(self.maskset, self.patch)

    def all_sets(self) -> np.ndarray:
        return covering_set_bits(self.maskset, self.patch)


def _check_int(name: str, value, low: int = 1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise CertMaskError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _geometry(maskset: MaskSet, patch, k) -> _Geometry:
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    patch = patch if patch is not None else maskset.threat
    if patch is None:
        raise CertMaskError("a user-supplied mask set needs patch=(ph, pw)")
    threat = _threat_for(maskset, patch)
    claimed = _check_int("k", k if k is not None else (maskset.k or 1))
    low, _, (a, b) = coverage_extremes(maskset, threat)
    if low < claimed:
        raise CertMaskError(f"the mask set is not {claimed}-fold: patch position ({a}, {b}) is "
                            f"covered by {low} masks")
    return _Geometry(maskset, threat.patch_size, claimed)


def _pair_answers(pair_predictor: PairPredictor, index: int, pairs: np.ndarray,
                  num_classes) -> tuple[np.ndarray, np.ndarray]:
    try:
        answer = np.asarray(pair_predictor(index, pairs))
    except ValueError as err:  # a ragged answer
        raise CertMaskError(f"pair_predictor's answer is not an array: {err}") from None
    if answer.ndim not in (1, 2):
        raise CertMaskError(f"pair_predictor must return labels (m,) or logits (m, K), got {answer.shape}")
    labels, margins = _predictions(answer[None], None, num_classes, "pair predictions")
    if labels.shape[1] != len(pairs):
        raise CertMaskError(f"pair_predictor returned {labels.shape[1]} predictions for {len(pairs)} pairs")
    return labels[0], margins[0]


def _recovery_one(first: np.ndarray, index: int, pair_predictor: PairPredictor,
                  num_classes: int | None) -> tuple[int, int]:
    """PatchCleanser's double-masking defence on one image; returns (output, second-round passes)."""
    majority = _majority(first)
    if majority == ALERT or (first == majority).all():
        return majority, 0
    n, passes = len(first), 0
    for i in np.flatnonzero((first != majority) & (first != NO_VOTE)):
        pairs = np.stack([np.full(n - 1, i), np.delete(np.arange(n), i)], axis=1)
        second, _ = _pair_answers(pair_predictor, index, pairs, num_classes)
        passes += len(pairs)
        if (second == first[i]).all():
            return int(first[i]), passes
    return majority, passes


@dataclass(frozen=True)
class DefenceResult:
    """Output of a defence on a batch.

    Attributes
    ----------
    mode : str
    output : ndarray, shape (B,)
        Predicted label, or ``ALERT`` (-1).
    forward_passes : ndarray, shape (B,)
        Model evaluations the defence used per image (n one-mask passes plus second-round passes).
    """

    mode: str
    output: np.ndarray
    forward_passes: np.ndarray


def _check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise CertMaskError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def defend(predictions, maskset: MaskSet, mode: str = "detection", *, patch=None, k=None,
           pair_predictor: PairPredictor | None = None, num_classes: int | None = None
           ) -> DefenceResult:
    """Run a defence on the masked predictions of (possibly attacked) images.

    Parameters
    ----------
    predictions : array, shape (B, n) int labels or (B, n, K) float logits
        One-mask predictions, column ``i`` for mask ``i`` of ``maskset``. Logit vectors that are not
        all finite, and the label ``NO_VOTE``, vote for no class.
    maskset : MaskSet
    mode : {"detection", "covering_consensus", "recovery", "paper"}
    patch : (ph, pw), optional
        Needed when ``maskset`` carries no threat.
    k : int, optional
        Claimed coverage multiplicity (default: the set's own, or 1). Checked against the set's
        coverage, which must be at least 1 everywhere; ``paper`` uses it.
    pair_predictor : callable, optional
        Required for ``recovery``: see :data:`PairPredictor`. Called only for disagreeing masks.
    num_classes : int, optional
        When given, labels are range-checked.

    Returns
    -------
    DefenceResult

    Examples
    --------
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    >>> defend(np.array([[3, 3], [3, 4]]), ms, "detection").output
    array([ 3, -1])
    """
    mode = _check_mode(mode)
    if num_classes is not None:
        num_classes = _check_int("num_classes", num_classes)
    geo = _geometry(maskset, patch, k)
    labels = as_labels(predictions, geo.n, num_classes)
    passes = np.full(len(labels), geo.n, dtype=np.int64)
    if mode == "recovery" and not callable(pair_predictor):
        raise CertMaskError(f"mode 'recovery' needs a callable pair_predictor for its second round, got "
                            f"{pair_predictor!r}")
    if len(labels) == 0:
        return DefenceResult(mode, np.empty(0, np.int64), passes)
    if mode == "detection":
        unanimous = (labels == labels[:, :1]).all(1) & (labels[:, 0] != NO_VOTE)
        output = np.where(unanimous, labels[:, 0], ALERT)
    elif mode == "covering_consensus":
        output = _one_round_kernel(labels, geo.minimal_sets(), False, geo.k)
    elif mode == "paper":
        output = _one_round_kernel(labels, geo.all_sets(), True, geo.k)
    else:
        output = np.empty(len(labels), dtype=np.int64)
        for b, row in enumerate(labels):
            output[b], extra = _recovery_one(row, b, pair_predictor, num_classes)
            passes[b] += extra
    return DefenceResult(mode, output.astype(np.int64), passes)


def all_pairs(n: int) -> np.ndarray:
    """The ``n (n - 1) / 2`` unordered mask pairs ``(i, j)``, ``i < j``, in row-major order."""
    i, j = np.triu_indices(n, k=1)
    return np.stack([i, j], axis=1)


@dataclass(frozen=True)
class CertificationReport:
    """Per-image outcome of :func:`certify` on clean images.

    Attributes
    ----------
    mode, guarantee : str
    sound : bool
        False for ``paper``: its check is reported as ``claim_holds`` and ``certified`` stays False.
    labels, output : ndarray, shape (B,)
        True labels and the defence's output on the clean image (``ALERT`` = -1).
    certified : ndarray, shape (B,), bool
        The certificate holds; always False for an unsound mode.
    claim_holds : ndarray, shape (B,), bool
        The mode's check holds with a margin above the tolerance (equals ``certified`` for a sound
        mode; for ``paper`` it is the paper's claim, which is refuted).
    min_margin : ndarray, shape (B,), float
        Smallest top-1 minus top-2 logit margin among the predictions the check used (``inf`` when
        only labels were given).
    below_margin : ndarray, shape (B,), bool
        The check held on the labels but was refused because ``min_margin <= margin_tolerance``.
    certificate_passes, defence_passes : ndarray, shape (B,)
        Forward passes spent on the certificate (with early exit) and on the defence.
    margin_tolerance : float
    """

    mode: str
    guarantee: str
    sound: bool
    labels: np.ndarray
    output: np.ndarray
    certified: np.ndarray
    claim_holds: np.ndarray
    min_margin: np.ndarray
    below_margin: np.ndarray
    certificate_passes: np.ndarray
    defence_passes: np.ndarray
    margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE

    PER_IMAGE = ("labels", "output", "certified", "claim_holds", "min_margin", "below_margin",
                 "certificate_passes", "defence_passes")
    """The per-image array fields, in order."""

    def summary(self) -> dict:
        """Clean accuracy of the defended output, certified accuracy, alert rate, mean passes.

        An unsound mode reports ``claimed_certified_accuracy_UNSOUND`` instead of
        ``certified_accuracy``.
        """
        n = max(len(self.labels), 1)
        out = {"mode": self.mode, "guarantee": self.guarantee, "sound": self.sound,
               "images": len(self.labels),
               "clean_accuracy": float((self.output == self.labels).sum() / n)}
        if self.sound:
            out["certified_accuracy"] = float(self.certified.sum() / n)
        else:
            out["claimed_certified_accuracy_UNSOUND"] = float(self.claim_holds.sum() / n)
        return {**out, "alert_rate": float((self.output == ALERT).sum() / n),
                "margin_tolerance": self.margin_tolerance,
                "refused_for_margin": int(self.below_margin.sum()),
                "certificate_passes_per_image": float(self.certificate_passes.sum() / n),
                "defence_passes_per_image": float(self.defence_passes.sum() / n)}

    def records(self) -> list[dict]:
        """One small JSON-ready dict per image (``min_margin`` None when unknown)."""
        return [{"label": int(y), "output": "ALERT" if o == ALERT else int(o), "certified": bool(c),
                 "claim_holds": bool(h), "min_margin": float(m) if math.isfinite(m) else None,
                 "guarantee": self.guarantee}
                for y, o, c, h, m in zip(self.labels, self.output, self.certified, self.claim_holds,
                                         self.min_margin)]


def _true_labels(labels, num_classes) -> np.ndarray:
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise CertMaskError(f"labels must be a 1-D integer array: {err}") from None
    if y.ndim == 1 and y.size == 0:
        return y.astype(np.int64)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise CertMaskError(f"labels must be a 1-D integer array, got shape {y.shape}, dtype {y.dtype}")
    if y.min() < 0 or y.max() > _INT64_MAX or (num_classes is not None and y.max() >= num_classes):
        upper = f"< {num_classes}" if num_classes is not None else "a class index"
        raise CertMaskError(f"labels must be >= 0 and {upper}, found [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def certify(predictions, labels, maskset: MaskSet, mode: str = "detection", *, patch=None,
            k=None, pair_predictor: PairPredictor | None = None, num_classes: int | None = None,
            pair_chunk: int = 1024, margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE
            ) -> CertificationReport:
    """Check each clean image's certificate and run the defence on it.

    Parameters
    ----------
    predictions : array, shape (B, n) or (B, n, K)
        One-mask predictions on the clean images; give logits to have margins checked.
    labels : array, shape (B,)
        True labels.
    maskset, mode, patch, k, num_classes
        As in :func:`defend`.
    pair_predictor : callable, optional
        Required for ``recovery``. The certificate asks for the pairs of :func:`all_pairs` in chunks
        of ``pair_chunk`` and stops at the first chunk holding a wrong label; images whose one-mask
        predictions already fail ask for no pairs at all.
    margin_tolerance : float
        An image is not certified when the smallest top-1 minus top-2 logit margin among the
        predictions its certificate relies on is ``<= margin_tolerance``, since floating-point noise
        (batch make-up, autocast) could flip such a prediction. Has no effect on label input.

    Returns
    -------
    CertificationReport

    Examples
    --------
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    >>> certify(np.array([[3, 3], [3, 4]]), [3, 3], ms).certified
    array([ True, False])
    """
    mode = _check_mode(mode)
    if num_classes is not None:
        num_classes = _check_int("num_classes", num_classes)
    pair_chunk = _check_int("pair_chunk", pair_chunk)
    try:
        tolerance = float(margin_tolerance)
    except (TypeError, ValueError, OverflowError):  # not a number, or an int beyond float range
        tolerance = math.nan
    if (isinstance(margin_tolerance, (bool, np.bool_)) or not isinstance(margin_tolerance, numbers.Real)
            or not 0 <= tolerance < math.inf):
        raise CertMaskError(f"margin_tolerance must be a finite number >= 0, got {margin_tolerance!r}")
    y = _true_labels(labels, num_classes)
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    first, margins = _predictions(predictions, len(maskset), num_classes, "predictions")
    if len(first) != len(y):
        raise CertMaskError(f"{len(first)} prediction rows but {len(y)} labels")
    defence = defend(first, maskset, mode, patch=patch, k=k, pair_predictor=pair_predictor,
                     num_classes=num_classes)
    holds = (first == y[:, None]).all(1)
    min_margin = margins.min(1)
    passes = np.full(len(y), len(maskset), dtype=np.int64)
    if mode == "recovery":
        pairs = all_pairs(len(maskset))
        for b in np.flatnonzero(holds):
            for start in range(0, len(pairs), pair_chunk):
                chunk = pairs[start:start + pair_chunk]
                second, second_margins = _pair_answers(pair_predictor, int(b), chunk, num_classes)
                passes[b] += len(chunk)
                min_margin[b] = min(min_margin[b], second_margins.min(initial=np.inf))
                if (second != y[b]).any():
                    holds[b] = False
                    break
    below = holds & (min_margin <= margin_tolerance)
    claim = holds & ~below
    certified = claim if SOUND[mode] else np.zeros_like(claim)
    return CertificationReport(mode, GUARANTEES[mode], SOUND[mode], y, defence.output, certified, claim,
                               min_margin, below, passes, defence.forward_passes, tolerance)
