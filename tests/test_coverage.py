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
from certmask_core.reference import covering_sets_reference
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
    found = {frozenset(np.flatnonzero(r).tolist()) for r in covering_sets(ms, threat)}
    assert found == covering_sets_reference(ms, threat.patch_size)


def test_verifier_errors_name_values():
    ms = MaskSet((8, 8), [[0, 0], [2, 2]], [[4, 4], [2, 6]])
    with pytest.raises(CertMaskError, match=r"patch 9x9 is larger than the image 8x8"):
        coverage_counts(ms, 9)
    with pytest.raises(CertMaskError, match="threat image"):
        coverage_counts(ms, PatchThreat(9, 1))
    with pytest.raises(CertMaskError, match="k must be an integer >= 1, got 0"):
        is_k_covered(ms, 1, 0)


@given(st.integers(1, 3).flatmap(lambda d: st.tuples(
    st.lists(st.integers(1, 6), min_size=d, max_size=d),
    st.lists(st.tuples(st.lists(st.integers(-3, 8), min_size=d, max_size=d),
                       st.lists(st.integers(-3, 8), min_size=d, max_size=d)), max_size=6))))
def test_box_coverage_counts_equal_the_bruteforce_in_1_to_3_dimensions(case):
    """The d-dimensional kernel (empty, clipped and out-of-grid boxes included)."""
    from certmask_core.coverage import box_coverage_counts
    from certmask_core.reference import box_coverage_counts_bruteforce
    positions, boxes = case
    lows = [low for low, _ in boxes] or np.zeros((0, len(positions)), int)
    highs = [high for _, high in boxes] or np.zeros((0, len(positions)), int)
    got = box_coverage_counts(lows, highs, positions)
    assert got.shape == tuple(positions)
    assert (got == box_coverage_counts_bruteforce(lows, highs, positions)).all()


def test_box_coverage_counts_serve_two_dimensional_mask_sets_and_refuse_bad_grids():
    import numba

    from certmask_core import make_maskset
    from certmask_core.coverage import _box_difference_counts, box_coverage_counts, covered_windows
    t = PatchThreat((23, 17), (3, 2))
    ms = make_maskset(t, 3, "offset", masks_per_axis=(4, 3))
    windows = covered_windows(ms, t)
    assert (box_coverage_counts(windows[:, :2], windows[:, 2:], t.num_positions)
            == coverage_counts(ms, t)).all()
    checked = numba.njit(boundscheck=True)(_box_difference_counts.py_func)
    lows = np.array([[-5, 2, 0], [1, 1, 1]], np.int64)
    highs = np.array([[9, 9, 9], [0, 3, 3]], np.int64)
    assert checked(lows, highs, np.array([2, 3, 4])).shape == (3 * 4 * 5,)
    with pytest.raises(CertMaskError, match=r"positions must be 1 to 8 integers >= 1 .*, got \(3, 0\)"):
        box_coverage_counts([[0, 0]], [[1, 1]], (3, 0))
    for positions in (3, None, "ab", (2.7,), (True, 2)):
        with pytest.raises(CertMaskError, match="positions must be 1 to 8 integers"):
            box_coverage_counts([[0]], [[1]], positions)
    with pytest.raises(CertMaskError, match="count grid exceeds"):
        box_coverage_counts([[0]], [[1]], (2**70,))
    with pytest.raises(CertMaskError, match="differ in shape"):
        box_coverage_counts([[0, 0]], [[1, 1], [2, 2]], (3, 3))
    with pytest.raises(CertMaskError, match=r"integer array, got shape \(1, 2\) dtype float64"):
        box_coverage_counts([[0.5, 0]], [[1, 1]], (3, 3))
    with pytest.raises(CertMaskError, match=r"lows holds values beyond"):  # uint64 would wrap in int64
        box_coverage_counts(np.array([[2**64 - 1]], np.uint64), np.array([[0]], np.uint64), (3,))
    assert box_coverage_counts([], [], (2, 3)).tolist() == [[0, 0, 0], [0, 0, 0]]
    with pytest.raises(CertMaskError, match=r"must be an \(n, 2\) integer array, got shape \(2, 3\)"):
        box_coverage_counts([[0, 0, 0], [1, 1, 1]], [[1, 1, 1], [1, 1, 1]], (2, 2))  # not re-read as 3 boxes
    with pytest.raises(CertMaskError, match=r"must be an \(n, 2\) integer array"):
        box_coverage_counts([[0, 0, 0]], [[1, 1, 1]], (3, 3))
