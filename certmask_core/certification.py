"""Defences, certificates and their guarantees (docs/theory.md, T6-T13; docs/design.md sections 3, 5).

A backend turns (model, images, mask set) into a ``(B, n)`` matrix of masked predictions; this module
decides. Let ``S(l)`` be the masks covering patch position ``l``. Under a patch at ``l`` the masks of
``S(l)`` predict exactly what they predict on the clean image; every other mask may predict anything.
A *minimal* covering set is an ``S(l)`` that contains no other one.

==================== ====== ========================================================= ================
mode                 rounds certificate (clean image, label y)                        guarantee
==================== ====== ========================================================= ================
detection            1      every one-mask prediction is y                            y or ALERT (T6)
plurality            1      y is the strict plurality inside every minimal set        y or ALERT (T12)
covering_consensus   1      the defence outputs y, and every minimal set C votes y    y or ALERT (T13)
                            wholly or keeps every other class from qualifying
recovery             2      the good masks hit every minimal set (hitting_set)        y (T11)
                            or every one- and two-mask prediction is y (all_pairs)    y (T8)
paper                1      every one-mask prediction is y (as the paper)             NONE (T9)
==================== ====== ========================================================= ================

Every mode also runs over a :class:`~certmask_core.multipatch.MaskGroups` (one prediction per group of
masks hidden together) against ``patches`` patches: masks become groups and positions become tuples of
positions, and every guarantee carries over (T15). :mod:`certmask_core.sizes` certifies several patch
sizes from the same predictions (T14).

A mask is *good* when its one-mask prediction and every two-mask prediction with it equal ``y``.
The hitting-set certificate is recovery's default: it never certifies less than all pairs, equals it
when every mask is the only cover of some position (PatchCleanser's grids), and with k-fold sets it
needs one good mask per minimal set instead of n good masks.

``paper`` is the seed paper's one-round rule, kept for comparison. Its claimed recovery guarantee is
false whenever two positions have disjoint covering sets: ``proofs/t9_paper_counterexample.py``
prints a concrete attack. Its report says ``sound=False``; its check is reported as ``claim_holds``
and its ``certified`` column is always False.

Two rules make every certificate robust to what a model may emit (T10, checked by
``proofs/soundness.py``):

* A prediction whose logits are not all finite (NaN, +-inf) is ``NO_VOTE``: it votes for no class.
  Under attack only masks that miss the patch can produce it, and those are the attacker's anyway;
  on a clean image it differs from the label, so it never passes a certificate.
* A certificate must not hang on floating-point noise: a prediction whose top-1 minus top-2 logit
  margin is ``<= margin_tolerance`` (default :data:`DEFAULT_MARGIN_TOLERANCE`) is *unsure*, and every
  certificate is checked as if each unsure prediction could take any value (the attacker's choice).
  An image certified on its labels alone but not so is reported ``below_margin``.

One call flows one way: :mod:`.predictions` reads the predictions and labels,
:mod:`.family_geometry` gives the family's one geometry object for the threat, the kernels of
:mod:`.one_round` or the rounds of :mod:`.double_masking` decide with it, and a report comes back.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import double_masking
from .double_masking import PairAsker, all_pairs  # noqa: F401 - all_pairs: public here since the first release
from .errors import CertMaskError
from .family_geometry import FamilyGeometry, check_family, family_geometry
from .geometry import MaskSet
from .multipatch import MaskGroups
from .one_round import one_round_certificate, one_round_kernel, plurality_kernel
from .predictions import (  # noqa: F401 - as_labels: public here since the first release
    ALERT,
    DEFAULT_MARGIN_TOLERANCE,
    NO_VOTE,
    as_labels,
    labels_and_margins,
    margin_tolerance_of,
    true_labels,
)
from .validation import positive_int

MODES = ("detection", "plurality", "covering_consensus", "recovery", "paper")
GUARANTEES = {
    "detection": "label-or-alert",
    "plurality": "label-or-alert",
    "covering_consensus": "label-or-alert",
    "recovery": "label",
    "paper": "none (claimed label: refuted, proofs/t9)",
}
SOUND = {mode: mode != "paper" for mode in MODES}
RECOVERY_CERTIFICATES = ("hitting_set", "all_pairs")
CERTIFICATES = {"detection": "unanimity", "plurality": "plurality", "covering_consensus": "covering",
                "paper": "unanimity (paper's claim)"}

PairPredictor = Callable[[int, np.ndarray], np.ndarray]
"""``pair_predictor(image_index, pairs)``: labels ``(m,)`` or logits ``(m, K)`` of image
``image_index`` under the union of masks ``pairs[:, 0]`` and ``pairs[:, 1]``; ``pairs`` has shape
``(m, 2)``. Logits let the certificate check decision margins. A predictor may also offer
``pair_predictor.many(image_indices, pairs)`` (``image_indices`` shape ``(m,)``) answering rows of
several images at once; the core then asks every undecided image's pairs in one call per round
(:class:`certmask_backends.pytorch.TorchBackend`'s predictor does)."""


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


def defend(predictions, maskset: MaskSet | MaskGroups, mode: str = "detection", *, patch=None, k=None,
           pair_predictor: PairPredictor | None = None, num_classes: int | None = None,
           patches: int = 1) -> DefenceResult:
    """Run a defence on the masked predictions of (possibly attacked) images.

    Parameters
    ----------
    predictions : array, shape (B, n) int labels or (B, n, K) float logits
        One-mask predictions, column ``i`` for mask ``i`` of ``maskset`` (for MaskGroups: group ``i``
        hidden at once). Logit vectors that are not all finite, and the label ``NO_VOTE``, vote for no
        class.
    maskset : MaskSet or MaskGroups
    mode : {"detection", "plurality", "covering_consensus", "recovery", "paper"}
        ``paper`` needs a MaskSet and one patch.
    patch : (ph, pw), optional
        Needed when ``maskset`` carries no threat.
    k : int, optional
        Claimed coverage multiplicity (default: the set's own, or 1). Checked against the set's
        coverage, which must be at least 1 everywhere; ``paper`` uses it.
    pair_predictor : callable, optional
        Required for ``recovery``: see :data:`PairPredictor`. Called only for disagreeing masks; the
        second rounds of all images are asked together, one disagreeing mask per image per call.
    num_classes : int, optional
        When given, labels are range-checked.
    patches : int
        Number of patches of size ``patch`` (T15): covering sets are those of tuples of positions.
        With MaskGroups, a pair asked by ``recovery`` is a pair of groups.

    Returns
    -------
    DefenceResult

    Notes
    -----
    Slow twins in :mod:`certmask_core.reference`: ``one_round_reference`` and ``plurality_reference``
    (one image at a time), ``dense_reference`` (dense matrices, benchmark scale), and
    ``patchcleanser_defence_reference`` / ``recovery_reference`` for recovery.

    Examples
    --------
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    >>> defend(np.array([[3, 3], [3, 4]]), ms, "detection").output
    array([ 3, -1])
    """
    mode = _check_mode(mode)
    if num_classes is not None:
        num_classes = positive_int("num_classes", num_classes, whole_range=True)
    geometry, k = family_geometry(maskset, patch, k, patches)
    labels = as_labels(predictions, geometry.n, num_classes)
    ask = PairAsker(pair_predictor, num_classes) if mode == "recovery" else None
    return _defence(mode, labels, geometry, k, ask)


def _defence(mode: str, labels: np.ndarray, geometry: FamilyGeometry, k: int,
             ask: PairAsker | None) -> DefenceResult:
    """The defence of ``mode`` on validated ``(B, n)`` labels (``ask``: recovery's second rounds)."""
    passes = np.full(len(labels), geometry.n, dtype=np.int64)
    if len(labels) == 0:
        return DefenceResult(mode, np.empty(0, np.int64), passes)
    if mode == "detection":
        unanimous = (labels == labels[:, :1]).all(1) & (labels[:, 0] != NO_VOTE)
        output = np.where(unanimous, labels[:, 0], ALERT)
    elif mode == "plurality":
        output = plurality_kernel(labels, *geometry.member_lists)
    elif mode == "covering_consensus":
        output = one_round_kernel(labels, geometry.minimal_sets, False, k)
    elif mode == "paper":
        output = one_round_kernel(labels, geometry.all_sets, True, k)
    else:
        output, extra = double_masking.patchcleanser_defence(labels, ask.labels, NO_VOTE, ALERT)
        passes += extra
    return DefenceResult(mode, output.astype(np.int64), passes)


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
        Smallest top-1 minus top-2 logit margin among the predictions the check evaluated (``inf``
        when only labels were given).
    below_margin : ndarray, shape (B,), bool
        The check held on the labels alone but not once every prediction with a margin
        ``<= margin_tolerance`` may take any value.
    certificate_passes, defence_passes : ndarray, shape (B,)
        Forward passes spent on the certificate (with early exit) and on the defence.
    margin_tolerance : float
    certificate : str
        Which certificate was checked (``unanimity``, ``plurality``, ``covering``, ``hitting_set``,
        ``all_pairs``).
    num_masks : int
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
    certificate: str = ""
    num_masks: int = 0

    PER_IMAGE = ("labels", "output", "certified", "claim_holds", "min_margin", "below_margin",
                 "certificate_passes", "defence_passes")
    """The per-image array fields, in order."""

    def summary(self) -> dict:
        """Clean accuracy of the defended output, certified accuracy, alert rate, mean passes.

        An unsound mode reports ``claimed_certified_accuracy_UNSOUND`` instead of
        ``certified_accuracy``. Recovery also reports ``all_pairs_passes``, the ``n + n (n - 1) / 2``
        passes of checking every pair, to set beside ``certificate_passes_per_image``.
        """
        n = max(len(self.labels), 1)
        out = {"mode": self.mode, "guarantee": self.guarantee, "sound": self.sound,
               "certificate": self.certificate, "images": len(self.labels),
               "clean_accuracy": float((self.output == self.labels).sum() / n)}
        if self.sound:
            out["certified_accuracy"] = float(self.certified.sum() / n)
        else:
            out["claimed_certified_accuracy_UNSOUND"] = float(self.claim_holds.sum() / n)
        return {**out, "alert_rate": float((self.output == ALERT).sum() / n),
                "margin_tolerance": self.margin_tolerance,
                "refused_for_margin": int(self.below_margin.sum()),
                "certificate_passes_per_image": float(self.certificate_passes.sum() / n),
                "defence_passes_per_image": float(self.defence_passes.sum() / n),
                **({"all_pairs_passes": self.num_masks * (self.num_masks + 1) // 2}
                   if self.mode == "recovery" else {})}


def certificate_check(mode: str, first: np.ndarray, margins: np.ndarray, y: np.ndarray,
                      geometry: FamilyGeometry, ask: PairAsker | None, tolerance: float, certificate: str,
                      pair_chunk: int):
    """Each image's certificate: (holds, holds on labels alone, passes, smallest margin checked).

    ``ask`` answers recovery's pairs (``None`` for the one-round modes). Internal to the package
    (shared with :mod:`.sizes`)."""
    unsure = margins <= tolerance
    min_margin = margins.min(1, initial=np.inf)
    passes = np.full(len(y), geometry.n, dtype=np.int64)
    if mode != "recovery":
        return (one_round_certificate(mode, first, unsure, y, geometry),
                one_round_certificate(mode, first, np.zeros_like(unsure), y, geometry), passes, min_margin)
    if certificate == "all_pairs":
        strict, loose, extra, pair_margin = double_masking.all_pairs_certificate(
            first, ~unsure, y, ask, pair_chunk)
    else:
        strict, loose, extra, pair_margin = double_masking.hitting_set_certificate(
            first, ~unsure, y, geometry.membership, ask)
    return strict, loose, passes + extra, np.minimum(min_margin, pair_margin)


def certify_inputs(predictions, labels, maskset, mode, num_classes, recovery_certificate,
                   margin_tolerance):
    """Validated ``(mode, num_classes, tolerance, y, first, margins)`` of a certification call;
    ``num_classes`` is taken from the logits when not given (pair logits must have as many).

    Internal to the package (shared with :mod:`.sizes`)."""
    mode = _check_mode(mode)
    if num_classes is not None:
        num_classes = positive_int("num_classes", num_classes, whole_range=True)
    if recovery_certificate not in RECOVERY_CERTIFICATES:
        raise CertMaskError(f"recovery_certificate must be one of {RECOVERY_CERTIFICATES}, got "
                            f"{recovery_certificate!r}")
    tolerance = margin_tolerance_of(margin_tolerance)
    y = true_labels(labels, num_classes)
    check_family(maskset)
    first, margins = labels_and_margins(predictions, len(maskset), num_classes, "predictions")
    if len(first) != len(y):
        raise CertMaskError(f"{len(first)} prediction rows but {len(y)} labels")
    if num_classes is None and np.asarray(predictions).dtype.kind == "f":
        num_classes = np.asarray(predictions).shape[2]
    return mode, num_classes, tolerance, y, first, margins


def certify(predictions, labels, maskset: MaskSet | MaskGroups, mode: str = "detection", *, patch=None,
            k=None, pair_predictor: PairPredictor | None = None, num_classes: int | None = None,
            pair_chunk: int = 1024, margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE,
            recovery_certificate: str = "hitting_set", patches: int = 1) -> CertificationReport:
    """Check each clean image's certificate and run the defence on it.

    Parameters
    ----------
    predictions : array, shape (B, n) or (B, n, K)
        One-mask predictions on the clean images; give logits to have margins checked.
    labels : array, shape (B,)
        True labels.
    maskset, mode, patch, k, num_classes, patches
        As in :func:`defend`.
    pair_predictor : callable, optional
        Required for ``recovery``; see :data:`PairPredictor`.
    pair_chunk : int
        ``all_pairs`` asks each image's pairs in chunks of this many and stops at the first chunk
        holding a wrong label.
    margin_tolerance : float
        A prediction whose top-1 minus top-2 logit margin is ``<= margin_tolerance`` is unsure:
        floating-point noise (batch make-up, autocast) could flip it, so the certificate must hold
        whatever it says. Has no effect on label input.
    recovery_certificate : {"hitting_set", "all_pairs"}
        ``hitting_set`` (T11): certified when the good masks hit every minimal covering set; it asks
        only for pairs of candidate masks (one-mask prediction correct), greedily by how many unhit
        minimal sets a candidate lies in, and stops once the good masks hit every minimal set or
        one can no longer be hit. ``all_pairs`` (T8): every one- and two-mask prediction is correct.
        Images whose one-mask predictions rule the certificate out ask for no pairs at all.

    Returns
    -------
    CertificationReport

    Notes
    -----
    Slow twins in :mod:`certmask_core.reference`: ``plurality_certificate_reference`` and
    ``consensus_certificate_reference`` (one-round certificates), ``hitting_set_reference`` and
    ``all_pairs_certificate_reference`` (recovery), ``reference_patchcleanser`` (recovery through a
    backend).

    Examples
    --------
    >>> from certmask_core import PatchThreat, make_maskset
    >>> ms = make_maskset(PatchThreat((1, 6), (1, 2)), masks_per_axis=(1, 2))
    >>> certify(np.array([[3, 3], [3, 4]]), [3, 3], ms).certified
    array([ True, False])
    """
    mode, num_classes, tolerance, y, first, margins = certify_inputs(
        predictions, labels, maskset, mode, num_classes, recovery_certificate, margin_tolerance)
    pair_chunk = positive_int("pair_chunk", pair_chunk, whole_range=True)
    geometry, k = family_geometry(maskset, patch, k, patches)
    ask = PairAsker(pair_predictor, num_classes, tolerance) if mode == "recovery" else None
    defence = _defence(mode, first, geometry, k, ask)
    certificate = recovery_certificate if mode == "recovery" else CERTIFICATES[mode]
    strict, loose, passes, min_margin = certificate_check(mode, first, margins, y, geometry, ask, tolerance,
                                                          certificate, pair_chunk)
    below = loose & ~strict
    certified = strict if SOUND[mode] else np.zeros_like(strict)
    return CertificationReport(mode, GUARANTEES[mode], SOUND[mode], y, defence.output, certified, strict,
                               min_margin, below, passes, defence.forward_passes, tolerance,
                               certificate, geometry.n)
