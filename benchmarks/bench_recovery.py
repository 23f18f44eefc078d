"""Recovery's certificates at 16, 36 and 96 masks: the hitting set (T11) against all pairs (T8).

Run: ``python -m benchmarks.bench_recovery [--images 40] [--device cuda]``. On the same images, model
and mask set, in one run, it measures for each certificate the pair passes per image, the wall time
per image and the certified count; the hitting set is also run with a pair predictor that answers one
image per call (no ``many``), which shows what batching the second rounds across images buys.
Ratios are the figures to read; seconds on a shared machine are noise.
"""
from __future__ import annotations

import argparse
import json
import time

from certmask_backends.pytorch import TorchBackend
from certmask_backends.pytorch.models import load_model

from certmask_core import PatchThreat, certify, make_maskset
from certmask_core.run.experiment import load_dataset

SETS = ((1, 4), (4, 3), (6, 4))
"""(k, masks per axis) of the replicated sets: 16, 36 and 96 masks for a 3x3 patch on 28x28."""


class _Counting:
    """The backend's pair predictor, counting calls; without ``many`` when not ``batched``, so that the
    core must ask image by image."""

    def __init__(self, predictor, batched: bool):
        self.predictor, self.calls = predictor, 0
        if batched:
            self.many = self._many

    def __call__(self, index, pairs):
        self.calls += 1
        return self.predictor(index, pairs)

    def _many(self, images, pairs):
        self.calls += 1
        return self.predictor.many(images, pairs)


def measure(backend, model, images, labels, k: int, per_axis: int, patch: int = 3) -> dict:
    ms = make_maskset(PatchThreat(images.shape[2:], patch), k, "replicated", masks_per_axis=per_axis)
    first = backend.masked_predictions(model, images, ms, return_logits=True)
    n, rows = len(ms), {}
    for name, certificate, batched in (("hitting_set", "hitting_set", True),
                                       ("hitting_set, one image per call", "hitting_set", False),
                                       ("all_pairs", "all_pairs", True)):
        predictor = _Counting(backend.pair_predictor(model, images, ms, return_logits=True), batched)
        start = time.perf_counter()
        report = certify(first, labels, ms, "recovery", k=k, pair_predictor=predictor,
                         recovery_certificate=certificate, pair_chunk=backend.batch_size)
        seconds = time.perf_counter() - start
        rows[name] = {"certified": int(report.certified.sum()),
                      "pair_passes_per_image": float((report.certificate_passes - n).mean()),
                      "seconds_per_image": seconds / len(images), "backend_calls": predictor.calls}
    hit, every = rows["hitting_set"], rows["all_pairs"]
    return {"masks": n, "k": k, "images": len(images), "all_pairs_count": n * (n - 1) // 2, **rows,
            "passes_ratio_all_pairs_over_hitting_set": every["pair_passes_per_image"]
            / max(hit["pair_passes_per_image"], 1e-9),
            "time_ratio_all_pairs_over_hitting_set": every["seconds_per_image"] / hit["seconds_per_image"],
            "time_ratio_one_image_per_call_over_batched":
                rows["hitting_set, one image per call"]["seconds_per_image"] / hit["seconds_per_image"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="bundled-cutout",
                        help="model spec (docs/benchmarks.md records bundled-cutout, the first release's)")
    args = parser.parse_args(argv)
    images, labels, _ = load_dataset("fashion-mnist-subset", limit=args.images)
    backend = TorchBackend(device=args.device)
    model = load_model(args.model).to(args.device)
    results = [measure(backend, model, images, labels, k, per_axis) for k, per_axis in SETS]
    for r in results:
        print(json.dumps(r))
    print("\n| masks (k) | all-pairs count | certified: hitting set / all pairs | pair passes per image: "
          "hitting set / all pairs (ratio) | wall time: all pairs / hitting set | "
          "wall time: one image per call / batched |")
    print("|---|---|---|---|---|---|")
    for r in results:
        hit, every = r["hitting_set"], r["all_pairs"]
        print(f"| {r['masks']} ({r['k']}) | {r['all_pairs_count']} | "
              f"{hit['certified']} / {every['certified']} of {r['images']} | "
              f"{hit['pair_passes_per_image']:.0f} / {every['pair_passes_per_image']:.0f} "
              f"({r['passes_ratio_all_pairs_over_hitting_set']:.2f}x) | "
              f"{r['time_ratio_all_pairs_over_hitting_set']:.2f}x | "
              f"{r['time_ratio_one_image_per_call_over_batched']:.2f}x "
              f"({hit['backend_calls']} vs {r['hitting_set, one image per call']['backend_calls']} calls) |")
    return results


if __name__ == "__main__":
    main()
