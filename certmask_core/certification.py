"""Defences, certificates and their guarantees (DESIGN.md section 2; theorems T6-T9).

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
prints a concrete attack. Its report says ``sound=False`` and never calls an image certified.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .coverage import coverage_counts, covering_sets
from .errors import CertMaskError
from .geometry import MaskSet

ALERT = -1
MODES = ("detection", "covering_consensus", "recovery", "paper")
GUARANTEES = {
    "detection": "label-or-alert",
    "covering_consensus": "label-or-alert",
    "recovery": "label",
    "paper": "none (claimed label: refuted, proofs/t9)",
}
SOUND = {mode: mode != "paper" for mode in MODES}

PairPredictor = Callable[[int, np.ndarray], np.ndarray]
"""``pair_predictor(image_index, pairs)``: labels (or logits) of image ``image_index`` under the
union of masks ``pairs[:, 0]`` and ``pairs[:, 1]``; ``pairs`` has shape ``(m, 2)``."""


def as_labels(predictions, n_masks: int | None = None, num_classes: int | None = None,
              what: str = "predictions") -> np.ndarray:
    """Validate a ``(B, n)`` label matrix or ``(B, n, K)`` logit tensor and return int64 labels."""
    arr = np.asarray(predictions)
    if arr.dtype.kind == "f":
        if arr.ndim != 3:
            raise CertMaskError(f"{what}: logits must have shape (B, n, K), got {arr.shape}")
        if np.isnan(arr).any():
            bad = np.argwhere(np.isnan(arr))[0]
            raise CertMaskError(f"{what}: NaN logits (first at image {bad[0]}, mask {bad[1]}, "
                                f"class {bad[2]}); {int(np.isnan(arr).sum())} NaN values")
        if num_classes is not None and arr.shape[2] != num_classes:
            raise CertMaskError(f"{what}: logits have {arr.shape[2]} classes, expected {num_classes}")
        arr = arr.argmax(axis=2)
    elif arr.dtype.kind in "iu":
        if arr.ndim != 2:
            raise CertMaskError(f"{what}: labels must have shape (B, n), got {arr.shape}")
    else:
        raise CertMaskError(f"{what}: expected integer labels or float logits, got dtype {arr.dtype}")
    if n_masks is not None and arr.shape[1] != n_masks:
        raise CertMaskError(f"{what}: {arr.shape[1]} columns but the mask set has {n_masks} masks")
    if arr.size and (arr.min() < 0 or (num_classes is not None and arr.max() >= num_classes)):
        raise CertMaskError(f"{what}: labels must lie in [0, {num_classes}), found range "
                            f"[{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def _majority(labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row; ties go to the smallest label."""
    K = int(labels.max()) + 1
    counts = np.zeros((len(labels), K), dtype=np.int64)
    np.add.at(counts, (np.arange(len(labels))[:, None], labels), 1)
    return counts.argmax(axis=1)


def _minimal_rows(sets: np.ndarray) -> np.ndarray:
    """Rows of a boolean incidence matrix that contain no other row (the minimal covering sets)."""
    sub = sets.astype(np.int64)
    inter = sub @ sub.T  # |S_i & S_j|
    size = sub.sum(1)
    contains_other = (inter == size[None, :]) & (size[None, :] < size[:, None])
    return sets[~contains_other.any(1)]


def _class_votes_in_sets(labels: np.ndarray, sets: np.ndarray):
    """For each image, class and covering set: how many masks of the set vote for the class."""
    K = int(labels.max()) + 1
    onehot = np.zeros(labels.shape + (K,), dtype=np.int32)
    np.put_along_axis(onehot, labels[..., None], 1, axis=2)
    return np.einsum("bnk,mn->bkm", onehot, sets.astype(np.int32)), onehot.sum(1)


@dataclass(frozen=True)
class _Geometry:
    n: int
    minimal_sets: np.ndarray
    all_sets: np.ndarray
    k: int


def _geometry(maskset: MaskSet, patch, k: int | None) -> _Geometry:
    if not isinstance(maskset, MaskSet):
        raise CertMaskError(f"maskset must be a MaskSet, got {type(maskset).__name__}")
    patch = patch if patch is not None else maskset.threat
    if patch is None:
        raise CertMaskError("a user-supplied mask set needs patch=(ph, pw)")
    claimed = k if k is not None else (maskset.k or 1)
    if isinstance(claimed, bool) or not isinstance(claimed, (int, np.integer)) or claimed < 1:
        raise CertMaskError(f"k must be an integer >= 1, got {claimed!r}")
    counts = coverage_counts(maskset, patch)
    if counts.min() < claimed:
        a, b = np.unravel_index(int(counts.argmin()), counts.shape)
        raise CertMaskError(f"the mask set is not {claimed}-fold: patch position ({a}, {b}) is "
                            f"covered by {int(counts.min())} masks")
    sets = covering_sets(maskset, patch)
    return _Geometry(len(maskset), _minimal_rows(sets), sets, int(claimed))


def _covering_consensus(labels: np.ndarray, geo: _Geometry) -> np.ndarray:
    votes, _ = _class_votes_in_sets(labels, geo.minimal_sets)
    qualifies = (votes == geo.minimal_sets.sum(1)[None, None, :]).any(2)  # (B, K)
    return np.where(qualifies.sum(1) == 1, qualifies.argmax(1), ALERT)


def _paper(labels: np.ndarray, geo: _Geometry) -> np.ndarray:
    votes, totals = _class_votes_in_sets(labels, geo.all_sets)
    # class c qualifies when exactly k masks vote c and they all cover one common position
    qualifies = (totals == geo.k) & (votes == totals[:, :, None]).any(2)
    fallback = _majority(labels)
    out = np.where(qualifies.any(1), qualifies.argmax(1), fallback)
    unanimous = (labels == labels[:, :1]).all(1)
    return np.where(unanimous, labels[:, 0], out)


def _pair_labels(pair_predictor: PairPredictor, index: int, pairs: np.ndarray, num_classes) -> np.ndarray:
    answer = np.asarray(pair_predictor(index, pairs))
    labels = as_labels(answer[None], None, num_classes, "pair predictions")[0]
    if len(labels) != len(pairs):
        raise CertMaskError(f"pair_predictor returned {len(labels)} predictions for {len(pairs)} pairs")
    return labels


def _recovery_one(first: np.ndarray, index: int, pair_predictor: PairPredictor,
                  num_classes: int | None) -> tuple[int, int]:
    """PatchCleanser's double-masking defence on one image; returns (output, second-round passes)."""
    if (first == first[0]).all():
        return int(first[0]), 0
    majority = int(_majority(first[None])[0])
    n, passes = len(first), 0
    for i in np.flatnonzero(first != majority):
        pairs = np.stack([np.full(n - 1, i), np.delete(np.arange(n), i)], axis=1)
        second = _pair_labels(pair_predictor, index, pairs, num_classes)
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


def defend(predictions, maskset: MaskSet, mode: str = "detection", *, patch=None, k=None,
           pair_predictor: PairPredictor | None = None, num_classes: int | None = None
           ) -> DefenceResult:
    """Run a defence on the masked predictions of (possibly attacked) images.

    Parameters
    ----------
    predictions : array, shape (B, n) int labels or (B, n, K) float logits
        One-mask predictions, column ``i`` for mask ``i`` of ``maskset``.
    maskset : MaskSet
    mode : {"detection", "covering_consensus", "recovery", "paper"}
    patch : (ph, pw), optional
        Needed when ``maskset`` carries no threat.
    k : int, optional
        Claimed coverage multiplicity (default: the set's own). Checked; ``paper`` uses it.
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
    if mode not in MODES:
        raise CertMaskError(f"mode must be one of {MODES}, got {mode!r}")
    geo = _geometry(maskset, patch, k)
    labels = as_labels(predictions, geo.n, num_classes)
    passes = np.full(len(labels), geo.n, dtype=np.int64)
    if len(labels) == 0:
        return DefenceResult(mode, np.empty(0, np.int64), passes)
    if mode == "detection":
        output = np.where((labels == labels[:, :1]).all(1), labels[:, 0], ALERT)
    elif mode == "covering_consensus":
        output = _covering_consensus(labels, geo)
    elif mode == "paper":
        output = _paper(labels, geo)
    else:
        if pair_predictor is None:
            raise CertMaskError("mode 'recovery' needs pair_predictor for its second round")
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
        False for ``paper``: its ``certified`` column is the paper's claim, not a certificate.
    labels, output : ndarray, shape (B,)
        True labels and the defence's output on the clean image (``ALERT`` = -1).
    certified : ndarray, shape (B,), bool
        The certificate holds (``paper``: the paper's check holds).
    certificate_passes, defence_passes : ndarray, shape (B,)
        Forward passes spent on the certificate (with early exit) and on the defence.
    """

    mode: str
    guarantee: str
    sound: bool
    labels: np.ndarray
    output: np.ndarray
    certified: np.ndarray
    certificate_passes: np.ndarray
    defence_passes: np.ndarray

    def summary(self) -> dict:
        """Clean accuracy of the defended output, certified accuracy, alert rate, mean passes."""
        n = max(len(self.labels), 1)
        key = "certified_accuracy" if self.sound else "claimed_certified_accuracy_UNSOUND"
        return {"mode": self.mode, "guarantee": self.guarantee, "sound": self.sound,
                "images": len(self.labels),
                "clean_accuracy": float((self.output == self.labels).sum() / n),
                key: float(self.certified.sum() / n),
                "alert_rate": float((self.output == ALERT).sum() / n),
                "certificate_passes_per_image": float(self.certificate_passes.sum() / n),
                "defence_passes_per_image": float(self.defence_passes.sum() / n)}

    def records(self) -> list[dict]:
        """One small dict per image."""
        return [{"label": int(y), "output": "ALERT" if o == ALERT else int(o),
                 "certified": bool(c), "guarantee": self.guarantee}
                for y, o, c in zip(self.labels, self.output, self.certified)]


def certify(predictions, labels, maskset: MaskSet, mode: str = "detection", *, patch=None,
            k=None, pair_predictor: PairPredictor | None = None, num_classes: int | None = None,
            pair_chunk: int = 1024) -> CertificationReport:
    """Check each clean image's certificate and run the defence on it.

    Parameters
    ----------
    predictions : array, shape (B, n) or (B, n, K)
        One-mask predictions on the clean images.
    labels : array, shape (B,)
        True labels.
    maskset, mode, patch, k, num_classes
        As in :func:`defend`.
    pair_predictor : callable, optional
        Required for ``recovery``. The certificate asks for the pairs of :func:`all_pairs` in chunks
        of ``pair_chunk`` and stops at the first chunk holding a wrong label; images whose one-mask
        predictions already fail ask for no pairs at all.

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
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise CertMaskError(f"labels must be a 1-D integer array, got shape {y.shape}, dtype {y.dtype}")
    first = as_labels(predictions, len(maskset), num_classes)
    if len(first) != len(y):
        raise CertMaskError(f"{len(first)} prediction rows but {len(y)} labels")
    if y.size and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise CertMaskError(f"labels must lie in [0, {num_classes}), found [{y.min()}, {y.max()}]")
    defence = defend(first, maskset, mode, patch=patch, k=k, pair_predictor=pair_predictor,
                     num_classes=num_classes)
    certified = (first == y[:, None]).all(1)
    passes = np.full(len(y), len(maskset), dtype=np.int64)
    if mode == "recovery":
        pairs = all_pairs(len(maskset))
        for b in np.flatnonzero(certified):
            for start in range(0, len(pairs), pair_chunk):
                chunk = pairs[start:start + pair_chunk]
                second = _pair_labels(pair_predictor, int(b), chunk, num_classes)
                passes[b] += len(chunk)
                if (second != y[b]).any():
                    certified[b] = False
                    break
    return CertificationReport(mode, GUARANTEES[mode], SOUND[mode], y.astype(np.int64),
                               defence.output, certified, passes, defence.forward_passes)
