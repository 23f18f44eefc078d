"""Certified video classification (issue 14): the bundled 3-D CNN on moving Fashion-MNIST clips.

    python experiments/issue14_video.py --clips 500 --recovery-clips 100 --attack-clips 4

Writes ``video.json`` (every figure), ``video.md`` (the tables of docs/results.md) and two PNGs:
certified accuracy vs k, and vs patch duration. Parts:

* vs k: the two threats of the model's training (4x3x3, and 16x3x3, present in every frame), the
  replicated and offset k-fold sets of the trained mask size, detection and plurality on the first
  ``--clips`` test clips, recovery (hitting-set certificate) on the first ``--recovery-clips`` of
  them; passes per clip measured.
* vs duration: a 3x3 patch lasting t = 1, 2, 4, 8, 12, 16 frames, k = 1, two single covers: the clip
  split in two halves in time (``(2, 3, 3)`` masks per axis, the full-duration set for t = 16) and the
  tube set ``(1, 3, 3)`` whose masks last the whole clip (it covers every duration).
* cost: one-round passes per clip against the naive product of per-axis k-fold covers (``k^3`` times
  the single cover), and recovery's measured passes against all pairs.
* attack: the adaptive attack in 3-D on the first ``--attack-clips`` clips per (threat, mode), k = 1.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from certmask_backends.pytorch.attack import run_attack
from certmask_backends.pytorch.backend import TorchBackend
from certmask_backends.pytorch.train_video import VIDEO_MASKS_PER_AXIS, VIDEO_THREATS

from certmask_core import PatchThreat, certify, exact_minimum, lower_bound, make_maskset
from certmask_core.run.plots import _pyplot
from certmask_core.run.video import fashion_mnist_clips

MODES = ("detection", "plurality", "recovery")
CLIP = (16, 28, 28)
ATTACKED = {**{name: (patch, VIDEO_MASKS_PER_AXIS[name]) for name, patch in VIDEO_THREATS.items()},
            "large": ((16, 8, 8), (1, 3, 3))}
"""The attacked threats: the two certified above, and an 8x8 sticker in every frame (tubes of 16x16
pixels), large enough to fool the undefended model."""


_LOGITS: dict = {}  # mask set -> first-round logits (offset k = 1 is replicated k = 1; tubes serve every t)


def certify_set(backend, model, x, labels, ms, k, recovery_clips: int) -> dict:
    """Every mode on one mask set: certified accuracy, clean accuracy, passes per clip."""
    start = time.perf_counter()
    if ms not in _LOGITS:
        _LOGITS[ms] = backend.masked_predictions(model, x, ms, return_logits=True)
    logits = _LOGITS[ms]
    r = recovery_clips
    row = {"num_masks": len(ms), "mask_size": list(ms.spec.mask_size), "k": k, "recovery_clips": r}
    for mode in MODES:
        kwargs, clips = {}, len(x)
        if mode == "recovery":
            kwargs, clips = {"pair_predictor": backend.pair_predictor(model, x[:r], ms)}, r
        report = certify(logits[:clips], labels[:clips], ms, mode, k=k,
                         margin_tolerance=backend.margin_tolerance, **kwargs)
        s = report.summary()
        row[mode] = {key: s[key] for key in ("certified_accuracy", "clean_accuracy", "alert_rate",
                                             "certificate_passes_per_image", "defence_passes_per_image")}
        if mode == "recovery":
            row[mode]["all_pairs_passes"] = s["all_pairs_passes"]
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def naive_product(threat: PatchThreat, mask_size, k: int) -> int:
    """Masks of the product of per-axis k-fold 1-D covers: ``k^d prod ceil(P_i / w_i)`` (k^d-fold)."""
    return k ** threat.ndim * lower_bound(threat, mask_size, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=500, help="first N test clips (one-round modes)")
    parser.add_argument("--recovery-clips", type=int, default=100, help="first N of them for recovery")
    parser.add_argument("--attack-clips", type=int, default=4,
                        help="first N clips attacked per threat and mode")
    parser.add_argument("--attack-steps", type=int, default=5, help="PGD steps per position")
    parser.add_argument("--attack-stride", type=int, default=12, help="position grid stride (every axis)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--only-attacks", action="store_true",
                        help="keep the certification figures of OUT/video.json, redo the attacks")
    parser.add_argument("--attack-threats", nargs="+", default=list(ATTACKED), choices=list(ATTACKED))
    parser.add_argument("--out", type=Path, default=Path("results/issue14"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    backend = TorchBackend(batch_size=512)
    model = backend.load_model("bundled-video")
    clips, labels, _, source = fashion_mnist_clips("test", args.clips)
    x = clips.astype(np.float32) / 255.0
    result = {"data": {"source": source, "clips": len(x), "split": "test"}, "model": "bundled-video",
              "clean_accuracy": float((backend.predict(model, x) == labels).mean()), "vs_k": [],
              "vs_duration": [], "attacks": []}
    if args.only_attacks:
        result = json.loads((args.out / "video.json").read_text())
        result["attacks"] = [a for a in result["attacks"] if a["threat"] not in args.attack_threats]
    for name, patch in VIDEO_THREATS.items() if not args.only_attacks else ():
        threat = PatchThreat(CLIP, patch)
        size = make_maskset(threat, masks_per_axis=VIDEO_MASKS_PER_AXIS[name]).spec.mask_size
        for strategy in ("replicated", "offset"):
            for k in args.ks:
                if exact_minimum(threat, size, k) is None:
                    continue
                ms = make_maskset(threat, k, strategy, mask_size=size)
                row = certify_set(backend, model, x, labels, ms, k, args.recovery_clips)
                row.update(threat=name, patch=list(patch), strategy=strategy,
                           lower_bound=lower_bound(threat, size, k),
                           naive_product=naive_product(threat, size, k))
                result["vs_k"].append(row)
                print(json.dumps({key: row[key] for key in ("threat", "strategy", "k", "num_masks")}),
                      {mode: round(row[mode]["certified_accuracy"], 4) for mode in MODES}, flush=True)
    for duration in (1, 2, 4, 8, 12, 16) if not args.only_attacks else ():
        threat = PatchThreat(CLIP, (duration, 3, 3))
        for layout, per_axis in (("halves", (2, 3, 3)), ("tubes", (1, 3, 3))):
            ms = make_maskset(threat, masks_per_axis=per_axis)
            row = certify_set(backend, model, x, labels, ms, 1, args.recovery_clips)
            row.update(duration=duration, layout=layout, masks_per_axis=list(ms.spec.mask_size))
            result["vs_duration"].append(row)
            print(json.dumps({"duration": duration, "layout": layout, "num_masks": len(ms)}),
                  {mode: round(row[mode]["certified_accuracy"], 4) for mode in MODES}, flush=True)
    if args.attack_clips:
        for name in args.attack_threats:
            patch, per_axis = ATTACKED[name]
            for mode in MODES:
                start = time.perf_counter()
                n = args.attack_clips
                attack = run_attack(backend, model, x[:n], labels[:n], patch, 1, "patchcleanser", mode,
                                    steps=args.attack_steps, stride=args.attack_stride,
                                    masks_per_axis=per_axis)
                attack = {key: value for key, value in attack.items() if key != "per_image"}
                attack.update(threat=name, seconds=round(time.perf_counter() - start, 1),
                              attack_stride=args.attack_stride, attack_steps=args.attack_steps)
                result["attacks"].append(attack)
                shown = ("threat", "mode", "certified_accuracy", "certified_broken",
                         "empirical_robust_accuracy", "undefended_robust_accuracy", "seconds")
                print(json.dumps({key: attack[key] for key in shown}), flush=True)
    (args.out / "video.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "video.md").write_text(tables(result))
    plots(result, args.out)
    print(f"wrote {args.out}/video.json, video.md, video_vs_k.png, video_vs_duration.png")
    return 0


def tables(result: dict) -> str:
    lines = [f"Bundled 3-D CNN, first {result['data']['clips']} test clips (recovery: the first "
             f"{result['vs_k'][0]['recovery_clips']}), clean accuracy {result['clean_accuracy']:.4f}.", "",
             "| patch | strategy | k | masks | lower bound | naive product | detection | plurality "
             "| recovery | recovery passes/clip (all pairs) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["vs_k"]:
        lines.append(f"| {'x'.join(map(str, r['patch']))} | {r['strategy']} | {r['k']} | {r['num_masks']} | "
                     f"{r['lower_bound']} | {r['naive_product']} | "
                     + " | ".join(f"{r[m]['certified_accuracy']:.4f}" for m in MODES)
                     + f" | {r['recovery']['certificate_passes_per_image']:.1f} "
                       f"({r['recovery']['all_pairs_passes']}) |")
    lines += ["", "| duration t (3x3 patch) | masks | mask size | detection | plurality | recovery |",
              "|---|---|---|---|---|---|"]
    for r in result["vs_duration"]:
        lines.append(f"| {r['duration']} ({r['layout']}) | {r['num_masks']} | "
                     f"{'x'.join(map(str, r['mask_size']))} | "
                     + " | ".join(f"{r[m]['certified_accuracy']:.4f}" for m in MODES) + " |")
    if result["attacks"]:
        lines += ["", "| patch | mode | clips | certified | certified broken | empirical robust "
                  "| undefended robust |", "|---|---|---|---|---|---|---|"]
        for a in result["attacks"]:
            lines.append(f"| {'x'.join(map(str, a['patch']))} | {a['mode']} | {a['images']} | "
                         f"{a['certified_accuracy']:.2f} | {a['certified_broken']} | "
                         f"{a['empirical_robust_accuracy']:.2f} | {a['undefended_robust_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def plots(result: dict, out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, VIDEO_THREATS):
        for mode in MODES:
            for strategy, style in (("replicated", "-o"), ("offset", "--s")):
                rows = [r for r in result["vs_k"] if r["threat"] == name and r["strategy"] == strategy]
                ax.plot([r["k"] for r in rows], [r[mode]["certified_accuracy"] for r in rows], style,
                        label=f"{mode} ({strategy})")
        ax.set_title(f"patch {'x'.join(map(str, VIDEO_THREATS[name]))}")
        ax.set_xlabel("k")
        ax.set_xticks(sorted({r["k"] for r in result["vs_k"]}))
    axes[0].set_ylabel("certified accuracy (detection = plurality at k <= 2)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "video_vs_k.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for mode in MODES:
        for layout, style in (("halves", "-o"), ("tubes", "--s")):
            rows = [r for r in result["vs_duration"] if r["layout"] == layout]
            ax.plot([r["duration"] for r in rows], [r[mode]["certified_accuracy"] for r in rows], style,
                    label=f"{mode} ({layout})")
    ax.set_xlabel("patch duration t (frames), 3x3 pixels (detection and plurality coincide)")
    ax.set_ylabel("certified accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "video_vs_duration.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
