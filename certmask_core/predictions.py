"""What a model's predictions say, read once: labels, margins, the no-vote and alert labels (T10).

Every decision of the core starts from a ``(B, n)`` matrix of labels or a ``(B, n, K)`` tensor of
logits, one column per mask (or group of masks). This module turns either into int64 labels and
float64 top-1 minus top-2 margins, and checks the true labels and the margin tolerance, so that the
defences and certificates (:mod:`.certification`, :mod:`.one_round`, :mod:`.double_masking`) see
validated arrays only.

* A prediction whose logits are not all finite (NaN, +-inf) is :data:`NO_VOTE`: it votes for no
  class (T10).
* A margin ``<= margin_tolerance`` (default :data:`DEFAULT_MARGIN_TOLERANCE`) makes a prediction
  unsure: floating-point noise could flip it, so a certificate must hold whatever it says.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import CertMaskError

ALERT = -1
"""Output of a defence that refuses to answer."""
NO_VOTE = -2
"""Label of a one- or two-mask prediction whose logits are not all finite (NaN or +-inf): it votes
for no class. Backends map such predictions to ``NO_VOTE`` when they return labels."""
DEFAULT_MARGIN_TOLERANCE = 1e-3
"""Default logit margin at or below which a certificate is refused: float32 logits on a CPU moved by
at most 1.4e-6 with batch make-up. On a GPU (TF32) or under autocast the noise is far larger; backends
say what they need (``TorchBackend.margin_tolerance``; ``docs/theory.md``, "Reproducibility")."""
_INT64_MAX = np.iinfo(np.int64).max


def refuse_masked(values, what: str) -> None:
    """Refuse a numpy masked array with masked entries: their hidden values would count."""
    if np.ma.isMaskedArray(values) and np.ma.getmaskarray(values).any():
        raise CertMaskError(f"{what}: a masked array with {int(np.ma.getmaskarray(values).sum())} masked "
                            f"entries; their hidden values would count. Pass a plain array")


def labels_and_margins(predictions, n_masks: int | None, num_classes: int | None,
                       what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(B, n)`` label matrix or ``(B, n, K)`` logit tensor.

    Returns int64 labels (``NO_VOTE`` where a logit vector is not all finite) and float64 margins
    (top-1 minus top-2 logit; ``inf`` for given labels and for one class, ``0`` for ``NO_VOTE``).
    """
    refuse_masked(predictions, what)
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
    return labels_and_margins(predictions, n_masks, num_classes, what)[0]


def true_labels(labels, num_classes) -> np.ndarray:
    """The true labels as an int64 ``(B,)`` array, each ``>= 0`` (and ``< num_classes`` when given)."""
    refuse_masked(labels, "labels")
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


def margin_tolerance_of(margin_tolerance) -> float:
    """``margin_tolerance`` as a float when it is a finite real number ``>= 0`` (not a bool)."""
    try:
        tolerance = float(margin_tolerance)
    except (TypeError, ValueError, OverflowError):  # not a number, or an int beyond float range
        tolerance = math.nan
    if (isinstance(margin_tolerance, (bool, np.bool_)) or not isinstance(margin_tolerance, numbers.Real)
            or not 0 <= tolerance < math.inf):
        raise CertMaskError(f"margin_tolerance must be a finite number >= 0, got {margin_tolerance!r}")
    return tolerance
