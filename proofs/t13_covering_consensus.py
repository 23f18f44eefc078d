"""T13 (covering consensus, sharpest certificate): the rule of T7 ("output ``c`` when the voters of
``c`` contain a minimal covering set and no other class's voters do, else ALERT") outputs ``y`` or
ALERT under every patch, and outputs ``y`` on the clean image, exactly when

(a) it outputs ``y`` on the clean image, and
(b) at every minimal covering set ``C``: every mask of ``C`` votes ``y``, or every minimal covering
    set ``M`` is *blocked* inside ``C``: the masks of ``M`` that lie in ``C`` are not empty and not
    all votes for one class ``c != y``.

Proof (soundness). Under a patch at ``l`` only the masks of ``S(l)`` are fixed; let ``C`` be a
minimal covering set inside ``S(l)``. If ``C`` votes ``y`` wholly, ``y`` qualifies and the output is
``y`` or ALERT. Otherwise every ``M`` is blocked inside ``C`` (hence inside ``S(l)``): for every
``c != y`` some fixed mask of ``M`` does not vote ``c``, so no ``c != y`` can qualify, and the
output is ``y`` or ALERT. (Exactness, with at least 3 classes) If (b) fails at ``C = S(l)``, take an
unblocked ``M`` and a class ``c != y`` holding its fixed masks (if ``C`` votes wholly for some
``d != y``, take ``M = C`` and ``c = d``), and set every mask outside ``C`` to ``c``. Then ``c``
qualifies; ``y`` does not (a minimal set inside its voters, which lie in ``C``, would be ``C``
itself, which does not vote ``y`` wholly); nor does any class other than ``c``, for the same reason.
The output is ``c``. Conditions (a) and (b) are monotone in ``C``, so minimal covering sets suffice.
The old certificate (every mask votes ``y``, T7) implies them; they add nothing when every mask lies
in a minimal covering set and each minimal covering set is disjoint from another one (then that
``M`` misses ``C`` and is not blocked), which is the case for every replicated and offset set
measured in docs/results.md. With unsure predictions (T10) each one counts as the attacker's.

The exhaustive part checks, on every small geometry, certified => robust and robust => certified
(no robust table left uncertified), and every choice of unsure predictions on sets of at most 5 masks.
"""
from .exact import exhaustive_one_round

THEOREM = "T13"
STATEMENT = "covering_consensus: sharpest certificate (clean output y, every minimal set y or blocked)"
symbolic = None


def exhaustive(alphabet: int = 3) -> int:
    return exhaustive_one_round("covering_consensus", alphabet)
