"""Run every benchmark: ``python -m benchmarks [--device cuda ...]`` (flags go to bench_inference).

Prints the coverage tables and the inference JSON; docs/benchmarks.md records a run.
"""
import sys

from . import bench_coverage, bench_decisions, bench_inference

if __name__ == "__main__":
    print("## coverage verification and planning\n")
    print(bench_coverage.report(bench_coverage.run()))
    print("\n## the decision core at scale\n")
    bench_decisions.main([])
    print("\n## certification throughput\n")
    bench_inference.main(sys.argv[1:])
