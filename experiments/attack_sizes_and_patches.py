"""Attacks beyond the planned patch: the two-patch attack and the misestimated patch size (bundled model).

Usage: python experiments/attack_sizes_and_patches.py two|size --mode MODE --limit N --out DIR [options]
Writes DIR/attack.json (run_attack's result plus data source, model and runtime) and DIR/attack.png.
``certmask attack --patches 2`` / ``--true-patch`` use the default search budget; this script exposes
the budgets (pair budget, refinement, group sample) that experiments/attack_sizes_and_patches.sh sets.
"""
from __future__ import annotations

import argparse
import time

from certmask_backends.pytorch import TorchBackend
from certmask_backends.pytorch.attack import run_attack_with_examples

from certmask_core.run.datasets import load_data
from certmask_core.run.outputs import write_attack_outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("two", "size"), help="two patches, or a larger true patch size")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--model", default="bundled")
    p.add_argument("--mode", default="detection")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--patch", type=int, default=3, help="planned (square) patch side")
    p.add_argument("--true-patch", type=int, help="attacker's (square) patch side, part 'size'")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--strategy", default="replicated")
    p.add_argument("--masks-per-axis", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--stride", type=int, default=6)
    p.add_argument("--pair-budget", type=int, default=6)
    p.add_argument("--refine", type=int, default=1)
    p.add_argument("--group-sample", type=int, default=32)
    p.add_argument("--attack-all", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    backend = TorchBackend()
    model = backend.load_model(args.model)
    data = load_data(args.data, limit=args.limit)
    extra = ({"patches": 2, "pair_budget": args.pair_budget, "refine": args.refine,
              "group_sample": args.group_sample} if args.part == "two"
             else {"true_patch": (args.true_patch, args.true_patch)})
    start = time.perf_counter()
    outcome = run_attack_with_examples(backend, model, data.images, data.labels, (args.patch, args.patch),
                                       args.k, args.strategy, args.mode, steps=args.steps, stride=args.stride,
                                       masks_per_axis=(args.masks_per_axis, args.masks_per_axis),
                                       show_progress=False, attack_all=args.attack_all, **extra)
    result = outcome.results
    result.update(part=args.part, data_source=data.source, model=args.model,
                  runtime_s=round(time.perf_counter() - start, 1))
    write_attack_outputs(result, args.out, outcome.examples, classes=data.classes)
    keys = ("mode", "patches", "patch", "true_patch", "images", "certified_accuracy",
            "certified_planned_accuracy", "certified_true_size_accuracy", "true_size_covered",
            "empirical_robust_accuracy", "certified_broken", "attack_success_on_planned_certified",
            "undefended_robust_accuracy", "runtime_s")
    print(" ".join(f"{key}={result[key]}" for key in keys if key in result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
