"""Recovery's certificates at 16, 36 and 96 masks: the hitting set (T11) against all pairs (T8).

Run: ``python -m benchmarks.bench_recovery [--images 40] [--device cuda] [--ceiling-images 1000]``.

*Certificates* (bundled model): on the same images, model and mask set, in one run, it measures for
each certificate the pair passes per image, the wall time per image and the certified count; the
hitting set is also run with a pair predictor that answers one image per call (no ``many``), which
shows what batching the second rounds across images buys.

*Host ceiling* (:func:`host_ceiling`): a model that costs almost nothing (4 x 4 average pooling and one
linear layer) shows how fast the host feeds recovery's second round. Its model-alone pass rate is
the backend's ``masked_predictions`` over the images; the recovery pass rate is the pairs evaluated
per second of ``certify(..., "recovery")`` run as the run layer runs it (batches of 100 images, one
:class:`~certmask_core.sizes.PairCache` per batch, ``pair_chunk`` = the backend's batch size), for
both certificates, with the per-image implementations of :mod:`certmask_core.reference` (before) and the
array ones of :mod:`certmask_core.double_masking` (after). The two must certify the same images with
the same passes (asserted).

Ratios are the figures to read; seconds on a shared machine are noise.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import torch
from certmask_backends.pytorch import TorchBackend
from certmask_backends.pytorch.models import load_model

from certmask_core import PatchThreat, certify, double_masking, make_maskset, reference
from certmask_core.run.datasets import load_dataset
from certmask_core.sizes import PairCache

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


RUN_LAYER_IMAGE_BATCH = 100
"""Images per ``certify`` call in the run layer (``RunConfig.image_batch``'s default)."""


def cheap_model(images: np.ndarray, labels: np.ndarray, classes: int = 10) -> torch.nn.Module:
    """4 x 4 average pooling and one linear layer, fitted to ``images`` by ridge least squares (no
    training loop, deterministic): it costs almost nothing and is right often enough that certificates
    have real work (good masks to find, pairs to check)."""
    pool = torch.nn.AvgPool2d(4)
    with torch.no_grad():
        features = pool(torch.as_tensor(images)).flatten(1).double()
    features = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
    target = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), classes).double()
    ridge = 1e-2 * torch.eye(features.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(features.T @ features + ridge, features.T @ target)
    linear = torch.nn.Linear(features.shape[1] - 1, classes)
    with torch.no_grad():
        linear.weight.copy_(weights[:-1].T)
        linear.bias.copy_(weights[-1])
    return torch.nn.Sequential(pool, torch.nn.Flatten(), linear).eval()


@contextlib.contextmanager
def implementation(name: str):
    """Run ``certify``'s recovery with the array code (``"after"``) or the per-image twins of
    :mod:`certmask_core.reference` (``"before"``); yields the PairCache class to use."""
    if name == "after":
        yield PairCache
        return
    saved = {key: getattr(double_masking, key) for key in
             ("hitting_set_certificate", "all_pairs_certificate", "patchcleanser_defence")}
    double_masking.hitting_set_certificate = reference.hitting_set_certificate_reference
    double_masking.all_pairs_certificate = reference.all_pairs_certificate_reference
    double_masking.patchcleanser_defence = reference.patchcleanser_defence_reference
    try:
        yield reference.PairCacheReference
    finally:
        for key, value in saved.items():
            setattr(double_masking, key, value)


def _model_alone_rate(backend, model, images, ms, repeats: int = 2) -> float:
    """One-mask passes per second of ``masked_predictions`` over ``images`` (the best of ``repeats``)."""
    backend.masked_predictions(model, images[:8], ms)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend.masked_predictions(model, images, ms, return_logits=True)
        best = min(best, time.perf_counter() - start)
    return len(images) * len(ms) / best


def _recovery_run(backend, model, images, labels, first, ms, k: int, certificate: str, cache_class,
                  image_batch: int) -> tuple[float, int, np.ndarray]:
    """(seconds, pairs evaluated, certified) of recovery over ``images`` as the run layer runs it."""
    passes, certified, seconds = 0, [], 0.0
    for start in range(0, len(images), image_batch):
        x, y = images[start:start + image_batch], labels[start:start + image_batch]
        t0 = time.perf_counter()
        cache = cache_class(backend.pair_predictor(model, x, ms, return_logits=True), len(x))
        report = certify(first[start:start + image_batch], y, ms, "recovery", k=k,
                         pair_predictor=cache.view(np.arange(len(x))), recovery_certificate=certificate,
                         pair_chunk=backend.batch_size)
        seconds += time.perf_counter() - t0
        passes += int(cache.evaluated.sum())
        certified.append(report.certified)
    return seconds, passes, np.concatenate(certified)


def host_ceiling(backend, model, images, labels, k: int, per_axis: int, patch: int = 3,
                 image_batch: int = RUN_LAYER_IMAGE_BATCH, repeats: int = 2) -> dict:
    """Recovery's pair pass rate against the model-alone pass rate, before and after, one mask set.

    Each (implementation, certificate) and the model alone run ``repeats`` times, interleaved, and
    each keeps its fastest run: on a shared machine the slower runs measure the neighbours.
    """
    ms = make_maskset(PatchThreat(images.shape[2:], patch), k, "replicated", masks_per_axis=per_axis)
    first = backend.masked_predictions(model, images, ms, return_logits=True)
    row = {"masks": len(ms), "k": k, "images": len(images), "image_batch": image_batch,
           "batch_size": backend.batch_size, "repeats": repeats}
    for name in ("before", "after"):
        with implementation(name):  # warm-up: numba compiles on first use
            certify(first[:4], labels[:4], ms, "recovery", k=k,
                    pair_predictor=backend.pair_predictor(model, images[:4], ms, return_logits=True))
    alone = 0.0
    for _ in range(repeats):
        alone = max(alone, _model_alone_rate(backend, model, images, ms))
        for name in ("before", "after"):
            with implementation(name) as cache_class:
                for certificate in ("hitting_set", "all_pairs"):
                    seconds, passes, certified = _recovery_run(backend, model, images, labels, first, ms, k,
                                                               certificate, cache_class, image_batch)
                    key = f"{name} {certificate}"
                    if key in row:
                        assert row[key]["pair_passes"] == passes
                        assert (row[key]["certified"] == certified).all()
                        if row[key]["seconds"] <= seconds:
                            continue
                    row[key] = {"pair_passes": passes, "seconds": seconds, "passes_per_s": passes / seconds,
                                "certified": certified}
    row["model_alone_passes_per_s"] = alone
    for key in [key for key in row if isinstance(row[key], dict)]:
        row[key]["ratio_to_model_alone"] = row[key]["passes_per_s"] / alone
    for certificate in ("hitting_set", "all_pairs"):
        before, after = row[f"before {certificate}"], row[f"after {certificate}"]
        assert (before["certified"] == after["certified"]).all()
        assert before["pair_passes"] == after["pair_passes"]
    for name in ("before", "after"):
        hit, every = row[f"{name} hitting_set"], row[f"{name} all_pairs"]
        row[f"{name}: wall time all pairs / hitting set"] = every["seconds"] / hit["seconds"]
        row[f"{name}: pair passes all pairs / hitting set"] = (every["pair_passes"]
                                                               / max(hit["pair_passes"], 1))
    for key in [key for key in row if isinstance(row[key], dict)]:
        row[key]["certified"] = int(row[key]["certified"].sum())
    return row


def ceiling_table(rows: list[dict]) -> str:
    lines = ["| masks (k) | model alone, passes/s | certificate | pair passes | certified | "
             "before: passes/s (ratio to model) | after: passes/s (ratio to model) | after / before |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for certificate in ("hitting_set", "all_pairs"):
            before, after = r[f"before {certificate}"], r[f"after {certificate}"]
            lines.append(f"| {r['masks']} ({r['k']}) | {r['model_alone_passes_per_s']:,.0f} | "
                         f"{certificate} | "
                         f"{after['pair_passes']:,} | {after['certified']} of {r['images']} | "
                         f"{before['passes_per_s']:,.0f} ({before['ratio_to_model_alone']:.1%}) | "
                         f"{after['passes_per_s']:,.0f} ({after['ratio_to_model_alone']:.1%}) | "
                         f"{after['passes_per_s'] / before['passes_per_s']:.2f}x |")
    lines += ["", "| masks (k) | pair passes: all pairs / hitting set | wall time, before: all pairs / "
              "hitting set | wall time, after: all pairs / hitting set |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['masks']} ({r['k']}) | {r['after: pair passes all pairs / hitting set']:.2f}x | "
                     f"{r['before: wall time all pairs / hitting set']:.2f}x | "
                     f"{r['after: wall time all pairs / hitting set']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="images of the certificates' comparison "
                        "(0 skips it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="bundled-cutout",
                        help="model spec (docs/benchmarks.md records bundled-cutout, the first release's)")
    parser.add_argument("--ceiling-images", type=int, default=1000,
                        help="images of the host-ceiling measurement (the bundled subset has 1000; "
                        "0 skips it)")
    parser.add_argument("--ceiling-batch-size", type=int, default=4096,
                        help="the backend's batch size (and pair_chunk) in the host-ceiling measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads in the host-ceiling measurement")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each host-ceiling case (the fastest counts)")
    args = parser.parse_args(argv)
    results = []
    if args.images:
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
                  f"({hit['backend_calls']} vs "
                  f"{r['hitting_set, one image per call']['backend_calls']} calls) |")
    if args.ceiling_images:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            images, labels, _ = load_dataset("fashion-mnist-subset", limit=args.ceiling_images)
            backend = TorchBackend(device=args.device, batch_size=args.ceiling_batch_size)
            model = cheap_model(images, labels).to(args.device)
            ceiling = [host_ceiling(backend, model, images, labels, k, per_axis, repeats=args.repeats)
                       for k, per_axis in SETS]
        finally:
            torch.set_num_threads(threads)
        for r in ceiling:
            print(json.dumps(r))
        print(f"\nHost ceiling ({args.threads} CPU thread(s), batch size {args.ceiling_batch_size}, "
              f"{RUN_LAYER_IMAGE_BATCH} images per certify call, fastest of {args.repeats}):\n")
        print(ceiling_table(ceiling))
        results += ceiling
    return results


if __name__ == "__main__":
    main()
