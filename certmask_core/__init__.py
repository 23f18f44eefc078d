"""certmask core: mask-set geometry, coverage verification and certification, in numpy and numba.

This package never imports torch or sympy; model work happens in a backend (``get_backend``).

Examples
--------
>>> from certmask_core import PatchThreat, make_maskset, coverage_counts
>>> ms = make_maskset(PatchThreat(28, 3), k=2, strategy="replicated", masks_per_axis=4)
>>> len(ms), int(coverage_counts(ms, 3).min())
(32, 2)
"""
from .certification import ALERT, CertificationReport, certify, defend
from .constructions import exact_minimum, make_maskset, plan_summary, union_maskset
from .coverage import coverage_counts, is_k_covered
from .errors import CertMaskError
from .geometry import MaskSet, MaskSpec, PatchThreat, effective_coverage, lower_bound
from .multipatch import MaskGroups, all_pairs_groups, combination_groups
from .planning import plan_layouts
from .reference import coverage_counts_bruteforce
from .registry import get_backend
from .sizes import SizeReport, certify_sizes

__version__ = "0.2.0"
__all__ = ["ALERT", "CertMaskError", "CertificationReport", "MaskGroups", "MaskSet", "MaskSpec",
           "PatchThreat", "SizeReport", "all_pairs_groups", "certify", "certify_sizes", "combination_groups",
           "coverage_counts", "coverage_counts_bruteforce", "defend", "effective_coverage", "exact_minimum",
           "get_backend", "is_k_covered", "lower_bound", "make_maskset", "plan_layouts", "plan_summary",
           "union_maskset"]
