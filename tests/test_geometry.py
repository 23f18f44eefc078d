import json

import numpy as np
import pytest

from certmask_core import CertMaskError, MaskSet, MaskSpec, PatchThreat, effective_coverage, lower_bound


def test_threat_positions_and_validation():
    t = PatchThreat((28, 20), (3, 5))
    assert t.num_positions == (26, 16)
    assert PatchThreat(28, 3).image_size == (28, 28)
    with pytest.raises(CertMaskError, match=r"patch 30x3 is larger than the image 28x28"):
        PatchThreat(28, (30, 3))
    with pytest.raises(CertMaskError, match=r"patch_size\[1\] \(w\) must be >= 1, got 0"):
        PatchThreat(28, (3, 0))
    with pytest.raises(CertMaskError, match=r"image_size\[0\] \(h\) must be an integer, got 2.5"):
        PatchThreat((2.5, 3), 1)
    with pytest.raises(CertMaskError, match=r"image_size must be an int or a size per axis .*, got True"):
        PatchThreat(True, 1)


def test_threat_is_frozen():
    t = PatchThreat(8, 2)
    with pytest.raises(AttributeError):
        t.patch_size = (1, 1)


def test_effective_coverage_and_errors():
    assert effective_coverage((7, 9), (3, 3)) == (5, 7)
    assert effective_coverage(3, 3) == (1, 1)
    with pytest.raises(CertMaskError, match=r"patch \(4, 4\) is larger than the mask \(3, 3\)"):
        effective_coverage(3, 4)


@pytest.mark.parametrize("H,p,m,k,expected", [(28, 3, 7, 1, 36), (28, 3, 7, 2, 72), (28, 3, 9, 3, 48),
                                              (10, 10, 10, 1, 1), (12, 1, 1, 2, 288)])
def test_lower_bound_values(H, p, m, k, expected):
    assert lower_bound(PatchThreat(H, p), m, k) == expected


def test_lower_bound_rejects_bad_k():
    with pytest.raises(CertMaskError, match="k must be >= 1, got 0"):
        lower_bound(PatchThreat(8, 2), 4, 0)


def test_maskspec_validation():
    with pytest.raises(CertMaskError, match="exactly one of mask_size and masks_per_axis"):
        MaskSpec("replicated", 2)
    with pytest.raises(CertMaskError, match="strategy must be one of"):
        MaskSpec("grid", 1, mask_size=4)
    with pytest.raises(CertMaskError, match="'patchcleanser' is a single cover"):
        MaskSpec("patchcleanser", 2, mask_size=4)
    with pytest.raises(CertMaskError, match="k must be >= 1, got 0"):
        MaskSpec("replicated", 0, mask_size=4)
    spec = MaskSpec("offset", 2, masks_per_axis=(3, 4))
    assert spec.resolve_mask_size(PatchThreat(28, 3)) == (9 + 2, 7 + 2)
    with pytest.raises(CertMaskError, match=r"mask_size \(2, 5\) is smaller than the patch"):
        MaskSpec("offset", 1, mask_size=(2, 5)).resolve_mask_size(PatchThreat(28, 3))


def test_maskset_readonly_roundtrip_and_dense():
    ms = MaskSet((4, 5), [[0, 0], [1, 2]], [[2, 3], [3, 3]])
    assert not ms.origins.flags.writeable and not ms.sizes.flags.writeable
    with pytest.raises(ValueError):
        ms.origins[0, 0] = 1
    dense = ms.dense()
    assert dense.shape == (2, 4, 5) and dense[0].sum() == 6 and dense[1].sum() == 9
    assert dense[1, 1:4, 2:5].all() and not dense[1, 0].any()
    again = MaskSet.from_json(ms.to_json())
    assert again == ms and hash(again) == hash(ms)
    assert json.loads(ms.to_json())["origins"] == [[0, 0], [1, 2]]


@pytest.mark.parametrize("origins,sizes,message", [
    ([[0, 0]], [[5, 1]], r"mask 0 has size \(5, 1\): its h value must lie in \[1, 4\]"),
    ([[3, 0]], [[3, 1]], r"mask 0 \(origin \(3, 0\), size \(3, 1\)\) leaves the 4x4 image"),
    ([[-1, 0]], [[1, 1]], r"mask 0 has origin \(-1, 0\): its h value must lie in \[0, 3\]"),
    ([[0, 0]], [[0, 1]], r"mask 0 has size \(0, 1\)"),
    ([[0.5, 0]], [[1, 1]], "origins must hold integers"),
    ([[0, 0, 0]], [[1, 1, 1]], r"origins must have shape \(n, 2\)"),
    (np.zeros((0, 2)), np.zeros((0, 2)), "at least one mask"),
])
def test_maskset_rejects_bad_rectangles(origins, sizes, message):
    with pytest.raises(CertMaskError, match=message):
        MaskSet((4, 4), origins, sizes)


def test_maskset_from_json_errors():
    with pytest.raises(CertMaskError, match="does not parse"):
        MaskSet.from_json("{")
    with pytest.raises(CertMaskError, match="lacks the field 'sizes'"):
        MaskSet.from_json('{"image_size": [4, 4], "origins": [[0, 0]]}')
