"""Compose docs/results.md tables and figures from the runs of experiments/full_results.sh.

Usage: python experiments/results_to_md.py RESULTS_DIR [DOCS_DIR]
Writes DOCS_DIR/results_tables.md (every row), DOCS_DIR/results_summary.json (no per-image rows),
DOCS_DIR/img/certified_vs_k.png (certified accuracy against k per mode, one panel per patch) and
prints the headline table of docs/results.md.
"""
import json
import sys
from pathlib import Path

from certmask_core.run.plots import certified_vs_k


def label(r):
    return "recovery (all pairs)" if r.get("certificate") == "all_pairs" else r["mode"]


def fmt(r):
    cert = r.get("certified_accuracy")
    cert_text = f"{cert:.4f}" if cert is not None else \
        f"({r['claimed_certified_accuracy_UNSOUND']:.4f} claimed, unsound)"
    return (f"| {r['strategy']} | {r['k']} | {r['plan']['num_masks']} ({r['plan']['lower_bound']}) | "
            f"{r['mode']} | {r.get('certificate', '')} | {r['clean_accuracy']:.4f} | {cert_text} | "
            f"{r['alert_rate']:.4f} | {r['certificate_passes_per_image']:.0f} | "
            f"{r.get('all_pairs_passes', '')} | {r['images_per_second']:.1f} |")


def headline(runs_by_patch: dict) -> str:
    """Certified accuracy (passes per image) per mode and k, replicated tiling, one row per patch and k."""
    modes = ["detection", "plurality", "covering_consensus", "recovery", "recovery (all pairs)"]
    lines = ["| patch | k | masks | " + " | ".join(modes) + " |", "|---" * (3 + len(modes)) + "|"]
    for patch, runs in sorted(runs_by_patch.items()):
        for k in sorted({r["k"] for r in runs}):
            cells, masks = [], ""
            for mode in modes:
                found = [r for r in runs
                         if r["k"] == k and label(r) == mode and r["strategy"] == "replicated"]
                if not found:
                    cells.append("-")
                    continue
                r = found[0]
                masks = r["plan"]["num_masks"]
                extra = f", {r['certificate_passes_per_image']:.0f} passes" if r["mode"] == "recovery" else ""
                cells.append(f"{r['certified_accuracy']:.4f} ({r['images']} img{extra})")
            lines.append(f"| {patch} | {k} | {masks} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(results_dir, docs_dir="docs"):
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    (docs_dir / "img").mkdir(parents=True, exist_ok=True)
    summary, out, by_patch = {}, [], {}
    for path in sorted(results_dir.glob("*/results.json")):
        res = json.loads(path.read_text())
        for r in res["runs"]:
            r.pop("per_image", None)
        summary[path.parent.name] = res
        p = res["patch"]
        by_patch.setdefault(f"{p[0]}x{p[1]}", []).extend(res["runs"])
        out += [f"### {path.parent.name}: patch {p[0]}x{p[1]} "
                f"({100 * p[0] * p[1] / 784:.1f} % of the image), {res['images']} images, "
                f"undefended accuracy {res['undefended_accuracy']:.4f}", "",
                "| strategy | k | masks (bound) | mode | certificate | clean acc | certified acc | "
                "alert rate | passes/img | all-pairs passes | img/s |", "|---" * 11 + "|"]
        out += [fmt(r) for r in res["runs"]] + [""]
    if not summary:
        sys.exit(f"no */results.json under {results_dir}")
    (docs_dir / "results_tables.md").write_text("\n".join(out))
    (docs_dir / "results_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    certified_vs_k(by_patch, docs_dir / "img" / "certified_vs_k.png", label)
    print(headline(by_patch))


if __name__ == "__main__":
    main(*sys.argv[1:])
