"""The ``certmask`` command line: the commands plan, coverage, certify, attack, tune and train, and
``main``. Their options and the helpers that read them are in :mod:`certmask_core.run.arguments`."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..certification import DEFAULT_MARGIN_TOLERANCE
from ..constructions import make_maskset, plan_summary, union_maskset
from ..coverage import cell_grid, coverage_extremes
from ..errors import CertMaskError
from ..geometry import PatchThreat
from ..multipatch import base_set
from ..planning import default_strategy, plan_layouts
from ..validation import shape_text
from . import arguments
from .arguments import (
    DEFAULT_MAX_MASK_FRACTION,
    classes_arg,
    image_size_arg,
    patch_arg,
    size_arg,
    sizes_arg,
)


def _planned_layout(args, threat):
    """``plan`` without --mask: the planner's layouts and the one to build (see the --max-* help)."""
    budget = {"max_masks": args.max_masks, "max_passes": args.max_passes}
    limits = {"max_mask_side": args.max_mask_side, "max_mask_fraction": args.max_mask_fraction, **budget}
    if all(v is None for v in limits.values()):
        limits["max_mask_fraction"] = DEFAULT_MAX_MASK_FRACTION
    layouts = plan_layouts(threat, args.k, args.strategy, passes_for=args.passes_for.replace("-", "_"),
                           shape=args.shape, **limits)
    # under a budget the smallest masks it affords; under a size limit the fewest masks
    chosen = len(layouts) - 1 if any(v is not None for v in budget.values()) else 0
    return layouts, chosen, limits


def cmd_plan(args) -> int:
    ndim = len(args.image)
    threats = [PatchThreat(tuple(args.image), size_arg(patch, "--patch", ndim)) for patch in args.patch]
    layouts, mask = None, size_arg(args.mask, "--mask", ndim)
    if args.mask is None and args.masks_per_axis is None:
        if len(threats) > 1:
            raise CertMaskError("plan with several --patch needs --mask or --masks-per-axis (the planner "
                                "sizes one patch's set)")
        layouts, chosen, limits = _planned_layout(args, threats[0])
        mask = tuple(layouts[chosen]["mask_size"])
    elif any(v is not None for v in (args.max_mask_side, args.max_mask_fraction, args.max_masks,
                                     args.max_passes)):
        raise CertMaskError("--max-* constraints choose the mask size; give them without --mask or "
                            "--masks-per-axis")
    strategy = args.strategy or default_strategy(args.k)
    parts = [make_maskset(threat, args.k, strategy, mask_size=mask,
                          masks_per_axis=size_arg(args.masks_per_axis, "--masks-per-axis", ndim))
             for threat in threats]
    summaries = [plan_summary(ms) for ms in parts]
    ms = parts[0] if len(parts) == 1 else union_maskset(parts)
    union = None
    if len(parts) > 1:  # a multi-size set: its coverage of every planned patch, verified
        coverage = [coverage_extremes(ms, t)[:2] for t in threats]
        union = {"num_masks": len(ms), "distinct": ms.is_distinct(),
                 "coverage": [{"patch": list(t.patch_size), "min_coverage": low, "max_coverage": high}
                              for t, (low, high) in zip(threats, coverage)]}
    if args.plot:
        if Path(args.plot).suffix.lower() != ".png":
            raise CertMaskError(f"--plot writes a PNG file; name it FILE.png, got {args.plot!r}")
        if ndim != 2:
            raise CertMaskError(f"--plot draws layouts of images (2 axes); this set has {ndim}")
        from .plots import plan_figure
        plan_figure(ms, ms.threat, args.plot)
    if args.json:
        planner = {} if layouts is None else {"planner": {"constraints": limits, "layouts": layouts,
                                                          "chosen": chosen}}
        print(json.dumps({**ms.to_dict(), "summary": summaries[0] if union is None else
                          {"parts": summaries, "union": union}, **planner}))
        return 0
    if layouts is not None:
        given = ", ".join(f"{key.replace('_', '-')} {value}" for key, value in limits.items()
                          if value is not None)
        print(f"planner ({given}; passes for {args.passes_for}): {len(layouts)} layouts, fewest masks first")
        print("  masks  mask      hides   lower bound (T2)  exact minimum (T16)  passes (1 round)  "
              "passes (recovery, worst)")
        for i, layout in enumerate(layouts):
            mark = "*" if i == chosen else " "
            print(f"{mark} {layout['num_masks']:5d}  {shape_text(layout['mask_size']):8s}  "
                  f"{layout['mask_fraction']:6.1%}  "
                  f"{layout['lower_bound']:16d}  {layout['exact_minimum']:19d}  "
                  f"{layout['passes_one_round']:16d}  {layout['passes_recovery_worst']:24d}")
        print("* built below")
    for threat, summary in zip(threats, summaries):
        print(f"{summary['strategy']} k={summary['k']} on {shape_text(threat.image_size)}, "
              f"patch {shape_text(threat.patch_size)}, mask {shape_text(summary['mask_size'])}")
        print(f"masks {summary['num_masks']}  lower bound {summary['lower_bound']}  exact minimum "
              f"{summary['exact_minimum']}  gap {summary['gap']}  "
              f"coverage min {summary['min_coverage']} max {summary['max_coverage']}  "
              f"distinct {summary['distinct']}")
    if union is not None:
        print(f"union: {union['num_masks']} masks (distinct {union['distinct']}); coverage "
              + ", ".join(f"{shape_text(c['patch'])} min {c['min_coverage']} max {c['max_coverage']}"
                          for c in union["coverage"]))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_coverage(args) -> int:
    from .config import read_maskset
    ms = read_maskset(args.masks)
    k = args.k if args.k is not None else 1
    if k < 1:
        raise CertMaskError(f"--k must be >= 1, got {k}")
    grid = cell_grid(ms, size_arg(args.patch, "--patch", ms.ndim))
    low, high, _ = coverage_extremes(ms, grid.threat)
    counts = grid.counts()
    P = grid.threat.num_positions
    # positions per cell: from each cut to the next (the last cell runs to the end of the axis)
    extent = [np.diff(np.append(cuts, P[axis])) for axis, cuts in enumerate(grid.cuts)]
    rest = np.ones(1, np.int64)
    for e in extent[1:]:  # positions per cell of the other axes, flattened
        rest = np.multiply.outer(rest, e).ravel()
    below, first = 0, []
    for start in range(0, len(counts), 1024):  # blocks of the first axis: there can be 2**28 cells
        block = counts[start:start + 1024].reshape(len(counts[start:start + 1024]), -1) < k
        below += int(extent[0][start:start + 1024] @ (block @ rest))
        if len(first) < 20:
            rows, cells = (index[:20 - len(first)] for index in np.nonzero(block))
            first += [list(grid.position((start + i,) + np.unravel_index(j, grid.shape[1:])))
                      for i, j in zip(rows, cells)]
    report = {"num_masks": len(ms), "positions": list(P), "min_coverage": low, "max_coverage": high,
              "k": k, "k_fold": low >= k, "distinct": ms.is_distinct(), "positions_below_k": below,
              "first_positions_below_k": first}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{len(ms)} masks, {shape_text(P)} patch positions: coverage min {low}, max {high}; "
              f"distinct {report['distinct']}")
        verdict = "is" if report["k_fold"] else "is NOT"
        print(f"the set {verdict} {k}-fold" + ("" if report["k_fold"] else
              f": {below} positions below {k}, first position of each region: {first[:10]}"))
    return 0 if report["k_fold"] else 1


TORCH_ONLY_OPTIONS = {"--autocast": ("autocast", "none"), "--channels-last": ("channels_last", False),
                      "--memory-budget-mb": ("memory_budget_mb", None)}
"""Options only the torch backend takes: given to another backend they are refused by name."""


def _backend_name(args) -> str:
    """``--backend``, or (not given) ``onnx`` for a ``.onnx`` model and ``torch`` otherwise."""
    if args.backend is not None:
        return args.backend
    return "onnx" if str(getattr(args, "model", "")).lower().endswith(".onnx") else "torch"


def _backend(args, needs: str | None = None):
    """The backend of the command's options; ``needs`` names a capability only some backends have
    (``attack``, ``train``: the torch backend's gradients)."""
    from ..registry import get_backend
    name = _backend_name(args)
    args.backend = name  # recorded in run.json and results.json
    options = {"batch_size": args.batch_size, "fill": args.fill}
    if name == "torch":
        autocast = {"none": None, "bf16": "bfloat16", "fp16": "float16"}[args.autocast]
        options.update(device=args.device, memory_budget_mb=args.memory_budget_mb,
                       channels_last=args.channels_last)
        if autocast:
            import importlib
            options["autocast_dtype"] = getattr(importlib.import_module("torch"), autocast)
    else:
        given = [flag for flag, (dest, default) in TORCH_ONLY_OPTIONS.items()
                 if getattr(args, dest) != default]
        if given:
            raise CertMaskError(f"{', '.join(given)} applies to the torch backend only, not --backend {name}")
        if name == "onnx":
            options["device"] = args.device
        elif args.device != "cpu":
            raise CertMaskError(f"--device applies to the torch and onnx backends, not --backend {name} "
                                f"(a plain callable runs where its own code puts it)")
    if needs is not None and name != "torch":
        raise CertMaskError(f"{needs} needs the torch backend (gradients through the model), not --backend "
                            f"{name}")
    return get_backend(name, **options)


def _sha256(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _run_record(args, backend, model, run, source: str) -> dict:
    """run.json: what was certified, with what, where; ``fingerprint`` decides whether --resume may
    continue a run."""
    import platform
    from dataclasses import asdict

    from .config import family_plan
    config, data = run.config, run.data
    fingerprint = {
        "model": args.model, "weights": args.weights, "model_sha256": backend.model_fingerprint(model),
        "data": args.data, "data_sha256": data.fingerprint(), "images": len(data),
        "classes": data.classes,
        # the image batch changes no result (certificates do not depend on batch make-up)
        "config": json.loads(json.dumps({k: v for k, v in asdict(config).items() if k != "image_batch"})),
        "masks": [{"strategy": s, "k": k, "num_masks": len(base_set(ms)),
                   "sha256": _sha256(base_set(ms).rectangles(), getattr(ms, "members", np.zeros(0)))}
                  for (s, k), ms in run.masksets.items()]}
    threat = PatchThreat(run.spatial, config.patch)
    return {"command": args.command_line, "certmask": __version__, "backend": args.backend,
            "backend_versions": backend.versions(), "python": platform.python_version(),
            "device": args.device, "data_source": source,
            "seed": None,  # certification draws nothing at random: the same inputs give the same results
            "patch": list(config.patch),
            "patch_percent_of_image": 100.0 * math.prod(config.patch) / math.prod(run.spatial),
            "image_batch": run.image_batch,
            "mask_layouts": [family_plan(ms, threat) for ms in run.masksets.values()],
            "fingerprint": fingerprint,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def cmd_certify(args) -> int:
    from .config import RunConfig
    from .experiment import CertificationRun
    from .files import read_json_file, write_json_atomically
    from .outputs import PER_IMAGE_FILE, locked_out_dir, prepare_out_dir, results_table, write_outputs
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise CertMaskError("--resume continues the run in --out and --overwrite replaces it: give one")
    backend = _backend(args)
    data = _open_data(args)
    sample = data.read(np.arange(1))
    model, num_classes = _load_checked_model(backend, args, sample, data.classes)
    ndim = sample.ndim - 2
    config = RunConfig(patch_arg(args.patch, "--patch", ndim), args.k,
                       args.strategy if args.strategy is not None else [] if args.masks else ["replicated"],
                       args.mode, masks_per_axis=size_arg(args.masks_per_axis, "--masks-per-axis", ndim,
                                                           "the data"),
                       mask_size=size_arg(args.mask, "--mask", ndim, "the data"),
                       recovery_certificate=args.recovery_certificate, mask_files=args.masks or (),
                       patches=args.patches, sizes=sizes_arg(args.sizes, ndim), image_batch=args.image_batch,
                       margin_tolerance=(args.margin_tolerance if args.margin_tolerance is not None
                                         else getattr(backend, "margin_tolerance", DEFAULT_MARGIN_TOLERANCE)))
    rank, world, gather, close = (0, 1, None, lambda: None)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
        if not callable(getattr(backend, "init_distributed", None)):
            raise CertMaskError(f"a sharded run (torchrun) needs the torch backend's process group; "
                                f"--backend {args.backend} has none")
        rank, world, gather, close = backend.init_distributed()
    run = CertificationRun(backend, model, data, config, num_classes=num_classes, rank=rank, world=world,
                           gather=gather)
    record = _run_record(args, backend, model, run, data.source)
    # rank 0 alone prepares --out and writes its shared files; it holds the folder's lock for the whole run
    with locked_out_dir(out) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            prepare_out_dir(out, resume=args.resume, overwrite=args.overwrite)
            previous = out / "run.json"
            if args.resume and (out / PER_IMAGE_FILE).is_file() and not previous.is_file():
                raise CertMaskError(f"--resume: {str(out)!r} holds per-image results but no run.json saying "
                                    f"what they are; rerun with --overwrite")
            if args.resume and previous.is_file():
                stored = read_json_file(previous, "the run record")
                before = stored.get("fingerprint") if isinstance(stored, dict) else None
                if before != record["fingerprint"]:
                    changed = sorted(key for key in record["fingerprint"] if not isinstance(before, dict)
                                     or before.get(key) != record["fingerprint"][key])
                    raise CertMaskError(f"--resume: {str(out)!r} holds a run with other settings (differs "
                                        f"in {changed}); resume with the same command or choose another "
                                        f"--out")
            (out / "results.json").unlink(missing_ok=True)  # it appears only when the run is complete
            write_json_atomically(previous, record)
        start = time.perf_counter()
        results = run.run(out / PER_IMAGE_FILE, resume=args.resume,
                          show_progress=None if not args.quiet else False)
        close()  # on an error the rank exits instead, and torchrun stops the others
        if results is None:
            return 0
        record.update({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "seconds": round(time.perf_counter() - start, 2),
                       "resumed_images": results["resumed_images"]})
        write_json_atomically(out / "run.json", record)
        results.update({"data": args.data, "data_source": data.source, "model": args.model,
                        "device": args.device, "backend": args.backend, "classes": data.classes,
                        "image_names": data.ids})
        shown = np.arange(min(8, len(data)))
        write_outputs(results, out, data.read(shown), plots=not args.no_plots,
                      maskset=base_set(next(iter(run.masksets.values()))),
                      labels=np.asarray(data.labels)[shown])
    print(f"data: {data.source}")
    print(results_table(results), end="")
    print(f"wrote {out}/results.json, results.md, run.json, {PER_IMAGE_FILE}"
          + ("" if args.no_plots else ", accuracy_vs_k.png" + (", examples.png" if ndim == 2 else ""))
          + (", certified_vs_size.png" if config.sizes and not args.no_plots else ""))
    hint = one_mask_hint(run.one_mask_accuracy())
    if hint:
        print(hint)
    return 0


ONE_MASK_HINT_BELOW = 0.5
"""``certmask certify`` suggests mask training when fewer one-mask predictions than this are right."""


def one_mask_hint(accuracy: float | None) -> str | None:
    """The note printed after a run whose one-mask accuracy (of the first mask set) is low, else None."""
    if accuracy is None or accuracy >= ONE_MASK_HINT_BELOW:
        return None
    return (f"note: only {accuracy:.0%} of the one-mask predictions are right: this model was not trained "
            f"with masks; `certmask train --augment maskset ...` (README, Training for certification) "
            f"raises what can be certified")


def _open_data(args):
    """The data of ``--data`` as a stream (decoded batch by batch), as the command's options read it."""
    from .sources import open_data
    return open_data(args.data, args.data_root, args.limit, image_size=image_size_arg(args),
                     layout=args.layout, classes=classes_arg(args.classes))


def _load_data(args, split: str = "test", spec: str | None = None, limit: int | None = None):
    """The data of ``--data`` (or ``spec``) as the command's options read it."""
    from .datasets import load_data
    return load_data(spec or args.data, args.data_root, limit if spec else args.limit, split=split,
                     image_size=image_size_arg(args), layout=args.layout, classes=classes_arg(args.classes))


def _load_checked_model(backend, args, images, classes=None):
    """``(model, num_classes)`` of ``--model``/``--weights``, refused when it takes another channel count
    than the data, returns another class count than ``--num-classes``, or than the data's named classes
    (an image folder's subfolders, ``--classes``): a label must mean the class the model means by it."""
    model = backend.load_model(args.model, args.weights, trust_code=args.trust_model_code)
    expected = backend.input_channels(model)
    got = images.shape[1]
    if expected is not None and expected != got:
        kind = {1: "grayscale", 3: "RGB"}
        raise CertMaskError(f"model {args.model!r} takes {expected}-channel ({kind.get(expected, 'other')}) "
                            f"input but the data has {got} channel(s) ({kind.get(got, 'other')})")
    if (args.mean is None) != (args.std is None):
        raise CertMaskError("--mean and --std go together")
    if args.mean is not None:
        if len(args.mean) not in (1, got) or len(args.std) != len(args.mean):
            raise CertMaskError(f"--mean/--std need 1 or {got} values each, got {args.mean} and {args.std}")
        model = backend.normalized(model, args.mean, args.std)
    num_classes = int(backend.predict(model, images[:1], return_logits=True).shape[1])
    if args.num_classes is not None and num_classes != args.num_classes:
        raise CertMaskError(f"--num-classes {args.num_classes} but model {args.model!r} returns "
                            f"{num_classes} logits")
    if classes is not None and len(classes) != num_classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        raise CertMaskError(f"the data name {len(classes)} classes ({shown}) but model {args.model!r} "
                            f"returns {num_classes} logits: labels would not mean the model's classes. "
                            f"Name every class in the model's order with --classes NAME ... (or a file of "
                            f"one name per line)")
    return model, num_classes


def cmd_attack(args) -> int:
    from .experiment import check_labels_in_classes
    if args.steps < 1 or args.stride < 1:
        raise CertMaskError(f"--steps and --stride must be >= 1, got {args.steps} and {args.stride}")
    backend = _backend(args, needs="attack")
    data = _load_data(args)
    images, labels, source = data.images, data.labels, data.source
    model, num_classes = _load_checked_model(backend, args, images, data.classes)
    check_labels_in_classes(labels, num_classes)
    ndim = images.ndim - 2
    from certmask_backends.pytorch.attack import run_attack_with_examples

    from .outputs import write_attack_outputs
    outcome = run_attack_with_examples(
        backend, model, images, labels, patch_arg(args.patch, "--patch", ndim), args.k[0], args.strategy[0],
        args.mode, steps=args.steps, stride=args.stride,
        masks_per_axis=size_arg(args.masks_per_axis, "--masks-per-axis", ndim, "the data"),
        mask_size=size_arg(args.mask, "--mask", ndim, "the data"),
        show_progress=None if not args.quiet else False, attack_all=args.attack_all, patches=args.patches,
        true_patch=patch_arg(args.true_patch, "--true-patch", ndim) if args.true_patch else None)
    results = outcome.results
    # the figure names the data's own classes (by index where the data name none)
    written = write_attack_outputs(results, args.out, outcome.examples, classes=data.classes)
    print(f"data: {source}")
    for key in ("mode", "guarantee", "images", "num_masks", "patches", "num_groups", "clean_accuracy",
                "true_patch", "true_size_covered", "certified_planned_accuracy",
                "certified_true_size_accuracy", "attack_success_on_planned_certified", "certified_accuracy",
                "claimed_certified_accuracy_UNSOUND", "empirical_robust_accuracy", "certified_broken",
                "claim_broken_UNSOUND", "undefended_clean_accuracy", "undefended_robust_accuracy"):
        if key in results:
            print(f"{key:28s} {results[key]}")
    print(f"wrote {args.out}/" + ", ".join(written))
    return 0


def cmd_tune(args) -> int:
    from .experiment import check_labels_in_classes
    from .tune import check_tune_out, tune, tune_table, write_tune
    if args.tune_images < 1 or args.check_images < 0:
        raise CertMaskError(f"--tune-images must be >= 1 and --check-images >= 0, got {args.tune_images} and "
                            f"{args.check_images}")
    check_tune_out(args.out)
    backend = _backend(args)
    limit = args.tune_images + args.check_images if args.limit is None else args.limit
    data = _load_data(args, limit=limit, spec=args.data)
    if len(data.images) <= args.tune_images and args.check_images:
        raise CertMaskError(f"{args.data!r} holds {len(data.images)} images: none left to check on after "
                            f"--tune-images {args.tune_images}")
    model, num_classes = _load_checked_model(backend, args, data.images, data.classes)
    check_labels_in_classes(data.labels, num_classes)
    n, m = args.tune_images, args.check_images
    if len(data.images) < n + m:
        print(f"note: {args.data!r} holds {len(data.images)} images: tuning on {min(n, len(data.images))}, "
              f"checking on {max(len(data.images) - n, 0)}", file=sys.stderr)
    patch = patch_arg(args.patch, "--patch", data.images.ndim - 2)
    results = tune(backend, model, data.images[:n], data.labels[:n], patch, args.budget,
                   ks=args.k, strategies=args.strategy, modes=args.mode, shape=args.shape,
                   margin_tolerance=(args.margin_tolerance if args.margin_tolerance is not None
                                     else getattr(backend, "margin_tolerance", DEFAULT_MARGIN_TOLERANCE)),
                   check_images=data.images[n:n + m] if m else None,
                   check_labels=data.labels[n:n + m] if m else None,
                   show_progress=None if not args.quiet else False)
    results.update({"data": args.data, "data_source": data.source, "model": args.model,
                    "tuning_images": [0, min(n, len(data.images))],
                    "check_images": [n, min(n + m, len(data.images))] if m else None,
                    "command": args.command_line})
    write_tune(results, args.out, plots=not args.no_plots)
    print(f"data: {data.source}")
    print(tune_table(results), end="")
    print(f"wrote {args.out}/tune.json, tune.md" + ("" if args.no_plots else ", tune_front.png"))
    return 0


def cmd_train(args) -> int:
    from .config import read_maskset
    from .experiment import check_labels_in_classes
    backend = _backend(args, needs="train")
    out = Path(args.out)
    checkpoints = out / "checkpoints"
    if not args.resume and checkpoints.is_dir() and any(re.fullmatch(r"epoch-\d+\.pt", p.name)
                                                        for p in checkpoints.iterdir()):
        raise CertMaskError(f"{str(out)!r} already holds checkpoints; pass --resume to continue that run or "
                            f"choose another --out")
    data = _load_data(args, split="train")
    images, labels, source = data.images, data.labels, data.source
    eval_name = args.eval_data or ("fashion-mnist" if args.data == "fashion-mnist" else None)
    eval_images = eval_labels = None
    if eval_name is not None:
        evaluation = _load_data(args, spec=eval_name, limit=args.eval_limit)
        eval_images, eval_labels, eval_source = evaluation.images, evaluation.labels, evaluation.source
    model, num_classes = _load_checked_model(backend, args, images, data.classes)
    check_labels_in_classes(labels, num_classes)
    if eval_name is not None:
        check_labels_in_classes(eval_labels, num_classes)
    masksets = []
    if args.masks:
        masksets.append(read_maskset(args.masks))
    ndim = images.ndim - 2
    for patch in args.patch or []:
        threat = PatchThreat(images.shape[2:], patch_arg(patch, "--patch", ndim))
        masksets += [make_maskset(threat, k, args.strategy,
                                  mask_size=size_arg(args.mask, "--mask", ndim, "the data"),
                                  masks_per_axis=size_arg(args.masks_per_axis, "--masks-per-axis", ndim,
                                                           "the data"))
                     for k in args.k]
    if args.augment in ("maskset", "greedy") and not masksets:
        raise CertMaskError(f"--augment {args.augment} needs the masks to train for: --patch PH PW "
                            f"(repeatable) or --masks FILE.json")
    options = {"cutout": {"size": args.cutout_size},
               "maskset": {"p_none": args.p_none, "p_single": args.p_single, "p_pair": args.p_pair},
               "greedy": {"samples": args.greedy_samples, "p_none": args.p_none}}.get(args.augment)
    config = {"epochs": args.epochs, "batch_size": args.train_batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing, "hflip": args.hflip,
              "seed": args.seed, "augmentation": args.augment, "augmentation_options": options}
    from certmask_backends.pytorch.models import save_model
    from certmask_backends.pytorch.training import train
    record = train(model, images, labels, config, backend=backend, masksets=masksets or None,
                           eval_images=eval_images, eval_labels=eval_labels,
                           eval_maskset=masksets[0] if masksets else None, checkpoint_dir=checkpoints,
                           resume=args.resume, show_progress=None if not args.quiet else False)
    saved, certify_with = save_model(model, out / "model.pt", args.model)
    record.update({"command": args.command_line,
                   "model": args.model, "weights": args.weights, "data": args.data, "data_source": source,
                   "eval_data": eval_name, "eval_source": eval_source if eval_name else None,
                   "masks": [plan_summary(ms) for ms in masksets], "saved_model": str(saved),
                   "certify_with": certify_with})
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    last = record["epochs"][-1]
    print(" ".join(f"{key} {value:.4f}" for key, value in last.items()
                   if key.endswith(("accuracy", "right"))))
    print(f"wrote {saved} and {out / 'train.json'}; certify it with --model {record['certify_with']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``certmask`` parser: each subcommand's options (:mod:`.arguments`) and the command it runs."""
    parser = arguments.top_parser()
    sub = parser.add_subparsers(dest="command", required=True)
    arguments.add_plan(sub).set_defaults(func=cmd_plan)
    arguments.add_coverage(sub).set_defaults(func=cmd_coverage)
    arguments.add_certify(sub).set_defaults(func=cmd_certify)
    arguments.add_attack(sub).set_defaults(func=cmd_attack)
    arguments.add_tune(sub).set_defaults(func=cmd_tune)
    arguments.add_train(sub).set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["certmask", *(sys.argv[1:] if argv is None else argv)])
        return args.func(args)
    except BrokenPipeError:  # the reader stopped early (`certmask plan ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (CertMaskError, OSError) as err:
        print(f"certmask: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
