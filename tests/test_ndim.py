"""The core in 1, 2 and 3 dimensions: each fast path against its slow twin, and the 2-D
API unchanged."""
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import (
    CertMaskError,
    MaskSet,
    PatchThreat,
    certify,
    coverage_counts,
    coverage_counts_bruteforce,
    exact_minimum,
    lower_bound,
    make_maskset,
    plan_layouts,
)
from certmask_core.coverage import coverage_extremes, covering_sets
from certmask_core.multipatch import all_pairs_groups, tuple_coverage_extremes
from certmask_core.reference import covering_sets_reference, covers, tuple_coverage_bruteforce


@st.composite
def nd_threats(draw, dims=(1, 3), max_side=6):
    d = draw(st.sampled_from(dims))
    image = tuple(draw(st.integers(1, max_side if d > 1 else 4 * max_side)) for _ in range(d))
    return PatchThreat(image, tuple(draw(st.integers(1, n)) for n in image))


@st.composite
def nd_masksets(draw, image, max_masks=8):
    """Arbitrary boxes inside ``image``, including boxes smaller than any patch."""
    origins, sizes = [], []
    for _ in range(draw(st.integers(1, max_masks))):
        origin = [draw(st.integers(0, n - 1)) for n in image]
        origins.append(origin)
        sizes.append([draw(st.integers(1, n - o)) for n, o in zip(image, origin)])
    return MaskSet(image, origins, sizes)


@given(st.data())
def test_coverage_and_covering_sets_equal_their_twins_in_any_dimension(data):
    threat = data.draw(nd_threats())
    ms = data.draw(nd_masksets(threat.image_size))
    counts = coverage_counts(ms, threat)
    assert counts.shape == threat.num_positions
    assert (counts == coverage_counts_bruteforce(ms, threat)).all()
    assert (counts == covers(ms, threat.patch_size).sum(-1)).all()  # painted pixel by pixel
    low, high, where = coverage_extremes(ms, threat)
    assert (low, high) == (counts.min(), counts.max()) and counts[where] == low
    fast = {frozenset(np.flatnonzero(row).tolist()) for row in covering_sets(ms, threat)}
    assert fast == covering_sets_reference(ms, threat.patch_size)


@pytest.mark.parametrize("image,patch", [((30,), (4,)), ((16, 28, 28), (4, 3, 3)), ((16, 28, 28), (16, 3, 3)),
                                         ((5, 6, 7), (2, 1, 3)), ((3, 4, 5, 6), (1, 2, 2, 3))])
def test_constructions_in_d_dimensions_are_k_fold_distinct_and_minimal(image, patch):
    threat = PatchThreat(image, patch)
    for per_axis in (1, 2, 3):
        ms = make_maskset(threat, 1, "patchcleanser", masks_per_axis=per_axis)
        assert len(ms) == lower_bound(threat, ms.spec.mask_size)
        for strategy, k in itertools.product(("replicated", "offset"), (1, 2, 3)):
            if exact_minimum(threat, ms.spec.mask_size, k) is None:
                continue
            built = make_maskset(threat, k, strategy, mask_size=ms.spec.mask_size)
            assert built.is_distinct() and len(built) == exact_minimum(threat, ms.spec.mask_size, k)
            assert built.ndim == len(image) and built.sizes.shape == (len(built), len(image))
            if np.prod(threat.num_positions) <= 20000:
                assert coverage_counts_bruteforce(built, threat).min() >= k


def test_a_singleton_axis_changes_nothing():
    """A (1, H, W) clip with a (1, ph, pw) patch is an image: same masks, coverage and certificates;
    a (L,) signal is a (1, L) image."""
    rng = np.random.default_rng(0)
    for image, patch, k, strategy in (((9, 11), (2, 3), 2, "offset"), ((1, 13), (1, 3), 3, "replicated")):
        flat = make_maskset(PatchThreat(image, patch), k, strategy, masks_per_axis=(2, 3))
        clip = make_maskset(PatchThreat((1,) + image, (1,) + patch), k, strategy, masks_per_axis=(1, 2, 3))
        assert (clip.origins[:, 1:] == flat.origins).all() and (clip.sizes[:, 1:] == flat.sizes).all()
        assert (coverage_counts(clip, (1,) + patch)[0] == coverage_counts(flat, patch)).all()
        preds = rng.integers(0, 3, (200, len(flat)))
        preds[:100] = preds[:100, :1]  # some unanimous rows
        labels = rng.integers(0, 3, 200)
        for mode in ("detection", "plurality", "covering_consensus"):
            a = certify(preds, labels, flat, mode, k=k)
            b = certify(preds, labels, clip, mode, k=k)
            assert (a.output == b.output).all() and (a.certified == b.certified).all()
    signal = make_maskset(PatchThreat((13,), (3,)), 2, "replicated", masks_per_axis=2)
    strip = make_maskset(PatchThreat((1, 13), (1, 3)), 2, "replicated", masks_per_axis=(1, 2))
    assert (signal.origins[:, 0] == strip.origins[:, 1]).all()
    assert (signal.sizes[:, 0] == strip.sizes[:, 1]).all()


def test_two_patch_families_in_three_dimensions_equal_the_definition():
    base = make_maskset(PatchThreat((3, 3, 2), (1, 2, 1)), masks_per_axis=(2, 1, 2))
    family = all_pairs_groups(base)
    brute = tuple_coverage_bruteforce(family, (1, 2, 1))
    low, _ = tuple_coverage_extremes(family, (1, 2, 1))[:2]
    assert low == brute.min()


def test_json_keeps_one_format_for_every_dimension(tmp_path):
    for threat, per_axis in ((PatchThreat((20,), (3,)), 3),
                             (PatchThreat((16, 28, 28), (4, 3, 3)), (2, 3, 3))):
        ms = make_maskset(threat, 2, "replicated", masks_per_axis=per_axis)
        data = json.loads(ms.to_json())
        assert set(data) == {"image_size", "origins", "sizes", "spec", "patch_size"}
        assert len(data["image_size"]) == threat.ndim == len(data["origins"][0])
        back = MaskSet.from_json(ms.to_json())
        assert back == ms and back.threat == threat and back.spec == ms.spec


def test_d_dimensional_input_errors_name_the_values():
    with pytest.raises(CertMaskError, match=r"patch_size must have 3 axes, got 2"):
        PatchThreat((16, 28, 28), (3, 3))
    with pytest.raises(CertMaskError, match=r"patch 17x3x3 is larger than the image 16x28x28"):
        PatchThreat((16, 28, 28), (17, 3, 3))
    with pytest.raises(CertMaskError, match=r"image_size\[0\] \(t\) must be >= 1, got 0"):
        PatchThreat((0, 28, 28), 3)
    with pytest.raises(CertMaskError, match=r"image_size must have 1 to 8 axes, got 9"):
        PatchThreat((2,) * 9, 1)
    with pytest.raises(CertMaskError, match=r"image_size must have 1 to 8 axes, got 0"):
        PatchThreat((), 1)
    with pytest.raises(CertMaskError, match=r"origins must have shape \(n, 3\), got \(1, 2\)"):
        MaskSet((4, 4, 4), [[0, 0]], [[1, 1]])
    with pytest.raises(CertMaskError, match=r"its t value must lie in \[0, 3\]"):
        MaskSet((4, 4, 4), [[4, 0, 0]], [[1, 1, 1]])
    with pytest.raises(CertMaskError, match=r"leaves the 4x4x4 image"):
        MaskSet((4, 4, 4), [[3, 0, 0]], [[2, 1, 1]])
    with pytest.raises(CertMaskError, match=r"threat image \(4, 4\) differs"):
        coverage_counts(MaskSet((4, 4, 4), [[0, 0, 0]], [[4, 4, 4]]), PatchThreat((4, 4), 1))
    with pytest.raises(CertMaskError, match=r"mask_size must have 3 axes, got 2"):
        make_maskset(PatchThreat((16, 28, 28), (4, 3, 3)), mask_size=(5, 5))
    assert PatchThreat((16, 28, 28), 3).patch_size == (3, 3, 3)  # an int is every axis
    assert PatchThreat(28, 3).image_size == (28, 28)  # and a square image, as before


def test_planner_in_three_dimensions_builds_what_it_prices():
    threat = PatchThreat((16, 28, 28), (4, 3, 3))
    layouts = plan_layouts(threat, 2, max_passes=200)
    assert layouts and all(len(d["mask_size"]) == 3 for d in layouts)
    for layout in layouts:
        ms = make_maskset(threat, 2, layout["strategy"], mask_size=layout["mask_size"])
        assert len(ms) == layout["num_masks"] <= 200
        assert layout["mask_fraction"] == round(np.prod(layout["mask_size"]) / (16 * 28 * 28), 6)


def test_review_findings_in_d_dimensions():
    """Each was a raw exception or a wrong value before (found by an independent review)."""
    from certmask_core import all_pairs_groups, union_maskset
    a = make_maskset(PatchThreat((10,), (2,)), masks_per_axis=2)
    b = make_maskset(PatchThreat((10,), (3,)), masks_per_axis=2)
    both = union_maskset([a, b])
    assert both.ndim == 1 and min(coverage_counts(both, (p,)).min() for p in (2, 3)) >= 1
    clips = [make_maskset(PatchThreat((8, 8, 8), p), masks_per_axis=2) for p in ((2, 2, 2), (3, 3, 3))]
    assert union_maskset(clips).sizes.shape[1] == 3
    family = all_pairs_groups(make_maskset(PatchThreat((8,), (2,)), masks_per_axis=3))
    report = certify(np.zeros((2, len(family)), np.int64), [0, 0], family, "detection", patch=(2,), patches=2)
    assert report.certified.all()
    low, where = tuple_coverage_extremes(all_pairs_groups(make_maskset(PatchThreat((4, 4, 4), (2, 2, 2)),
                                                                       masks_per_axis=2)), (2, 2, 2))
    assert low == 1 and all(len(position) == 3 for position in where)
    big = PatchThreat((64,) * 8, 1)  # 2**48 pixels, k = 2**47: bounds beyond int64, exact ints
    expected, left = 0, 2**47
    for dear in range(9):  # copies with `dear` shifted axes cost 2**dear masks; C(8, dear) 63**dear of them
        taken = min(left, math.comb(8, dear) * 63**dear)
        expected, left = expected + taken * 2**dear, left - taken
    assert exact_minimum(big, 64, 2**47) == expected
    with pytest.raises(CertMaskError, match="pixels, more than"):
        PatchThreat((2**14,) * 5, 1)
    with pytest.raises(CertMaskError, match="needs at least"):
        make_maskset(big, 1, "patchcleanser", mask_size=1)
    with pytest.raises(CertMaskError, match="must be an int or a size per axis"):
        lower_bound(PatchThreat(8, 2), np.array(4))


@given(st.data())
def test_blockwise_cell_counts_equal_the_whole_grid(data):
    """Outside 2-D the extremes come from blocks of the first axis (any number of masks); with a tiny
    block limit they still equal the whole dense grid's."""
    import certmask_core.coverage as coverage
    threat = data.draw(nd_threats(dims=(3,)))
    ms = data.draw(nd_masksets(threat.image_size, max_masks=10))
    counts = coverage_counts_bruteforce(ms, threat)
    original = coverage.MAX_DENSE_POSITIONS
    grid = coverage.CellGrid(ms, threat)
    coverage.MAX_DENSE_POSITIONS = math.prod(c + 1 for c in grid.shape[1:]) * data.draw(st.integers(2, 4))
    try:
        blocks = list(grid.count_blocks())
        fresh = MaskSet(ms.image_size, ms.origins, ms.sizes)
        low, high, where = coverage_extremes(fresh, threat)
    finally:
        coverage.MAX_DENSE_POSITIONS = original
    assert (low, high) == (counts.min(), counts.max()) and counts[where] == low
    assert sum(len(b) for _, b in blocks) == grid.shape[0]


def test_signals_may_be_longer_than_an_image_side():
    """A 1-D input may hold up to MAX_SIGNAL samples; every axis of 2-D and 3-D inputs keeps MAX_SIDE."""
    from certmask_core.geometry import MAX_SIDE, MAX_SIGNAL
    threat = PatchThreat((100_000,), (64,))
    ms = make_maskset(threat, 2, "offset", masks_per_axis=40)
    assert len(ms) == exact_minimum(threat, ms.spec.mask_size, 2)
    assert coverage_counts_bruteforce(ms, threat).min() >= 2 and coverage_counts(ms, threat).min() >= 2
    assert MaskSet.from_json(ms.to_json()) == ms
    PatchThreat((MAX_SIGNAL,), 1)
    with pytest.raises(CertMaskError, match=rf"image_size\[0\] \(l\) must be <= {MAX_SIGNAL}"):
        PatchThreat((MAX_SIGNAL + 1,), 1)
    for image in ((MAX_SIDE + 1, 5), (4, MAX_SIDE + 1, 5)):
        with pytest.raises(CertMaskError, match=rf"must be <= {MAX_SIDE}, got {MAX_SIDE + 1}"):
            PatchThreat(image, 1)
    with pytest.raises(CertMaskError, match=rf"mask_size\[0\] \(h\) must be <= {MAX_SIDE}"):
        make_maskset(PatchThreat(28, 3), mask_size=MAX_SIDE + 1)  # an int mask is resolved per threat
