"""T9 (single-round recovery is impossible; the paper's rule is refuted).

Statement: if two patch positions ``l1, l2`` have disjoint covering sets, no rule that sees only the
one-mask predictions can guarantee the true label from the certificate "all one-mask predictions
correct". Proof (docs/theory.md, T9): take clean images x1 (label y) and x2 (label c) unanimous under all
masks. The attacker at ``l1`` controls every mask outside ``S(l1)``, the one at ``l2`` every mask
outside ``S(l2)``; both produce the vector with ``y`` on ``S(l1)`` and ``c`` elsewhere. The rule
answers the same on both and is wrong on one.

The paper's consensus rule (``mode="paper"``) therefore carries no recovery guarantee; since it
never answers ALERT it carries no detection guarantee either. Run this module to print a concrete
counterexample on the smallest geometry: two masks, one patch position covered only by mask 0.
"""
import numpy as np

from certmask_core import PatchThreat, make_maskset
from certmask_core.certification import certify, defend

from .soundness import check, disjoint_covering_sets, small_geometries

THEOREM = "T9"
STATEMENT = "paper rule: certificate (all one-mask = y) does NOT imply output = y (counterexample)"
symbolic = None


def counterexample():
    """The smallest attack: a 1x6 strip, 1x2 patch, two masks of width 4 (windows of 3 positions)."""
    ms = make_maskset(PatchThreat((1, 6), (1, 2)), 1, "patchcleanser", masks_per_axis=(1, 2))
    clean = np.array([[1, 1]])  # clean image of label 1: both masked predictions say 1
    report = certify(clean, np.array([1]), ms, "paper")
    assert not report.certified[0]  # an unsound mode never reports a certificate
    claim_holds = report.claim_holds[0]
    # patch at position (0, 0) is covered by mask 0 only: mask 1 is the attacker's
    attacked = np.array([[1, 0]])
    output = defend(attacked, ms, "paper").output[0]
    return ms, bool(claim_holds), attacked[0].tolist(), int(output)


def exhaustive(alphabet: int = 3) -> int:
    """Every small geometry with disjoint covering sets yields a counterexample to recovery."""
    checked = 0
    for name, ms, patch in small_geometries():
        result = check(ms, patch, "paper", alphabet, geometry=name)
        if disjoint_covering_sets(ms, patch):
            assert not result.held["label"] and not result.held["label-or-alert"], name
        checked += result.patterns
    return checked


if __name__ == "__main__":
    ms, claim_holds, attacked, output = counterexample()
    print(f"masks (origin, size): {list(zip(ms.origins.tolist(), ms.sizes.tolist()))}")
    print(f"clean predictions [1, 1] -> the paper's check says claim_holds={claim_holds}")
    print(f"patch at (0, 0) covered by mask 0 only; attacked predictions {attacked} -> output {output}"
          " (true label 1)")
