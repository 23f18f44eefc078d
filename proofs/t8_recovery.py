"""T8 (recovery by double masking, PatchCleanser): if every one- and two-mask prediction on the clean
image is ``y`` and the set is 1-fold, the double-masking defence outputs ``y`` under every patch.

Proof: let ``m`` cover the patch. If round one is unanimous it is ``y`` (mask ``m``). A disagreer ``i``
with label ``c != y`` sees the pair ``(i, m)``, which hides the patch and so predicts ``y != c``: it is
rejected. An accepted disagreer therefore has label ``y``. If none is accepted the majority is
returned; were it not ``y``, mask ``m`` would be a disagreer whose every pair hides the patch and
predicts ``y``, so ``m`` would have been accepted. Hence the output is ``y``.
"""
from .soundness import exhaustive_mode

THEOREM = "T8"
STATEMENT = "recovery: certificate (all one- and two-mask = y) => output = y"
MODE, GUARANTEE = "recovery", "label"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    return exhaustive_mode(MODE, GUARANTEE, alphabet, max_masks=6)
