import itertools
import math

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
    lower_bound,
    make_maskset,
    plan_summary,
)
from certmask_core.constructions import shifted_cover_windows, single_cover_windows
from tests.strategies import threats


def _check(ms, threat, k):
    counts = coverage_counts_bruteforce(ms, threat)  # the slow twin is the oracle here
    assert counts.min() >= k
    assert ms.is_distinct()
    assert len(ms) >= lower_bound(threat, ms.spec.mask_size, k)
    assert (ms.sizes <= np.array(ms.spec.mask_size)).all()  # clipping only shrinks masks


@given(threats(max_side=30), st.integers(1, 6), st.sampled_from(["replicated", "offset"]),
       st.integers(1, 5))
def test_kfold_constructions_hypothesis(threat, k, strategy, n_axis):
    try:
        ms = make_maskset(threat, k, strategy, masks_per_axis=n_axis)
    except CertMaskError as err:
        w = [min(math.ceil(P / n_axis), P) for P in threat.num_positions]
        assert w[0] * w[1] < k, err  # refused only when too few distinct windows exist
        return
    _check(ms, threat, k)


@given(threats(max_side=40), st.integers(1, 6), st.integers(1, 6))
def test_patchcleanser_meets_the_bound(threat, nh, nw):
    ms = make_maskset(threat, 1, "patchcleanser", masks_per_axis=(nh, nw))
    _check(ms, threat, 1)
    assert len(ms) == lower_bound(threat, ms.spec.mask_size, 1)
    # full-size masks only: the last one is flush with the border, not clipped
    assert (ms.sizes == np.minimum(ms.spec.mask_size, threat.image_size)).all()


def test_exhaustive_small_images_every_strategy():
    for H, W in itertools.product(range(1, 8), repeat=2):
        for ph, pw in itertools.product(range(1, min(H, 3) + 1), range(1, min(W, 3) + 1)):
            t = PatchThreat((H, W), (ph, pw))
            for mh, mw in itertools.product(range(ph, H + 1), range(pw, W + 1)):
                _check(make_maskset(t, 1, "patchcleanser", mask_size=(mh, mw)), t, 1)
                for strategy, k in itertools.product(("replicated", "offset"), (1, 2, 3)):
                    try:
                        ms = make_maskset(t, k, strategy, mask_size=(mh, mw))
                    except CertMaskError:
                        cap = min(mh - ph + 1, H - ph + 1) * min(mw - pw + 1, W - pw + 1)
                        assert cap < k
                        continue
                    _check(ms, t, k)


@pytest.mark.parametrize("k", range(1, 7))
def test_replicated_is_tight_on_28x28(k):
    t = PatchThreat(28, 3)
    for n_axis in (4, 6):
        ms = make_maskset(t, k, "replicated", masks_per_axis=n_axis)
        assert len(ms) == lower_bound(t, ms.spec.mask_size, k)
        assert coverage_counts(ms, t).min() == k


def test_constructions_are_deterministic_and_reported():
    t = PatchThreat((40, 31), (5, 4))
    a = make_maskset(t, 3, "offset", masks_per_axis=(5, 4))
    b = make_maskset(t, 3, "offset", masks_per_axis=(5, 4))
    assert a == b and a.rectangles().tolist() == b.rectangles().tolist()
    s = plan_summary(a)
    assert s["num_masks"] == len(a) and s["gap"] == len(a) - s["lower_bound"] >= 0
    assert s["min_coverage"] >= 3 and s["distinct"]


def test_flipped_construction_is_still_kfold():
    t = PatchThreat((23, 17), (4, 2))
    ms = make_maskset(t, 4, "replicated", masks_per_axis=(3, 5))
    H, W = t.image_size
    flipped = MaskSet((H, W), np.stack([ms.origins[:, 0], W - ms.origins[:, 1] - ms.sizes[:, 1]], 1),
                      ms.sizes)
    assert coverage_counts(flipped, t).min() >= 4 and flipped.is_distinct()


def test_one_dimensional_window_lists():
    assert single_cover_windows(10, 4) == [(0, 3), (4, 7), (6, 9)]
    assert shifted_cover_windows(10, 4, 1) == [(0, 2), (3, 6), (7, 9)]


def test_errors_name_the_values():
    t = PatchThreat(10, 3)
    with pytest.raises(CertMaskError, match=r"mask_size \(2, 2\) is smaller than the patch \(3, 3\)"):
        make_maskset(t, 1, "patchcleanser", mask_size=2)
    with pytest.raises(CertMaskError, match="k must be >= 1, got 0"):
        make_maskset(t, 0, "replicated", mask_size=5)
    with pytest.raises(CertMaskError, match="masks_per_axis must be >= 1, got 0"):
        make_maskset(t, 1, "offset", masks_per_axis=0)
    with pytest.raises(CertMaskError, match=r"masks_per_axis\[0\] \(h\) must be >= 1, got 0"):
        make_maskset(t, 1, "offset", masks_per_axis=(0, 2))
    with pytest.raises(CertMaskError, match=r"masks_per_axis must have 2 axes, got 3"):
        make_maskset(t, 1, "offset", masks_per_axis=(2, 2, 2))
    with pytest.raises(CertMaskError, match=r"replicated: only 4 = prod min\(w_i, P_i\)"):
        make_maskset(PatchThreat(4, 3), 5, "replicated", mask_size=4)
    with pytest.raises(CertMaskError, match=r"offset: only 4 = prod min\(w_i, P_i\)"):
        make_maskset(PatchThreat(4, 3), 5, "offset", mask_size=4)
    with pytest.raises(CertMaskError, match="threat must be a PatchThreat"):
        make_maskset((10, 10), 1, "patchcleanser", mask_size=5)
