"""Tables and figures of docs/results.md "Video: certified classification of moving Fashion-MNIST clips".

Reads what ``bash experiments/video.sh OUT`` wrote (``results.json`` of every ``certmask certify`` run,
``attack.json`` of every ``certmask attack`` run) and writes ``OUT/video.md`` (the section's tables)
and the two figures ``video_vs_k.png`` and ``video_vs_duration.png`` into IMG:

    python experiments/video_to_md.py [OUT (results/video)] [IMG (docs/img)]

Certifying is the CLI's work; what it does not report is computed here from each run's plan: the naive
product of per-axis k-fold covers (``k^d`` single covers, against the set's count) and nothing else.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from certmask_core import PatchThreat, lower_bound
from certmask_core.run.plots import _pyplot

MODES = ("detection", "plurality", "recovery")
THREATS = ("4x3x3", "16x3x3")
STRATEGIES = ("replicated", "offset")
DURATIONS = (1, 2, 4, 8, 12, 16)
ATTACKS = ("4x3x3", "16x3x3", "16x8x8")


def shape(size) -> str:
    return "x".join(map(str, size))


def naive_product(plan: dict) -> int:
    """Masks of the product of per-axis k-fold 1-D covers: ``k^d prod ceil(P_i / w_i)``, a ``k^d``-fold
    set, where one k-fold set of the same mask size needs ``k prod ceil(P_i / w_i)`` (T2)."""
    threat = PatchThreat(tuple(plan["image_size"]), tuple(plan["patch_size"]))
    return plan["k"] ** threat.ndim * lower_bound(threat, tuple(plan["mask_size"]), 1)


def load_pair(out: Path, name: str) -> tuple[dict, dict]:
    """The one-round and recovery results of one setting, checked to be of one model and one data."""
    one, rec = (json.loads((out / name / sub / "results.json").read_text())
                for sub in ("one-round", "recovery"))
    for key in ("data", "data_source", "model", "patch"):
        if one[key] != rec[key]:
            raise SystemExit(f"{name}: the one-round and recovery runs differ in {key}: {one[key]!r} vs "
                             f"{rec[key]!r}")
    # both take the first clips of the test split (--limit), so recovery's are the first of the one-round's
    if rec["images"] > one["images"]:
        raise SystemExit(f"{name}: recovery certified more clips ({rec['images']}) than the one-round modes "
                         f"({one['images']})")
    return one, rec


def rows_by(results: dict) -> dict:
    """``(strategy, k, mode) -> run`` of one results.json."""
    return {(r["strategy"], r["k"], r["mode"]): r for r in results["runs"]}


def collect(out: Path) -> dict:
    """Every figure of the section, from the runs under ``out``."""
    clips = recovery_clips = clean = None
    vs_k = []
    for name in THREATS:
        one, rec = load_pair(out, f"vs-k-{name}")
        clips, recovery_clips, clean = one["images"], rec["images"], one["undefended_accuracy"]
        runs = {**rows_by(one), **rows_by(rec)}
        for strategy in STRATEGIES:
            for k in sorted({key[1] for key in runs if key[0] == strategy}):
                plan = runs[(strategy, k, "detection")]["plan"]
                if runs[(strategy, k, "recovery")]["plan"] != plan:
                    raise SystemExit(f"vs-k-{name}: {strategy} k={k} has another set in the recovery run")
                recovery = runs[(strategy, k, "recovery")]
                vs_k.append({"threat": name, "strategy": strategy, "k": k, "num_masks": plan["num_masks"],
                             "lower_bound": plan["lower_bound"], "naive_product": naive_product(plan),
                             **{m: runs[(strategy, k, m)]["certified_accuracy"] for m in MODES},
                             "recovery_passes": recovery["certificate_passes_per_image"],
                             "all_pairs_passes": recovery["all_pairs_passes"]})
    vs_duration = []
    tubes_one, tubes_rec = load_pair(out, "tubes")
    tubes = {r["mode"]: r for r in tubes_one["runs"] + tubes_rec["runs"]}
    for t in DURATIONS:
        one, rec = load_pair(out, f"halves-t{t}")
        runs = {r["mode"]: r for r in one["runs"] + rec["runs"]}
        plan = runs["detection"]["plan"]
        vs_duration.append({"duration": t, "layout": "halves", "num_masks": plan["num_masks"],
                            "mask_size": plan["mask_size"],
                            **{m: runs[m]["certified_accuracy"] for m in MODES},
                            "recovery_passes": runs["recovery"]["certificate_passes_per_image"]})
        # the tubes run certifies every duration from its predictions (--sizes): the row of size t
        size = {m: next(s for s in tubes[m]["sizes"] if s["patch"] == [t, 3, 3]) for m in MODES}
        if not all(s["certifiable"] for s in size.values()):
            raise SystemExit(f"tubes: the set does not cover a {t}x3x3 patch")
        plan = tubes["detection"]["plan"]
        vs_duration.append({"duration": t, "layout": "tubes", "num_masks": plan["num_masks"],
                            "mask_size": plan["mask_size"],
                            **{m: size[m]["certified_accuracy"] for m in MODES},
                            "recovery_passes": tubes["recovery"]["sizes_passes_per_image"]})
    attacks = []
    for name in ATTACKS:
        for mode in MODES:
            path = out / "attack" / f"{name}-{mode}" / "attack.json"
            if path.is_file():
                attacks.append(json.loads(path.read_text()))
    return {"clips": clips, "recovery_clips": recovery_clips, "clean_accuracy": clean, "vs_k": vs_k,
            "vs_duration": vs_duration, "attacks": attacks}


def tables(result: dict) -> str:
    lines = [f"Bundled 3-D CNN, first {result['clips']} test clips (recovery: the first "
             f"{result['recovery_clips']}), clean accuracy {result['clean_accuracy']:.4f}.", "",
             "| patch | strategy | k | masks | lower bound | naive product | detection | plurality "
             "| recovery | recovery passes/clip (all pairs) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["vs_k"]:
        lines.append(f"| {r['threat']} | {r['strategy']} | {r['k']} | {r['num_masks']} | "
                     f"{r['lower_bound']} | {r['naive_product']} | "
                     + " | ".join(f"{r[m]:.4f}" for m in MODES)
                     + f" | {r['recovery_passes']:.1f} ({r['all_pairs_passes']}) |")
    lines += ["", "| duration t (3x3 patch) | masks | mask size | detection | plurality | recovery |",
              "|---|---|---|---|---|---|"]
    for r in result["vs_duration"]:
        lines.append(f"| {r['duration']} ({r['layout']}) | {r['num_masks']} | {shape(r['mask_size'])} | "
                     + " | ".join(f"{r[m]:.4f}" for m in MODES) + " |")
    if result["attacks"]:
        lines += ["", "| patch | mode | clips | certified | certified broken | empirical robust "
                  "| undefended robust |", "|---|---|---|---|---|---|---|"]
        for a in result["attacks"]:
            lines.append(f"| {shape(a['patch'])} | {a['mode']} | {a['images']} | "
                         f"{a['certified_accuracy']:.2f} | {a['certified_broken']} | "
                         f"{a['empirical_robust_accuracy']:.2f} | {a['undefended_robust_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def figures(result: dict, img: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, THREATS):
        for mode in MODES:
            for strategy, style in (("replicated", "-o"), ("offset", "--s")):
                rows = [r for r in result["vs_k"] if r["threat"] == name and r["strategy"] == strategy]
                ax.plot([r["k"] for r in rows], [r[mode] for r in rows], style, label=f"{mode} ({strategy})")
        ax.set_title(f"patch {name}")
        ax.set_xlabel("k")
        ax.set_xticks(sorted({r["k"] for r in result["vs_k"]}))
    axes[0].set_ylabel("certified accuracy (detection = plurality at k <= 2)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "video_vs_k.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for mode in MODES:
        for layout, style in (("halves", "-o"), ("tubes", "--s")):
            rows = [r for r in result["vs_duration"] if r["layout"] == layout]
            ax.plot([r["duration"] for r in rows], [r[mode] for r in rows], style, label=f"{mode} ({layout})")
    ax.set_xlabel("patch duration t (frames), 3x3 pixels (detection and plurality coincide)")
    ax.set_ylabel("certified accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "video_vs_duration.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "results/video")
    img = Path(argv[1] if len(argv) > 1 else "docs/img")
    result = collect(out)
    (out / "video.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "video.md").write_text(tables(result))
    img.mkdir(parents=True, exist_ok=True)
    figures(result, img)
    print(f"wrote {out}/video.md, video.json, {img}/video_vs_k.png, {img}/video_vs_duration.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
