"""Hypothesis strategies shared by the tests."""
import numpy as np
from hypothesis import strategies as st

from certmask_core import MaskSet, PatchThreat


@st.composite
def threats(draw, max_side=24):
    H, W = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    return PatchThreat((H, W), (draw(st.integers(1, H)), draw(st.integers(1, W))))


@st.composite
def masksets_for(draw, threat, max_masks=12):
    """Random user-style mask sets, every mask at least patch-sized."""
    (H, W), (ph, pw) = threat.image_size, threat.patch_size
    n = draw(st.integers(1, max_masks))
    origins, sizes = [], []
    for _ in range(n):
        mh, mw = draw(st.integers(ph, H)), draw(st.integers(pw, W))
        origins.append((draw(st.integers(0, H - mh)), draw(st.integers(0, W - mw))))
        sizes.append((mh, mw))
    return MaskSet((H, W), np.array(origins), np.array(sizes))
