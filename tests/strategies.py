"""Hypothesis strategies and helpers shared by the tests."""
import contextlib
import signal

import numpy as np
from hypothesis import strategies as st

from certmask_core import MaskSet, PatchThreat
from certmask_core.certification import NO_VOTE


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


# --- hostile values and small geometries for the fuzz wall (tests/test_fuzz.py) ---------------------

HOSTILE_INTS = (0, -1, 1, 2, -2, 2**14, 2**14 + 1, 2**31, 2**53, 2**53 + 1, 2**58, 2**62, 2**63 - 2,
                2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**100, -2**63, -2**63 - 1, -2**100)
"""Integers around every boundary the package has: 0 and 1, MAX_SIDE, int64, uint64 and beyond."""
HOSTILE_FLOATS = (0.5, -0.0, 2.0, 1e300, -1e300, float("inf"), float("-inf"), float("nan"), 2.0**53, 2.0**63)
HOSTILE_NUMPY = (np.int64(3), np.int64(-1), np.int8(-2), np.uint8(255), np.uint64(2**63),
                 np.uint64(2**64 - 1), np.float16(2.0), np.float32(0.5), np.float64("nan"), np.longdouble(3),
                 np.True_, np.False_, np.array(3), np.array([]), np.zeros((0, 2)), np.array([[True, False]]))

hostile_ints = st.one_of(st.sampled_from(HOSTILE_INTS), st.integers())
hostile_floats = st.one_of(st.sampled_from(HOSTILE_FLOATS), st.floats())
hostile_scalars = st.one_of(
    hostile_ints, hostile_floats, st.booleans(), st.sampled_from(HOSTILE_NUMPY), st.none(),
    st.text(max_size=4), st.binary(max_size=4), st.just([]), st.just({}), st.just(()))
"""Anything a caller might pass where a number is expected."""
hostile_pairs = st.one_of(
    hostile_scalars,
    st.tuples(hostile_scalars, hostile_scalars),
    st.lists(hostile_scalars, max_size=3),
    st.lists(hostile_ints, min_size=2, max_size=2).map(lambda v: np.array(v, dtype=object)))
"""Anything a caller might pass where an ``(h, w)`` pair is expected."""


@st.composite
def any_masksets(draw, max_side=10, max_masks=8, image=None):
    """Arbitrary masks inside an image of sides ``<= max_side``, including masks smaller than any patch."""
    H, W = image or (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    origins, sizes = [], []
    for _ in range(draw(st.integers(1, max_masks))):
        y, x = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
        origins.append((y, x))
        sizes.append((draw(st.integers(1, H - y)), draw(st.integers(1, W - x))))
    return MaskSet((H, W), origins, sizes)


@st.composite
def covering_masksets(draw, threat, max_masks=8, attach_threat=None):
    """Mask sets covering every patch position of ``threat`` at least once (defences need that).

    A few arbitrary masks (possibly smaller than the patch), then, while a position is uncovered, a
    random mask around it; past ``max_masks`` masks a full-image mask finishes the cover.
    """
    (H, W), (ph, pw) = threat.image_size, threat.patch_size
    base = draw(any_masksets(image=(H, W), max_masks=3))
    origins, sizes = base.origins.tolist(), base.sizes.tolist()
    covered = np.zeros(threat.num_positions, dtype=bool)
    for (y, x), (mh, mw) in zip(origins, sizes):
        if mh >= ph and mw >= pw:  # a mask smaller than the patch covers nothing
            covered[y:y + mh - ph + 1, x:x + mw - pw + 1] = True
    while not covered.all():
        if len(origins) >= max_masks:
            origins.append((0, 0))
            sizes.append((H, W))
            break
        a, b = (int(v) for v in np.argwhere(~covered)[draw(st.integers(0, int((~covered).sum()) - 1))])
        y0, x0 = draw(st.integers(0, a)), draw(st.integers(0, b))
        y1, x1 = draw(st.integers(a + ph, H)), draw(st.integers(b + pw, W))
        origins.append((y0, x0))
        sizes.append((y1 - y0, x1 - x0))
        covered[y0:y1 - ph + 1, x0:x1 - pw + 1] = True
    order = draw(st.permutations(range(len(origins))))
    attach = draw(st.booleans()) if attach_threat is None else attach_threat
    return MaskSet((H, W), [origins[i] for i in order], [sizes[i] for i in order],
                   threat=threat if attach else None)


# --- predictions given as logits ---------------------------------------------------------------------

SURE, UNSURE = 1.0, 1e-4  # margins of the logits built from a label; UNSURE is below the tolerance


def logits_of(rows: np.ndarray, unsure: np.ndarray, alphabet: int) -> np.ndarray:
    """Logits whose top-1 is ``rows`` with margin SURE or UNSURE (where ``unsure``); NaN for NO_VOTE.

    The same inputs as ``proofs.exact.logits_of`` builds for the exhaustive checkers (tests do not
    import ``proofs``)."""
    out = np.zeros(rows.shape + (alphabet,))
    label = np.where(rows == NO_VOTE, 0, rows)
    np.put_along_axis(out, label[..., None], np.where(unsure, UNSURE, SURE)[..., None], axis=-1)
    out[rows == NO_VOTE] = np.nan
    return out


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no reader's error handling can swallow it."""


@contextlib.contextmanager
def deadline(seconds=20.0):
    if not hasattr(signal, "setitimer"):  # no alarm on this platform: a hang would stall the run instead
        yield
        return

    def ring(signum, frame):
        raise Hang(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
