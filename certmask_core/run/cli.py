"""The ``certmask`` command line: plan, coverage, certify, attack, train."""
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
from collections import Counter
from pathlib import Path

import numpy as np

from .. import __version__
from ..certification import DEFAULT_MARGIN_TOLERANCE, MODES, RECOVERY_CERTIFICATES
from ..constructions import make_maskset, plan_summary, union_maskset
from ..coverage import cell_grid, coverage_extremes
from ..errors import CertMaskError
from ..geometry import STRATEGIES, PatchThreat
from ..multipatch import base_set
from ..planning import default_strategy, plan_layouts
from ..validation import shape_text
from .datasets import LAYOUTS


def _size_arg(values, name: str, ndim: int, of: str = "the --image"):
    """One int (every axis) or one int per axis of an ``ndim``-axis input."""
    if values is None:
        return None
    if len(values) not in (1, ndim):
        raise CertMaskError(f"{name} takes one integer or {ndim} (one per axis of {of}), got {values}")
    return values[0] if len(values) == 1 else tuple(values)


MAX_SIZES = 4096
"""Most patch sizes one ``--sizes`` may list (every square up to 4,096 pixels on a side)."""


def _patch_arg(values, name: str, ndim: int) -> tuple[int, ...]:
    """``--patch``-like values for data of ``ndim`` axes: one per axis, or one for every axis."""
    size = _size_arg(values, name, ndim, "the data")
    return size if isinstance(size, tuple) else (size,) * ndim


def _sizes_arg(tokens, ndim: int = 2):
    """``--sizes`` tokens -> patch sizes of ``ndim`` axes: ``N`` (a square, a cube: N on every axis),
    ``A-B`` (those of A..B), ``HxW`` (one value per axis, e.g. ``4x3x3`` for clips)."""
    if tokens is None:
        return None
    sizes = []
    for token in (t for text in tokens for t in text.replace(",", " ").split()):
        try:
            if "x" in token:
                size = tuple(int(side) for side in token.split("x"))
                if len(size) != ndim:
                    raise CertMaskError(f"--sizes: {token!r} has {len(size)} sides; the data have {ndim} "
                                        f"axes")
                sizes.append(size)
            elif "-" in token:
                low, high = (int(v) for v in token.split("-"))
                if low > high:
                    raise ValueError
                sizes.append(range(low, high + 1))  # expanded below, once its length is known
            else:
                sizes.append((int(token),) * ndim)
        except ValueError:
            raise CertMaskError(f"--sizes: cannot read {token!r}; give N (a square), A-B (squares A to B) "
                                f"or HxW (one side per axis)") from None
    count = sum(len(size) if isinstance(size, range) else 1 for size in sizes)
    if count > MAX_SIZES:
        raise CertMaskError(f"--sizes lists {count} patch sizes; at most {MAX_SIZES} in one run")
    return [one for size in sizes
            for one in ([(side,) * ndim for side in size] if isinstance(size, range) else [size])]


DEFAULT_MAX_MASK_FRACTION = 0.10
"""``certmask plan`` without a mask size or constraint: each mask hides at most 10 % of the image (the
share of PatchCleanser's 6x6 grid for a 2 % patch on ImageNet is about 8 %)."""


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
    threats = [PatchThreat(tuple(args.image), _size_arg(patch, "--patch", ndim)) for patch in args.patch]
    layouts, mask = None, _size_arg(args.mask, "--mask", ndim)
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
                          masks_per_axis=_size_arg(args.masks_per_axis, "--masks-per-axis", ndim))
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
    from .experiment import read_maskset
    ms = read_maskset(args.masks)
    k = args.k if args.k is not None else 1
    if k < 1:
        raise CertMaskError(f"--k must be >= 1, got {k}")
    grid = cell_grid(ms, _size_arg(args.patch, "--patch", ms.ndim))
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

    from .experiment import family_plan
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
    from .experiment import (
        PER_IMAGE_FILE,
        CertificationRun,
        RunConfig,
        locked_out_dir,
        prepare_out_dir,
        read_json_file,
        results_table,
        write_json_atomically,
        write_outputs,
    )
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise CertMaskError("--resume continues the run in --out and --overwrite replaces it: give one")
    backend = _backend(args)
    data = _open_data(args)
    sample = data.read(np.arange(1))
    model, num_classes = _load_checked_model(backend, args, sample, data.classes)
    ndim = sample.ndim - 2
    config = RunConfig(_patch_arg(args.patch, "--patch", ndim), args.k,
                       args.strategy if args.strategy is not None else [] if args.masks else ["replicated"],
                       args.mode, masks_per_axis=_size_arg(args.masks_per_axis, "--masks-per-axis", ndim,
                                                           "the data"),
                       mask_size=_size_arg(args.mask, "--mask", ndim, "the data"),
                       recovery_certificate=args.recovery_certificate, mask_files=args.masks or (),
                       patches=args.patches, sizes=_sizes_arg(args.sizes, ndim), image_batch=args.image_batch,
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
    return open_data(args.data, args.data_root, args.limit, image_size=_image_size(args), layout=args.layout,
                     classes=_classes_arg(args.classes))


def _load_data(args, split: str = "test", spec: str | None = None, limit: int | None = None):
    """The data of ``--data`` (or ``spec``) as the command's options read it."""
    from .datasets import load_data
    return load_data(spec or args.data, args.data_root, limit if spec else args.limit, split=split,
                     image_size=_image_size(args), layout=args.layout, classes=_classes_arg(args.classes))


MAX_CLASSES_FILE_BYTES = 1 << 20
"""Largest ``--classes`` file read (1 MiB: some 50,000 class names)."""


def _classes_arg(values):
    """``--classes``: the names in label order, or one text file of one name per line."""
    if not values:
        return None
    if len(values) == 1 and Path(values[0]).is_file():
        from .datasets import read_small_text
        text = read_small_text(Path(values[0]), "--classes file", MAX_CLASSES_FILE_BYTES)
        values = [line.strip() for line in text.splitlines() if line.strip()]
    twice = sorted(name for name, count in Counter(values).items() if count > 1)
    if twice:
        raise CertMaskError(f"--classes names a class twice: {twice}")
    return list(values)


def _image_size(args):
    return tuple(args.image_size) if args.image_size else None


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
    from certmask_backends.pytorch.attack import run_attack
    results = run_attack(backend, model, images, labels, _patch_arg(args.patch, "--patch", ndim), args.k[0],
                             args.strategy[0], args.mode, steps=args.steps, stride=args.stride,
                             masks_per_axis=_size_arg(args.masks_per_axis, "--masks-per-axis", ndim,
                                                      "the data"),
                             mask_size=_size_arg(args.mask, "--mask", ndim, "the data"), out_dir=args.out,
                             show_progress=None if not args.quiet else False,
                             attack_all=args.attack_all, patches=args.patches,
                             true_patch=_patch_arg(args.true_patch, "--true-patch", ndim) if args.true_patch
                             else None)
    results.update({"data_source": source, "model": args.model})
    print(f"data: {source}")
    for key in ("mode", "guarantee", "images", "num_masks", "patches", "num_groups", "clean_accuracy",
                "true_patch", "true_size_covered", "certified_planned_accuracy",
                "certified_true_size_accuracy", "attack_success_on_planned_certified", "certified_accuracy",
                "claimed_certified_accuracy_UNSOUND", "empirical_robust_accuracy", "certified_broken",
                "claim_broken_UNSOUND", "undefended_clean_accuracy", "undefended_robust_accuracy"):
        if key in results:
            print(f"{key:28s} {results[key]}")
    print(f"wrote {args.out}/attack.json" + (", attack.png" if ndim == 2 else ""))
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
    patch = _patch_arg(args.patch, "--patch", data.images.ndim - 2)
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
    from .experiment import check_labels_in_classes, read_maskset
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
        threat = PatchThreat(images.shape[2:], _patch_arg(patch, "--patch", ndim))
        masksets += [make_maskset(threat, k, args.strategy,
                                  mask_size=_size_arg(args.mask, "--mask", ndim, "the data"),
                                  masks_per_axis=_size_arg(args.masks_per_axis, "--masks-per-axis", ndim,
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


def _add_model_args(p):
    _add_data_model_args(p, split="test")
    p.add_argument("--patch", type=int, nargs="+", required=True, metavar="P",
                   help="patch size in pixels, one per axis of the data (PH PW for images, PT PH PW for "
                        "clips, PL for signals; one value: every axis)")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="coverage folds: one mask set per k")
    p.add_argument("--strategy", nargs="+", default=["replicated"], choices=STRATEGIES,
                   help="mask-set constructions to compare")
    p.add_argument("--masks-per-axis", type=int, nargs="+", default=[4], metavar="N",
                   help="masks per axis of the 1-fold grid (one value for every axis, or one per axis)")
    p.add_argument("--mask", type=int, nargs="+", metavar="M",
                   help="mask size instead of --masks-per-axis (one value for every axis, or one per axis)")
    _add_backend_args(p)


MODEL_HELP = ("model spec: 'bundled' (the committed Fashion-MNIST CNN), 'bundled-cutout' (the first "
              "release's), 'fashion-cnn' (that architecture untrained), a FashionCNN state-dict file (read "
              "as data), a torch.export program (.pt2) or TorchScript file (code: needs "
              "--trust-model-code), or 'package.module:factory' (imported and called with no arguments: "
              "runs that code; the module must be importable, e.g. on PYTHONPATH)")


def _add_data_model_args(p, split: str) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help=f"'fashion-mnist' (the Debian package's {split} set; certify falls back to the "
                        "bundled 1,000-image subset), 'fashion-mnist-subset', an .npz file with "
                        "'images' (N,H,W / N,C,H,W / N,H,W,C; uint8 or float in [0, 1]) and 'labels', "
                        "or a folder: class subfolders of PNG/JPEG images (ids = relative paths), "
                        "MNIST-style idx files, or CIFAR-10/100 python batches")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx files "
                                       "(default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--model", default="bundled", help=MODEL_HELP)
    p.add_argument("--trust-model-code", action="store_true",
                   help="allow --model files that are code (a torch.export .pt2 program, a TorchScript "
                        "archive): loading them runs what the file holds, so give this only for files "
                        "whose origin you trust. State dicts and the bundled models never need it; a "
                        "'package.module:factory' spec imports and calls the code you name")
    p.add_argument("--layout", choices=LAYOUTS,
                   help="axis order of an .npz's 'images' (N items, C channels, T frames, L samples): "
                        "needed where the shape leaves it open, e.g. (N, 3, 32, 3), which the reader "
                        "refuses to guess, and to read a 3-D array as signals (NCL, NLC) or a 4-D one as "
                        "grayscale clips (NTHW); a 3-D array is grayscale images (NHW) by default")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="class names in the model's label order (or one text file, one name per line): an "
                        "image folder's subfolder NAME holds class NAME; without it the sorted subfolder "
                        "names are the classes, and their count must equal the model's")
    p.add_argument("--weights", help="state dict loaded into a 'fashion-cnn' or factory model")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="resize every image to H x W (bilinear; needs Pillow)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="per-channel mean the model was trained to subtract: the model is wrapped so that "
                        "masking and the fill stay in pixel space [0, 1] and normalisation happens inside")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std, with --mean")
    p.add_argument("--num-classes", type=int, help="check that the model returns this many logits")


def _add_backend_args(p) -> None:
    p.add_argument("--backend", help="torch (default), numpy (any callable 'package.module:factory' model: "
                                      "JAX, TensorFlow, scikit-learn), onnx (default for a .onnx --model; "
                                      "onnxruntime), or one registered under the entry point group "
                                      "certmask.backends")
    p.add_argument("--device", default="cpu", help="device, e.g. cpu, cuda, cuda:1 (torch and onnx backends)")
    p.add_argument("--batch-size", type=int, default=512, help="masked images per forward pass")
    p.add_argument("--memory-budget-mb", type=float, help="also cap the batch to fit this much memory")
    p.add_argument("--fill", type=float, default=0.0, help="mask fill in pixel space")
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"],
                   help="run the model under autocast (certificates then use a wider margin tolerance)")
    p.add_argument("--channels-last", action="store_true", help="channels-last tensors (faster on GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress (the bar on a terminal, a status line "
                   "every 15 s elsewhere)")


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line on stderr and exit status 2, like every other bad input."""

    def error(self, message):
        raise CertMaskError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certmask", description="Certified defence against "
                     "adversarial patches by k-fold mask coverage.")
    parser.add_argument("--version", action="version", version=f"certmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="choose and build a mask set; print its count, bound and exact minimum",
                       description="Build a mask set. With --mask or --masks-per-axis that set; without, the "
                       "planner lists every layout meeting the --max-* constraints (fewest masks first; "
                       f"default: --max-mask-fraction {DEFAULT_MAX_MASK_FRACTION}) and builds the fewest "
                       "masks under a size limit, or the smallest masks under --max-masks / --max-passes.")
    p.add_argument("--image", type=int, nargs="+", required=True, metavar="N",
                   help="input size in pixels: H W for images, T H W for clips, L for signals")
    p.add_argument("--patch", type=int, nargs="+", required=True, metavar="P", action="append",
                   help="patch size in pixels, one per axis of --image (one value: every axis); repeat it "
                        "for a multi-size set (the union of one set per patch, each with its own mask size "
                        "under --masks-per-axis)")
    p.add_argument("--k", type=int, default=1, help="every patch position covered by at least k masks")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="construction (default: patchcleanser for k=1, else replicated)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mask", type=int, nargs="+", metavar="M",
                       help="mask size in pixels (one value, or one per axis)")
    group.add_argument("--masks-per-axis", type=int, nargs="+", metavar="N",
                       help="masks per axis of the 1-fold grid (one value, or one per axis)")
    p.add_argument("--max-mask-side", type=int, metavar="PX", help="planner: largest mask side")
    p.add_argument("--max-mask-fraction", type=float, metavar="F",
                   help=f"planner: largest share of the image one mask hides (default "
                        f"{DEFAULT_MAX_MASK_FRACTION} when no other constraint is given)")
    p.add_argument("--max-masks", type=int, metavar="N", help="planner: most masks (a budget)")
    p.add_argument("--max-passes", type=int, metavar="N",
                   help="planner: most forward passes per image (a budget), see --passes-for")
    p.add_argument("--passes-for", default="one-round", choices=["one-round", "recovery"],
                   help="what --max-passes pays for: one round (n) or recovery at worst (n + n(n-1)/2)")
    p.add_argument("--shape", default="square", choices=["square", "any"],
                   help="planner: masks exceeding the patch equally on both axes, or any (h, w)")
    p.add_argument("--json", action="store_true", help="print the mask set as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the layout and coverage heatmap")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("coverage", help="verify the coverage of a mask set read from JSON")
    p.add_argument("masks", metavar="MASKS.json", help="mask set written by 'certmask plan --json'")
    p.add_argument("--patch", type=int, nargs="+", required=True, metavar="P",
                   help="patch size in pixels, one per axis of the set (one value: every axis)")
    p.add_argument("--k", type=int, help="required coverage (default 1); exit status 1 when not met")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser("certify", help="certify a model on a dataset (needs a backend, e.g. torch)")
    _add_model_args(p)
    p.add_argument("--mode", nargs="+", default=["detection"], choices=MODES,
                   help="defences to certify (paper is reported as an UNSOUND claim, never certified)")
    p.add_argument("--margin-tolerance", type=float, metavar="LOGITS",
                   help="refuse a certificate whose closest prediction has a top-1 minus top-2 logit "
                        "margin at or below this (default: the backend's, measured for its device and "
                        f"precision; torch: {DEFAULT_MARGIN_TOLERANCE} on CPU, 0.02 on CUDA, 0.25 under "
                        "--autocast; docs/theory.md, Reproducibility)")
    p.add_argument("--recovery-certificate", default="hitting_set", choices=RECOVERY_CERTIFICATES,
                   help="recovery's certificate: hitting_set (T11, default: the good masks hit every "
                        "minimal covering set) or all_pairs (T8: every one- and two-mask prediction "
                        "is right; for comparison)")
    p.add_argument("--masks", metavar="MASKS.json", action="append",
                   help="also certify this mask-set file ('certmask plan --json'; repeatable), with the "
                        "coverage it verifiably gives --patch; without --strategy only the files are used")
    p.add_argument("--patches", type=int, default=1, metavar="M",
                   help="certify against M patches of --patch size: each set's groups of M masks are "
                        "hidden together (M=2: every pair of masks; T15)")
    p.add_argument("--sizes", nargs="+", metavar="SIZE",
                   help="also certify these patch sizes from the same predictions (T14): N (a square; "
                        "N on every axis), A-B (squares A to B) or HxW (one side per axis), e.g. "
                        "'--sizes 1-7 2x5 5x2'; results.json gets "
                        "certified accuracy per size and each image's largest certified square")
    p.add_argument("--out", default="results/certify",
                   help="folder for results.json, results.md, run.json, per_image.jsonl and the plots")
    p.add_argument("--resume", action="store_true",
                   help="keep the images already in --out/per_image.jsonl and certify only the rest (same "
                        "command); the results equal an uninterrupted run's. The kept records are checked "
                        "and a random sample of them recomputed: edited results are refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the previous run in --out (its results, run.json, per_image.jsonl and "
                        "figures; nothing else is touched). Without it or --resume such a folder is refused")
    p.add_argument("--image-batch", type=int, metavar="N",
                   help="images certified together (default: enough that their masked inputs fill the "
                        "backend's batch several times over, at most 64 MiB of pixels)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=cmd_certify, strategy=None)

    p = sub.add_parser("attack", help="adaptive patch attack on the defended model")
    _add_model_args(p)
    p.add_argument("--mode", default="detection", choices=MODES, help="defence to attack")
    p.add_argument("--steps", type=int, default=40, help="PGD steps per patch position")
    p.add_argument("--stride", type=int, default=3, help="position search stride before refinement")
    p.add_argument("--attack-all", action="store_true",
                   help="attack uncertified images too (empirical robust accuracy), not only certified ones")
    p.add_argument("--patches", type=int, default=1, choices=[1, 2],
                   help="attack with this many patches of --patch size (2: the defence hides every pair of "
                        "masks)")
    p.add_argument("--true-patch", type=int, nargs="+", metavar="P",
                   help="misestimated size: the set is planned for --patch, the attacker uses this larger "
                        "patch; an image counts as certified only where the set covers this size")
    p.add_argument("--out", default="results/attack", help="folder for attack.json and attack.png")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("tune", help="choose strategy, k and mask size from data within a forward-pass budget",
                       description="Certify every (strategy, k, mask size) that fits --budget passes per "
                       "image on the first --tune-images images with every sound mode; write the Pareto "
                       "front of certified accuracy against passes, recommend one setting per mode (the "
                       "cheapest within one standard error of the best) and certify it on the next "
                       "--check-images images.")
    _add_data_model_args(p, split="test")
    p.add_argument("--patch", type=int, nargs="+", required=True, metavar="P",
                   help="patch size, one per axis of the data (one value: every axis)")
    p.add_argument("--budget", type=int, default=150,
                   help="forward passes per image a setting may cost (recovery: its worst case n + n(n-1)/2)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4], help="coverage folds to try")
    p.add_argument("--strategy", nargs="+", default=list(STRATEGIES), choices=STRATEGIES,
                   help="constructions to try (patchcleanser for k=1, the others for k >= 2)")
    p.add_argument("--mode", nargs="+", default=[m for m in MODES if m != "paper"],
                   choices=[m for m in MODES if m != "paper"], help="sound modes to certify")
    p.add_argument("--shape", default="square", choices=["square", "any"], help="mask shapes to try")
    p.add_argument("--margin-tolerance", type=float, metavar="LOGITS",
                   help="predictions with a smaller top-2 margin are unsure (default: the backend's)")
    p.add_argument("--tune-images", type=int, default=1000, help="tune on the first N images")
    p.add_argument("--check-images", type=int, default=1000,
                   help="certify the recommendations on the next N images (0: no check)")
    p.add_argument("--out", default="results/tune", help="folder for tune.json, tune.md, tune_front.png")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figure")
    _add_backend_args(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("train", help="train or fine-tune a model for certification (mask-set augmentation)")
    _add_data_model_args(p, split="train")
    p.set_defaults(model="fashion-cnn")
    p.add_argument("--eval-data", help="held-out data evaluated after each epoch (default for fashion-mnist: "
                                       "its test set; otherwise none)")
    p.add_argument("--eval-limit", type=int, default=1000, help="evaluate on the first N held-out images")
    p.add_argument("--augment", default="maskset", choices=["none", "cutout", "maskset", "greedy"],
                   help="none; cutout (one random square); maskset (nothing, one mask or a pair of masks "
                        "of the certification set); greedy (the highest-loss mask or pair of a sample)")
    p.add_argument("--patch", type=int, nargs="+", action="append", metavar="P",
                   help="patch to train for, one size per axis of the data (one value: every axis; "
                        "repeatable: the masks of every patch and k are used)")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="coverage folds to train for")
    p.add_argument("--strategy", default="replicated", choices=STRATEGIES, help="mask-set construction")
    p.add_argument("--masks-per-axis", type=int, nargs="+", default=[4], metavar="N",
                   help="masks per axis of the 1-fold grid")
    p.add_argument("--mask", type=int, nargs="+", metavar="M",
                   help="mask size instead (one value for every axis, or one per axis)")
    p.add_argument("--masks", metavar="MASKS.json", help="also train for this mask-set file")
    p.add_argument("--p-none", type=float, default=0.2, help="share of images left clean (maskset, greedy)")
    p.add_argument("--p-single", type=float, default=0.4, help="share of images under one mask (maskset)")
    p.add_argument("--p-pair", type=float, default=0.4,
                   help="share of images under a pair of masks (maskset)")
    p.add_argument("--cutout-size", type=int, default=12, help="side of the cutout square")
    p.add_argument("--greedy-samples", type=int, default=4,
                   help="masks and partners scored per image and step (costs 2x this many forward passes)")
    p.add_argument("--epochs", type=int, default=7, help="passes over the training data")
    p.add_argument("--train-batch-size", type=int, default=128, help="training images per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule, AdamW)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.05, help="cross-entropy label smoothing")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, augmentation and dropout")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--out", default="results/train",
                   help="folder for model.pt, train.json and checkpoints/epoch-NNN.pt")
    _add_backend_args(p)
    p.set_defaults(func=cmd_train)
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
