"""T10 (robust decisions): non-finite predictions vote for no class, and margins only refuse.

Statement. (a) If a one- or two-mask prediction whose logits are not all finite is read as
``NO_VOTE`` (a vote for no class), every defence keeps its guarantee (T6-T8, T11-T13). (b) A clean
``NO_VOTE`` never counts for the label: it breaks unanimity, is no vote for ``y`` in a plurality or a
covering consensus, and a mask with a ``NO_VOTE`` one- or two-mask prediction is never good (T11).
(c) Treating a prediction whose margin is ``<= margin_tolerance`` as free (any value) never adds a
certificate.

Proof. (a) Under a patch at ``l`` the masks of ``S(l)`` (and the pairs whose union hides the patch)
see the clean image, so they output what they output there: ``y``, never ``NO_VOTE``. Only masks
the attacker already controls can output ``NO_VOTE``, and T6-T8 let those output anything: ``NO_VOTE``
is one more value of a variable that was already universally quantified. The defences give it no
class: unanimity fails (ALERT), it joins no class's voters (covering consensus), it is never a
disagreer whose second round is tried and counts for no class in the first-round majority
(recovery), it is no class's vote in a plurality. (b) ``NO_VOTE != y`` for every label ``y >= 0``,
and every certificate counts a prediction for ``y`` only when it equals ``y``. (c) Each certificate is
monotone: letting a prediction take any value can only falsify it.

The exhaustive part re-runs the soundness checker of T6-T8, and the every-clean-table checker of
T12-T13 (sets of at most 5 masks), with ``NO_VOTE`` in the alphabet, and checks (b) on every clean table
of the small geometries that has one ``NO_VOTE``.
"""
import numpy as np

from certmask_core.certification import NO_VOTE, certify
from certmask_core.reference import covering_sets_reference, minimal_sets_reference

from .exact import geometries, one_round_exact
from .soundness import exhaustive_mode, small_geometries

THEOREM = "T10"
STATEMENT = "NO_VOTE for non-finite logits keeps every guarantee, never counts for y; margins only refuse"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    checked = exhaustive_mode("detection", "label-or-alert", alphabet, max_masks=6, no_vote=True)
    checked += exhaustive_mode("covering_consensus", "label-or-alert", alphabet, max_masks=6, no_vote=True)
    checked += exhaustive_mode("recovery", "label", alphabet, max_masks=4, no_vote=True)
    for name, ms, patch in geometries(5):
        for mode in ("plurality", "covering_consensus"):
            result = one_round_exact(ms, patch, mode, alphabet, no_vote=True, geometry=name)
            assert result.unsound == 0, (name, mode, result.counterexample)
            checked += result.tables
    for _, ms, patch in small_geometries():
        n = len(ms)
        clean = np.where(np.eye(n, dtype=bool), NO_VOTE, 1)  # row i: mask i emits NO_VOTE
        for mode in ("detection", "covering_consensus"):
            assert not certify(clean, np.ones(n, np.int64), ms, mode, patch=patch).certified.any(), (mode, n)
        # recovery (T11): a mask emitting NO_VOTE is never good, so row i is certified exactly when the
        # other masks hit every minimal covering set
        minimal = minimal_sets_reference(covering_sets_reference(ms, patch))
        ones = lambda b, p: np.ones(len(p), np.int64)  # noqa: E731
        got = certify(clean, np.ones(n, np.int64), ms, "recovery", patch=patch, pair_predictor=ones).certified
        assert got.tolist() == [all(m - {i} for m in minimal) for i in range(n)], n
        # a NO_VOTE pair answer refuses the recovery certificate too
        if n >= 2:
            answer = lambda b, p: np.full(len(p), NO_VOTE)  # noqa: E731
            assert not certify(np.ones((1, n), np.int64), [1], ms, "recovery", patch=patch,
                               pair_predictor=answer).certified.any()
        checked += n
    return checked
