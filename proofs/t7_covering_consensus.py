"""T7 (covering consensus, k-fold detection): with the detection certificate, the rule "output c when
the voters of c contain a whole covering set S(l') and no other class's voters do, else ALERT" outputs
``y`` or ALERT under every patch.

Proof: under a patch at ``l`` the voters of ``y`` contain ``S(l)``, so ``y`` qualifies. Any other class
that qualifies makes two classes qualify, hence ALERT; if none does, the output is ``y``. The rule
cannot recover (T9's argument applies: once two positions have disjoint covering sets, the attacker
can make a second class qualify), which the checker confirms by finding ALERTs.
"""
from .soundness import exhaustive_mode

THEOREM = "T7"
STATEMENT = "covering_consensus: certificate (all one-mask = y) => output in {y, ALERT}"
MODE, GUARANTEE = "covering_consensus", "label-or-alert"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    return exhaustive_mode(MODE, GUARANTEE, alphabet)
