"""Choosing k, the strategy and the mask size from data (the paper's open question 3).

On a held-out slice of the user's data, every candidate of
:func:`~certmask_core.planning.tune_candidates` is certified with every sound mode. Each distinct mask
is evaluated once for all candidates (candidates of one mask size share most of their masks) and each
pair once for every recovery candidate. The result is, per mode, the Pareto front of certified
accuracy against forward passes per image and one recommended setting, optionally checked on images
it was not tuned on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..certification import DEFAULT_MARGIN_TOLERANCE, SOUND, certify
from ..constructions import make_maskset, union_maskset
from ..errors import CertMaskError
from ..geometry import PatchThreat
from ..planning import pareto_front, tune_candidates
from ..sizes import PairCache
from ..validation import distinct_list, shape_text
from .files import write_atomically
from .progress import progress_bar

SOUND_MODES = tuple(mode for mode, sound in SOUND.items() if sound)


def _columns(maskset, index: dict) -> np.ndarray:
    return np.array([index[tuple(r)] for r in maskset.rectangles().tolist()], dtype=np.int64)


def _pairs_through(cache: PairCache, columns: np.ndarray, asked: list):
    """A pair predictor for one candidate: its mask indices mapped into the shared union set; counts
    the pairs it is asked in ``asked[0]``."""
    def many(image_indices, pairs):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        asked[0] += len(pairs)
        return cache.many(image_indices, columns[pairs])

    def predict(index, pairs):
        return many(np.full(len(np.asarray(pairs).reshape(-1, 2)), index), pairs)

    predict.many = many
    return predict


def _recommend(points: list[dict], images: int) -> tuple[int, int]:
    """The cheapest point within one standard error of the best certified accuracy (the one-standard-
    error rule: differences smaller than the slice's sampling noise do not buy passes), and the most
    accurate point (the cheapest of those)."""
    def cheapest(ids):
        return min(ids, key=lambda i: (points[i]["passes"], -points[i]["certified_accuracy"]))
    best = max(p["certified_accuracy"] for p in points)
    margin = math.sqrt(max(best * (1 - best), 0.0) / max(images, 1))
    return (cheapest([i for i, p in enumerate(points) if p["certified_accuracy"] >= best - margin]),
            cheapest([i for i, p in enumerate(points) if p["certified_accuracy"] == best]))


def tune(backend, model, images: np.ndarray, labels: np.ndarray, patch, budget: int, *, ks=(1, 2, 3, 4),
         strategies=("patchcleanser", "replicated", "offset"), modes=SOUND_MODES, shape: str = "square",
         margin_tolerance: float = DEFAULT_MARGIN_TOLERANCE, check_images: np.ndarray | None = None,
         check_labels: np.ndarray | None = None, show_progress: bool | None = None) -> dict:
    """Certify every candidate setting within ``budget`` passes per image and recommend one per mode.

    Parameters
    ----------
    backend
        Has ``masked_predictions``, ``pair_predictor`` and ``predict`` (e.g. ``TorchBackend``).
    model
        What the backend runs.
    images : ndarray, shape (N, C, *spatial)
        The held-out tuning slice (images, clips or signals); labels : ndarray, shape (N,).
    patch : tuple of int
        One size per spatial axis.
    budget : int
        Forward passes per image a setting may cost: ``n`` masks for one round, ``n + n (n - 1) / 2``
        (the worst case) for ``recovery``.
    ks, strategies, shape
        The search space (see :func:`~certmask_core.planning.tune_candidates`).
    modes : sequence of str
        Sound modes to certify (``paper`` is refused: it certifies nothing).
    check_images, check_labels : ndarray, optional
        Images not used for tuning: each mode's recommended setting is certified on them too.

    Returns
    -------
    dict
        JSON-ready: ``candidates`` (layout, per-mode certified and clean accuracy, passes), ``fronts``,
        ``recommended`` and ``most_accurate`` (candidate indices per mode), ``check`` (per mode, both
        settings' certified accuracy on the check images), and the reuse figures ``unique_masks`` against
        ``candidate_masks`` and ``pairs_evaluated`` against ``pairs_asked``.
    """
    modes = distinct_list("modes", modes)
    if not modes or any(m not in SOUND_MODES for m in modes):
        raise CertMaskError(f"tune certifies the sound modes {SOUND_MODES}, got {modes}")
    images, labels = _checked_data(images, labels, "images")
    threat = PatchThreat(images.shape[2:], patch)
    if (check_images is None) != (check_labels is None):
        raise CertMaskError("check_images and check_labels go together")
    if check_images is not None:
        check_images, check_labels = _checked_data(check_images, check_labels, "check_images")
        if check_images.shape[1:] != images.shape[1:]:
            raise CertMaskError(f"check_images {check_images.shape} do not match the tuning images "
                                f"{images.shape}")
    layouts = tune_candidates(threat, budget, ks, strategies, shape)
    sets = [make_maskset(threat, d["k"], d["strategy"], mask_size=tuple(d["mask_size"])) for d in layouts]
    union = union_maskset(sets)
    index = {tuple(r): i for i, r in enumerate(union.rectangles().tolist())}
    with progress_bar(len(images) * len(union), "tune: masked predictions (image x mask)",
                      show_progress) as bar:
        chunks = []
        for start in range(0, len(images), 256):
            chunks.append(backend.masked_predictions(model, images[start:start + 256], union,
                                                     return_logits=True))
            bar.update(len(chunks[-1]) * len(union))
    logits = np.concatenate(chunks)
    if logits.ndim != 3 or logits.shape[:2] != (len(images), len(union)):
        raise CertMaskError(f"the backend's masked_predictions returned shape {logits.shape}, not logits "
                            f"({len(images)}, {len(union)}, K) for {len(images)} images and {len(union)} "
                            f"masks")
    cache = PairCache(backend.pair_predictor(model, images, union, return_logits=True), len(images))
    candidates, asked = [], [0]
    with progress_bar(len(sets) * len(modes), "tune: certify (candidate x mode)", show_progress) as bar:
        for layout, ms in zip(layouts, sets):
            columns = _columns(ms, index)
            entry = {**layout, "modes": {}}
            for mode in modes:
                bar.update(1)
                recovery = mode == "recovery"
                if (layout["passes_recovery_worst"] if recovery else layout["num_masks"]) > budget:
                    continue
                report = certify(logits[:, columns], labels, ms, mode, k=layout["k"],
                                 margin_tolerance=margin_tolerance,
                                 pair_predictor=_pairs_through(cache, columns, asked) if recovery else None)
                s = report.summary()
                entry["modes"][mode] = {
                    "certified_accuracy": s["certified_accuracy"], "clean_accuracy": s["clean_accuracy"],
                    "alert_rate": s["alert_rate"],
                    "certificate_passes_per_image": s["certificate_passes_per_image"],
                    "passes": layout["passes_recovery_worst"] if recovery else layout["num_masks"]}
            candidates.append(entry)
    fronts, recommended, most_accurate = {}, {}, {}
    for mode in modes:
        ids = [i for i, c in enumerate(candidates) if mode in c["modes"]]
        if not ids:
            continue
        points = [candidates[i]["modes"][mode] for i in ids]
        front = pareto_front([p["passes"] for p in points], [p["certified_accuracy"] for p in points])
        fronts[mode] = [ids[i] for i in front]
        chosen, best = _recommend(points, len(images))
        recommended[mode], most_accurate[mode] = ids[chosen], ids[best]
    results = {"image_size": list(threat.image_size), "patch": list(threat.patch_size), "budget": budget,
               "ks": [int(k) for k in ks], "strategies": list(strategies), "shape": shape,
               "modes": list(modes),
               "images": len(images), "margin_tolerance": margin_tolerance, "candidates": candidates,
               "fronts": fronts, "recommended": recommended, "most_accurate": most_accurate,
               "unique_masks": len(union), "candidate_masks": int(sum(len(ms) for ms in sets)),
               "pairs_asked": asked[0], "pairs_evaluated": int(cache.evaluated.sum())}
    if check_images is not None:
        results["check"] = _check(backend, model, check_images, check_labels, sets, candidates,
                                  {mode: (recommended[mode], most_accurate[mode]) for mode in recommended},
                                  margin_tolerance)
    return results


def _checked_data(images, labels, name: str):
    try:
        images, labels = np.asarray(images), np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise CertMaskError(f"{name} and their labels must be arrays: {err}") from None
    if images.ndim < 3 or labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
        raise CertMaskError(f"{name} must be a non-empty (N, C, *spatial) array with N labels, got shapes "
                            f"{images.shape} and {labels.shape}")
    return images, labels


def _check(backend, model, images, labels, sets, candidates, chosen, margin_tolerance) -> dict:
    """Per mode, the recommended and the most accurate setting certified on images not tuned on; each
    chosen set's one-mask predictions are computed once for every mode and role."""
    predictions, summaries, out = {}, {}, {}
    for mode, roles in chosen.items():
        out[mode] = {}
        for role, i in zip(("recommended", "most_accurate"), roles):
            c, ms = candidates[i], sets[i]
            if i not in predictions:
                predictions[i] = backend.masked_predictions(model, images, ms, return_logits=True)
            if (mode, i) not in summaries:
                summaries[mode, i] = certify(
                    predictions[i], labels, ms, mode, k=c["k"], margin_tolerance=margin_tolerance,
                    pair_predictor=(backend.pair_predictor(model, images, ms, return_logits=True)
                                    if mode == "recovery" else None)).summary()
            s = summaries[mode, i]
            out[mode][role] = {"candidate": i, "images": len(images), "clean_accuracy": s["clean_accuracy"],
                               "certified_accuracy": s["certified_accuracy"],
                               "tuned_certified_accuracy": c["modes"][mode]["certified_accuracy"],
                               "certificate_passes_per_image": s["certificate_passes_per_image"]}
    return out


def _name(c: dict) -> str:
    return f"{c['strategy']} k={c['k']} {shape_text(c['mask_size'])} ({c['num_masks']} masks)"


def tune_table(results: dict) -> str:
    """The fronts, recommendations and check as Markdown."""
    lines = [f"tune: patch {shape_text(results['patch'])} on {shape_text(results['image_size'])}, "
             f"{results['images']} tuning images, budget "
             f"{results['budget']} passes/image; {len(results['candidates'])} candidates, "
             f"{results['unique_masks']} distinct masks evaluated for {results['candidate_masks']} candidate "
             f"masks; recovery pairs evaluated {results['pairs_evaluated']} of {results['pairs_asked']} "
             "asked", ""]
    for mode, front in results["fronts"].items():
        lines += [f"Pareto front, {mode} (passes = "
                  + ("n + n(n-1)/2, the worst case)" if mode == "recovery" else "n masks)"), "",
                  "| setting | passes/img | certified acc | clean acc | |", "|---|---|---|---|---|"]
        for i in front:
            c = results["candidates"][i]
            m = c["modes"][mode]
            mark = "recommended" if results["recommended"][mode] == i else ""
            lines.append(f"| {_name(c)} | {m['passes']} | {m['certified_accuracy']:.4f} | "
                         f"{m['clean_accuracy']:.4f} | {mark} |")
        i = results["recommended"][mode]
        if i not in front:
            c = results["candidates"][i]
            m = c["modes"][mode]
            lines.append(f"| {_name(c)} | {m['passes']} | {m['certified_accuracy']:.4f} | "
                         f"{m['clean_accuracy']:.4f} | recommended |")
        lines.append("")
    if "check" in results:
        lines += ["Recommended (cheapest within one standard error) and most accurate settings on images not "
                  "used for tuning", "",
                  "| mode | setting | passes/img | tuned certified | held-out certified | held-out images |",
                  "|---|---|---|---|---|---|"]
        for mode, roles in results["check"].items():
            for role, c in roles.items():
                candidate = results["candidates"][c["candidate"]]
                lines.append(f"| {mode} ({role.replace('_', ' ')}) | {_name(candidate)} | "
                             f"{candidate['modes'][mode]['passes']} | {c['tuned_certified_accuracy']:.4f} | "
                             f"{c['certified_accuracy']:.4f} | {c['images']} |")
    return "\n".join(lines) + "\n"


def check_tune_out(out_dir) -> Path:
    """The output folder, refused when it is a file or a non-empty folder no tune run wrote."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CertMaskError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "tune.json").exists():
        raise CertMaskError(f"{str(out)!r} exists and holds no tune.json; not overwriting it")
    return out


def write_tune(results: dict, out_dir, plots: bool = True) -> Path:
    """``tune.json``, ``tune.md`` and ``tune_front.png`` in ``out_dir`` (refuses a foreign folder)."""
    out = check_tune_out(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        (tmp / "tune.md").write_text(tune_table(results))
        if plots:
            from .plots import tune_front
            tune_front(results, tmp / "tune_front.png")
        (tmp / "tune.json").write_text(json.dumps(results, indent=1) + "\n")
    write_atomically(out, write, last="tune.json")
    return out
