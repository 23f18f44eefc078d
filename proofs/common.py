"""Small helpers shared by the theorem modules: independent, pure-python twins of core code."""
import itertools

from certmask_core import PatchThreat


def counts_1d(windows, P: int) -> list[int]:
    """How many inclusive windows ``(a0, a1)`` hold each position ``0..P-1`` (direct count)."""
    counts = [0] * P
    for a0, a1 in windows:
        for a in range(a0, a1 + 1):
            counts[a] += 1
    return counts


def small_threats(limit: int, patches=(1, 2, 3)):
    """Every square patch of the given sizes on every image up to ``limit x limit`` (from 2x2)."""
    for H, W in itertools.product(range(2, limit + 1), repeat=2):
        for p in patches:
            if p <= min(H, W):
                yield PatchThreat((H, W), p)
