"""Tabulate experiments/train_ablation.sh: ``python experiments/ablation_to_md.py results/ablation``.

Prints a Markdown table (one row per recipe and patch) and writes ``ablation.json`` beside the runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RECIPES = [("none", "no augmentation"), ("cutout", "random Cutout (12x12)"),
           ("single", "mask set, single masks"), ("pairs", "mask set, single + pairs"),
           ("greedy", "greedy worst-case masks (4 + 4 scored)")]


def main(root: str) -> None:
    root = Path(root)
    rows = []
    for patch in (3, 5):
        for key, title in RECIPES:
            name = key if key in ("none", "cutout") else f"{key}-p{patch}"
            files = [root / name / "train.json", root / name / f"detection-p{patch}" / "results.json",
                     root / name / f"recovery-p{patch}" / "results.json"]
            if not all(f.is_file() for f in files):
                continue
            record, detection, recovery = (json.loads(f.read_text()) for f in files)
            rows.append({"recipe": title, "model": name, "patch": patch,
                         "detection_images": detection["images"], "recovery_images": recovery["images"],
                         "clean_accuracy": detection["undefended_accuracy"],
                         "detection_certified": detection["runs"][0]["certified_accuracy"],
                         "recovery_certified": recovery["runs"][0]["certified_accuracy"],
                         "recovery_clean": recovery["runs"][0]["clean_accuracy"],
                         "recovery_passes": recovery["runs"][0]["certificate_passes_per_image"],
                         "train_seconds": record["train_seconds"], "step_seconds": record["step_seconds"],
                         "scoring_passes": record.get("greedy_scoring_passes_per_image", 0.0),
                         "command": record["command"]})
    (root / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| patch | recipe | clean acc | detection certified | recovery certified | recovery clean | "
          "recovery passes/img | train time (s) | s/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['patch']}x{r['patch']} | {r['recipe']} | {r['clean_accuracy']:.4f} | "
              f"{r['detection_certified']:.4f} | {r['recovery_certified']:.4f} | {r['recovery_clean']:.4f} | "
              f"{r['recovery_passes']:.1f} | {r['train_seconds']:.0f} | {r['step_seconds']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/ablation")
