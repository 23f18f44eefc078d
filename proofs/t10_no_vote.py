"""T10 (robust decisions): non-finite predictions vote for no class, and margins only refuse.

Statement. (a) If a one- or two-mask prediction whose logits are not all finite is read as
``NO_VOTE`` (a vote for no class), detection, covering consensus and recovery keep their guarantees
(T6-T8). (b) A clean image with any ``NO_VOTE`` among the predictions its certificate uses is not
certified. (c) Refusing images whose smallest logit margin is ``<= margin_tolerance`` never adds a
certificate.

Proof. (a) Under a patch at ``l`` the masks of ``S(l)`` (and the pairs whose union hides the patch)
see the clean image, so they output what they output there: ``y``, never ``NO_VOTE``. Only masks
the attacker already controls can output ``NO_VOTE``, and T6-T8 let those output anything: ``NO_VOTE``
is one more value of a variable that was already universally quantified. The defences give it no
class: unanimity fails (ALERT), it joins no class's voters (covering consensus), it is never a
disagreer whose second round is tried and counts for no class in the first-round majority
(recovery). (b) ``NO_VOTE != y`` for every label ``y >= 0``, and every certificate asks each
prediction it uses to equal ``y``. (c) The certified set is the intersection of the certificate with
``min_margin > tolerance``.

The exhaustive part re-runs the soundness checker of T6-T8 with ``NO_VOTE`` added to the attacker's
alphabet on every small geometry, and checks (b) on every clean table of those geometries that has one
``NO_VOTE``.
"""
import numpy as np

from certmask_core.certification import NO_VOTE, certify

from .soundness import exhaustive_mode, small_geometries

THEOREM = "T10"
STATEMENT = "NO_VOTE for non-finite logits keeps T6-T8; NO_VOTE never certified; margins only refuse"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    checked = exhaustive_mode("detection", "label-or-alert", alphabet, max_masks=6, no_vote=True)
    checked += exhaustive_mode("covering_consensus", "label-or-alert", alphabet, max_masks=6, no_vote=True)
    checked += exhaustive_mode("recovery", "label", alphabet, max_masks=4, no_vote=True)
    for _, ms, patch in small_geometries():
        n = len(ms)
        clean = np.where(np.eye(n, dtype=bool), NO_VOTE, 1)  # row i: mask i emits NO_VOTE
        for mode in ("detection", "covering_consensus", "recovery"):
            pairs = (lambda b, p: np.ones(len(p), np.int64)) if mode == "recovery" else None
            assert not certify(clean, np.ones(n, np.int64), ms, mode, patch=patch,
                               pair_predictor=pairs).certified.any(), (mode, n)
        # a NO_VOTE pair answer refuses the recovery certificate too
        if n >= 2:
            answer = lambda b, p: np.full(len(p), NO_VOTE)  # noqa: E731
            assert not certify(np.ones((1, n), np.int64), [1], ms, "recovery", patch=patch,
                               pair_predictor=answer).certified.any()
        checked += n
    return checked
