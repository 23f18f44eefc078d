"""The ``certmask`` command line: plan, coverage, certify, attack."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .certification import DEFAULT_MARGIN_TOLERANCE, MODES, RECOVERY_CERTIFICATES
from .constructions import make_maskset, plan_summary
from .coverage import cell_grid, coverage_extremes
from .errors import CertMaskError
from .geometry import STRATEGIES, MaskSet, PatchThreat


def _pair_arg(values, name):
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise CertMaskError(f"{name} takes one or two integers, got {values}")
    return (values[0], values[-1])


def cmd_plan(args) -> int:
    threat = PatchThreat(tuple(args.image), tuple(args.patch))
    ms = make_maskset(threat, args.k, args.strategy, mask_size=_pair_arg(args.mask, "--mask"),
                      masks_per_axis=_pair_arg(args.masks_per_axis, "--masks-per-axis"))
    summary = plan_summary(ms)
    if args.plot:
        from .plots import plan_figure
        plan_figure(ms, threat, args.plot)
    if args.json:
        print(json.dumps({**ms.to_dict(), "summary": summary}))
        return 0
    print(f"{summary['strategy']} k={summary['k']} on {threat.image_size[0]}x{threat.image_size[1]}, "
          f"patch {threat.patch_size[0]}x{threat.patch_size[1]}, mask {summary['mask_size'][0]}x"
          f"{summary['mask_size'][1]}")
    print(f"masks {summary['num_masks']}  lower bound {summary['lower_bound']}  gap {summary['gap']}  "
          f"coverage min {summary['min_coverage']} max {summary['max_coverage']}  "
          f"distinct {summary['distinct']}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _read_maskset(path_text: str) -> MaskSet:
    path = Path(path_text)
    if not path.is_file():
        raise CertMaskError(f"mask-set file not found: {str(path)!r}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CertMaskError(f"cannot read the mask-set file {str(path)!r}: {err}") from None
    return MaskSet.from_json(text)


def cmd_coverage(args) -> int:
    ms = _read_maskset(args.masks)
    k = args.k if args.k is not None else 1
    if k < 1:
        raise CertMaskError(f"--k must be >= 1, got {k}")
    grid = cell_grid(ms, tuple(args.patch))
    low, high, _ = coverage_extremes(ms, grid.threat)
    counts = grid.counts()
    P = grid.threat.num_positions
    # positions per cell: from each cut to the next (the last cell runs to the end of the axis)
    extent = [np.diff(np.append(cuts, P[axis])) for axis, cuts in enumerate((grid.rows, grid.cols))]
    below, first = 0, []
    for start in range(0, len(counts), 1024):  # row blocks: the cell grid can hold 2**28 cells
        block = counts[start:start + 1024] < k
        below += int(extent[0][start:start + 1024] @ (block @ extent[1]))
        if len(first) < 20:
            rows, cols = (index[:20 - len(first)] for index in np.nonzero(block))
            first += [[int(grid.rows[start + i]), int(grid.cols[j])] for i, j in zip(rows, cols)]
    report = {"num_masks": len(ms), "positions": list(P), "min_coverage": low, "max_coverage": high,
              "k": k, "k_fold": low >= k, "distinct": ms.is_distinct(), "positions_below_k": below,
              "first_positions_below_k": first}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{len(ms)} masks, {P[0]}x{P[1]} patch positions: coverage min {low}, max {high}; "
              f"distinct {report['distinct']}")
        verdict = "is" if report["k_fold"] else "is NOT"
        print(f"the set {verdict} {k}-fold" + ("" if report["k_fold"] else
              f": {below} positions below {k}, first (a, b) of each region: {first[:10]}"))
    return 0 if report["k_fold"] else 1


def _backend(args):
    from .registry import get_backend
    autocast = {"none": None, "bf16": "bfloat16", "fp16": "float16"}[args.autocast]
    options = {"device": args.device, "batch_size": args.batch_size, "fill": args.fill,
               "memory_budget_mb": args.memory_budget_mb, "channels_last": args.channels_last}
    if autocast:
        import importlib
        options["autocast_dtype"] = getattr(importlib.import_module("torch"), autocast)
    return get_backend(args.backend, **options)


def cmd_certify(args) -> int:
    from .experiment import RunConfig, load_dataset, results_table, run_certification, write_outputs
    backend = _backend(args)
    images, labels, source = load_dataset(args.data, args.data_root, args.limit)
    model = backend.load_model(args.model)
    config = RunConfig(tuple(args.patch), args.k, args.strategy, args.mode,
                       masks_per_axis=_pair_arg(args.masks_per_axis, "--masks-per-axis"),
                       mask_size=_pair_arg(args.mask, "--mask"),
                       recovery_certificate=args.recovery_certificate,
                       margin_tolerance=(args.margin_tolerance if args.margin_tolerance is not None
                                         else getattr(backend, "margin_tolerance", DEFAULT_MARGIN_TOLERANCE)))
    rank, world, gather, close = (0, 1, None, lambda: None)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
        rank, world, gather, close = backend.init_distributed()
    results = run_certification(backend, model, images, labels, config, rank, world, gather,
                                show_progress=None if not args.quiet else False)
    close()  # on an error the rank exits instead, and torchrun stops the others
    if results is None:
        return 0
    results.update({"data": args.data, "data_source": source, "model": args.model,
                    "device": args.device, "backend": args.backend})
    out = write_outputs(results, args.out, images, plots=not args.no_plots)
    print(f"data: {source}")
    print(results_table(results), end="")
    print(f"wrote {out}/results.json, results.md" + ("" if args.no_plots else ", accuracy_vs_k.png, "
                                                     "examples.png"))
    return 0


def cmd_attack(args) -> int:
    from .experiment import load_dataset
    backend = _backend(args)
    images, labels, source = load_dataset(args.data, args.data_root, args.limit)
    model = backend.load_model(args.model)
    results = backend.attack(model, images, labels, tuple(args.patch), args.k[0], args.strategy[0],
                             args.mode, steps=args.steps, stride=args.stride,
                             masks_per_axis=_pair_arg(args.masks_per_axis, "--masks-per-axis"),
                             mask_size=_pair_arg(args.mask, "--mask"), out_dir=args.out,
                             show_progress=None if not args.quiet else False,
                             attack_all=args.attack_all)
    results.update({"data_source": source, "model": args.model})
    print(f"data: {source}")
    for key in ("mode", "guarantee", "images", "num_masks", "clean_accuracy", "certified_accuracy",
                "claimed_certified_accuracy_UNSOUND", "empirical_robust_accuracy", "certified_broken",
                "claim_broken_UNSOUND",
                "undefended_clean_accuracy", "undefended_robust_accuracy"):
        if key in results:
            print(f"{key:28s} {results[key]}")
    print(f"wrote {args.out}/attack.json, attack.png")
    return 0


def _add_model_args(p):
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "fashion-mnist-subset"],
                   help="fashion-mnist: the Debian package's 10k test set, else the bundled subset")
    p.add_argument("--data-root", help="folder with the idx files (default /usr/share/datasets/...)")
    p.add_argument("--model", default="bundled", help="'bundled' or a state-dict path")
    p.add_argument("--patch", type=int, nargs=2, required=True, metavar=("PH", "PW"))
    p.add_argument("--k", type=int, nargs="+", default=[1])
    p.add_argument("--strategy", nargs="+", default=["replicated"], choices=STRATEGIES)
    p.add_argument("--masks-per-axis", type=int, nargs="+", default=[4], metavar="N")
    p.add_argument("--mask", type=int, nargs=2, metavar=("MH", "MW"))
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=512, help="masked images per forward pass")
    p.add_argument("--memory-budget-mb", type=float)
    p.add_argument("--fill", type=float, default=0.0, help="mask fill in pixel space")
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line on stderr and exit status 2, like every other bad input."""

    def error(self, message):
        raise CertMaskError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certmask", description="Certified defence against "
                     "adversarial patches by k-fold mask coverage.")
    parser.add_argument("--version", action="version", version=f"certmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="build a mask set; print its count, lower bound and gap")
    p.add_argument("--image", type=int, nargs=2, required=True, metavar=("H", "W"))
    p.add_argument("--patch", type=int, nargs=2, required=True, metavar=("PH", "PW"))
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--strategy", default="patchcleanser", choices=STRATEGIES)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--mask", type=int, nargs=2, metavar=("MH", "MW"))
    group.add_argument("--masks-per-axis", type=int, nargs="+", metavar="N")
    p.add_argument("--json", action="store_true", help="print the mask set as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the layout and coverage heatmap")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("coverage", help="verify the coverage of a mask set read from JSON")
    p.add_argument("masks", metavar="MASKS.json")
    p.add_argument("--patch", type=int, nargs=2, required=True, metavar=("PH", "PW"))
    p.add_argument("--k", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser("certify", help="certify a model on a dataset (needs a backend, e.g. torch)")
    _add_model_args(p)
    p.add_argument("--mode", nargs="+", default=["detection"], choices=MODES)
    p.add_argument("--margin-tolerance", type=float, metavar="LOGITS",
                   help="refuse a certificate whose closest prediction has a top-1 minus top-2 logit "
                        "margin at or below this (default: the backend's, measured for its device and "
                        f"precision; torch: {DEFAULT_MARGIN_TOLERANCE} on CPU, 0.02 on CUDA, 0.25 under "
                        "--autocast; docs/theory.md, Reproducibility)")
    p.add_argument("--recovery-certificate", default="hitting_set", choices=RECOVERY_CERTIFICATES,
                   help="recovery's certificate: hitting_set (T11, default: the good masks hit every "
                        "minimal covering set) or all_pairs (T8: every one- and two-mask prediction "
                        "is right; for comparison)")
    p.add_argument("--out", default="results/certify")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("attack", help="adaptive patch attack on the defended model")
    _add_model_args(p)
    p.add_argument("--mode", default="detection", choices=MODES)
    p.add_argument("--steps", type=int, default=40, help="PGD steps per patch position")
    p.add_argument("--stride", type=int, default=3, help="position search stride before refinement")
    p.add_argument("--attack-all", action="store_true",
                   help="attack uncertified images too (empirical robust accuracy), not only certified ones")
    p.add_argument("--out", default="results/attack")
    p.set_defaults(func=cmd_attack)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (CertMaskError, OSError) as err:
        print(f"certmask: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
