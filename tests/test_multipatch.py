"""Several patches (T15): group coverage (fast path, general path, brute force), covering sets,
certificates over groups, and the backend's group masking against a numpy twin."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from certmask_core import (
    CertMaskError,
    MaskGroups,
    MaskSet,
    PatchThreat,
    all_pairs_groups,
    certify,
    defend,
    make_maskset,
)
from certmask_core.coverage import coverage_extremes, unpack
from certmask_core.multipatch import all_pairs_coverage_min, tuple_coverage_extremes, tuple_minimal_sets
from certmask_core.reference import tuple_coverage_bruteforce, tuple_minimal_sets_reference
from certmask_core.registry import get_backend

from .strategies import any_masksets, covering_masksets, threats


@st.composite
def families(draw, max_side=5, max_masks=5):
    threat = draw(threats(max_side=max_side))
    base = draw(any_masksets(image=threat.image_size, max_masks=max_masks))
    if draw(st.booleans()) and len(base) >= 2:
        return all_pairs_groups(base), threat.patch_size
    g = draw(st.integers(1, 3))
    rows = draw(st.lists(st.lists(st.integers(0, len(base) - 1), min_size=g, max_size=g), min_size=1,
                         max_size=6))
    return MaskGroups(base, np.array(rows)), threat.patch_size


@given(families(), st.integers(1, 3))
def test_group_coverage_equals_brute_force(family_patch, patches):
    family, patch = family_patch
    if patches == 3 and np.prod(PatchThreat(family.image_size, patch).num_positions) > 12:
        patches = 2  # keep the brute force small
    low, where = tuple_coverage_extremes(family, patch, patches)
    counts = tuple_coverage_bruteforce(family, patch, patches)
    assert low == counts.min()
    P_w = PatchThreat(family.image_size, patch).num_positions[1]
    assert counts[tuple(a * P_w + b for a, b in where)] == low
    found = {frozenset(np.flatnonzero(row).tolist())
             for row in unpack(tuple_minimal_sets(family, patch, patches), len(family))}
    assert found == tuple_minimal_sets_reference(family, patch, patches)


@given(st.data())
def test_all_pairs_fast_path_equals_the_general_path_and_brute_force(data):
    threat = data.draw(threats(max_side=6))
    base = data.draw(covering_masksets(threat, max_masks=6))
    if len(base) < 2:
        return
    groups = all_pairs_groups(base)
    fast = all_pairs_coverage_min(base, threat.patch_size)
    assert fast == tuple_coverage_extremes(groups, threat.patch_size, 2)[0]
    assert fast == tuple_coverage_bruteforce(groups, threat.patch_size, 2).min()
    assert fast >= 1  # T15(c): all pairs of a 1-fold set cover every pair of positions


def test_one_patch_over_single_masks_is_the_one_patch_theory():
    ms = make_maskset(PatchThreat(16, 3), 2, "replicated", masks_per_axis=3)
    singles = MaskGroups(ms, np.arange(len(ms))[:, None])
    assert tuple_coverage_extremes(singles, (3, 3), 1)[0] == coverage_extremes(ms, 3)[0]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    first = np.where(rng.random((50, len(ms))) < 0.85, labels[:, None], rng.integers(0, 3, (50, len(ms))))
    for mode in ("detection", "plurality", "covering_consensus"):
        a = certify(first, labels, ms, mode, patch=(3, 3))
        b = certify(first, labels, singles, mode, patch=(3, 3))
        assert (a.certified == b.certified).all() and (a.output == b.output).all()


def test_two_patch_detection_certificate_example():
    """Two 1x2 patches on a 1x8 strip, two masks of width 4: the pairs family is one group, which
    covers every pair of positions; a single wrong group prediction alerts."""
    ms = make_maskset(PatchThreat((1, 8), (1, 2)), masks_per_axis=(1, 2))
    groups = all_pairs_groups(ms)
    assert len(groups) == 1 and tuple_coverage_extremes(groups, (1, 2), 2)[0] == 1
    assert certify(np.array([[4], [5]]), [4, 4], groups, "detection", patch=(1, 2), patches=2
                   ).certified.tolist() == [True, False]
    # the single masks do not cover two far-apart patches: one patch per mask is not enough
    with pytest.raises(CertMaskError, match="not 1-fold for 2 patches"):
        certify(np.zeros((1, 2), np.int64), [0], ms, "detection", patch=(1, 2), patches=2)


def test_bad_groups_and_modes_are_named():
    ms = make_maskset(PatchThreat(8, 2), masks_per_axis=2)
    for members, message in (([[0, 9]], "index the 4 masks"), ([[-1]], "index the 4 masks"),
                             ([], "shape"), ([[0.5]], "integer"), ([[True]], "integer")):
        with pytest.raises(CertMaskError, match=message):
            MaskGroups(ms, members)
    with pytest.raises(CertMaskError, match="at least 2 masks"):
        all_pairs_groups(MaskSet((8, 8), [[0, 0]], [[8, 8]]))
    groups = all_pairs_groups(ms)
    first = np.zeros((1, len(groups)), np.int64)
    with pytest.raises(CertMaskError, match="one patch and single masks"):
        defend(first, groups, "paper", patch=(2, 2), patches=2)
    for patches in (0, 9, 1.5, True):
        with pytest.raises(CertMaskError, match="patches must be an integer"):
            certify(first, [0], groups, "detection", patch=(2, 2), patches=patches)


class PixelModel(torch.nn.Module):
    """Logits that depend on every pixel (so a wrong mask shows): class scores from fixed weights."""

    def __init__(self, H=12, W=12, classes=3):
        super().__init__()
        seeded = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(classes, H * W, generator=seeded))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def test_backend_group_masking_equals_a_numpy_twin():
    backend = get_backend("torch", fill=0.5)
    model = PixelModel()
    ms = make_maskset(PatchThreat(12, 2), masks_per_axis=3)
    groups = all_pairs_groups(ms)
    images = np.random.default_rng(1).random((3, 1, 12, 12)).astype(np.float32)
    got = backend.masked_predictions(model, images, groups, return_logits=True)
    hidden = groups.dense()
    twin = np.where(hidden[None, :, None], 0.5, images[:, None])  # (B, n, C, H, W)
    weight = model.weight.detach().numpy()
    expect = twin.reshape(3, len(groups), -1) @ weight.T
    assert np.allclose(got, expect, atol=1e-4)
    pairs = np.array([[0, 5], [3, 20], [7, 8]])
    predictor = backend.pair_predictor(model, images, groups, return_logits=True)
    got_pairs = predictor.many(np.array([0, 1, 2]), pairs)
    union = hidden[pairs[:, 0]] | hidden[pairs[:, 1]]  # four masks hidden at once
    expect_pairs = np.stack([np.where(union[t][None], 0.5, images[t]).ravel() @ weight.T for t in range(3)])
    assert np.allclose(got_pairs, expect_pairs, atol=1e-4)


def test_two_patch_recovery_end_to_end_on_the_backend():
    backend = get_backend("torch")
    model = PixelModel()
    ms = make_maskset(PatchThreat(12, 2), masks_per_axis=3)
    groups = all_pairs_groups(ms)
    images = np.random.default_rng(2).random((4, 1, 12, 12)).astype(np.float32)
    labels = backend.predict(model, images)
    first = backend.masked_predictions(model, images, groups, return_logits=True)
    report = certify(first, labels, groups, "recovery", patch=(2, 2), patches=2,
                     pair_predictor=backend.pair_predictor(model, images, groups, return_logits=True))
    allpairs = certify(first, labels, groups, "recovery", patch=(2, 2), patches=2,
                       pair_predictor=backend.pair_predictor(model, images, groups, return_logits=True),
                       recovery_certificate="all_pairs")
    assert (report.certified >= allpairs.certified).all()  # the hitting set never certifies less
    assert report.summary()["all_pairs_passes"] == len(groups) * (len(groups) + 1) // 2


def test_masked_members_are_refused():
    ms = make_maskset(PatchThreat(8, 2), masks_per_axis=2)
    with pytest.raises(CertMaskError, match="masked array"):
        MaskGroups(ms, np.ma.masked_array([[2, 1]], mask=[[1, 0]]))
