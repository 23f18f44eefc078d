"""The core in 1-D and 3-D: fast paths against their twins, measured ratios from one run.

Run: ``python -m benchmarks.bench_ndim``.

* coverage counts: the d-axis numba difference array vs the brute-force definition;
* covering sets: the per-axis bitset intersection vs painting every position pixel by pixel;
* clips on the torch backend: masking on the device in batches vs one masked clip at a time;
* cost: the k-fold sets against the naive product of per-axis k-fold covers (``k^d`` single covers).
"""
from __future__ import annotations

import time

import numpy as np

from certmask_core import MaskSet, PatchThreat, coverage_counts, coverage_counts_bruteforce, make_maskset
from certmask_core.coverage import covering_sets
from certmask_core.reference import covering_sets_reference


def _timed(fn, repeats=3):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_boxes(image, n, patch, seed=0) -> MaskSet:
    """``n`` random boxes inside ``image``, each at least ``patch`` and at most a quarter more per axis."""
    rng = np.random.default_rng(seed)
    sizes = np.stack([rng.integers(p, min(N, p + N // 4) + 1, n) for N, p in zip(image, patch)], 1)
    origins = np.stack([rng.integers(0, N - sizes[:, i] + 1) for i, N in enumerate(image)], 1)
    return MaskSet(image, origins, sizes)


def painted_covering_sets(ms: MaskSet, patch) -> set:
    return covering_sets_reference(ms, patch)


def coverage_rows(cases=(((16384,), (64,), 2000), ((16, 112, 112), (4, 8, 8), 300),
                         ((32, 64, 64), (8, 16, 16), 1000))) -> list[dict]:
    coverage_counts(random_boxes((8, 8, 8), 4, (2, 2, 2)), (2, 2, 2))  # compile outside the timings
    rows = []
    for image, patch, n in cases:
        ms = random_boxes(image, n, patch)
        t_fast, fast = _timed(lambda ms=ms, p=patch: coverage_counts(ms, p))
        t_slow, slow = _timed(lambda ms=ms, p=patch: coverage_counts_bruteforce(ms, p), repeats=1)
        assert (fast == slow).all()
        rows.append({"image": list(image), "patch": list(patch), "masks": n, "numba_s": t_fast,
                     "bruteforce_s": t_slow, "speedup": t_slow / t_fast})
    return rows


def covering_set_rows(cases=(((8, 14, 14), (2, 3, 3), (2, 3, 3), 2), ((16, 28, 28), (4, 3, 3), (2, 3, 3), 2)),
                      ) -> list[dict]:
    rows = []
    for image, patch, per_axis, k in cases:
        ms = make_maskset(PatchThreat(image, patch), k, "replicated", masks_per_axis=per_axis)
        t_fast, fast = _timed(lambda ms=ms, p=patch: {frozenset(np.flatnonzero(r).tolist())
                                                     for r in covering_sets(MaskSet(ms.image_size, ms.origins,
                                                                                    ms.sizes), p)})
        t_slow, slow = _timed(lambda ms=ms, p=patch: painted_covering_sets(ms, p), repeats=1)
        assert fast == slow
        rows.append({"image": list(image), "patch": list(patch), "masks": len(ms), "sets": len(fast),
                     "bitsets_s": t_fast, "painted_s": t_slow, "speedup": t_slow / t_fast})
    return rows


def backend_row(clips: int = 16) -> dict:
    import torch
    from certmask_backends.pytorch.backend import TorchBackend
    backend = TorchBackend()
    model = backend.load_model("bundled-video")
    ms = make_maskset(PatchThreat((16, 28, 28), (4, 3, 3)), masks_per_axis=(2, 3, 3))
    x = np.random.default_rng(0).random((clips, 1, 16, 28, 28), dtype=np.float32)
    t_fast, fast = _timed(lambda: backend.masked_predictions(model, x, ms, return_logits=True))
    dense = ms.dense()

    def one_at_a_time():
        with torch.inference_mode():
            return np.array([[model(torch.from_numpy(np.where(h, 0.0, c)[None]).float())[0].numpy()
                              for h in dense[:, None]] for c in x])
    t_slow, slow = _timed(one_at_a_time, repeats=1)
    assert np.abs(fast - slow).max() < 1e-3 and (fast.argmax(-1) == slow.argmax(-1)).all()
    return {"clips": clips, "masks": len(ms), "batched_s": t_fast, "one_at_a_time_s": t_slow,
            "speedup": t_slow / t_fast, "masked_clips_per_s": clips * len(ms) / t_fast}


def cost_rows() -> list[dict]:
    rows = []
    for patch, per_axis in (((4, 3, 3), (2, 3, 3)), ((16, 3, 3), (1, 3, 3)), ((4, 8, 8), (3, 4, 4))):
        threat = PatchThreat((16, 28, 28), patch)
        single = make_maskset(threat, masks_per_axis=per_axis)
        for k in (2, 3, 4):
            ms = make_maskset(threat, k, "replicated", mask_size=single.spec.mask_size)
            rows.append({"patch": list(patch), "mask_size": list(single.spec.mask_size), "k": k,
                         "masks": len(ms), "naive_product": k ** 3 * len(single),
                         "saving": k ** 3 * len(single) / len(ms)})
    return rows


def report(coverage, sets, backend, cost) -> str:
    lines = ["| input | patch | masks | numba (s) | brute force (s) | speedup |", "|---|---|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, r['image']))} | {'x'.join(map(str, r['patch']))} | {r['masks']} | "
              f"{r['numba_s']:.4f} | {r['bruteforce_s']:.3f} | {r['speedup']:.0f}x |" for r in coverage]
    lines += ["", "| input | patch | masks | distinct covering sets | bitsets (s) | painted (s) | speedup |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, r['image']))} | {'x'.join(map(str, r['patch']))} | {r['masks']} | "
              f"{r['sets']} | {r['bitsets_s']:.4f} | {r['painted_s']:.2f} | {r['speedup']:.0f}x |"
              for r in sets]
    if backend:
        b = backend
        lines += ["", f"bundled-video, {b['clips']} clips x {b['masks']} masks: batched on the device "
                      f"{b['batched_s']:.3f} s ({b['masked_clips_per_s']:.0f} masked clips/s), one masked "
                      f"clip at a time {b['one_at_a_time_s']:.2f} s: {b['speedup']:.1f}x"]
    lines += ["", "| patch | mask | k | masks (exact minimum) | naive product k^3 x single cover | saving |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, r['patch']))} | {'x'.join(map(str, r['mask_size']))} | {r['k']} | "
              f"{r['masks']} | {r['naive_product']} | {r['saving']:.1f}x |" for r in cost]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(coverage_rows(), covering_set_rows(), backend_row(), cost_rows()))
