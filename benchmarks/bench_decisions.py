"""The decision core at scale: large user mask sets, many images.

Run: ``python -m benchmarks.bench_decisions [--reference-max-masks N]``. Measures, in one run:

* detection and recovery decisions for 1,000 images on a 512x512 image with 2,000 random masks,
  beyond the prediction matrix itself (the coverage check included);
* the covering-set modes (``covering_consensus``, ``paper``) on a 4-per-axis grid plus random masks
  (patch 16): the bitset path of :mod:`certmask_core.coverage` against the dense reference it
  replaced (:func:`certmask_core.reference.dense_reference`: every cell's covering set as a bool row,
  an ``m x m`` int64 subset matrix, one-hot votes),
  time and peak memory of the numpy allocations (tracemalloc), and equal outputs.
"""
from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from certmask_core import MaskSet, PatchThreat, defend, make_maskset
from certmask_core.coverage import covering_set_bits, minimal_covering_set_bits
from certmask_core.reference import dense_reference


def grid_plus_random(extra: int, image: int = 512, patch: int = 16, seed: int = 0) -> MaskSet:
    """PatchCleanser's 4-per-axis grid (so the set is 1-fold) plus ``extra`` random masks."""
    threat = PatchThreat(image, patch)
    grid = make_maskset(threat, 1, "patchcleanser", masks_per_axis=4)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(patch, image // 2 + 1, (extra, 2))
    origins = np.stack([rng.integers(0, image - sizes[:, i] + 1) for i in range(2)], 1)
    return MaskSet(threat.image_size, np.concatenate([grid.origins, origins]),
                   np.concatenate([grid.sizes, sizes]), threat=threat)


def predictions(n: int, images: int = 1000, seed: int = 1) -> np.ndarray:
    """Mostly unanimous rows (label 1); a tenth with 1-3 disagreeing masks; a tenth random over 3."""
    rng = np.random.default_rng(seed)
    pred = np.ones((images, n), dtype=np.int64)
    for b in range(0, images, 10):
        pred[b, rng.choice(n, rng.integers(1, 4), replace=False)] = 2
    pred[5::10] = rng.integers(0, 3, (len(pred[5::10]), n))
    return pred


def _measure(fn):
    """Seconds and peak traced memory (MB) of ``fn()``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def one_round_and_recovery(masks: int = 2000, images: int = 1000) -> dict:
    defend(predictions(20, 4), grid_plus_random(4), "detection")  # compile the kernels once
    ms = grid_plus_random(masks - 16)
    pred = predictions(len(ms), images)
    _, detection_s, detection_mb = _measure(lambda: defend(pred, ms, "detection"))
    pair_calls = []

    def pair_predictor(b, pairs):  # an answer table in memory: only the core's own cost is timed
        pair_calls.append(len(pairs))
        return np.full(len(pairs), pred[b, pairs[0, 0]])

    _, recovery_s, recovery_mb = _measure(lambda: defend(pred, ms, "recovery", pair_predictor=pair_predictor))
    return {"image": 512, "masks": len(ms), "images": images,
            "detection_s": detection_s, "detection_peak_mb": detection_mb,
            "recovery_s": recovery_s, "recovery_peak_mb": recovery_mb,
            "recovery_pair_requests": len(pair_calls), "recovery_pairs_answered": int(sum(pair_calls))}


def covering_set_modes(extras=(200, 400), reference_max_masks: int = 216, images: int = 1000) -> list[dict]:
    rows = []
    for extra in extras:
        ms = grid_plus_random(extra)
        pred = predictions(len(ms), images)
        row = {"masks": len(ms)}
        for mode in ("covering_consensus", "paper"):
            fresh = MaskSet(ms.image_size, ms.origins, ms.sizes, threat=ms.threat)  # empty cache
            out, seconds, peak = _measure(lambda m=mode, f=fresh, p=pred: defend(p, f, m).output)
            row[mode] = {"bitset_s": seconds, "bitset_peak_mb": peak}
            if len(ms) <= reference_max_masks:
                ref, ref_s, ref_peak = _measure(lambda m=mode, s=ms, p=pred: dense_reference(p, s, 16, m))
                assert (ref == out).all(), f"{mode}: bitset path differs from the dense reference"
                row[mode].update(dense_s=ref_s, dense_peak_mb=ref_peak, speedup=ref_s / seconds,
                                 memory_ratio=ref_peak / peak)
        row["covering_sets"] = len(covering_set_bits(ms, 16))
        row["minimal_sets"] = len(minimal_covering_set_bits(ms, 16))
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-max-masks", type=int, default=216,
                        help="run the dense reference up to this many masks (416 takes minutes and GBs)")
    args = parser.parse_args(argv)
    covering_set_modes((4,), 0, 10)  # compile outside the timings
    result = {"one_round_and_recovery": one_round_and_recovery(),
              "covering_set_modes": covering_set_modes(reference_max_masks=args.reference_max_masks)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
