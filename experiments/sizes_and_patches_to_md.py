"""Markdown tables and the figure of docs/results.md "Unknown patch size and several patches".

Reads the results.json files written by ``experiments/sizes_and_patches_results.sh``:
``python experiments/sizes_and_patches_to_md.py [results/sizes_and_patches]
[docs/img/certified_vs_patch_size.png]``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(root: Path, name: str) -> dict | None:
    path = root / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _set_name(run: dict) -> str:
    if run["strategy"].startswith("file:"):
        return {"file:multisize-3and5.json": "multi-size (3x3 + 5x5 grids)",
                "file:single-5-32masks.json": "single (5x5 grid, 4x8)"}.get(run["strategy"], run["strategy"])
    return f"{run['strategy']} k={run['k']}"


def size_table(results: list[dict]) -> str:
    sizes = [f"{h}x{w}" for h, w in results[0]["sizes"]]
    lines = ["| set | masks | mode | images | passes/img | " + " | ".join(sizes) + " |",
             "|---|---|---|---|---|" + "---|" * len(sizes)]
    for res in results:
        for run in res["runs"]:
            cells = [f"{s['certified_accuracy']:.4f}" if s.get("certifiable", s["covered"]) else "-"
                     for s in run["sizes"]]
            lines.append(f"| {_set_name(run)} | {run['plan']['num_masks']} | {run['mode']} | "
                         f"{run['images']} | {run['sizes_passes_per_image']:.1f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def two_patch_table(one_round: dict | None, recovery: dict | None) -> str:
    lines = ["| mode | images | groups | clean acc | certified acc (2 patches) | alert rate | "
             "certificate passes/img | all-pairs passes/img |", "|---|---|---|---|---|---|---|---|"]
    for res in (one_round, recovery):
        for run in (res or {}).get("runs", []):
            naive = run.get("all_pairs_passes", run["plan"]["groups"])
            lines.append(f"| {run['mode']} | {run['images']} | {run['plan']['groups']} | "
                         f"{run['clean_accuracy']:.4f} | {run['certified_accuracy']:.4f} | "
                         f"{run['alert_rate']:.4f} | {run['certificate_passes_per_image']:.1f} | {naive} |")
    return "\n".join(lines)


def figure(sizes_runs: list[dict], multi_runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, (title, results) in zip(axes[0], (("planned 5x5: certified accuracy vs patch side", sizes_runs),
                                               ("multi-size vs single set (5x5 planned)", multi_runs))):
        i = 0
        for res in results:
            for run in res["runs"]:
                squares = [(s["patch"][0], s["certified_accuracy"]) for s in run["sizes"]
                           if s["patch"][0] == s["patch"][1] and s.get("certifiable", s["covered"])]
                sides, accuracy = zip(*squares)
                ax.plot(sides, accuracy, "-o", ms=3, color=plt.cm.tab20(i % 20),
                        label=f"{_set_name(run)} {run['mode']} ({run['plan']['num_masks']} masks, "
                              f"{run['images']} img)")
                i += 1
        ax.axvline(5, color="gray", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("side of the square patch (pixels)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("certified accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5.5, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "results/sizes_and_patches")
    picture = Path(argv[1] if len(argv) > 1 else "docs/img/certified_vs_patch_size.png")
    sizes = [r for r in (_load(root, "sizes-one-round"), _load(root, "sizes-recovery")) if r]
    multi = [r for r in (_load(root, "multisize-one-round"), _load(root, "multisize-recovery")) if r]
    if sizes:
        print("### Certified accuracy against patch size\n\n" + size_table(sizes) + "\n")
    if multi:
        print("### Multi-size set against single sets\n\n" + size_table(multi) + "\n")
    two = (_load(root, "twopatch-one-round"), _load(root, "twopatch-recovery"))
    if any(two):
        print("### Two patches\n\n" + two_patch_table(*two) + "\n")
        if two[0]:
            print("Two patches by size:\n\n" + size_table([two[0]]) + "\n")
    if sizes and multi:
        figure(sizes, multi, picture)
        print(f"wrote {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
