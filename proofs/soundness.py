"""Exhaustive soundness checker for the certificates (theorems T6-T8, T10; T11-T13 in proofs.exact).

For a small mask set, a mode and a label alphabet ``{0, ..., q-1}``, it enumerates every true label
``y``, every patch position ``l`` and every prediction pattern the geometry lets an attacker at ``l``
produce, given a clean image that passes the mode's certificate:

* one-mask predictions: masks covering ``l`` keep their clean value ``y``; every other mask takes any
  label of the alphabet (``q ** (n - |S(l)|)`` patterns);
* two-mask predictions (``recovery``): a pair whose *union* hides the patch keeps its clean value
  ``y``; every other pair is the attacker's. Rather than enumerating ``q ** pairs`` tables, the
  checker enumerates which disagreeing mask the attacker tries to get accepted (or none) and answers
  each pair accordingly; :func:`recovery_outcomes_bruteforce` enumerates the full tables on tiny sets
  and the tests check that both give the same set of outcomes.

It runs the package's own :func:`certmask_core.certification.defend` on every pattern and checks the
two guarantees: ``label`` (output is ``y``) and ``label-or-alert`` (output is ``y`` or ALERT). The
result is a proof for that geometry and alphabet, or a concrete counterexample.

Run ``python -m proofs.soundness`` for the table of modes x geometries.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from certmask_core import MaskSet
from certmask_core.certification import ALERT, GUARANTEES, MODES, NO_VOTE, defend
from certmask_core.reference import covers, pair_covers

from .common import small_geometries

GUARANTEE_NAMES = ("label", "label-or-alert")


@dataclass
class CheckResult:
    mode: str
    geometry: str
    alphabet: int
    patterns: int = 0
    held: dict = field(default_factory=lambda: {g: True for g in GUARANTEE_NAMES})
    counterexamples: dict = field(default_factory=dict)

    @property
    def kept(self) -> str:
        """The strongest guarantee that held, or ``none``."""
        return next((g for g in GUARANTEE_NAMES if self.held[g]), "none")

    def record(self, y, position, attacked, output, extra=None):
        out_ok = {"label": output == y, "label-or-alert": output in (y, ALERT)}
        for g in GUARANTEE_NAMES:
            if not out_ok[g] and self.held[g]:
                self.held[g] = False
                self.counterexamples[g] = {
                    "true_label": int(y), "patch_position": tuple(int(v) for v in position),
                    "clean_one_mask_predictions": [int(y)] * len(attacked),
                    "attacked_one_mask_predictions": [int(v) for v in attacked],
                    "output": "ALERT" if output == ALERT else int(output), **(extra or {})}


def attacker_symbols(q: int, no_vote: bool = False) -> list[int]:
    """What a mask the attacker controls may output: any of ``q`` labels, and ``NO_VOTE`` (a
    prediction with non-finite logits, T10) when ``no_vote``."""
    return list(range(q)) + ([NO_VOTE] if no_vote else [])


def _attacked_patterns(cover_row: np.ndarray, y: int, q: int, no_vote: bool = False) -> np.ndarray:
    free = np.flatnonzero(~cover_row)
    symbols = attacker_symbols(q, no_vote)
    pats = np.full((len(symbols) ** len(free), len(cover_row)), y, dtype=np.int64)
    if len(free):
        pats[:, free] = np.array(list(itertools.product(symbols, repeat=len(free))))
    return pats


def _recovery_pair_predictor(first, chosen, forced, y, q):
    """Attacker's answers for the second round: accept ``chosen[b]``, reject every other disagreer.

    A forced pair (its union hides the patch) answers ``y``. A free pair holding the chosen mask
    answers the chosen mask's label; any other free pair answers a label differing from both masks'
    labels, so each pair gets one answer whichever of its masks asks.
    """
    def predict(b, pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        li, lj = first[b, i], first[b, j]
        other = np.array([min({0, 1, 2} - {u, v}) for u, v in zip(li, lj)])
        hit = (i == chosen[b]) | (j == chosen[b])
        ans = np.where(hit, first[b, chosen[b]] if chosen[b] >= 0 else 0, other)
        return np.where(forced[i, j], y, ans)
    return predict


def check(maskset: MaskSet, patch, mode: str, alphabet: int = 3, k: int | None = None,
          geometry: str = "", no_vote: bool = False) -> CheckResult:
    """Enumerate every attack on every certified clean image of a small geometry.

    Parameters
    ----------
    maskset : MaskSet
        Small (``n`` up to about 8 for one-round modes, 5 for ``recovery``).
    patch : (ph, pw)
    mode : str
    alphabet : int
        Size ``q >= 3`` of the label alphabet the attacker draws from.
    k : int, optional
        The multiplicity the mode is told (default: the set's own).
    no_vote : bool
        Let the attacker's masks also output ``NO_VOTE`` (T10).
    """
    if mode not in MODES:
        raise ValueError(mode)
    if alphabet < 3:
        raise ValueError("alphabet must be >= 3 so that a pair can answer neither mask's label")
    result = CheckResult(mode, geometry or f"{maskset.image_size} patch {tuple(patch)} n={len(maskset)}",
                         alphabet)
    cov = covers(maskset, patch)
    pcov = pair_covers(maskset, patch) if mode == "recovery" else None
    seen = set()
    for position in itertools.product(*(range(P) for P in cov.shape[:-1])):
        key = cov[position].tobytes() + (pcov[position].tobytes() if pcov is not None else b"")
        if key in seen:
            continue
        seen.add(key)
        for y in range(alphabet):
            pats = _attacked_patterns(cov[position], y, alphabet, no_vote)
            if mode != "recovery":
                outs = defend(pats, maskset, mode, patch=patch, k=k).output
                extra = [None] * len(pats)
            else:
                n = len(maskset)
                chosen = np.repeat(np.arange(-1, n), len(pats))
                first = np.tile(pats, (n + 1, 1))
                predictor = _recovery_pair_predictor(first, chosen, pcov[position], y, alphabet)
                outs = defend(first, maskset, mode, patch=patch, k=k, pair_predictor=predictor).output
                pats = first
                extra = [{"attacker_accepts_mask": int(c)} for c in chosen]
            result.patterns += len(pats)
            for p, o, e in zip(pats, outs, extra):
                if o != y:
                    result.record(y, position, p, int(o), e)
    return result


def recovery_outcomes_bruteforce(maskset: MaskSet, patch, position, y: int, alphabet: int = 3,
                                 no_vote: bool = False):
    """Every ``(one-mask pattern, output)`` of ``recovery`` over ALL free pair tables (tiny sets)."""
    cov = covers(maskset, patch)[position]
    forced = pair_covers(maskset, patch)[position]
    n = len(maskset)
    free_pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if not forced[i, j]]
    outcomes = set()
    for pat in _attacked_patterns(cov, y, alphabet, no_vote):
        for values in itertools.product(attacker_symbols(alphabet, no_vote), repeat=len(free_pairs)):
            table = np.full((n, n), y, dtype=np.int64)
            for (i, j), v in zip(free_pairs, values):
                table[i, j] = table[j, i] = v
            out = defend(pat[None], maskset, "recovery", patch=patch,
                         pair_predictor=lambda b, pairs, t=table: t[pairs[:, 0], pairs[:, 1]]).output[0]
            outcomes.add((tuple(int(v) for v in pat), int(out)))
    return outcomes


def recovery_outcomes_abstract(maskset: MaskSet, patch, position, y: int, alphabet: int = 3,
                               no_vote: bool = False):
    """The same outcome set through the checker's chosen-disagreer abstraction."""
    cov = covers(maskset, patch)[position]
    forced = pair_covers(maskset, patch)[position]
    pats = _attacked_patterns(cov, y, alphabet, no_vote)
    n = len(maskset)
    chosen = np.repeat(np.arange(-1, n), len(pats))
    first = np.tile(pats, (n + 1, 1))
    outs = defend(first, maskset, "recovery", patch=patch,
                  pair_predictor=_recovery_pair_predictor(first, chosen, forced, y, alphabet)).output
    return {(tuple(int(v) for v in p), int(o)) for p, o in zip(first, outs)}


def disjoint_covering_sets(maskset: MaskSet, patch) -> bool:
    """True when two patch positions have disjoint covering sets (the hypothesis of T9)."""
    rows = covers(maskset, patch).reshape(-1, len(maskset)).astype(np.int64)
    return bool(((rows @ rows.T) == 0).any())


def exhaustive_mode(mode: str, guarantee: str, alphabet: int = 3, max_masks: int | None = None,
                    no_vote: bool = False) -> int:
    """Check ``guarantee`` for ``mode`` on every small geometry; returns the patterns enumerated."""
    checked = 0
    for name, ms, patch in small_geometries():
        if max_masks is not None and len(ms) > max_masks:
            continue
        result = check(ms, patch, mode, alphabet, geometry=name, no_vote=no_vote)
        assert result.held[guarantee], (name, result.counterexamples)
        checked += result.patterns
    return checked


def table(alphabet: int = 3, recovery_max_masks: int = 5) -> list[CheckResult]:
    results = []
    for name, ms, patch in small_geometries():
        for mode in MODES:
            if mode == "recovery" and len(ms) > recovery_max_masks:
                continue
            results.append(check(ms, patch, mode, alphabet, geometry=name))
    return results


def main() -> None:
    results = table()
    print(f"{'geometry':38s} {'mode':19s} {'claimed':15s} {'kept':15s} {'patterns':>9s}  verdict")
    for r in results:
        claimed = "label" if r.mode == "paper" else GUARANTEES[r.mode]
        verdict = "proven" if r.held[claimed] else "COUNTEREXAMPLE"
        print(f"{r.geometry:38s} {r.mode:19s} {claimed:15s} {r.kept:15s} {r.patterns:9d}  {verdict}")
    for r in results:
        if r.mode == "paper" and not r.held["label"]:
            print(f"\npaper counterexample on {r.geometry}: {r.counterexamples['label']}")
            break
    from . import exact  # every clean table, not only unanimous ones (T11-T13)
    print("\nEvery clean table over 3 labels: certified => robust ('unsound' must be 0); 'missed' counts "
          "the robust tables the certificate does not certify")
    exact.main()


if __name__ == "__main__":
    main()
