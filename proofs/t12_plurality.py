"""T12 (covering-set plurality): the rule "output ``c`` when ``c`` is the strict plurality of the
one-mask predictions inside every minimal covering set, else ALERT" outputs ``y`` or ALERT under every
patch whenever ``y`` is the strict plurality inside every minimal covering set of the clean image.

Proof. Under a patch at ``l``, ``S(l)`` contains a minimal covering set ``M``; every mask of ``M``
covers the patch, so ``M`` votes as on the clean image and ``y`` is its strict plurality. A class
``c != y`` is then not the strict plurality of ``M``, so ``c`` is never output. The certificate is
exactly "the defence outputs ``y`` on the clean image", so no weaker certificate can require the clean
output to be right: it is tight (the checker finds no robust table left uncertified). With a k-fold
set whose minimal covering sets hold ``k`` masks it tolerates ``ceil(k / 2) - 1`` wrong masks per set,
where unanimity tolerates none. With unsure predictions (T10) the sure votes for ``y`` must outnumber
the sure votes of every other class plus every unsure prediction of the set.

The exhaustive part enumerates every clean row over 3 labels of every small geometry (package
constructions k = 1..3, random sets with duplicated and clipped masks), decides robustness by
enumerating every attack, and asserts certified => robust; on the sets of at most 5 masks it also
checks every choice of unsure predictions.
"""
from .exact import exhaustive_one_round

THEOREM = "T12"
STATEMENT = "plurality: y strict plurality in every minimal covering set => output in {y, ALERT}"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    return exhaustive_one_round("plurality", alphabet)
