"""T6 (detection): if every one-mask prediction on the clean image is ``y`` and the set is 1-fold,
the unanimity defence outputs ``y`` or ALERT under every patch.

Proof: a patch at ``l`` leaves the masks of ``S(l) != {}`` at ``y``; a unanimous attacked vector is
therefore all ``y``; any other vector gives ALERT.
"""
from .soundness import exhaustive_mode

THEOREM = "T6"
STATEMENT = "detection: certificate (all one-mask = y) => output in {y, ALERT}"
MODE, GUARANTEE = "detection", "label-or-alert"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    return exhaustive_mode(MODE, GUARANTEE, alphabet)
