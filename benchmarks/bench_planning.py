"""Planning for a budget: the closed forms against their slow twins, measured in one run.

* ``minimum``: :func:`exact_minimum` (closed form, T16) against scipy's integer program on the same
  geometries (:func:`certmask_core.reference.milp_minimum`; the counts must be equal) and the seconds
  of each.
* ``planner``: :func:`plan_layouts` (every window size priced by the closed form) against building
  and verifying the set of every window size with :func:`make_maskset`
  (:func:`certmask_core.reference.front_by_building`; the fronts must be equal).
* ``offset``: masks of the rebuilt offset against the first release's stride grid (re-derived here
  from its definition) and the exact minimum, over a 28x28 sweep (3x3 patch, 2..8 masks per axis,
  k = 1..6).

Run: ``python -m benchmarks.bench_planning``. Ratios come from one run on one machine.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np

from certmask_core import PatchThreat, exact_minimum, make_maskset, plan_layouts
from certmask_core.reference import front_by_building, milp_minimum


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def minimum(max_positions: int = 5) -> dict:
    cases = [((P_h, P_w), (w_h, w_w), k)
             for P_h, P_w in itertools.product(range(2, max_positions + 1), repeat=2)
             for w_h, w_w in itertools.product(range(1, P_h + 1), range(1, P_w + 1))
             for k in range(1, w_h * w_w + 1)]
    t_closed, closed = _timed(lambda: [exact_minimum(PatchThreat(P, 1), w, k) for P, w, k in cases])
    t_milp, solved = _timed(lambda: [milp_minimum(P, w, k) for P, w, k in cases])
    assert closed == solved
    return {"cases": len(cases), "closed_form_s": round(t_closed, 4), "milp_s": round(t_milp, 3),
            "speedup": round(t_milp / t_closed, 1)}


def planner(image: int = 64, patch: int = 5, k: int = 3) -> dict:
    threat = PatchThreat(image, patch)
    t_plan, layouts = _timed(lambda: plan_layouts(threat, k))
    t_build, front = _timed(lambda: front_by_building(threat, k, make_maskset))
    assert front == [(d["num_masks"], d["mask_size"]) for d in layouts]
    return {"image": image, "patch": patch, "k": k, "layouts": len(layouts), "planner_s": round(t_plan, 4),
            "build_every_size_s": round(t_build, 3), "speedup": round(t_build / t_plan, 1)}


def _stride_grid_count(P: int, w: int, k: int) -> int | None:
    """The first release's 1-D offset: one grid of stride floor(w / k), best phase, end windows dropped."""
    w = min(w, P)
    if k > w:
        return None
    s, best = w // k, None
    for phase in range(s):
        starts = range(phase - ((w - 1 + phase) // s) * s, P, s)
        wins = sorted({(max(a, 0), min(a + w - 1, P - 1)) for a in starts})

        def covered(ws):
            c = np.zeros(P, int)
            for a0, a1 in ws:
                c[a0:a1 + 1] += 1
            return c.min() >= k
        for end in (0, -1):
            while len(wins) > k and covered(wins[1:] if end == 0 else wins[:-1]):
                wins = wins[1:] if end == 0 else wins[:-1]
        if covered(wins) and (best is None or len(wins) < best):
            best = len(wins)
    return best


def offset(image: int = 28, patch: int = 3) -> dict:
    threat = PatchThreat(image, patch)
    rows, above = [], 0
    for n_axis, k in itertools.product(range(2, 9), range(1, 7)):
        size = make_maskset(threat, 1, "patchcleanser", masks_per_axis=n_axis).spec.mask_size
        if exact_minimum(threat, size, k) is None:
            continue  # no distinct k-fold set of this size
        w, P = size[0] - patch + 1, threat.num_positions[0]
        old = [_stride_grid_count(P, w, k_h) * _stride_grid_count(P, w, math.ceil(k / k_h))
               for k_h in range(1, k + 1) if _stride_grid_count(P, w, k_h) and
               _stride_grid_count(P, w, math.ceil(k / k_h))]
        best_old = min(old) if old else None
        new = len(make_maskset(threat, k, "offset", mask_size=size))
        assert new == exact_minimum(threat, size, k)
        above += best_old is not None and best_old > new
        rows.append({"masks_per_axis": n_axis, "k": k, "stride_grid": best_old, "offset": new})
    worst = max((r for r in rows if r["stride_grid"]), key=lambda r: r["stride_grid"] / r["offset"])
    return {"image": image, "patch": patch, "cases": len(rows), "stride_grid_above_minimum": above,
            "worst": worst, "worst_ratio": round(worst["stride_grid"] / worst["offset"], 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-positions", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps({"minimum": minimum(args.max_positions), "planner": planner(), "offset": offset()},
                     indent=1))


if __name__ == "__main__":
    main()
