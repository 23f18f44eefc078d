"""Tables of docs/results.md "Planning for a budget and choosing k from data" from the
``tune.json`` files of ``experiments/tune_results.sh``; copies the front plots to docs/img.

Run: ``python experiments/tune_to_md.py [results] [docs]`` (prints the section's tables).
"""
import json
import shutil
import sys
from pathlib import Path

MODES = ("detection", "plurality", "covering_consensus", "recovery")


def _name(c):
    return f"{c['strategy']} k={c['k']} {c['mask_size'][0]}x{c['mask_size'][1]} ({c['num_masks']} masks)"


def best_per_k(results):
    """Per mode and k: the best certified accuracy any candidate of that k reaches within the budget."""
    ks = sorted({c["k"] for c in results["candidates"]})
    lines = ["| mode | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for mode in MODES:
        cells = []
        for k in ks:
            got = [c for c in results["candidates"] if c["k"] == k and mode in c["modes"]]
            if not got:
                cells.append("-")
                continue
            best = max(got, key=lambda c: (c["modes"][mode]["certified_accuracy"], -c["num_masks"]))
            cells.append(f"{best['modes'][mode]['certified_accuracy']:.3f} ({best['num_masks']})")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def offset_vs_replicated(results):
    """Same k and mask size, both at the exact minimum: mean clean and certified accuracy."""
    pairs = {}
    for c in results["candidates"]:
        if c["strategy"] in ("replicated", "offset"):
            pairs.setdefault((c["k"], tuple(c["mask_size"])), {})[c["strategy"]] = c
    both = [p for p in pairs.values() if len(p) == 2]
    lines = ["| mode | settings | clean replicated | clean offset | certified replicated | "
             "certified offset |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        rows = [p for p in both if mode in p["replicated"]["modes"] and mode in p["offset"]["modes"]]
        if not rows:
            continue
        means = [sum(p[strategy]["modes"][mode][key] for p in rows) / len(rows)
                 for key in ("clean_accuracy", "certified_accuracy") for strategy in ("replicated", "offset")]
        lines.append(f"| {mode} | {len(rows)} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    return "\n".join(lines)


def main(results_dir="results", docs="docs"):
    for p in (3, 5):
        path = Path(results_dir) / f"tune_p{p}" / "tune.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        print(f"### {p}x{p} patch\n")
        print((path.parent / "tune.md").read_text())
        print(f"Best certified accuracy per k within the budget (masks):\n\n{best_per_k(results)}\n")
        print(f"Offset against replicated at the same k and mask size:\n\n{offset_vs_replicated(results)}\n")
        shutil.copy(path.parent / "tune_front.png", Path(docs) / "img" / f"tune_front_p{p}.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
