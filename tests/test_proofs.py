"""Every theorem module in proofs/ runs its symbolic and exhaustive check (T1-T17); the soundness
checker (T6-T9) proves the sound modes and refutes ``paper`` on small geometries."""
import importlib
import itertools
import subprocess
import sys

import numpy as np
import pytest

from certmask_core import MaskSet, PatchThreat, certify, defend, make_maskset
from certmask_core.certification import GUARANTEES
from proofs.__main__ import MODULES
from proofs.soundness import (
    check,
    disjoint_covering_sets,
    recovery_outcomes_abstract,
    recovery_outcomes_bruteforce,
    small_geometries,
)

STRIP = make_maskset(PatchThreat((1, 6), (1, 2)), 1, "patchcleanser", masks_per_axis=(1, 2))


@pytest.mark.parametrize("name", MODULES)
def test_theorem(name):
    mod = importlib.import_module(f"proofs.{name}")
    assert mod.THEOREM.startswith("T") and mod.STATEMENT
    if mod.symbolic is not None:
        mod.symbolic()
    assert mod.exhaustive() > 0


def test_paper_counterexample_script_prints_the_attack():
    out = subprocess.run([sys.executable, "-m", "proofs.t9_paper_counterexample"], capture_output=True,
                         text=True, check=True).stdout
    assert "claim_holds=True" in out and "output 0 (true label 1)" in out


def test_soundness_table_lists_every_mode():
    out = subprocess.run([sys.executable, "-m", "proofs.soundness"], capture_output=True, text=True,
                         check=True).stdout
    rows = [line for line in out.splitlines() if line.endswith(("proven", "COUNTEREXAMPLE"))]
    assert rows and all(("paper" in r) == r.endswith("COUNTEREXAMPLE") for r in rows)
    modes = {"detection", "covering_consensus", "recovery", "paper"}
    assert {m for m in modes if any(m in r for r in rows)} == modes


def test_chosen_disagreer_abstraction_equals_bruteforce_on_any_clean_table():
    """proofs.exact decides recovery's robustness through the chosen-disagreer abstraction with
    arbitrary clean pair labels; on 3-mask sets it yields exactly the outcomes of every free pair table."""
    import numpy as np

    from certmask_core.reference import covers
    from proofs.exact import k_fold_strips, recovery_outcomes
    rng = np.random.default_rng(0)
    for _, ms, patch in list(k_fold_strips())[:2]:
        for position in np.ndindex(covers(ms, patch).shape[:2]):
            for _ in range(4):
                first, pairs = rng.integers(0, 3, 3), rng.integers(0, 3, 3)
                assert (recovery_outcomes(ms, patch, position, first, pairs)
                        == recovery_outcomes(ms, patch, position, first, pairs, brute_force=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t14_patch_sizes", "t15_multi_patch"])
def test_big_sweeps(name, request):
    """The larger sweeps of T14 (images up to 7 x 7, every recovery geometry of at most 3 masks) and
    T15 (every 3-group recovery family): about 40 and 60 s on 2 cores; ``-m slow`` only."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("long sweep: select it with -m slow")
    mod = importlib.import_module(f"proofs.{name}")
    kwargs = {"limit": 7, "big": True} if name == "t14_patch_sizes" else {"big": True}
    assert mod.exhaustive(**kwargs) > 0


def test_multi_patch_recovery_abstraction_equals_bruteforce_on_groups():
    """The chosen-disagreer abstraction (free pair answers) is exact for groups and several patches,
    where a pair of groups may be fixed while neither group is."""
    from proofs.t15_multi_patch import abstraction_matches_bruteforce
    assert abstraction_matches_bruteforce(tables=2) > 0


def test_physical_threat_fixes_every_package_cover_and_sometimes_more():
    from proofs.t15_multi_patch import physical_extra
    total, extra = physical_extra()
    assert 0 < extra < total


def test_certify_sizes_promises_one_deployment():
    """The two sets on which the first certify_sizes closed plurality and covering consensus under
    inclusion (unsound: no deployed defence earned the column); the checker asserts the fix."""
    from proofs.t14_patch_sizes import closure_examples
    examples = closure_examples()
    assert set(examples) == {"plurality", "covering_consensus"}


def test_d_dimensional_closed_form_equals_integer_programming():
    pytest.importorskip("scipy")
    from proofs.t17_d_dimensional import milp_agreement
    assert milp_agreement() > 300


# ---- the soundness checker (T6-T9) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def geometries():
    return list(small_geometries())


@pytest.mark.parametrize("mode,guarantee", [("detection", "label-or-alert"),
                                            ("covering_consensus", "label-or-alert")])
def test_one_round_detection_modes_are_proven(geometries, mode, guarantee):
    for name, ms, patch in geometries:
        result = check(ms, patch, mode, geometry=name)
        assert result.held[guarantee], (name, result.counterexamples)
        assert GUARANTEES[mode] == guarantee
        # they are detection rules, not recovery: an attacker can force ALERT
        assert not result.held["label"] and result.counterexamples["label"]["output"] == "ALERT"


def test_recovery_is_proven_on_small_geometries(geometries):
    checked = 0
    for name, ms, patch in geometries:
        if len(ms) <= 6:
            result = check(ms, patch, "recovery", geometry=name)
            assert result.held["label"], (name, result.counterexamples)
            checked += 1
    assert checked >= 5


def test_paper_has_a_counterexample_whenever_covering_sets_are_disjoint(geometries):
    for name, ms, patch in geometries:
        result = check(ms, patch, "paper", geometry=name)
        assert disjoint_covering_sets(ms, patch)
        assert not result.held["label"] and result.kept == "none", name
        ce = result.counterexamples["label"]
        # replay the counterexample through the public API
        assert defend(np.array([ce["attacked_one_mask_predictions"]]), ms, "paper").output[0] \
            == ce["output"] != ce["true_label"]
        report = certify(np.array([ce["clean_one_mask_predictions"]]), [ce["true_label"]], ms, "paper")
        assert report.claim_holds[0] and not report.certified[0]


def test_paper_keeps_recovery_when_no_covering_sets_are_disjoint():
    # one mask covering every position: nothing is left to the attacker
    full = MaskSet((1, 4), [[0, 0]], [[1, 4]])
    result = check(full, (1, 2), "paper")
    assert not disjoint_covering_sets(full, (1, 2)) and result.held["label"]


@pytest.mark.parametrize("position", [(0, 0), (0, 2), (0, 4)])
def test_recovery_abstraction_equals_bruteforce_over_pair_tables(position):
    for y in range(3):
        assert recovery_outcomes_abstract(STRIP, (1, 2), position, y) == \
            recovery_outcomes_bruteforce(STRIP, (1, 2), position, y)
    three = make_maskset(PatchThreat((1, 6), (1, 2)), 1, "patchcleanser", masks_per_axis=(1, 3))
    assert recovery_outcomes_abstract(three, (1, 2), position, 1) == \
        recovery_outcomes_bruteforce(three, (1, 2), position, 1)
    # T10: with NO_VOTE in the attacker's alphabet (one- and two-mask answers) the abstraction still holds
    assert recovery_outcomes_abstract(STRIP, (1, 2), position, 1, no_vote=True) == \
        recovery_outcomes_bruteforce(STRIP, (1, 2), position, 1, no_vote=True)


def test_exhaustive_tiny_sets_every_pattern():
    """All 1-D sets of 2-3 masks on strips up to 7: recovery proven, paper refuted where it must be."""
    for L, p in itertools.product(range(3, 8), range(1, 3)):
        for n_axis in (2, 3):
            if n_axis > L - p + 1:
                continue
            ms = make_maskset(PatchThreat((1, L), (1, p)), 1, "patchcleanser", masks_per_axis=(1, n_axis))
            assert check(ms, (1, p), "recovery").held["label"]
            assert check(ms, (1, p), "detection").held["label-or-alert"]
            paper = check(ms, (1, p), "paper")
            if disjoint_covering_sets(ms, (1, p)):
                assert not paper.held["label"]
