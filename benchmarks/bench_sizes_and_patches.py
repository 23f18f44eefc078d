"""Unknown size and several patches: what one run saves, and the two-patch verifier's paths.

* ``sizes``: recovery certified for every square size 1..5 from one run (one pair cache shared by the
  sizes, largest first, closed under inclusion) against the naive way (one :func:`certify` per size,
  each asking its own certificate's pairs). Pair passes of the certificates and wall time of both,
  measured in one run; the certified sets must be equal.
* ``verifier``: the two-patch coverage of all pairs of a set: the closed form
  (:func:`all_pairs_coverage_min`), the general path (intersections of minimal rows) and the brute
  force over every pair of positions; the three must agree.

Run: ``python -m benchmarks.bench_sizes_and_patches [--images N]``. Ratios come from one run on one machine.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from certmask_core import PatchThreat, all_pairs_groups, certify, certify_sizes, make_maskset
from certmask_core.multipatch import all_pairs_coverage_min, tuple_coverage_extremes
from certmask_core.reference import tuple_coverage_bruteforce


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class _Counted:
    """A pair predictor that counts the pairs it evaluates."""

    def __init__(self, predictor):
        self.predictor, self.pairs = predictor, 0

    def __call__(self, index, pairs):
        self.pairs += len(pairs)
        return self.predictor(index, pairs)

    def many(self, images, pairs):
        self.pairs += len(pairs)
        return self.predictor.many(images, pairs)


def sizes(backend, model, images, labels, sides=(1, 2, 3, 4, 5), k: int = 2) -> dict:
    """One run over every size against one certify per size (recovery, replicated k-fold, 5x5 plan)."""
    ms = make_maskset(PatchThreat(images.shape[2:], max(sides)), k, "replicated", masks_per_axis=4)
    first = backend.masked_predictions(model, images, ms, return_logits=True)
    shared = _Counted(backend.pair_predictor(model, images, ms, return_logits=True))
    t_one, report = _timed(lambda: certify_sizes(first, labels, ms, sides, "recovery", pair_predictor=shared))
    naive = backend.pair_predictor(model, images, ms, return_logits=True)
    reports = []

    def per_size():
        reports.extend(certify(first, labels, ms, "recovery", patch=side, k=1, pair_predictor=naive)
                       for side in sides)

    t_naive, _ = _timed(per_size)
    direct = np.stack([r.certified for r in reports], 1)
    naive_pairs = int(sum(r.certificate_passes.sum() - len(ms) * len(images) for r in reports))
    closed = np.stack([direct[:, i:].any(1) for i in range(len(sides))], 1)  # squares: larger = later
    assert (closed == report.certified).all(), "one run and one certify per size disagree"
    return {"images": len(images), "masks": len(ms), "sizes": list(sides),
            "certified_accuracy": report.certified_accuracy().round(4).tolist(),
            "pair_passes_one_run": shared.pairs, "pair_passes_per_size": naive_pairs,
            "pair_pass_ratio": naive_pairs / max(shared.pairs, 1),
            # the per-size run also runs the defence (its second round), which one run skips
            "seconds_one_run": t_one, "seconds_per_size_with_defence": t_naive, "time_ratio": t_naive / t_one}


def verifier(cases=((12, 2, 3), (16, 3, 4), (20, 3, 4), (64, 5, 8), (128, 9, 12))) -> list[dict]:
    """Closed form vs general path vs brute force (images up to 20x20) for all pairs of a 1-fold
    set, two patches."""
    all_pairs_coverage_min(make_maskset(PatchThreat(6, 2), masks_per_axis=2), 2)  # compile numba first
    rows = []
    for side, patch, per_axis in cases:
        def fresh(side=side, patch=patch, per_axis=per_axis):  # nothing cached from another path
            return make_maskset(PatchThreat(side, patch), 1, "patchcleanser", masks_per_axis=per_axis)

        ms, groups, twin = fresh(), all_pairs_groups(fresh()), all_pairs_groups(fresh())
        t_fast, fast = _timed(lambda ms=ms, p=patch: all_pairs_coverage_min(ms, p))
        t_general, (general, _) = _timed(lambda g=groups, p=patch: tuple_coverage_extremes(g, p, 2))
        t_brute, brute = (_timed(lambda g=twin, p=patch: tuple_coverage_bruteforce(g, p, 2).min())
                          if side <= 20 else (None, general))
        assert fast == general == brute, (side, fast, general, brute)
        rows.append({"image": side, "patch": patch, "masks": len(ms), "groups": len(groups),
                     "min_coverage": int(fast), "closed_form_s": t_fast, "general_s": t_general,
                     "bruteforce_s": t_brute, "general_over_closed_form": t_general / t_fast,
                     "bruteforce_over_general": t_brute / t_general if t_brute else None})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="bundled-subset images for the sizes run")
    args = parser.parse_args(argv)
    from certmask_backends.pytorch import TorchBackend

    from certmask_core.run.datasets import load_dataset
    images, labels, _ = load_dataset("fashion-mnist-subset", limit=args.images)
    backend = TorchBackend()
    print(json.dumps({"sizes": sizes(backend, backend.load_model("bundled"), images, labels),
                      "verifier": verifier()}, indent=1))


if __name__ == "__main__":
    main()
