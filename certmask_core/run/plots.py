"""PNG figures (matplotlib, the ``plot`` extra): mask layouts, coverage heatmaps, accuracy vs k."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..coverage import coverage_counts
from ..errors import CertMaskError
from ..geometry import MaskSet


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CertMaskError("plots need matplotlib: pip install 'certmask[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plan_figure(maskset: MaskSet, patch, path) -> None:
    """Mask layout (every rectangle outlined) beside the coverage heatmap over patch positions."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle
    counts = coverage_counts(maskset, patch)
    H, W = maskset.image_size
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    ax1.set_xlim(0, W)
    ax1.set_ylim(H, 0)
    ax1.set_aspect("equal")
    colors = plt.cm.tab10(np.arange(len(maskset)) % 10)
    for (y, x), (h, w), c in zip(maskset.origins, maskset.sizes, colors):
        ax1.add_patch(Rectangle((x, y), w, h, fill=True, alpha=0.08, facecolor=c, edgecolor=c, lw=1))
    ax1.set_title(f"{len(maskset)} masks on {H}x{W}")
    im = ax2.imshow(counts, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax2, label="masks covering the patch")
    ax2.set_title(f"coverage per patch position (min {counts.min()}, max {counts.max()})")
    ax2.set_xlabel("b (patch column)")
    ax2.set_ylabel("a (patch row)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_k(results: dict, path) -> None:
    """Clean (dashed) and certified (solid) accuracy against k, one colour per strategy and mode."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict = {}
    for r in results["runs"]:
        groups.setdefault((r["strategy"], r["mode"]), []).append(r)
    for i, ((strategy, mode), runs) in enumerate(sorted(groups.items())):
        runs.sort(key=lambda r: r["k"])
        ks = [r["k"] for r in runs]
        color = plt.cm.tab10(i % 10)
        ax.plot(ks, [r["clean_accuracy"] for r in runs], "--o", color=color, ms=3,
                label=f"{strategy}/{mode} clean")
        if runs[0].get("certified_accuracy") is not None:  # unsound modes get no certified curve
            ax.plot(ks, [r["certified_accuracy"] for r in runs], "-s", color=color, ms=3,
                    label=f"{strategy}/{mode} certified")
    ax.axhline(results["undefended_accuracy"], color="gray", lw=0.8, label="undefended")
    ax.set_xlabel("k (coverage multiplicity)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"patch {results['patch'][0]}x{results['patch'][1]}, {results['images']} images")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def certified_vs_k(runs_by_patch: dict, path, label=lambda r: r["mode"]) -> None:
    """Certified accuracy against k per mode, one panel per patch (replicated solid, offset dashed).

    ``runs_by_patch`` maps a patch name to the ``runs`` of results.json; ``label(run)`` names a curve
    (e.g. to tell recovery's two certificates apart). Unsound modes get no curve.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs_by_patch), figsize=(4.6 * len(runs_by_patch), 4.2), squeeze=False)
    names = sorted({label(r) for runs in runs_by_patch.values() for r in runs})
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for ax, (patch, runs) in zip(axes[0], sorted(runs_by_patch.items())):
        groups: dict = {}
        for r in runs:
            if r.get("certified_accuracy") is not None:
                groups.setdefault((label(r), r["strategy"]), []).append(r)
        for (name, strategy), group in sorted(groups.items()):
            group.sort(key=lambda r: r["k"])
            ax.plot([r["k"] for r in group], [r["certified_accuracy"] for r in group],
                    "-o" if strategy == "replicated" else "--^", color=colors[name], ms=3,
                    label=f"{name} ({strategy}, {group[0]['images']} img)")
        ax.set_title(f"patch {patch}")
        ax.set_xlabel("k (coverage multiplicity)")
        ax.set_ylabel("certified accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def certified_vs_size(results: dict, path) -> None:
    """Certified accuracy against the side of a square patch, one curve per run (T14).

    Every square size of ``results["sizes"]`` the run can certify is a point; a curve ends where the
    set stops covering (nothing is certified beyond). The planned patch is marked. Non-square sizes
    are in ``results.md``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(run for run in results["runs"] if "sizes" in run):
        squares = [(s["patch"][0], s["certified_accuracy"]) for s in r["sizes"]
                   if s["patch"][0] == s["patch"][1] and s["certifiable"]]
        if squares:
            sides, accuracy = zip(*squares)
            ax.plot(sides, accuracy, "-o", ms=3, color=plt.cm.tab10(i % 10),
                    label=f"{r['strategy']} k={r['k']} {r['mode']}")
    ax.axvline(results["patch"][0], color="gray", lw=0.8, ls="--", label="planned patch")
    several = f" ({results['patches']} patches)" if results.get("patches", 1) > 1 else ""
    ax.set_xlabel("side of the square patch (pixels)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("certified accuracy")
    ax.set_title(f"planned {results['patch'][0]}x{results['patch'][1]}{several}, {results['images']} images")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def example_titles(outputs: Sequence, class_names: Sequence[str], labels: Sequence | None = None,
                   certified: Sequence | None = None) -> list[str]:
    """The title of each example: its true label, the defended output and whether it is certified.

    >>> example_titles([0, -1], ["cat", "dog"], labels=[0, 1], certified=[True, False])
    ['true cat\\nout cat\\ncertified', 'true dog\\nout ALERT\\nnot certified']
    """
    def name(c) -> str:
        c = int(c)
        return "ALERT" if c == -1 else class_names[c] if 0 <= c < len(class_names) else str(c)

    titles = []
    for i, out in enumerate(outputs):
        parts = [] if labels is None else [f"true {name(labels[i])}"]
        parts.append(f"out {name(out)}")
        if certified is not None:
            parts.append("certified" if certified[i] else "not certified")
        titles.append("\n".join(parts))
    return titles


def example_images(images: np.ndarray, maskset: MaskSet, outputs: Sequence, class_names: Sequence[str],
                   path, patch_boxes: Sequence | None = None, labels: Sequence | None = None,
                   certified: Sequence | None = None, title: str | None = None) -> None:
    """A row of images with every mask outlined; each titled by :func:`example_titles` (true label
    when ``labels`` are given, defended output, certified or not when ``certified`` is given), the
    figure by ``title`` (e.g. the run it shows).

    ``patch_boxes[i]``, when given, lists the ``((a, b), (ph, pw))`` patches of image ``i`` (outlined in red).
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle
    n = len(images)
    titles = example_titles(outputs[:n], class_names, labels, certified)
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.0 + 0.25 * lines + (0.35 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i, 0] if images.shape[1] == 1 else images[i].transpose(1, 2, 0),
                  cmap="gray", vmin=0, vmax=1)
        for (y, x), (h, w) in zip(maskset.origins, maskset.sizes):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="tab:cyan",
                                   lw=0.4, alpha=0.6))
        for (a, b), (ph, pw) in (patch_boxes[i] if patch_boxes is not None else ()):
            ax.add_patch(Rectangle((b - 0.5, a - 0.5), pw, ph, fill=False, edgecolor="red", lw=1.2))
        ok = certified is None or bool(certified[i])
        ax.set_title(titles[i], fontsize=7, color="black" if ok else "tab:red")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tune_front(results: dict, path) -> None:
    """Certified accuracy against passes per image for every tuned candidate (dots), the Pareto front
    (line) and the recommended setting (star), one panel per mode."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    modes = list(results["fronts"])
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.8), squeeze=False)
    color = {"patchcleanser": "tab:gray", "replicated": "tab:blue", "offset": "tab:orange"}
    for ax, mode in zip(axes[0], modes):
        for c in results["candidates"]:
            if mode in c["modes"]:
                ax.scatter(c["modes"][mode]["passes"], c["modes"][mode]["certified_accuracy"], s=10,
                           color=color.get(c["strategy"], "k"), alpha=0.6)
        front = [results["candidates"][i]["modes"][mode] for i in results["fronts"][mode]]
        ax.plot([p["passes"] for p in front], [p["certified_accuracy"] for p in front], "-", color="k", lw=1)
        best = results["candidates"][results["recommended"][mode]]
        ax.scatter(best["modes"][mode]["passes"], best["modes"][mode]["certified_accuracy"], marker="*",
                   s=160, color="tab:red", zorder=3,
                   label=f"{best['strategy']} k={best['k']} {best['mask_size'][0]}x{best['mask_size'][1]}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("forward passes per image" + (" (worst case)" if mode == "recovery" else ""))
        ax.set_ylabel("certified accuracy")
        ax.set_title(mode)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    fig.suptitle(f"patch {results['patch'][0]}x{results['patch'][1]}, {results['images']} tuning images "
                 "(gray patchcleanser, blue replicated, orange offset)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
