import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import (
    CertMaskError,
    MaskSet,
    PatchThreat,
    coverage_counts,
    coverage_counts_bruteforce,
    is_k_covered,
)
from certmask_core.coverage import covering_sets
from tests.strategies import masksets_for, threats


@given(st.data())
def test_numba_kernel_equals_bruteforce(data):
    threat = data.draw(threats())
    ms = data.draw(masksets_for(threat))
    fast = coverage_counts(ms, threat)
    assert fast.shape == threat.num_positions
    assert (fast == coverage_counts_bruteforce(ms, threat)).all()


def test_numba_kernel_equals_bruteforce_exhaustive_single_masks():
    # every single mask on every image up to 5x5, every patch: the kernel's corner cases
    for H, W in itertools.product(range(1, 6), repeat=2):
        for ph, pw in itertools.product(range(1, H + 1), range(1, W + 1)):
            for mh, mw in itertools.product(range(ph, H + 1), range(pw, W + 1)):
                origins = np.array(list(itertools.product(range(H - mh + 1), range(W - mw + 1))))
                ms = MaskSet((H, W), origins, np.tile([mh, mw], (len(origins), 1)))
                assert (coverage_counts(ms, (ph, pw)) == coverage_counts_bruteforce(ms, (ph, pw))).all()


def test_bruteforce_matches_the_definition_on_a_hand_case():
    # 1x6 strip, patch 1x2: a mask over columns [0, 4) covers positions b = 0, 1, 2
    ms = MaskSet((1, 6), [[0, 0], [0, 2]], [[1, 4], [1, 4]])
    assert coverage_counts_bruteforce(ms, (1, 2)).tolist() == [[1, 1, 2, 1, 1]]
    assert coverage_counts(ms, (1, 2)).tolist() == [[1, 1, 2, 1, 1]]
    assert is_k_covered(ms, (1, 2), 1) and not is_k_covered(ms, (1, 2), 2)


@given(st.data())
def test_coverage_commutes_with_flips(data):
    threat = data.draw(threats(max_side=16))
    ms = data.draw(masksets_for(threat))
    H, W = threat.image_size
    flipped = MaskSet((H, W), np.stack([H - ms.origins[:, 0] - ms.sizes[:, 0], ms.origins[:, 1]], 1),
                      ms.sizes)
    assert (coverage_counts(flipped, threat) == coverage_counts(ms, threat)[::-1]).all()
    transposed = MaskSet((W, H), ms.origins[:, ::-1], ms.sizes[:, ::-1])
    assert (coverage_counts(transposed, threat.patch_size[::-1]) == coverage_counts(ms, threat).T).all()


@given(st.data())
def test_covering_sets_are_exactly_the_distinct_position_sets(data):
    threat = data.draw(threats(max_side=12))
    ms = data.draw(masksets_for(threat, max_masks=8))
    dense = ms.dense()
    (P_h, P_w), (ph, pw) = threat.num_positions, threat.patch_size
    direct = {tuple(dense[:, a:a + ph, b:b + pw].all(axis=(1, 2)))
              for a in range(P_h) for b in range(P_w)}
    assert {tuple(r) for r in covering_sets(ms, threat)} == direct


def test_verifier_errors_name_values():
    ms = MaskSet((8, 8), [[0, 0], [2, 2]], [[4, 4], [2, 6]])
    with pytest.raises(CertMaskError, match=r"patch 9x9 is larger than the image 8x8"):
        coverage_counts(ms, 9)
    with pytest.raises(CertMaskError, match="threat image"):
        coverage_counts(ms, PatchThreat(9, 1))
    with pytest.raises(CertMaskError, match="k must be an integer >= 1, got 0"):
        is_k_covered(ms, 1, 0)
