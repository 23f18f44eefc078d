"""Coverage verification: numba difference array vs the brute-force twin, and scaling.

Run: ``python -m benchmarks.bench_coverage``. Ratios come from one run on one machine.
"""
from __future__ import annotations

import time

import numpy as np

from certmask_core import MaskSet, PatchThreat, coverage_counts, coverage_counts_bruteforce, make_maskset


def _best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def random_maskset(H, W, n, patch, seed=0):
    rng = np.random.default_rng(seed)
    sizes = np.stack([rng.integers(patch, H // 4 + patch, n), rng.integers(patch, W // 4 + patch, n)], 1)
    origins = np.stack([rng.integers(0, H - sizes[:, 0] + 1), rng.integers(0, W - sizes[:, 1] + 1)], 1)
    return MaskSet((H, W), origins, sizes)


def run() -> dict:
    coverage_counts(random_maskset(64, 64, 10, 4), 4)  # compile once, outside the timings
    rows = []
    for H, n in [(256, 100), (512, 1000), (1024, 1000)]:
        ms = random_maskset(H, H, n, 16)
        t_fast, fast = _best_of(lambda ms=ms: coverage_counts(ms, 16))
        t_slow, slow = _best_of(lambda ms=ms: coverage_counts_bruteforce(ms, 16), repeats=1)
        assert (fast == slow).all()
        rows.append({"image": H, "masks": n, "numba_s": t_fast, "bruteforce_s": t_slow,
                     "speedup": t_slow / t_fast})
    scaling = []
    for H in (1024, 2048, 4096):
        threat = PatchThreat(H, 32)
        t_plan, ms = _best_of(lambda t=threat: make_maskset(t, 6, "replicated", masks_per_axis=14),
                              repeats=1)
        t_verify, counts = _best_of(lambda ms=ms, t=threat: coverage_counts(ms, t))
        scaling.append({"image": H, "masks": len(ms), "plan_s": t_plan, "verify_s": t_verify,
                        "min_coverage": int(counts.min())})
    big = random_maskset(4096, 4096, 4000, 32, seed=1)
    t_big, _ = _best_of(lambda: coverage_counts(big, 32))
    return {"kernel_vs_bruteforce": rows, "scaling": scaling,
            "random_4096_4000_masks_verify_s": t_big}


def report(res: dict) -> str:
    lines = ["| image | masks | numba (s) | brute force (s) | speedup |", "|---|---|---|---|---|"]
    lines += [f"| {r['image']}x{r['image']} | {r['masks']} | {r['numba_s']:.4f} | {r['bruteforce_s']:.3f} "
              f"| {r['speedup']:.0f}x |" for r in res["kernel_vs_bruteforce"]]
    lines += ["", "| image | replicated k=6 masks | plan + verify (s) | verify (s) | min coverage |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['image']}x{r['image']} | {r['masks']} | {r['plan_s']:.3f} | {r['verify_s']:.4f} | "
              f"{r['min_coverage']} |" for r in res["scaling"]]
    big = res["random_4096_4000_masks_verify_s"]
    lines += ["", f"4096x4096, 4000 random masks, patch 32: verify {big:.4f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
