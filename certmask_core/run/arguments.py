"""The ``certmask`` command line's arguments: each subcommand's options, the option groups several
subcommands share, and the helpers that read sizes, patch sizes and class names from parsed values.

Every ``add_<command>`` adds one subcommand with its options and returns its parser;
:func:`certmask_core.run.cli.build_parser` pairs each with the command that runs it. The helpers
(``size_arg``, ``patch_arg``, ...) are internal to the package.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from .. import __version__
from ..certification import DEFAULT_MARGIN_TOLERANCE, MODES, RECOVERY_CERTIFICATES
from ..errors import CertMaskError
from ..geometry import STRATEGIES
from .datasets import LAYOUTS, read_small_text

# ------------------------------------------------------------------------------------ reading parsed values


def size_arg(values, name: str, ndim: int, of: str = "the --image"):
    """One int (every axis) or one int per axis of an ``ndim``-axis input.

    Parameters
    ----------
    values : list of int or None
        The option's values (None: the option was not given).
    name : str
        The option, as the error names it (``"--mask"``).
    ndim : int
        Axes of the input.
    of : str
        What the axes belong to, as the error names it.

    Returns
    -------
    int, tuple of int or None
        The one value, one value per axis, or None when ``values`` is None.
    """
    if values is None:
        return None
    if len(values) not in (1, ndim):
        raise CertMaskError(f"{name} takes one integer or {ndim} (one per axis of {of}), got {values}")
    return values[0] if len(values) == 1 else tuple(values)


MAX_SIZES = 4096
"""Most patch sizes one ``--sizes`` may list (every square up to 4,096 pixels on a side)."""


def patch_arg(values, name: str, ndim: int) -> tuple[int, ...]:
    """``--patch``-like values for data of ``ndim`` axes: one per axis, or one for every axis."""
    size = size_arg(values, name, ndim, "the data")
    return size if isinstance(size, tuple) else (size,) * ndim


def sizes_arg(tokens, ndim: int = 2):
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


MAX_CLASSES_FILE_BYTES = 1 << 20
"""Largest ``--classes`` file read (1 MiB: some 50,000 class names)."""


def classes_arg(values):
    """``--classes``: the names in label order, or one text file of one name per line."""
    if not values:
        return None
    if len(values) == 1 and Path(values[0]).is_file():
        text = read_small_text(Path(values[0]), "--classes file", MAX_CLASSES_FILE_BYTES)
        values = [line.strip() for line in text.splitlines() if line.strip()]
    twice = sorted(name for name, count in Counter(values).items() if count > 1)
    if twice:
        raise CertMaskError(f"--classes names a class twice: {twice}")
    return list(values)


def image_size_arg(args):
    """``--image-size`` as ``(H, W)``, or None when not given."""
    return tuple(args.image_size) if args.image_size else None


# ------------------------------------------------------------------------------ the parser and its commands

DEFAULT_MAX_MASK_FRACTION = 0.10
"""``certmask plan`` without a mask size or constraint: each mask hides at most 10 % of the image (the
share of PatchCleanser's 6x6 grid for a 2 % patch on ImageNet is about 8 %)."""


class Parser(argparse.ArgumentParser):
    """Usage errors become one line on stderr and exit status 2, like every other bad input."""

    def error(self, message):
        raise CertMaskError(f"{self.prog}: {message}")


def top_parser() -> Parser:
    """The ``certmask`` parser without its subcommands (``--version`` only)."""
    parser = Parser(prog="certmask", description="Certified defence against "
                    "adversarial patches by k-fold mask coverage.")
    parser.add_argument("--version", action="version", version=f"certmask {__version__}")
    return parser


def add_plan(sub) -> argparse.ArgumentParser:
    """``certmask plan``: a mask set of a size given or chosen by the planner."""
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
    return p


def add_coverage(sub) -> argparse.ArgumentParser:
    """``certmask coverage``: verify a mask-set file."""
    p = sub.add_parser("coverage", help="verify the coverage of a mask set read from JSON")
    p.add_argument("masks", metavar="MASKS.json", help="mask set written by 'certmask plan --json'")
    p.add_argument("--patch", type=int, nargs="+", required=True, metavar="P",
                   help="patch size in pixels, one per axis of the set (one value: every axis)")
    p.add_argument("--k", type=int, help="required coverage (default 1); exit status 1 when not met")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def add_certify(sub) -> argparse.ArgumentParser:
    """``certmask certify``: certify a model on a data set."""
    p = sub.add_parser("certify", help="certify a model on a dataset (needs a backend, e.g. torch)")
    add_model_options(p)
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
    # None tells cmd_certify that --strategy was not given: with --masks only the files are certified
    p.set_defaults(strategy=None)
    return p


def add_attack(sub) -> argparse.ArgumentParser:
    """``certmask attack``: the adaptive patch attack on the defended model."""
    p = sub.add_parser("attack", help="adaptive patch attack on the defended model")
    add_model_options(p)
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
    return p


def add_tune(sub) -> argparse.ArgumentParser:
    """``certmask tune``: choose strategy, k and mask size from held-out data."""
    p = sub.add_parser("tune", help="choose strategy, k and mask size from data within a forward-pass budget",
                       description="Certify every (strategy, k, mask size) that fits --budget passes per "
                       "image on the first --tune-images images with every sound mode; write the Pareto "
                       "front of certified accuracy against passes, recommend one setting per mode (the "
                       "cheapest within one standard error of the best) and certify it on the next "
                       "--check-images images.")
    add_data_model_options(p, split="test")
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
    add_backend_options(p)
    return p


def add_train(sub) -> argparse.ArgumentParser:
    """``certmask train``: train or fine-tune a model with mask-set augmentation."""
    p = sub.add_parser("train", help="train or fine-tune a model for certification (mask-set augmentation)")
    add_data_model_options(p, split="train")
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
    add_backend_options(p)
    return p


# ------------------------------------------------------------------------- option groups shared by commands


def add_model_options(p) -> None:
    """Data, model, patch, mask-set and backend options of the commands that defend a model (certify,
    attack)."""
    add_data_model_options(p, split="test")
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
    add_backend_options(p)


MODEL_HELP = ("model spec: 'bundled' (the committed Fashion-MNIST CNN), 'bundled-cutout' (the first "
              "release's), 'fashion-cnn' (that architecture untrained), a FashionCNN state-dict file (read "
              "as data), a torch.export program (.pt2) or TorchScript file (code: needs "
              "--trust-model-code), or 'package.module:factory' (imported and called with no arguments: "
              "runs that code; the module must be importable, e.g. on PYTHONPATH)")


def add_data_model_options(p, split: str) -> None:
    """The data (``--data`` and how to read it) and the model (``--model`` and what wraps it); ``split``
    names the Fashion-MNIST set ``--data fashion-mnist`` reads."""
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


def add_backend_options(p) -> None:
    """The backend and how it runs the model (device, batch, fill, precision), and ``--quiet``."""
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
