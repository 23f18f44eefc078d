"""Every theorem module in proofs/ runs its symbolic and exhaustive check (T1-T9)."""
import importlib
import subprocess
import sys

import pytest

from proofs.__main__ import MODULES


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

    from proofs.exact import k_fold_strips, recovery_outcomes
    from proofs.soundness import covers
    rng = np.random.default_rng(0)
    for _, ms, patch in list(k_fold_strips())[:2]:
        for position in np.ndindex(covers(ms, patch).shape[:2]):
            for _ in range(4):
                first, pairs = rng.integers(0, 3, 3), rng.integers(0, 3, 3)
                assert (recovery_outcomes(ms, patch, position, first, pairs)
                        == recovery_outcomes(ms, patch, position, first, pairs, brute_force=True))
