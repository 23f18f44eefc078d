"""T11 (k-fold double masking): PatchCleanser's recovery outputs ``y`` under every patch when the
masks that are *good* for the clean image hit every minimal covering set.

Mask ``g`` is good for (x, y) when its one-mask prediction and every two-mask prediction ``(g, m)``,
``m != g``, equal ``y``.

Proof. Let the patch sit at ``l`` and let ``g`` be a good mask in a minimal covering set inside
``S(l)`` (one exists: ``S(l)`` contains a minimal covering set, which the good masks hit). ``g``
covers the patch, so on the attacked image its one-mask prediction is ``y``, and every pair ``(g, m)``
hides the patch, so it predicts ``y`` too. Let ``c`` be the first-round majority.
(i) Every mask agrees with ``c``: ``g`` does, so ``c = y``. (ii) Otherwise the defence tries the
disagreeing masks in turn. A disagreeing mask ``i`` with a label other than ``y`` is rejected: the
pair ``(i, g)`` predicts ``y``. So an accepted mask has label ``y``. If none is accepted the output is
``c``; were ``c != y``, ``g`` would disagree and be accepted (all its pairs say ``y``), so ``c = y``.
The output is ``y`` in every case. The certificate needs a good mask in every minimal covering set
only, so it never certifies less than "every mask is good" (the all-pairs certificate, T8), and it
is the same condition when each mask is the only cover of some position (then every singleton is a
minimal covering set), as in PatchCleanser's grids.

(b) Exact condition (what the hitting set leaves out). The defence outputs ``y`` under every attack
exactly when, at every patch position ``l``, either a mask of ``S(l)`` is good, or (M) the
first-round majority is ``y`` whatever the masks outside ``S(l)`` say, and no mask can be accepted
with a wrong label: none has all its fixed two-mask predictions (the pairs hiding the patch) equal
to one class ``c != y``, with ``c`` its own label if it covers ``l``. Sufficiency: under (M) the only
disagreers have labels other than ``y`` and each is rejected by a fixed pair. Necessity: without a
good covering mask and with a majority the attacker can turn (all free masks vote ``c``), no mask
labelled ``y`` is accepted, so the output is ``c`` or another wrong label; with the majority safe, a
mask that can be accepted with a wrong label is made a disagreer and accepted. (M) needs the masks
covering ``l`` to outvote all the others, so it never holds when every covering set holds less than
half of the masks (every set of docs/results.md); the package certifies with the hitting set, and
``certmask_core/reference.py`` holds (b) as ``recovery_robust_reference``, which the checker confirms
equals robustness on every table enumerated.

Unsure predictions (margin at or below the tolerance, T10) never make a mask good. The exhaustive
part enumerates every clean table (one-mask row and symmetric pair table over 3 labels) of every
geometry with at most 3 masks (package constructions with k = 1 and 2, random sets with duplicated
and clipped masks), decides the defence's robustness by enumerating every attack, and asserts that
no table certified by the hitting set or by all pairs is attacked successfully, and that (b) holds
exactly on the robust tables; ``python -m proofs.exact 6 4`` adds the 4-mask geometries (about a
minute each; docs/theory.md has the counts).
"""
from .exact import geometries, recovery_exact

THEOREM = "T11"
STATEMENT = "recovery: good masks (one- and all two-mask predictions = y) hit every minimal set => y"
symbolic = None


def exhaustive(alphabet: int = 3, max_masks: int = 3) -> int:
    checked = 0
    for name, ms, patch in geometries(max_masks):
        for certificate in ("hitting_set", "all_pairs", "exact"):
            result = recovery_exact(ms, patch, certificate, alphabet, geometry=name)
            assert result.unsound == 0, (name, certificate, result.counterexample)
            if certificate == "exact":
                assert result.over_conservative == 0, (name, "(b) is not exact", result.example_missed)
            checked += result.tables
    return checked
