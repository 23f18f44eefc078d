"""A fuzz wall around the public API: hostile values in, CertMaskError or the brute-force answer out.

Every call gets what a caller, a file or a command line could hand it: huge and negative integers
(past int64 and uint64 too), floats (0.5, 1e300, inf, NaN), bools, None, strings, empty and ragged
arrays, mismatched shapes, masks outside the image or smaller than the patch. The property is always
the same: the call EITHER raises :class:`CertMaskError` (the package's one error type) OR returns what
its twin returns (``coverage_counts_bruteforce``, ``certmask_core.reference`` or a few lines of plain Python
below). Any other exception, a crash or a hang (:func:`tests.strategies.deadline`) fails. Where the
input is valid by the twin's rules the call must succeed: refusing valid input is a bug too.

Default run: the ``fuzz`` profile (about 30 s on 2 CPU cores). Long run: ``pytest -m slow
tests/test_fuzz.py --hypothesis-show-statistics`` runs each property again under ``fuzz-slow`` with a
few thousand examples and prints how many each one tried.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from certmask_core import (
    CertMaskError,
    MaskSet,
    PatchThreat,
    certify,
    coverage_counts,
    coverage_counts_bruteforce,
    defend,
    effective_coverage,
    is_k_covered,
    lower_bound,
    make_maskset,
)
from certmask_core.certification import MODES, NO_VOTE
from certmask_core.coverage import coverage_extremes, covering_sets, minimal_covering_set_bits, unpack
from certmask_core.geometry import MAX_SIDE, STRATEGIES
from certmask_core.reference import (
    consensus_certificate_reference,
    covering_sets_reference,
    covers,
    hitting_set_reference,
    minimal_sets_reference,
    one_round_reference,
    plurality_certificate_reference,
    recovery_reference,
)
from certmask_core.run.cli import main
from certmask_core.run.records import per_image_records
from tests.strategies import (
    any_masksets,
    covering_masksets,
    deadline,
    hostile_ints,
    hostile_pairs,
    hostile_scalars,
    threats,
)

settings.register_profile(
    "fuzz", deadline=None, max_examples=100,  # numba compiles on first call: no per-example deadline
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
settings.register_profile("fuzz-slow", settings.get_profile("fuzz"), max_examples=3000)
FAST = settings.get_profile("fuzz")
SLOW = settings.get_profile("fuzz-slow")


def fuzz_twins(check, **strategies):
    """The property ``check`` as two tests: the CI run (``fuzz``) and its ``-m slow`` twin.

    Each twin wraps ``check`` in a function of its own, so that Hypothesis's settings and pytest's
    marks, which live on the decorated function, cannot leak from one twin to the other.
    """
    def twin(profile):
        @functools.wraps(check)
        def test(*args, **kwargs):
            return check(*args, **kwargs)
        return profile(given(**strategies)(test))

    return twin(FAST), pytest.mark.slow(twin(SLOW))

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

INT64_MAX = 2**63 - 1
CALL_LIMIT_S = 30
"""Longest any single call may run (numba's first compilations included) before it counts as a hang."""
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]
"""Phases of the tests that build mask sets: a hang would shrink at CALL_LIMIT_S per try, so the first
failing example is reported as found."""


# --- the harness: every call either raises CertMaskError or returns --------------------------------

@pytest.fixture(autouse=True)
def _slow_runs_only_when_asked(request):
    """The ``*_slow`` twins run under ``-m slow`` only (nothing else deselects the marker)."""
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("long fuzz run: select it with -m slow")




def attempt(call, *args, **kwargs):
    """``(True, result)``, or ``(False, None)`` when ``call`` raised CertMaskError; anything else fails."""
    with deadline(CALL_LIMIT_S):
        try:
            return True, call(*args, **kwargs)
        except CertMaskError:
            return False, None


def is_int(value) -> bool:
    """An integer by the package's rules: any Python or numpy integer except a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def expected_pair(value, image: tuple[int, int]) -> tuple[int, int] | None:
    """Twin of the ``(h, w)`` rules: an int or a pair of ints in ``[1, image side]``; None if invalid."""
    if is_int(value):
        value = (value, value)
    if isinstance(value, (dict, set, frozenset, str, bytes)):  # iterable, but never a pair
        return None
    try:
        h, w = value
    except (TypeError, ValueError):
        return None
    if not (is_int(h) and is_int(w) and 1 <= h <= image[0] and 1 <= w <= image[1]):
        return None
    return int(h), int(w)


def expected_patch(patch, maskset: MaskSet) -> tuple[int, int] | None:
    """Twin of the patch argument: a PatchThreat of the same image, or an (h, w) pair inside it."""
    if isinstance(patch, PatchThreat):
        return patch.patch_size if patch.image_size == maskset.image_size else None
    return expected_pair(patch, maskset.image_size)


def dense_counts(maskset: MaskSet, patch: tuple[int, int]) -> np.ndarray:
    """Coverage from the pixel bitmaps (certmask_core.reference.covers), independent of the package's
    maths."""
    return covers(maskset, patch).sum(axis=2)


@st.composite
def patches_for(draw, maskset: MaskSet):
    """Mostly a valid patch for the set's image, in every accepted form; sometimes anything at all."""
    H, W = maskset.image_size
    h, w = draw(st.integers(1, H)), draw(st.integers(1, W))
    return draw(st.one_of(
        st.just((h, w)), st.just([h, w]), st.just(np.array([h, w])), st.just(PatchThreat((H, W), (h, w))),
        st.just(np.int64(h)) if h == w else st.just((np.uint8(h), np.int64(w))),
        st.just(PatchThreat((H + 1, W), (h, w))), hostile_pairs))


# --- MaskSet(image_size, origins, sizes) --------------------------------------------------------------

COORDINATE_DTYPES = (np.int64, np.uint64, np.int8, np.uint16, np.float16, np.float32, np.float64,
                     np.longdouble, object, bool, complex)


def as_container(rows: list, kind: str):
    """The same coordinates as a list, a tuple of tuples, a numpy array of some dtype, an np.matrix
    or a masked array whose mask hides an entry."""
    if kind in ("matrix", "masked"):
        try:
            arr = np.array(rows, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            return rows
        if kind == "matrix":
            return np.asmatrix(arr) if arr.ndim == 2 else arr
        return np.ma.masked_array(arr, mask=np.arange(arr.size).reshape(arr.shape) == 0)
    if kind == "list":
        return [list(r) if isinstance(r, (list, tuple)) else r for r in rows]
    if kind == "tuple":
        return tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in rows)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a lossy cast is itself a hostile value
            return np.array(rows, dtype=kind)
    except (TypeError, ValueError, OverflowError):
        return np.array(rows, dtype=object) if all(isinstance(r, (list, tuple)) for r in rows) else rows


CORRUPTIONS = ("entry", "outside", "huge size", "image", "ragged", "columns", "count", "empty", "whole")


@st.composite
def maskset_arguments(draw):
    """``(image_size, origins, sizes, clean)``: a valid set, then up to two corruptions; ``clean``
    when none applied (the construction must then succeed)."""
    H, W = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    origins, sizes = [], []
    for _ in range(draw(st.integers(1, 5))):
        y, x = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
        origins.append([y, x])
        sizes.append([draw(st.integers(1, H - y)), draw(st.integers(1, W - x))])
    image = draw(st.sampled_from([(H, W), [H, W], np.array([H, W])] + ([H] if H == W else [])))
    corruptions = draw(st.lists(st.sampled_from(CORRUPTIONS), max_size=2, unique=True))
    for corruption in sorted(corruptions, key=CORRUPTIONS.index):  # values first, then shapes
        target = draw(st.sampled_from([origins, sizes]))
        if not target:
            continue
        i, j = draw(st.integers(0, len(target) - 1)), draw(st.integers(0, 1))
        if corruption == "entry":            # one coordinate replaced by anything
            target[i][j] = draw(hostile_scalars)
        elif corruption == "outside" and i < len(origins) and type(origins[i][j]) is int:
            sizes[i][j] = (H, W)[j] - origins[i][j] + draw(st.integers(1, 3))  # leaves the image a little
        elif corruption == "huge size":      # the forged-certificate pattern: wraps around in int64
            origins[i][j] = draw(st.sampled_from([2**58, 2**62, 2**63 - 1, 2**64 - 8]))
            sizes[i][j] = draw(st.sampled_from([2**63 - 1, 2**63 - 2, 2**64 - 1, -2**58]))
        elif corruption == "ragged":
            target[i] = target[i][:1]
        elif corruption == "columns":
            target[i] = target[i] + [0]
        elif corruption == "count":          # origins and sizes of different lengths
            target.append(list(target[i]))
        elif corruption == "empty":
            target.clear()
        elif corruption == "whole":
            target[:] = [draw(hostile_scalars)]
        else:
            image = draw(hostile_pairs)
    kinds = ["list", "tuple", "matrix", "masked"] + list(COORDINATE_DTYPES)
    as_origins = as_container(origins, draw(st.sampled_from(kinds)))
    as_sizes = as_container(sizes, draw(st.sampled_from(kinds)))
    if corruptions == [] and draw(st.booleans()):
        as_origins, as_sizes = np.array(origins, np.int64), np.array(sizes, np.uint16)
    # bool and complex arrays are refused by rule; a matrix or a masked array may be refused too, but
    # once accepted it must be stored as a plain array of the visible values
    plain = [type(a) in (list, tuple) or (type(a) is np.ndarray and a.dtype.kind not in "bc")
             for a in (as_origins, as_sizes)]
    clean = not corruptions and all(plain)
    return image, as_origins, as_sizes, clean


def flat_values(values) -> list:
    """The coordinates as given, flattened to Python (or numpy) scalars."""
    if isinstance(values, np.ndarray):  # a matrix or a masked array too: the values underneath
        return np.asarray(values).ravel().tolist()
    return np.asarray(values, dtype=object).ravel().tolist()


def check_maskset_invariants(ms: MaskSet):
    """What every accepted mask set must satisfy, in Python ints (no overflow can hide a violation)."""
    H, W = ms.image_size
    assert type(H) is int and type(W) is int and 1 <= H <= MAX_SIDE and 1 <= W <= MAX_SIDE
    for arr in (ms.origins, ms.sizes):
        assert type(arr) is np.ndarray, f"stored as {type(arr).__name__}"  # no matrix, no hidden entries
        assert arr.dtype == np.int64 and arr.ndim == 2 and arr.shape == (len(ms), 2) and len(ms) >= 1
        assert not arr.flags.writeable
    for (y, x), (mh, mw) in zip(ms.origins.tolist(), ms.sizes.tolist()):
        assert 0 <= y and 0 <= x and mh >= 1 and mw >= 1 and y + mh <= H and x + mw <= W
    again = MaskSet.from_json(ms.to_json())
    assert again == ms and hash(again) == hash(ms)
    assert (again.origins == ms.origins).all() and (again.sizes == ms.sizes).all()


def check_maskset_construction(case):
    image, origins, sizes, clean = case
    ok, ms = attempt(MaskSet, image, origins, sizes)
    assert ok or not clean, "a valid mask set was refused"
    if not ok:
        return
    check_maskset_invariants(ms)
    assert ms.image_size == expected_pair(image, (MAX_SIDE, MAX_SIDE))
    # the stored coordinates are the given numbers, not a wrapped or truncated cast of them
    for given_values, stored in ((origins, ms.origins), (sizes, ms.sizes)):
        flat = flat_values(given_values)
        assert not any(isinstance(v, (bool, np.bool_)) for v in flat), f"bools accepted: {flat}"
        assert [int(v) for v in stored.ravel().tolist()] == flat
        if isinstance(given_values, np.ndarray) and given_values.flags.writeable:
            before = stored.copy()
            given_values[...] = 0 if given_values.dtype != object else 7
            assert (stored == before).all(), "the set shares memory with the caller's array"


test_maskset_construction, test_maskset_construction_slow = fuzz_twins(check_maskset_construction,
                                                                       case=maskset_arguments())


# --- MaskSet.from_json / from_dict ----------------------------------------------------------------

HUGE_LITERAL = "__HUGE_INT_LITERAL__"
"""Placeholder for an integer literal of 5,000 digits: json.dumps cannot write one (Python's 4,300
digit limit), so it is spliced into the text."""
DEEP_LITERAL = "__DEEP_NESTING__"
FIELDS = ("image_size", "origins", "sizes", "spec", "patch_size")
SPEC_FIELDS = ("strategy", "k", "mask_size", "masks_per_axis")

json_keys = st.one_of(st.sampled_from(FIELDS + SPEC_FIELDS), st.text(max_size=6))
json_scalars = st.one_of(st.none(), st.booleans(), hostile_ints, st.floats(), st.text(max_size=6),
                         st.sampled_from([HUGE_LITERAL, DEEP_LITERAL]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(json_keys, inner, max_size=4), max_leaves=12)


@st.composite
def valid_documents(draw):
    """``to_dict`` of a small mask set, sometimes with a spec and a patch size (as plan --json writes)."""
    ms = draw(any_masksets(max_side=8, max_masks=4))
    doc = ms.to_dict()
    H, W = ms.image_size
    if draw(st.booleans()):
        doc["patch_size"] = [draw(st.integers(1, H)), draw(st.integers(1, W))]
    if draw(st.booleans()):
        doc["spec"] = {"strategy": draw(st.sampled_from(STRATEGIES)), "k": 1, "masks_per_axis": None,
                       "mask_size": [draw(st.integers(1, H)), draw(st.integers(1, W))]}
    return doc


@st.composite
def near_valid_documents(draw, values=json_values):
    """A valid document with one field (or one entry of it) replaced, removed or added."""
    doc = draw(valid_documents())
    how = draw(st.sampled_from(["none", "replace", "delete", "entry", "spec entry", "add", "root"]))
    value = draw(values)
    field = draw(st.sampled_from(FIELDS))
    if how == "replace":
        doc[field] = value
    elif how == "delete":
        doc.pop(field, None)
    elif how == "entry" and isinstance(doc.get(field), list) and doc[field]:
        holder = doc[field]
        i = draw(st.integers(0, len(holder) - 1))
        if isinstance(holder[i], list):
            holder, i = holder[i], draw(st.integers(0, len(holder[i]) - 1))
        holder[i] = value
    elif how == "spec entry":
        doc.setdefault("spec", {})[draw(json_keys)] = value
    elif how == "add":
        doc[draw(json_keys)] = value
    elif how == "root":
        doc = value
    return doc, how == "none"


def to_text(doc, deep: int) -> str:
    """JSON text of ``doc`` (NaN and Infinity literals included), with the placeholders spliced in."""
    text = json.dumps(doc)
    return (text.replace(json.dumps(HUGE_LITERAL), "9" * 5000)
            .replace(json.dumps(DEEP_LITERAL), "[" * deep + "]" * deep))


RAW_TEXTS = ("", " ", "NaN", "Infinity", "-Infinity", "null", "[]", "{}", "[1, 2]", '"text"', "1e999",
             '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]]} trailing',
             '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]], "image_size": [2, 2]}',
             '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 1e400]]}',
             '{"image_size": [4, 4], "origins": [[-0, 0]], "sizes": [[4.0, 4E0]]}',
             '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]], "spec": {"k": 1e999}}',
             '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]], "spec": {"strategy": "offset", '
             '"k": 99999999999999999999999, "mask_size": [4, 4]}}',
             '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]], "patch_size": [5, 1]}',
             "\ufeff{}", '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, "\\ud800"]]}')


@st.composite
def json_texts(draw):
    """``(text, clean)``: hostile JSON, near-valid documents and raw text; ``clean`` for valid ones."""
    deep = draw(st.sampled_from([2, 60, 70, 1000, 100_000]))
    kind = draw(st.sampled_from(["near-valid", "near-valid", "value", "raw", "text"]))
    if kind == "near-valid":
        doc, clean = draw(near_valid_documents())
        return to_text(doc, deep), clean
    if kind == "value":
        return to_text(draw(json_values), deep), False
    if kind == "raw":
        return draw(st.sampled_from(RAW_TEXTS)), False
    return draw(st.text(max_size=40)), False


def check_document_round_trip(ms: MaskSet, doc):
    """An accepted document holds exactly the accepted set, and the set writes itself back."""
    check_maskset_invariants(ms)
    assert isinstance(doc, dict)
    assert [int(v) for v in ms.origins.ravel()] == flat_values(doc["origins"])
    assert [int(v) for v in ms.sizes.ravel()] == flat_values(doc["sizes"])
    again = MaskSet.from_json(ms.to_json())
    assert again.spec == ms.spec and again.threat == ms.threat


def check_from_json(case):
    text, clean = case
    ok, ms = attempt(MaskSet.from_json, text)
    assert ok or not clean, "a valid document was refused"
    if ok:
        check_document_round_trip(ms, json.loads(text))


test_maskset_from_json, test_maskset_from_json_slow = fuzz_twins(check_from_json, case=json_texts())


python_values = st.one_of(
    json_values, hostile_scalars, hostile_pairs,
    st.dictionaries(st.one_of(st.integers(), st.text(max_size=3), st.sampled_from(SPEC_FIELDS)),
                    hostile_scalars, max_size=3),
    st.lists(st.tuples(hostile_ints, hostile_ints), max_size=3),
    st.lists(st.integers(0, 3), min_size=2, max_size=2).map(lambda v: np.array([v])),
    st.sampled_from([np.zeros((1, 2), np.uint64), np.ones((1, 2), np.float16),
                     np.array([[2**63, 1]], np.uint64), np.array(["offset"]), np.str_("offset")]))


def check_from_dict(case):
    doc, clean = case
    ok, ms = attempt(MaskSet.from_dict, doc)
    assert ok or not clean, "a valid document was refused"
    if ok:
        check_document_round_trip(ms, doc)


test_maskset_from_dict, test_maskset_from_dict_slow = fuzz_twins(
    check_from_dict, case=near_valid_documents(values=python_values))


# --- coverage ---------------------------------------------------------------------------------------

def check_coverage_counts(data):
    ms = data.draw(any_masksets(), label="maskset")
    patch = data.draw(patches_for(ms), label="patch")
    ok, counts = attempt(coverage_counts, ms, patch)
    expected = expected_patch(patch, ms)
    assert ok == (expected is not None), f"accepted={ok} but the patch twin says {expected}"
    if ok:
        assert counts.dtype == np.int64
        assert np.array_equal(counts, dense_counts(ms, expected))
        assert np.array_equal(counts, coverage_counts_bruteforce(ms, expected))


test_coverage_counts, test_coverage_counts_slow = fuzz_twins(check_coverage_counts, data=st.data())


def check_coverage_extremes(data):
    ms = data.draw(any_masksets(), label="maskset")
    patch = data.draw(patches_for(ms), label="patch")
    ok, result = attempt(coverage_extremes, ms, patch)
    expected = expected_patch(patch, ms)
    assert ok == (expected is not None)
    if ok:
        counts = dense_counts(ms, expected)
        low, high, (a, b) = result
        assert (low, high) == (int(counts.min()), int(counts.max()))
        assert all(type(v) is int for v in (low, high, a, b))
        assert counts[a, b] == low, f"argmin {(a, b)} has coverage {counts[a, b]}, not {low}"


test_coverage_extremes, test_coverage_extremes_slow = fuzz_twins(check_coverage_extremes, data=st.data())


def check_is_k_covered(data):
    ms = data.draw(any_masksets(), label="maskset")
    patch = data.draw(patches_for(ms), label="patch")
    k = data.draw(st.one_of(st.integers(1, 4), hostile_scalars, st.sampled_from(
        [np.int64(1), np.uint64(2**64 - 1), np.int8(-1), 1.0, True])), label="k")
    ok, result = attempt(is_k_covered, ms, patch, k)
    expected = expected_patch(patch, ms)
    assert ok == (expected is not None and is_int(k) and k >= 1)
    if ok:
        assert result == (int(dense_counts(ms, expected).min()) >= k)


test_is_k_covered, test_is_k_covered_slow = fuzz_twins(check_is_k_covered, data=st.data())


WIDE = {"max_side": 5, "max_masks": 140}
"""Sets of more than 64 masks: the covering-set bitsets span several uint64 words."""


def check_covering_sets(data):
    ms = data.draw(any_masksets(**data.draw(st.sampled_from([{}, {}, {}, WIDE]))), label="maskset")
    patch = data.draw(patches_for(ms), label="patch")
    ok, rows = attempt(covering_sets, ms, patch)
    expected = expected_patch(patch, ms)
    assert ok == (expected is not None)
    if ok:
        assert rows.dtype == bool and rows.ndim == 2 and rows.shape[1] == len(ms)
        found = {frozenset(np.flatnonzero(r).tolist()) for r in rows}
        assert len(found) == len(rows), "covering sets repeat"
        assert found == covering_sets_reference(ms, expected)


test_covering_sets, test_covering_sets_slow = fuzz_twins(check_covering_sets, data=st.data())


def check_minimal_covering_sets(data):
    ms = data.draw(any_masksets(**data.draw(st.sampled_from([{}, {}, {}, WIDE]))), label="maskset")
    patch = data.draw(patches_for(ms), label="patch")
    ok, bits = attempt(minimal_covering_set_bits, ms, patch)
    expected = expected_patch(patch, ms)
    assert ok == (expected is not None)
    if ok:
        assert bits.dtype == np.uint64 and bits.shape[1] == max(1, -(-len(ms) // 64))
        found = {frozenset(np.flatnonzero(r).tolist()) for r in unpack(bits, len(ms))}
        assert len(found) == len(bits), "minimal covering sets repeat"
        assert found == minimal_sets_reference(covering_sets_reference(ms, expected))


test_minimal_covering_sets, test_minimal_covering_sets_slow = fuzz_twins(check_minimal_covering_sets,
                                                                       data=st.data())


# --- defend and certify -----------------------------------------------------------------------------

LABELS = (0, 1, 2, 2**40, 2**62, INT64_MAX)
"""Class labels given as integers: small ones and huge ones (no K-sized allocation may follow them)."""
GAPS = (0.0, 1e-4, 1e-3, 0.0010000001, 0.5, 2.0, 1e300)
"""Top-1 minus top-2 logit gaps around the default margin tolerance (1e-3) and beyond float16."""


def vote(vector: list) -> tuple[int, float]:
    """Twin of one logit vector's prediction: (argmax, top-1 minus top-2), NO_VOTE if not all finite."""
    values = [float(v) for v in vector]
    if not all(math.isfinite(v) for v in values):
        return NO_VOTE, 0.0
    top = sorted(values, reverse=True)
    return values.index(top[0]), (math.inf if len(top) == 1 else top[0] - top[1])


def expected_predictions(predictions, n: int, num_classes) -> tuple[list, list] | None:
    """Twin of the prediction rules: per-image lists of labels and margins, or None if invalid.

    Integer labels ``(B, n)``: class indices in ``[0, 2**63)`` (``< num_classes`` when given) or
    NO_VOTE; margins ``inf``. Float logits ``(B, n, K)``, ``K >= 1`` (``== num_classes`` when given):
    the argmax and the top-1 minus top-2 gap, NO_VOTE and 0 for a vector with a non-finite entry.
    """
    try:
        arr = np.asarray(predictions)
    except (TypeError, ValueError):
        return None
    if arr.dtype.kind == "f" and arr.ndim == 3 and arr.shape[1] == n and arr.shape[2] >= 1 \
            and (num_classes is None or arr.shape[2] == num_classes):
        votes = [[vote(v) for v in row] for row in arr.tolist()]
        return [[c for c, _ in row] for row in votes], [[m for _, m in row] for row in votes]
    if arr.dtype.kind in "iu" and arr.ndim == 2 and arr.shape[1] == n:
        rows = arr.tolist()
        if all(v == NO_VOTE or 0 <= v <= INT64_MAX and (num_classes is None or v < num_classes)
               for row in rows for v in row):
            return rows, [[math.inf] * n for _ in rows]
    return None


class PairTable:
    """``pair_predictor`` answering from a symmetric table per image; checks and records each question."""

    def __init__(self, table: np.ndarray):
        self.table = table  # (B, n, n) labels or (B, n, n, K) logits
        self.asked: list[tuple[int, int, int]] = []

    def __call__(self, index, pairs):
        pairs = np.asarray(pairs)
        n = self.table.shape[1]
        assert 0 <= index < len(self.table) and pairs.ndim == 2 and pairs.shape[1] == 2 and len(pairs)
        assert ((pairs >= 0) & (pairs < n)).all() and (pairs[:, 0] != pairs[:, 1]).all()
        self.asked.extend((int(index), int(i), int(j)) for i, j in pairs)
        return self.table[index][pairs[:, 0], pairs[:, 1]]

    def answer(self, b: int, i: int, j: int) -> tuple[int, float]:
        value = self.table[b, i, j]
        return vote(value.tolist()) if value.ndim else (int(value), math.inf)


def ragged_answer(index, pairs):
    return [[0.0]] + [[0.0, 1.0]] * (len(pairs) - 1) if len(pairs) > 1 else [[[0.0]], 1]


class Hostile:
    """A pair_predictor whose answers are all invalid; records whether it was asked at all."""

    def __init__(self, answer):
        self.answer, self.called = answer, False

    def __call__(self, index, pairs):
        self.called = True
        return self.answer(index, pairs)

    def __repr__(self):
        return f"Hostile({getattr(self.answer, '__name__', self.answer)})"


HOSTILE_PREDICTORS = (
    5, "predictor", ragged_answer,
    lambda index, pairs: None,
    lambda index, pairs: np.zeros(len(pairs) + 1, np.int64),             # one answer too many
    lambda index, pairs: np.full(len(pairs), 2**63, np.uint64),          # beyond int64
    lambda index, pairs: np.zeros(len(pairs), bool),
    lambda index, pairs: np.full((len(pairs), 2, 2), 0.5),
    lambda index, pairs: [str(p) for p in pairs],
)


@st.composite
def label_rows(draw, n: int, truth: int | None, alphabet):
    """One row of n labels: all ``truth`` (maybe with one dissenter), or anything from the alphabet."""
    if truth is not None and draw(st.booleans()):
        row = [truth] * n
        if draw(st.booleans()):
            row[draw(st.integers(0, n - 1))] = draw(st.sampled_from(alphabet))
        return row
    return [draw(st.sampled_from(alphabet)) for _ in range(n)]


@st.composite
def logit_vectors(draw, label: int, K: int):
    """Logits whose argmax is ``label`` by a chosen gap, sometimes with a NaN or an infinity."""
    low = draw(st.sampled_from([-1.0, 0.0, 3.5, -1e300]) | st.floats(-10, 10))
    vector = [low + draw(st.sampled_from([0.0, -0.25]) | st.floats(-5, 0)) for _ in range(K)]
    vector[label] = max(vector) + draw(st.sampled_from(GAPS))
    if draw(st.integers(0, 9)) == 0:
        vector[draw(st.integers(0, K - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return vector


@st.composite
def prediction_arrays(draw, rows: list, shape: tuple, K: int | None):
    """Labels of the given shape as int labels in several containers (a nested list too), or as
    logits ``shape + (K,)`` of a float dtype whose argmax is each label."""
    values = np.array(rows, dtype=object).ravel().tolist()
    if K is None:
        container = draw(st.sampled_from(["int64", "uint64", "int32", "list"]))
        if container == "list" and shape[0]:
            return rows
        if container == "list" or (container == "uint64" and min(values, default=0) < 0) \
                or (container == "int32" and max(values, default=0) > 2**31 - 1):
            container = "int64"
        return np.array(values, dtype=container).reshape(shape)
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
    logits = [draw(logit_vectors(v if v != NO_VOTE else 0, K)) for v in values]
    with np.errstate(over="ignore"):  # float16 and float32 overflow to inf: those vectors are NO_VOTE
        return np.array(logits, dtype=dtype).reshape(*shape, K)


HOSTILE_PREDICTIONS = st.one_of(
    hostile_scalars, st.just([[1, 2], [3]]), st.just([[[0.5]], [0.5]]), st.just([[2**64, 0]]),
    st.just(np.full((1, 1), 2**63, np.uint64)), st.just(np.ones((1, 2), bool)), st.just(np.zeros((1, 2, 0))),
    st.just(np.array([["a", "b"]])), st.just(np.zeros((2, 2, 2, 2))), st.just(np.array([[-1, 0]])),
    st.just(np.array([[-3, 0]])), st.just(np.zeros((1, 2), object)), st.just(np.zeros((1, 2), complex)))


@st.composite
def defence_cases(draw, with_truth: bool):
    """Everything defend or certify takes: a covering mask set, predictions, a pair table and the
    keyword arguments, then up to two of them replaced by hostile values (``corrupted`` names them)."""
    threat = draw(threats(max_side=7))
    ms = draw(covering_masksets(threat, max_masks=6))
    n, B = len(ms), draw(st.integers(0, 3))
    K = draw(st.none() | st.integers(1, 4))
    alphabet = list(LABELS if K is None else range(K)) + [NO_VOTE]
    truth = [draw(st.sampled_from(alphabet[:-1])) for _ in range(B)]
    rows = [draw(label_rows(n, truth[b] if with_truth else None, alphabet)) for b in range(B)]
    predictions = draw(prediction_arrays(rows, (B, n), K))
    pair_rows = [[draw(label_rows(n, truth[b] if with_truth else None, alphabet)) for _ in range(n)]
                 for b in range(B)]
    sym = [[[pair_rows[b][min(i, j)][max(i, j)] for j in range(n)] for i in range(n)] for b in range(B)]
    table = np.asarray(draw(prediction_arrays(sym, (B, n, n), K)))
    max_label = max([0] + truth + [v for r in rows for v in r] + [v for r in pair_rows for p in r for v in p])
    min_cover = int(dense_counts(ms, threat.patch_size).min())
    kwargs = {"mode": draw(st.sampled_from(MODES)),
              "patch": None if ms.threat is not None and draw(st.booleans()) else draw(
                  st.sampled_from([threat.patch_size, list(threat.patch_size), threat])),
              "k": draw(st.none() | st.integers(1, min_cover)),
              "num_classes": draw(st.none() | st.just(K if K is not None else max_label + 1)),
              "pair_predictor": PairTable(table)}
    if with_truth:
        kwargs["labels"] = truth
        kwargs["margin_tolerance"] = draw(st.sampled_from([1e-3, 0.0, 0.5, 1, 1e300, np.float64(1e-4)]))
        kwargs["pair_chunk"] = draw(st.sampled_from([1024, 1, 2, 3, 2**100]))
    corrupted = draw(st.lists(st.sampled_from(sorted(kwargs) + ["predictions"]), max_size=2, unique=True))
    hostile = {"mode": st.sampled_from(["Detection", "", "recovery ", b"paper", ["paper"], None,
                                        np.str_("paper")]) | hostile_scalars,
               "patch": patches_for(ms) | st.none(),
               "k": hostile_scalars | st.integers(min_cover + 1, min_cover + 3),
               "num_classes": hostile_scalars | st.integers(1, max(1, max_label)),
               "pair_predictor": st.sampled_from(HOSTILE_PREDICTORS).map(
                   lambda p: Hostile(p) if callable(p) else p) | st.none(),
               "labels": hostile_scalars | hostile_pairs | st.just(np.array(truth, np.float64))
               | st.just(truth + [0]) | st.just(np.array([truth])) | st.just([-1] * B),
               "margin_tolerance": hostile_scalars | st.sampled_from([2**2000, np.float32(0.1), -0.0]),
               "pair_chunk": hostile_scalars}
    for name in corrupted:
        if name == "predictions":
            predictions = draw(HOSTILE_PREDICTIONS)
        else:
            kwargs[name] = draw(hostile[name])
    return ms, predictions, kwargs, corrupted


def expected_k(k, ms: MaskSet, min_cover: int) -> int | None:
    """Twin of the claimed multiplicity: the set's own (or 1) by default, at most the real coverage."""
    k = k if k is not None else (ms.k or 1)
    return int(k) if is_int(k) and 1 <= k <= min_cover else None


def expected_num_classes(num_classes):
    return num_classes is None or (is_int(num_classes) and num_classes >= 1)


def expected_labels_arg(labels, B: int, num_classes) -> list | None:
    """Twin of certify's true labels: B class indices (a 1-D integer array; empty of any kind)."""
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError):
        return None
    if y.ndim != 1 or len(y) != B:
        return None
    if B == 0:
        return []
    values = y.tolist()
    if y.dtype.kind not in "iu" or not all(0 <= v <= INT64_MAX and (num_classes is None or v < num_classes)
                                           for v in values):
        return None
    return values


def expected_tolerance(value) -> bool:
    """Any real number (numpy scalars too) that is finite and >= 0; bools are not numbers here."""
    return (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
            and 0 <= value < math.inf)


def disagreeing(row: list) -> list[int]:
    """The masks whose vote differs from the majority (ties to the smallest class): the ones whose
    pairs recovery asks for."""
    votes = Counter(v for v in row if v != NO_VOTE)
    if not votes:
        return []
    majority = min(c for c in votes if votes[c] == max(votes.values()))
    return [i for i, v in enumerate(row) if v not in (majority, NO_VOTE)]


def defence_twin(row: list, sets, mode: str, k: int, pairs: PairTable, b: int) -> tuple[int, int]:
    """(output, second-round passes) of one image, from certmask_core.reference."""
    if mode != "recovery":
        return one_round_reference(row, sets, mode, k), 0
    output = recovery_reference(row, lambda i, j: pairs.answer(b, i, j)[0])
    votes = Counter(v for v in row if v != NO_VOTE)
    if not votes:
        return output, 0
    majority = min(c for c in votes if votes[c] == max(votes.values()))
    tried = 0  # PatchCleanser asks the n - 1 pairs of each disagreeing mask, in order, until one holds
    for i, v in enumerate(row):
        if v not in (majority, NO_VOTE):
            tried += 1
            if all(pairs.answer(b, i, j)[0] == v for j in range(len(row)) if j != i):
                break
    return output, tried * (len(row) - 1)


def check_pair_answers_were_valid(pairs, num_classes, needed: bool):
    """Every two-mask answer the call accepted obeys the label rules (NO_VOTE or a class index); a
    hostile predictor (every answer invalid, or not callable) was not needed."""
    if isinstance(pairs, PairTable):
        for b, i, j in pairs.asked:
            label = pairs.answer(b, i, j)[0]
            assert label == NO_VOTE or (0 <= label <= INT64_MAX
                                        and (num_classes is None or label < num_classes))
    else:
        assert not needed, f"recovery needed its pair_predictor {pairs!r} and accepted it"
        assert not getattr(pairs, "called", False), f"an invalid answer of {pairs!r} was accepted"


def check_defend(data):
    ms, predictions, kwargs, corrupted = data.draw(defence_cases(with_truth=False), label="case")
    ok, result = attempt(defend, predictions, ms, **kwargs)
    mode, pairs = kwargs["mode"], kwargs["pair_predictor"]
    patch = expected_patch(kwargs["patch"], ms) if kwargs["patch"] is not None else (
        ms.threat.patch_size if ms.threat is not None else None)
    min_cover = int(dense_counts(ms, patch).min()) if patch else 0
    k = expected_k(kwargs["k"], ms, min_cover)
    valid = (isinstance(mode, str) and mode in MODES and patch is not None and k is not None
             and expected_num_classes(kwargs["num_classes"]))
    first = expected_predictions(predictions, len(ms), kwargs["num_classes"]) if valid else None
    if not ok:
        assert corrupted, "valid input was refused"
        return
    assert first is not None, f"accepted although invalid (corrupted: {corrupted})"
    labels = first[0]
    if mode == "recovery":
        assert pairs is not None
        check_pair_answers_were_valid(pairs, kwargs["num_classes"], any(disagreeing(r) for r in labels))
        if not isinstance(pairs, PairTable):
            return  # a hostile predictor that was never asked: nothing left to compare
    sets = covering_sets_reference(ms, patch)
    twin = [defence_twin(row, sets, mode, k, pairs, b) for b, row in enumerate(labels)]
    assert result.mode == mode
    assert result.output.dtype == np.int64 and result.output.tolist() == [o for o, _ in twin]
    assert result.forward_passes.tolist() == [len(ms) + p for _, p in twin]


test_defend, test_defend_slow = fuzz_twins(check_defend, data=st.data())


def certificate_twin(b: int, row: list, margins: list, y: int, mode: str, pairs: PairTable,
                     tolerance, minimal) -> tuple[bool, bool]:
    """(certified, claim_holds) of one clean image, from certmask_core.reference.

    A prediction with a margin at or below the tolerance is unsure and may take any value. Unanimity
    (detection, and the claim of ``paper``, which is never certified), T12 (plurality), T13
    (covering consensus), T11 (recovery: the surely good masks hit every minimal covering set).
    """
    unsure = [m <= tolerance for m in margins]
    if mode in ("detection", "paper"):
        claim = all(v == y for v in row) and not any(unsure)
    elif mode == "plurality":
        claim = plurality_certificate_reference(row, unsure, y, minimal)
    elif mode == "covering_consensus":
        claim = consensus_certificate_reference(row, unsure, y, minimal)
    else:
        claim = hitting_set_reference(row, y, lambda i, j: pairs.answer(b, i, j)[0], minimal,
                                      [not u for u in unsure],
                                      lambda i, j: pairs.answer(b, i, j)[1] > tolerance)
    return claim and mode != "paper", claim


def check_certify(data):
    ms, predictions, kwargs, corrupted = data.draw(defence_cases(with_truth=True), label="case")
    labels = kwargs.pop("labels")
    ok, report = attempt(certify, predictions, labels, ms, **kwargs)
    mode, pairs, num_classes = kwargs["mode"], kwargs["pair_predictor"], kwargs["num_classes"]
    patch = expected_patch(kwargs["patch"], ms) if kwargs["patch"] is not None else (
        ms.threat.patch_size if ms.threat is not None else None)
    min_cover = int(dense_counts(ms, patch).min()) if patch else 0
    k = expected_k(kwargs["k"], ms, min_cover)
    classes_ok = expected_num_classes(num_classes)
    first = expected_predictions(predictions, len(ms), num_classes) if classes_ok else None
    y = expected_labels_arg(labels, len(first[0]), num_classes) if first is not None else None
    valid = (isinstance(mode, str) and mode in MODES and patch is not None and k is not None
             and classes_ok and first is not None and y is not None
             and expected_tolerance(kwargs["margin_tolerance"])
             and is_int(kwargs["pair_chunk"]) and kwargs["pair_chunk"] >= 1)
    if not ok:
        assert corrupted, "valid input was refused"
        return
    assert valid, f"accepted although invalid (corrupted: {corrupted})"
    if mode == "recovery":
        assert pairs is not None
        # the defence asks for the pairs of disagreeing masks, the certificate for all of them
        # on images whose one-mask predictions all hold
        needed = any(disagreeing(r) or (all(v == t for v in r) and len(r) > 1) for r, t in zip(first[0], y))
        check_pair_answers_were_valid(pairs, num_classes, needed)
        if not isinstance(pairs, PairTable):
            return
    sets = covering_sets_reference(ms, patch)
    minimal = minimal_sets_reference(sets)
    defence = [defence_twin(row, sets, mode, k, pairs, b) for b, row in enumerate(first[0])]
    twin = [certificate_twin(b, row, margins, y[b], mode, pairs, kwargs["margin_tolerance"], minimal)
            for b, (row, margins) in enumerate(zip(*first))]
    assert report.mode == mode and report.sound == (mode != "paper")
    assert report.labels.tolist() == y
    assert report.output.tolist() == [o for o, _ in defence]
    assert report.defence_passes.tolist() == [len(ms) + p for _, p in defence]
    assert report.certified.tolist() == [c for c, _ in twin]
    assert report.claim_holds.tolist() == [h for _, h in twin]
    n = len(ms)
    one_mask_margin = [min(margins, default=math.inf) for margins in first[1]]
    if mode != "recovery":
        assert report.min_margin.tolist() == one_mask_margin
        assert report.certificate_passes.tolist() == [n] * len(y)
    else:  # the pairs the greedy search asks depend on its order; bounds and the pairs' own margins
        asked = [min([pairs.answer(b, i, j)[1] for b2, i, j in pairs.asked if b2 == b], default=math.inf)
                 for b in range(len(y))]
        assert all(min(m, a) <= r <= m for r, m, a in zip(report.min_margin.tolist(), one_mask_margin, asked))
        assert all(n <= p <= n + n * (n - 1) // 2 for p in report.certificate_passes.tolist())
    assert report.margin_tolerance == float(kwargs["margin_tolerance"])
    records = per_image_records(range(len(y)), report.labels, report.output, {("family", 1, mode): report})
    json.dumps([report.summary(), records], allow_nan=False)  # what results.json and per_image.jsonl hold


test_certify, test_certify_slow = fuzz_twins(check_certify, data=st.data())


# --- constructions and bounds ------------------------------------------------------------------

@st.composite
def construction_arguments(draw):
    """``make_maskset`` arguments: a small threat, then k, strategy and one size argument, each
    sometimes hostile (a float, a bool, an array, a huge int, a strategy that is not a string)."""
    threat = draw(threats(max_side=12))
    (H, W), (ph, pw) = threat.image_size, threat.patch_size
    k = draw(st.integers(1, 4) | hostile_scalars | st.sampled_from([np.int64(2), np.uint64(3)]))
    strategy = draw(st.sampled_from(STRATEGIES) | st.sampled_from(
        ["", "Offset", None, 1, np.str_("offset"), np.array(["offset"]), np.array(["offset", "x"])]))
    size = draw(st.one_of(st.tuples(st.integers(ph, H), st.integers(pw, W)), st.integers(1, max(H, W)),
                          st.just(np.array([H, W])), hostile_pairs))
    count = draw(st.one_of(st.tuples(st.integers(1, 6), st.integers(1, 6)), st.integers(1, 6), hostile_pairs))
    by = draw(st.sampled_from(["mask_size", "masks_per_axis", "both", "neither"]))
    sizes = {"mask_size": size if by in ("mask_size", "both") else None,
             "masks_per_axis": count if by in ("masks_per_axis", "both") else None}
    return threat, k, strategy, sizes


def check_make_maskset(threat, k, strategy, sizes):
    ok, ms = attempt(make_maskset, threat, k, strategy, **sizes)
    if not ok:
        return
    # only a string strategy, an integer k and exactly one size argument can have been accepted
    assert type(strategy) in (str, np.str_) and strategy in STRATEGIES and is_int(k) and k >= 1
    assert (sizes["mask_size"] is None) != (sizes["masks_per_axis"] is None)
    check_maskset_invariants(ms)
    assert ms.threat == threat and ms.spec.k == k and ms.spec.strategy == strategy and ms.is_distinct()
    assert int(dense_counts(ms, threat.patch_size).min()) >= k, "the construction is not k-fold"
    if sizes["mask_size"] is not None:
        assert ms.spec.mask_size == expected_pair(sizes["mask_size"], (MAX_SIDE, MAX_SIDE))
    assert (ms.sizes <= ms.spec.mask_size).all(), "a mask larger than the requested size"
    assert len(ms) >= lower_bound(threat, ms.spec.mask_size, k)


@settings(FAST, phases=NO_SHRINK)
@given(case=construction_arguments())
def test_make_maskset(case):
    check_make_maskset(*case)


@pytest.mark.slow
@settings(SLOW, phases=NO_SHRINK)
@given(case=construction_arguments())
def test_make_maskset_slow(case):
    check_make_maskset(*case)


def check_bounds(threat, mask, k):
    """effective_coverage and lower_bound equal their formulas (T1, T2) or refuse."""
    (ph, pw), (P_h, P_w) = threat.patch_size, threat.num_positions
    expected_mask = expected_pair(mask, (MAX_SIDE, MAX_SIDE))
    ok, w = attempt(effective_coverage, mask, threat.patch_size)
    assert ok == (expected_mask is not None and expected_mask[0] >= ph and expected_mask[1] >= pw)
    if ok:
        assert w == (expected_mask[0] - ph + 1, expected_mask[1] - pw + 1)
    ok_bound, bound = attempt(lower_bound, threat, mask, k)
    assert ok_bound == (ok and is_int(k) and k >= 1)
    if ok_bound:
        assert bound == int(k) * -(-P_h // w[0]) * -(-P_w // w[1])


test_effective_coverage_and_lower_bound, test_effective_coverage_and_lower_bound_slow = fuzz_twins(
    check_bounds, threat=threats(), mask=st.integers(1, 30) | hostile_pairs,
    k=st.integers(1, 9) | hostile_scalars)


# --- the command line ---------------------------------------------------------------------------

HELP_TOKENS = ("-h", "--help", "--version")


def run_cli(argv: list[str], capsys, limit: float = CALL_LIMIT_S) -> tuple[int, str, str]:
    """``main(argv)``'s return code, stdout and stderr; checks the exit protocol on the way.

    Return code 0, 1 or 2; on 2 exactly one stderr line ``certmask: error: ...``. argparse's
    SystemExit is allowed for --help and --version only.
    """
    capsys.readouterr()
    try:
        with deadline(limit):
            rc = main(argv)
    except SystemExit as exit_:
        assert any(token in argv for token in HELP_TOKENS), f"SystemExit({exit_.code}) for {argv}"
        assert exit_.code in (0, None)
        return 0, *capsys.readouterr()
    out, err = capsys.readouterr()
    assert rc in (0, 1, 2), f"return code {rc!r}"
    if rc == 2:
        assert err.startswith("certmask: error:") and err.count("\n") == 1 and err.endswith("\n"), err
    return rc, out, err


def int_token(values):
    """A command-line integer: mostly small and valid, sometimes huge, negative or not a number."""
    return st.one_of(values.map(str), values.map(str), hostile_ints.map(str), st.sampled_from(
        ["", " 3", "3.0", "1e3", "0x10", "nan", "-", "--k", "\u0663", "1_0", "1" * 5000]))


@st.composite
def coverage_files(draw):
    """``(bytes, clean)``: a mask-set file, valid or hostile (JSON, binary junk, deep or huge)."""
    kind = draw(st.sampled_from(["json", "json", "binary", "deep", "huge"]))
    if kind == "json":
        text, clean = draw(json_texts())
        return text.encode("utf-8", "surrogatepass"), clean
    if kind == "binary":
        return draw(st.binary(max_size=64) | st.just(b"\xff\xfe\x00{")), False
    if kind == "deep":
        return b"[" * 100_000 + b"]" * 100_000, False
    return ('{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, ' + "4" * 5000 + "]]}").encode(), False


def parse_int(token: str) -> int | None:
    """argparse's ``type=int``: ``int(token)``, or None where argparse refuses the token."""
    try:
        return int(token)
    except ValueError:
        return None


def read_maskset(content: bytes) -> MaskSet | None:
    """Twin of the CLI's file reading: UTF-8 text, then MaskSet.from_json (fuzzed above)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return attempt(MaskSet.from_json, text)[1]


def check_cli_coverage(data, tmp_path, capsys):
    content, clean = data.draw(coverage_files(), label="file")
    path = tmp_path / "masks.json"
    path.write_bytes(content)
    where = data.draw(st.sampled_from([str(path)] * 4 + [str(tmp_path), str(tmp_path / "none.json"), "",
                                                         str(path) + "\x00"]), label="path")
    patch = [data.draw(int_token(st.integers(1, 4)), label="ph"), data.draw(int_token(st.integers(1, 4)))]
    argv = ["coverage", where, "--patch", *patch]
    k_token = data.draw(st.none() | int_token(st.integers(1, 3)), label="k")
    argv += ["--k", k_token] if k_token is not None else []
    as_json = data.draw(st.booleans(), label="--json")
    argv += ["--json"] * as_json
    rc, out, err = run_cli(argv, capsys)
    from_file = read_maskset(content)
    assert from_file is not None or not clean, "the twin refused a valid file"
    ms = from_file if where == str(path) else None
    (ph, pw), k = (parse_int(t) for t in patch), parse_int(k_token) if k_token is not None else 1
    valid = (ms is not None and ph is not None and pw is not None and k is not None and k >= 1
             and 1 <= ph <= ms.image_size[0] and 1 <= pw <= ms.image_size[1])
    assert (rc != 2) == valid, f"exit {rc} but the twin says valid={valid}: {err}"
    if rc == 2:
        return
    P_h, P_w = ms.image_size[0] - ph + 1, ms.image_size[1] - pw + 1
    if P_h * P_w <= 20_000:  # pixel-level twin; a larger grid (a 16384-pixel side) only self-checks
        counts = dense_counts(ms, (ph, pw))
        low, high, below = int(counts.min()), int(counts.max()), int((counts < k).sum())
    else:
        low, high, _ = coverage_extremes(ms, (ph, pw))
        counts, below = None, None
    assert rc == (0 if low >= k else 1)
    if not as_json:
        assert f"coverage min {low}, max {high}" in out
        return
    report = json.loads(out)
    assert (report["min_coverage"], report["max_coverage"], report["k_fold"]) == (low, high, low >= k)
    if counts is not None:
        assert report["positions_below_k"] == below
        assert all(counts[a, b] < k for a, b in report["first_positions_below_k"])


test_cli_coverage, test_cli_coverage_slow = fuzz_twins(check_cli_coverage, data=st.data())


@st.composite
def plan_argvs(draw):
    """``certmask plan`` with small valid sizes (image sides <= 64) and a few hostile values."""
    side = st.integers(1, 64)
    argv = ["plan", "--image", draw(int_token(side)), draw(int_token(side)),
            "--patch", draw(int_token(st.integers(1, 8))), draw(int_token(st.integers(1, 8)))]
    if draw(st.booleans()):
        argv += ["--k", draw(int_token(st.integers(1, 4)))]
    if draw(st.booleans()):
        argv += ["--strategy", draw(st.sampled_from(STRATEGIES + ("", "PatchCleanser", "x")))]
    if draw(st.booleans()):
        argv += ["--mask", draw(int_token(st.integers(1, 64))), draw(int_token(st.integers(1, 64)))]
    else:
        argv += ["--masks-per-axis"] + draw(st.lists(int_token(st.integers(1, 8)), min_size=0, max_size=3))
    return argv + ["--json"] * draw(st.booleans())


def check_cli_plan(argv, capsys):
    rc, out, err = run_cli(argv, capsys)
    assert rc in (0, 2), "plan has no exit code 1"
    if rc == 2 or "--json" not in argv:
        return
    doc = json.loads(out)
    ms, summary = MaskSet.from_dict(doc), doc["summary"]
    H, W, ph, pw = (int(v) for v in argv[2:4] + argv[5:7])
    k = int(argv[argv.index("--k") + 1]) if "--k" in argv else 1
    assert ms.image_size == (H, W) and ms.threat.patch_size == (ph, pw) and ms.spec.k == k
    counts = coverage_counts(ms, (ph, pw)) if len(ms) * H * W > 2_000_000 else dense_counts(ms, (ph, pw))
    assert int(counts.min()) >= k, "the plan is not k-fold"
    assert ms.is_distinct() and summary["num_masks"] == len(ms) and summary["distinct"]
    assert (summary["min_coverage"], summary["max_coverage"]) == (int(counts.min()), int(counts.max()))
    mh, mw = summary["mask_size"]
    assert (ms.sizes <= [mh, mw]).all(), "a mask larger than the requested size"
    if "--mask" in argv:
        assert [mh, mw] == [int(v) for v in argv[argv.index("--mask") + 1:][:2]]
    bound = k * math.ceil((H - ph + 1) / (mh - ph + 1)) * math.ceil((W - pw + 1) / (mw - pw + 1))
    assert summary["lower_bound"] == bound and summary["gap"] == len(ms) - bound >= 0


@settings(FAST, phases=NO_SHRINK)
@given(argv=plan_argvs())
def test_cli_plan(argv, capsys):
    check_cli_plan(argv, capsys)


@pytest.mark.slow
@settings(SLOW, phases=NO_SHRINK)
@given(argv=plan_argvs())
def test_cli_plan_slow(argv, capsys):
    check_cli_plan(argv, capsys)


ARGV_TOKENS = ("plan", "coverage", "--image", "--patch", "--k", "--strategy", "--mask", "--masks-per-axis",
               "--json", "--ma", "--json=1", "--", "-", "-k", "--help", "-h", "--version", "--im", "3", "0",
               "-1", "64", str(2**63), "1e3", "patchcleanser", "offset", "/nonexistent.json", "", "\x00")


@st.composite
def junk_argvs(draw):
    """Token soup from the parser's own vocabulary (no certify or attack: they would train and write)."""
    tokens = st.sampled_from(ARGV_TOKENS) | st.text(max_size=5).filter(
        lambda t: not (len(t) >= 4 and "--plot".startswith(t)) and t not in ("certify", "attack"))
    return draw(st.lists(tokens, max_size=10))


def check_cli_argv(argv, capsys):
    run_cli(argv, capsys)


test_cli_junk_argv, test_cli_junk_argv_slow = fuzz_twins(check_cli_argv, argv=junk_argvs())


# --- regressions and the bugs the wall found, as plain examples -----------------------------------

FORGED = ([[0, 0], [6, 0], [2**58, 0]], [[2, 8], [2, 8], [2**63 - 1, 8]])


@pytest.mark.parametrize("origins,sizes", [
    FORGED,                                               # summed to a negative: forged a certificate
    ([[0, 0], [2**58, 0]], [[8, 8], [2**63 - 2, 8]]),
    (np.array(FORGED[0], np.int64), np.array(FORGED[1], np.int64)),
    (np.array(FORGED[0], np.uint64), np.array(FORGED[1], np.uint64)),
    (np.array([[0, 0], [2**58, 0]], np.uint64), np.array([[8, 8], [2**63 - 2, 8]], np.uint64)),
    ([[True, 0]], [[2, 8]]),
    ([[np.True_, 0]], [[2, 8]]),
])
def test_forged_and_boolean_masks_are_refused(origins, sizes):
    with pytest.raises(CertMaskError):
        MaskSet((8, 8), origins, sizes)


@pytest.mark.parametrize("text", [
    '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, ' + "4" * 5000 + "]]}",
    "[" * 100_000 + "]" * 100_000,
    '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, NaN]]}',
    '{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, Infinity]]}',
])
def test_from_json_refuses_huge_literals_nesting_and_non_finite_numbers(text):
    # a literal past Python's 4,300-digit limit raised a bare ValueError from json.loads
    with pytest.raises(CertMaskError):
        MaskSet.from_json(text)


@pytest.mark.parametrize("data", [b"\x80\x81", b"\xff\xfe\x00", b"{\"image_size\": \xff}"])
def test_from_json_refuses_undecodable_bytes(data):
    # json.loads takes bytes; undecodable ones raised UnicodeDecodeError
    with pytest.raises(CertMaskError):
        MaskSet.from_json(data)


def test_masked_arrays_cannot_hide_coordinates():
    # the range checks skipped the masked entries (2**58, 2**63 - 1): the set was accepted and stored
    # them as a MaskedArray, which to_json writes as null
    origins, sizes = (np.ma.masked_array(v, mask=np.array(v) >= 2**58) for v in FORGED)
    ok, ms = attempt(MaskSet, (8, 8), origins, sizes)
    assert not ok or check_maskset_invariants(ms) is None


def test_matrix_coordinates_are_stored_as_arrays():
    # an np.matrix was stored as such: coverage_counts then raised a bare ValueError (a column of a
    # matrix is (n, 1), and np.stack made (n, 4, 1) windows)
    ok, ms = attempt(MaskSet, (4, 4), np.asmatrix([[0, 0], [0, 2]]), np.asmatrix([[4, 2], [4, 2]]))
    if ok:
        check_maskset_invariants(ms)
        assert attempt(coverage_counts, ms, 1)[0]


def test_stored_coordinates_cannot_be_made_writeable_again():
    # the stored arrays own their data, so setflags(write=True) re-opened them to any value after
    # every check had passed (and after the cached geometry was computed)
    ms = MaskSet((8, 8), [[0, 0]], [[8, 8]])
    for arr in (ms.origins, ms.sizes):
        with pytest.raises(ValueError):
            arr.setflags(write=True)


@pytest.mark.parametrize("strategy", [np.array(["offset"]), np.array(["offset", "x"])], ids=["1", "2"])
def test_spec_strategy_must_be_a_string(strategy):
    # a one-element array passed the membership test and the set then failed to_json (TypeError); a
    # longer one raised "truth value of an array is ambiguous" (ValueError)
    doc = {"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]],
           "spec": {"strategy": strategy, "mask_size": [2, 2]}}
    ok, ms = attempt(MaskSet.from_dict, doc)
    assert not ok or isinstance(json.loads(ms.to_json())["spec"]["strategy"], str)


def test_from_dict_refuses_spec_keys_of_mixed_types():
    # sorting the unknown spec keys raised TypeError ('<' between str and int)
    doc = {"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, 4]], "spec": {1: 2, "a": 3}}
    with pytest.raises(CertMaskError):
        MaskSet.from_dict(doc)


@pytest.mark.parametrize("content", [
    ('{"image_size": [4, 4], "origins": [[0, 0]], "sizes": [[4, ' + "4" * 5000 + "]]}").encode(),
    b"[" * 100_000 + b"]" * 100_000,
    b"\xff\xfe\x00{",
])
def test_cli_coverage_refuses_hostile_files_with_one_line(content, tmp_path, capsys):
    path = tmp_path / "masks.json"
    path.write_bytes(content)
    assert run_cli(["coverage", str(path), "--patch", "1", "1"], capsys)[0] == 2


PLAIN = MaskSet((4, 4), [[0, 0], [0, 2]], [[4, 2], [4, 2]])


@pytest.mark.parametrize("tolerance", [2**1024, 2**2000, 10**400], ids=["2**1024", "2**2000", "10**400"])
def test_certify_takes_or_refuses_huge_integer_tolerances(tolerance):
    # a finite int above float's range passed the check, then raised OverflowError
    ok, report = attempt(certify, [[1, 1]], [1], PLAIN, patch=1, margin_tolerance=tolerance)
    assert not ok or report.certified.tolist() == [True]  # label margins are inf > any finite number


@pytest.mark.parametrize("predictor", [5, "x", ragged_answer])
@pytest.mark.parametrize("call", ["defend", "certify"])
def test_recovery_refuses_unusable_pair_predictors(call, predictor):
    # a non-callable predictor raised TypeError; a ragged answer raised ValueError from np.asarray
    with pytest.raises(CertMaskError):
        if call == "defend":
            defend([[1, 2]], PLAIN, "recovery", patch=1, pair_predictor=predictor)
        else:
            certify([[1, 1]], [1], PLAIN, "recovery", patch=1, pair_predictor=predictor)


@pytest.mark.parametrize("k", [np.int64(1), np.uint64(2), np.int8(1)])
def test_is_k_covered_returns_a_python_bool(k):
    assert type(is_k_covered(PLAIN, 1, k)) is bool


def test_plan_refuses_an_impossible_offset_k_quickly(capsys):
    # 64x64 masks on a 64x64 image give at most 64 x 64 = 4096-fold offset coverage; k = 2**22 passed
    # the lower-bound guard (k <= MAX_MASKS), then the first release's stride-grid offset tried every
    # split k_h = 1..k, about 1 ms each: more than an hour before the error
    argv = ["plan", "--image", "64", "64", "--patch", "1", "1", "--k", str(2**22), "--strategy", "offset",
            "--mask", "64", "64"]
    assert run_cli(argv, capsys, limit=5)[0] == 2


def test_cli_coverage_of_a_file_with_many_masks_takes_seconds(tmp_path, capsys):
    # 2,000 one-pixel masks over a 16384 x 16384 image (a 45 KB file) cut the positions into about
    # 16 million cells. coverage_extremes takes about a second, but cmd_coverage summed the positions
    # below k in a Python loop over every short cell: 12 s for 1,000 masks, 64 s for 3,000 (68 KB);
    # 60,000 (1.3 MB) would take hours, and under an 8 GB ulimit raised MemoryError from np.argwhere
    origins = np.random.default_rng(0).integers(0, MAX_SIDE, size=(2000, 2))
    doc = {"image_size": [MAX_SIDE, MAX_SIDE], "origins": origins.tolist(), "sizes": [[1, 1]] * 2000}
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(doc))
    rc, out, err = run_cli(["coverage", str(path), "--patch", "1", "1", "--json"], capsys, limit=6)
    covered = len({tuple(o) for o in origins.tolist()})
    assert rc == 1 and json.loads(out)["positions_below_k"] == MAX_SIDE**2 - covered
