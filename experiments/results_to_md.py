"""Compose docs/results.md tables and figures from the runs of experiments/full_results.sh.

Usage: python experiments/results_to_md.py RESULTS_DIR [DOCS_DIR]
Writes DOCS_DIR/results_tables.md, DOCS_DIR/results_summary.json (no per-image rows) and
DOCS_DIR/img/accuracy_vs_k_p*.png.
"""
import json
import sys
from pathlib import Path

from certmask_core.plots import accuracy_vs_k


def fmt(r):
    cert = r.get("certified_accuracy")
    cert_text = f"{cert:.4f}" if cert is not None else \
        f"({r['claimed_certified_accuracy_UNSOUND']:.4f} claimed, unsound)"
    return (f"| {r['strategy']} | {r['k']} | {r['plan']['num_masks']} ({r['plan']['lower_bound']}) | "
            f"{r['mode']} | {r['clean_accuracy']:.4f} | {cert_text} | {r['alert_rate']:.4f} | "
            f"{r['certificate_passes_per_image']:.0f} | {r['images_per_second']:.0f} |")


def main(results_dir, docs_dir="docs"):
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    (docs_dir / "img").mkdir(parents=True, exist_ok=True)
    summary, out = {}, []
    for path in sorted(results_dir.glob("*/results.json")):
        res = json.loads(path.read_text())
        for r in res["runs"]:
            r.pop("per_image", None)
        summary[path.parent.name] = res
        p = res["patch"]
        out += [f"### {path.parent.name}: patch {p[0]}x{p[1]} "
                f"({100 * p[0] * p[1] / 784:.1f} % of the image), {res['images']} images, "
                f"undefended accuracy {res['undefended_accuracy']:.4f}", "",
                "| strategy | k | masks (bound) | mode | clean acc | certified acc | alert rate | "
                "passes/img | img/s |", "|---|---|---|---|---|---|---|---|---|"]
        out += [fmt(r) for r in res["runs"]] + [""]
        if path.parent.name.startswith("oneround"):
            accuracy_vs_k(res, docs_dir / "img" / f"accuracy_vs_k_p{p[0]}.png")
    (docs_dir / "results_tables.md").write_text("\n".join(out))
    (docs_dir / "results_summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
