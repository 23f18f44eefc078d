"""Run every theorem's symbolic and exhaustive check: ``python -m proofs``."""
import importlib
import sys
import time

MODULES = ["t1_covering", "t2_lower_bound", "t3_patchcleanser", "t4_replicated", "t5_offset",
           "t6_detection", "t7_covering_consensus", "t8_recovery", "t9_paper_counterexample", "t10_no_vote",
           "t11_hitting_set", "t12_plurality", "t13_covering_consensus", "t14_patch_sizes", "t15_multi_patch",
           "t16_exact_minimum", "t17_d_dimensional"]


def main() -> int:
    failed = 0
    for name in MODULES:
        mod = importlib.import_module(f"proofs.{name}")
        start = time.perf_counter()
        try:
            if mod.symbolic is not None:
                mod.symbolic()
            cases = mod.exhaustive()
            verdict = f"ok ({cases} cases)"
        except AssertionError as err:
            failed += 1
            verdict = f"FAILED {err!r}"
        print(f"{mod.THEOREM:3s} {mod.STATEMENT[:78]:78s} {verdict} [{time.perf_counter() - start:.1f} s]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
