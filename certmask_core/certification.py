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
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from . import double_masking, multipatch
from .bitsets import unpack
from .coverage import covering_set_bits, minimal_covering_set_bits, threat_for
from .double_masking import all_pairs  # noqa: F401 - public here since the first release
from .errors import CertMaskError
from .geometry import MaskSet
from .multipatch import MaskGroups
from .validation import positive_int

ALERT = -1
"""Output of a defence that refuses to answer."""
NO_VOTE = -2
"""Label of a one- or two-mask prediction whose logits are not all finite (NaN or +-inf): it votes
for no class. Backends map such predictions to ``NO_VOTE`` when they return labels."""
DEFAULT_MARGIN_TOLERANCE = 1e-3
"""Default logit margin at or below which a certificate is refused: float32 logits on a CPU moved by
at most 1.4e-6 with batch make-up. On a GPU (TF32) or under autocast the noise is far larger; backends
say what they need (``TorchBackend.margin_tolerance``; ``docs/theory.md``, "Reproducibility")."""
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
_INT64_MAX = np.iinfo(np.int64).max

PairPredictor = Callable[[int, np.ndarray], np.ndarray]
"""``pair_predictor(image_index, pairs)``: labels ``(m,)`` or logits ``(m, K)`` of image
``image_index`` under the union of masks ``pairs[:, 0]`` and ``pairs[:, 1]``; ``pairs`` has shape
``(m, 2)``. Logits let the certificate check decision margins. A predictor may also offer
``pair_predictor.many(image_indices, pairs)`` (``image_indices`` shape ``(m,)``) answering rows of
several images at once; the core then asks every undecided image's pairs in one call per round
(:class:`certmask_backends.pytorch.TorchBackend`'s predictor does)."""


def _refuse_masked(values, what: str) -> None:
    if np.ma.isMaskedArray(values) and np.ma.getmaskarray(values).any():
        raise CertMaskError(f"{what}: a masked array with {int(np.ma.getmaskarray(values).sum())} masked "
                            f"entries; their hidden values would count. Pass a plain array")


def _predictions(predictions, n_masks: int | None, num_classes: int | None,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(B, n)`` label matrix or ``(B, n, K)`` logit tensor.

    Returns int64 labels (``NO_VOTE`` where a logit vector is not all finite) and float64 margins
    (top-1 minus top-2 logit; ``inf`` for given labels and for one class, ``0`` for ``NO_VOTE``).
    """
    _refuse_masked(predictions, what)
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


@numba.njit(cache=True)
def _largest_run(values, count):  # pragma: no cover - compiled
    """``(label, size, tied)`` of the most frequent value in ``values[:count]`` (label -1 when empty)."""
    votes = np.sort(values[:count])
    best, best_count, tied = -1, 0, False
    start = 0
    while start < count:
        stop = start
        while stop < count and votes[stop] == votes[start]:
            stop += 1
        if stop - start > best_count:
            best, best_count, tied = votes[start], stop - start, False
        elif stop - start == best_count:
            tied = True
        start = stop
    return best, best_count, tied


@numba.njit(cache=True)
def _plurality_kernel(labels, ptr, idx):  # pragma: no cover - compiled
    """``plurality`` on every row: the class that is the strict plurality of the one-mask
    predictions inside every minimal covering set (members ``idx[ptr[s]:ptr[s + 1]]``), else -1."""
    B, n = labels.shape
    out = np.empty(B, dtype=np.int64)
    buf = np.empty(n, dtype=np.int64)
    for b in range(B):
        common = -1
        for s in range(len(ptr) - 1):
            count = 0
            for t in range(ptr[s], ptr[s + 1]):
                if labels[b, idx[t]] != NO_VOTE:  # votes for no class
                    buf[count] = labels[b, idx[t]]
                    count += 1
            winner, _, tied = _largest_run(buf, count)
            if tied or winner == -1 or (s > 0 and winner != common):
                common = -1
                break
            common = winner
        out[b] = common
    return out


@numba.njit(cache=True)
def _plurality_certificate(labels, unsure, y, ptr, idx):  # pragma: no cover - compiled
    """T12 on every row: inside every minimal set, the sure votes for ``y`` outnumber the sure votes
    of any other class plus every unsure prediction (which may turn into that class)."""
    B, n = labels.shape
    out = np.ones(B, dtype=np.bool_)
    buf = np.empty(n, dtype=np.int64)
    for b in range(B):
        for s in range(len(ptr) - 1):
            for_y, open_, count = 0, 0, 0
            for t in range(ptr[s], ptr[s + 1]):
                i = idx[t]
                if unsure[b, i]:
                    open_ += 1
                elif labels[b, i] == y[b]:
                    for_y += 1
                elif labels[b, i] != NO_VOTE:
                    buf[count] = labels[b, i]
                    count += 1
            _, rival, _ = _largest_run(buf, count)
            if for_y <= rival + open_:
                out[b] = False
                break
    return out


@numba.njit(cache=True)
def _blocked(labels, y, members, fixed):  # pragma: no cover - compiled
    """No class ``c != y`` can hold every fixed mask of ``members`` (so, with the masks outside
    ``fixed`` voting ``c``, ``c`` cannot take this whole covering set): some fixed member votes ``y``
    or for no class, or two fixed members vote differently. False when no member is fixed."""
    first = np.int64(-3)
    for i in members:
        if fixed[i]:
            v = labels[i]
            if v == y or v == NO_VOTE:
                return True
            if first == -3:
                first = v
            elif v != first:
                return True
    return False


@numba.njit(cache=True)
def _consensus_certificate(labels, unsure, y, ptr, idx):  # pragma: no cover - compiled
    """T13 on every row, with every unsure prediction free (the attacker's).

    (a) The defence outputs ``y`` on the clean image whatever the unsure predictions are: some
    minimal set votes ``y`` wholly and surely, and every minimal set is blocked for the other
    classes by its sure members. (b) At every minimal set ``C`` (a patch position; its supersets
    follow), either ``C`` votes ``y`` wholly and surely, or every minimal set is blocked by its sure
    members inside ``C``.
    """
    B, n = labels.shape
    m = len(ptr) - 1
    out = np.zeros(B, dtype=np.bool_)
    sure = np.empty(n, dtype=np.bool_)
    fixed = np.empty(n, dtype=np.bool_)
    whole = np.empty(m, dtype=np.bool_)
    for b in range(B):
        row = labels[b]
        for i in range(n):
            sure[i] = not unsure[b, i]
        for s in range(m):
            whole[s] = True
            for t in range(ptr[s], ptr[s + 1]):
                if not sure[idx[t]] or row[idx[t]] != y[b]:
                    whole[s] = False
                    break
        ok = whole.any()
        for s in range(m):
            if not ok:
                break
            ok = _blocked(row, y[b], idx[ptr[s]:ptr[s + 1]], sure)
        for c in range(m):
            if not ok:
                break
            if whole[c]:
                continue
            fixed[:] = False
            for t in range(ptr[c], ptr[c + 1]):
                fixed[idx[t]] = sure[idx[t]]
            for s in range(m):
                if not _blocked(row, y[b], idx[ptr[s]:ptr[s + 1]], fixed):
                    ok = False
                    break
        out[b] = ok
    return out


@numba.njit(cache=True)
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
            if c != NO_VOTE:  # votes for no class
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
    """What the defences need to know of a mask family for one threat (cached on the family).

    ``maskset`` is a MaskSet (one mask per prediction) or a MaskGroups (one group per prediction);
    ``patches`` is the number of patches. For one patch and a MaskSet the covering sets are those of
    :mod:`.coverage`; otherwise those of m-tuples of positions (:mod:`.multipatch`, T15).
    """

    maskset: MaskSet | MaskGroups
    patch: tuple[int, int]
    k: int
    patches: int = 1

    @property
    def n(self) -> int:
        return len(self.maskset)

    @property
    def single(self) -> bool:
        return self.patches == 1 and isinstance(self.maskset, MaskSet)

    def minimal_sets(self) -> np.ndarray:
        if self.single:
            return minimal_covering_set_bits(self.maskset, self.patch)
        return multipatch.tuple_minimal_sets(self.maskset, self.patch, self.patches)

    def all_sets(self) -> np.ndarray:
        if not self.single:
            raise CertMaskError("mode 'paper' is defined for one patch and single masks only")
        return covering_set_bits(self.maskset, self.patch)

    def membership(self) -> np.ndarray:
        """``(n, m)`` bool: member ``i`` lies in minimal covering set ``s``. Cached on the family."""
        return self.maskset.cached(("membership", self.patch, self.patches),
                                   lambda: np.ascontiguousarray(unpack(self.minimal_sets(), self.n).T))

    def member_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Minimal set ``s`` holds members ``idx[ptr[s]:ptr[s + 1]]``. Cached on the family."""

        def lists():
            sets, masks = np.nonzero(self.membership().T)
            ptr = np.searchsorted(sets, np.arange(self.membership().shape[1] + 1))
            return ptr.astype(np.int64), masks.astype(np.int64)

        return self.maskset.cached(("member lists", self.patch, self.patches), lists)


def _check_family(maskset) -> None:
    if not isinstance(maskset, (MaskSet, MaskGroups)):
        raise CertMaskError(f"maskset must be a MaskSet or MaskGroups, got {type(maskset).__name__}")


def family_geometry(maskset: MaskSet | MaskGroups, patch, k, patches: int = 1) -> _Geometry:
    """The checked geometry of a family for one threat (internal to the package, shared with
    :mod:`.sizes`): coverage recomputed from the rectangles, a claimed ``k`` it lacks refused."""
    _check_family(maskset)
    patches = multipatch.check_patches(patches)
    base = multipatch.base_set(maskset)
    patch = patch if patch is not None else base.threat
    if patch is None:
        raise CertMaskError("a user-supplied mask set needs patch=(ph, pw)")
    threat = threat_for(base, patch)
    claimed = positive_int("k", k if k is not None else (getattr(maskset, "k", None) or 1), whole_range=True)
    low, where = multipatch.family_coverage(maskset, threat.patch_size, patches)
    if low < claimed and patches == 1 and isinstance(maskset, MaskSet):
        raise CertMaskError(f"the mask set is not {claimed}-fold: patch position {where} is covered by {low} "
                            f"masks")
    if low < claimed:
        raise CertMaskError(f"the family is not {claimed}-fold for {patches} patches: the positions {where} "
                            f"are covered by {low} of its {len(maskset)} members")
    return _Geometry(maskset, threat.patch_size, claimed, patches)


def _pair_asker(pair_predictor, num_classes, tolerance: float = DEFAULT_MARGIN_TOLERANCE):
    def validate(answer, m):
        try:
            answer = np.asarray(answer)
        except ValueError as err:  # a ragged answer
            raise CertMaskError(f"pair_predictor's answer is not an array: {err}") from None
        if answer.ndim not in (1, 2):
            raise CertMaskError(f"pair_predictor must return labels (m,) or logits (m, K), got shape "
                                f"{answer.shape}")
        labels, margins = _predictions(answer[None], None, num_classes, "pair predictions")
        if labels.shape[1] != m:
            raise CertMaskError(f"pair_predictor returned {labels.shape[1]} predictions for {m} pairs")
        return labels[0], margins[0]
    return double_masking.PairAsker(pair_predictor, validate, tolerance)


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
    geo = family_geometry(maskset, patch, k, patches)
    labels = as_labels(predictions, geo.n, num_classes)
    passes = np.full(len(labels), geo.n, dtype=np.int64)
    if mode == "recovery":
        ask = _pair_asker(pair_predictor, num_classes)
    if len(labels) == 0:
        return DefenceResult(mode, np.empty(0, np.int64), passes)
    if mode == "detection":
        unanimous = (labels == labels[:, :1]).all(1) & (labels[:, 0] != NO_VOTE)
        output = np.where(unanimous, labels[:, 0], ALERT)
    elif mode == "plurality":
        output = _plurality_kernel(labels, *geo.member_lists())
    elif mode == "covering_consensus":
        output = _one_round_kernel(labels, geo.minimal_sets(), False, geo.k)
    elif mode == "paper":
        output = _one_round_kernel(labels, geo.all_sets(), True, geo.k)
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

    def records(self) -> list[dict]:
        """One small JSON-ready dict per image (``min_margin`` None when unknown)."""
        return [{"label": int(y), "output": "ALERT" if o == ALERT else int(o), "certified": bool(c),
                 "claim_holds": bool(h), "min_margin": float(m) if math.isfinite(m) else None,
                 "guarantee": self.guarantee}
                for y, o, c, h, m in zip(self.labels, self.output, self.certified, self.claim_holds,
                                         self.min_margin)]


def _true_labels(labels, num_classes) -> np.ndarray:
    _refuse_masked(labels, "labels")
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


def _one_round_certificate(mode: str, first: np.ndarray, unsure: np.ndarray, y: np.ndarray,
                           geo: _Geometry) -> np.ndarray:
    """The one-round certificate of ``mode``, each ``unsure`` prediction taking any value."""
    if mode in ("detection", "paper"):
        return ((first == y[:, None]) & ~unsure).all(1)
    if mode == "plurality":
        return _plurality_certificate(first, unsure, y, *geo.member_lists())
    return _consensus_certificate(first, unsure, y, *geo.member_lists())


def certificate_check(mode: str, first: np.ndarray, margins: np.ndarray, y: np.ndarray, geo: _Geometry,
                      pair_predictor, num_classes, tolerance: float, certificate: str, pair_chunk: int):
    """Each image's certificate: (holds, holds on labels alone, passes, smallest margin checked).

    Internal to the package (shared with :mod:`.sizes`)."""
    unsure = margins <= tolerance
    min_margin = margins.min(1, initial=np.inf)
    passes = np.full(len(y), geo.n, dtype=np.int64)
    if mode != "recovery":
        return (_one_round_certificate(mode, first, unsure, y, geo),
                _one_round_certificate(mode, first, np.zeros_like(unsure), y, geo), passes, min_margin)
    ask = _pair_asker(pair_predictor, num_classes, tolerance)
    if certificate == "all_pairs":
        strict, loose, extra, pair_margin = double_masking.all_pairs_certificate(
            first, ~unsure, y, ask, pair_chunk)
    else:
        strict, loose, extra, pair_margin = double_masking.hitting_set_certificate(
            first, ~unsure, y, geo.membership(), ask)
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
    try:
        tolerance = float(margin_tolerance)
    except (TypeError, ValueError, OverflowError):  # not a number, or an int beyond float range
        tolerance = math.nan
    if (isinstance(margin_tolerance, (bool, np.bool_)) or not isinstance(margin_tolerance, numbers.Real)
            or not 0 <= tolerance < math.inf):
        raise CertMaskError(f"margin_tolerance must be a finite number >= 0, got {margin_tolerance!r}")
    y = _true_labels(labels, num_classes)
    _check_family(maskset)
    first, margins = _predictions(predictions, len(maskset), num_classes, "predictions")
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
    defence = defend(first, maskset, mode, patch=patch, k=k, pair_predictor=pair_predictor,
                     num_classes=num_classes, patches=patches)
    geo = family_geometry(maskset, patch, k, patches)
    certificate = recovery_certificate if mode == "recovery" else CERTIFICATES[mode]
    strict, loose, passes, min_margin = certificate_check(
        mode, first, margins, y, geo, pair_predictor, num_classes, tolerance, certificate, pair_chunk)
    below = loose & ~strict
    certified = strict if SOUND[mode] else np.zeros_like(strict)
    return CertificationReport(mode, GUARANTEES[mode], SOUND[mode], y, defence.output, certified, strict,
                               min_margin, below, passes, defence.forward_passes, tolerance,
                               certificate, geo.n)
