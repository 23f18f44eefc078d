"""Markdown tables of experiments/attack_sizes_and_patches.sh's results.

Usage: python experiments/attack_sizes_and_patches_to_md.py [OUT_DIR]
(default results/attack_sizes_and_patches)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _size(patch) -> str:
    return f"{patch[0]}x{patch[1]}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "results/attack_sizes_and_patches")
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/attack.json"))}
    two = [r for name, r in runs.items() if name.startswith("two_")]
    size = [r for name, r in runs.items() if name.startswith("size_")]
    if two:
        print("Two patches (all pairs of masks as groups)\n")
        print("| mode | patches | masks / groups | images | certified | empirical robust | certified broken "
              "| undefended robust (2 patches) | runtime |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in two:
            print(f"| {r['mode']} | 2 x {_size(r['patch'])} | {r['num_masks']} / {r['num_groups']} "
                  f"| {r['images']} | {_pct(r['certified_accuracy'])} "
                  f"| {_pct(r['empirical_robust_accuracy'])} | {r['certified_broken']} "
                  f"| {_pct(r['undefended_robust_accuracy'])} | {r['runtime_s']} s |")
        print()
    if size:
        print("Misestimated patch size (set planned for the smaller size)\n")
        print("| mode | planned | true | true size covered | images | certified (planned) "
              "| certified (true size) | attack success on planned-certified | certified broken "
              "| empirical robust | undefended robust (true size) | runtime |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(size, key=lambda r: r["true_patch"]):
            print(f"| {r['mode']} | {_size(r['patch'])} | {_size(r['true_patch'])} "
                  f"| {'yes' if r['true_size_covered'] else 'no'} | {r['images']} "
                  f"| {_pct(r['certified_planned_accuracy'])} | {_pct(r['certified_true_size_accuracy'])} "
                  f"| {_pct(r['attack_success_on_planned_certified'])} ({r['planned_certified_broken']}"
                  f"/{r['certified_planned']}) | {r['certified_broken']} "
                  f"| {_pct(r['empirical_robust_accuracy'])} | {_pct(r['undefended_robust_accuracy'])} "
                  f"| {r['runtime_s']} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
