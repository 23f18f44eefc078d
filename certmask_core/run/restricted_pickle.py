"""A restricted unpickler for files that are pickles of plain data: CIFAR python batches.

:func:`load_plain_pickle` returns the dicts, lists, tuples, str, bytes, numbers and numpy arrays of
plain numeric dtypes a pickle holds, and refuses anything else by name: no global outside numpy's
array-building names is looked up, and even those never hand pickled state to numpy (``dtype`` and
``_reconstruct`` return placeholders that are checked, once the whole pickle is read, into plain
dtypes and exactly sized bytes). The opcodes that hash (dict keys, sets) refuse what could take time
exponential in the file's length, messages never repr what the file holds, and sharing through the
memo cannot multiply the work. Every defect is a :class:`CertMaskError` (or an error of the pickle
machinery, which the caller names as a malformed file).
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools

import numpy as np

from ..errors import CertMaskError


def describe(value) -> str:
    """What ``value`` is, for a message, without its repr: a hostile file can make a repr gigabytes
    long (containers shared through a pickle's memo) or unprintable (an int of 5,000 digits)."""
    size = f" of {len(value)}" if isinstance(value, (list, tuple, dict, set, frozenset, bytes, str)) else ""
    return f"{type(value).__name__}{size}"


class _Pickled:
    """What numpy's dtype and ``_reconstruct`` return inside a CIFAR batch: their arguments and the
    BUILD state that follows, never a numpy object. numpy's own ``__setstate__`` would accept any
    fields, offsets and flags (a float32 marked as holding objects reads its bytes as pointers), so no
    pickled state reaches numpy before :func:`_numeric_dtype` and :func:`_array_of` have checked it."""

    __slots__ = ("kind", "args", "state")

    def __init__(self, kind: str, args: tuple):
        self.kind, self.args, self.state = kind, args, None

    def __setstate__(self, state):  # the BUILD opcode
        self.state = state


def _dtype(*args) -> _Pickled:
    return _Pickled("dtype", args)


def _numeric_dtype(pickled) -> np.dtype:
    """The plain numeric dtype (bool, int, uint, float; any byte order) a pickled dtype names."""
    if not isinstance(pickled, _Pickled) or pickled.kind != "dtype":
        raise pickle.UnpicklingError(f"expected a numpy dtype, got {type(pickled).__name__}")
    spec, *flags = pickled.args or (None,)
    spec = spec.decode("latin1") if isinstance(spec, bytes) else spec  # a Python 2 str
    if (not isinstance(spec, str) or len(flags) > 2
            or not all(type(flag) in (bool, int) and flag in (0, 1) for flag in flags)):
        raise pickle.UnpicklingError(f"dtype of {describe(pickled.args)} arguments: numpy's pickles pass "
                                     "(name, False, True)")
    try:
        dtype = np.dtype(spec)
    except TypeError as err:
        raise pickle.UnpicklingError(f"dtype {spec[:40]!r}: {err}"[:200]) from None
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {spec[:40]!r}: only plain numeric dtypes are admitted")
    state = pickled.state
    if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], bytes):
        state = (state[0], state[1].decode("latin1"), *state[2:])  # a Python 2 str
    if state is not None:
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for a plain dtype; nothing else
        if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3 or state[1] not in "<>|="
                or state[2:] != (None, None, None, -1, -1, 0)):
            raise pickle.UnpicklingError(f"dtype state ({describe(state)}) is not a plain dtype's")
        # as numpy reads it: the state's byte order wins over the name's, "=" and "|" mean native
        dtype = dtype.newbyteorder(state[1] if state[1] in "<>" else "=")
    return dtype


def _array(raw, dtype: np.dtype, shape, fortran: bool) -> np.ndarray:
    # dimensions as numpy allows them (at most 64, each below 2**63): the product stays cheap to form
    if (not isinstance(shape, tuple) or len(shape) > 64
            or not all(type(n) is int and 0 <= n < 2**63 for n in shape)
            or not isinstance(raw, (bytes, bytearray))):
        raise pickle.UnpicklingError(f"array of shape ({describe(shape)}) from {describe(raw)}")
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(f"array of shape {shape} and dtype {dtype} from {len(raw)} bytes")
    return np.frombuffer(bytes(raw), dtype).reshape(shape, order="F" if fortran else "C")


def _array_of(pickled: _Pickled) -> np.ndarray:
    """The array a ``_reconstruct`` placeholder and its BUILD state describe, checked."""
    state = pickled.state
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1 or type(state[3]) is not bool:
        raise pickle.UnpicklingError(f"array state ({describe(state)}) is not a numeric array's")
    return _array(state[4], _numeric_dtype(state[2]), state[1], state[3])


def _reconstruct(subtype, shape, dtype) -> _Pickled:
    # numpy pickles make an empty array here and fill it from the state that follows (see _array_of)
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError(f"_reconstruct({describe(subtype)}, {describe(shape)}): numpy's pickles "
                                     "pass (ndarray, (0,))")
    return _Pickled("array", ())


def _frombuffer(buf, dtype, shape, order, axis_order=None) -> np.ndarray:
    # what numpy's own _frombuffer does (pickle protocol 5), for plain dtypes only; bytes(n) of an int
    # would make n zero bytes, so only bytes the file holds are admitted
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"_frombuffer of a {describe(buf)}: numpy's pickles pass the bytes")
    array = _array(bytes(buf), _numeric_dtype(dtype), shape, order == "F")
    if order == "K" and axis_order is not None:
        return array.transpose(axis_order)
    return array


def _scalar(dtype, data) -> np.generic:
    dtype = _numeric_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("a numpy scalar is a plain dtype and its bytes")
    return np.frombuffer(data, dtype)[0]


def _materialised(value, where: str, depth: int = 0, done: dict | None = None):
    """``value`` with every array placeholder made an array; containers deeper than a CIFAR batch's
    (a dict of lists of rows) are refused, so no later repr() or walk can recurse without bound. A
    container the pickle shares (its memo) is converted once, so sharing cannot multiply the work."""
    done = {} if done is None else done
    if depth > 4:
        raise CertMaskError(f"{where}: containers nested deeper than a CIFAR batch's")
    if id(value) in done:
        return done[id(value)]
    if isinstance(value, _Pickled):
        if value.kind != "array":
            raise CertMaskError(f"{where}: a bare numpy dtype where data belong")
        out = _array_of(value)
    elif isinstance(value, dict):
        if not all(isinstance(key, (bytes, str)) or type(key) is int and -2**63 <= key < 2**63
                   for key in value):
            raise CertMaskError(f"{where}: dict keys must be bytes, str or 64-bit int")
        out = {key: _materialised(item, where, depth + 1, done) for key, item in value.items()}
    elif isinstance(value, (list, tuple)):
        out = type(value)(_materialised(item, where, depth + 1, done) for item in value)
    elif isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise CertMaskError(f"{where}: an integer beyond 64 bits")
    elif isinstance(value, (bytes, str, int, float, type(None), np.ndarray, np.generic)):
        return value
    else:  # sets, bytearrays, the admitted functions themselves: nothing a CIFAR batch holds
        raise CertMaskError(f"{where}: a {describe(value)} where a CIFAR batch holds data")
    done[id(value)] = out
    return out


def _latin1(text, encoding="latin1") -> bytes:
    # pickle protocols 0-2 store bytes as codecs.encode(text, "latin1"); no other codec is looked up
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {describe(encoding)}: only latin1 text is "
                                     "admitted")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


def _not_callable(*args):
    raise pickle.UnpicklingError("numpy.ndarray is admitted only as _reconstruct's first argument")


class _Admitted:
    """A global the CIFAR unpickler hands out. Read-only (slots, no ``__setattr__``), so that a pickle's
    BUILD opcode, which sets attributes on whatever it is given, cannot alter it for later loads."""

    __slots__ = ("name", "call")

    def __init__(self, name: str, call):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "call", call)

    def __setattr__(self, key, value):
        raise AttributeError(f"{self.name} is read-only")

    def __call__(self, *args):
        return self.call(*args)

    def __repr__(self):
        return self.name


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    # only as _reconstruct's first argument: calling ndarray itself would allocate any shape
    ("numpy", "ndarray"): _not_callable,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}
_CIFAR_GLOBALS = {key: _Admitted(".".join(key), call) for key, call in _CIFAR_GLOBALS.items()}
_NDARRAY = _CIFAR_GLOBALS[("numpy", "ndarray")]


def _plain_key(key) -> bool:
    return isinstance(key, (bytes, str)) or type(key) is int and -2**63 <= key < 2**63


class _CifarUnpickler(pickle._Unpickler):
    """Admits only what a CIFAR python batch holds: containers, str, bytes, numbers and numpy arrays.

    Every global a pickle names goes through :meth:`find_class`; the admitted ones are replaced by
    functions that build arrays and dtypes (never object dtypes) and nothing else. It is the
    pure-Python unpickler, so that the opcodes which hash what they are given can refuse it first:
    a tuple shared through the memo at every level hashes in time exponential in the file's length,
    so dict keys must be bytes, str or 64-bit ints and sets (which CIFAR never holds) are refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")  # Python 2 str (the original batches) as bytes
        self.where = where

    def _refuse(self, what: str):
        raise CertMaskError(f"{self.where}: {what}; a CIFAR batch holds dicts of bytes or str keys, lists "
                            "and arrays")

    def _keys(self, keys) -> None:
        if not all(map(_plain_key, keys)):
            self._refuse("a dict key that is not bytes, str or a 64-bit int")

    def load_setitem(self):
        self._keys([self.stack[-2]])
        super().load_setitem()

    def load_setitems(self):
        items = self.pop_mark()
        self._keys(items[::2])
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_dict(self):
        items = self.pop_mark()
        self._keys(items[::2])
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def load_set(self):
        self._refuse("a set")

    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    for _opcode in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_opcode[0]] = load_set
    del _opcode

    def find_class(self, module, name):
        admitted = _CIFAR_GLOBALS.get((module, name))
        if admitted is None:
            raise CertMaskError(f"{self.where}: refused to load {module}.{name}: CIFAR batches hold only "
                                "arrays and lists")
        return admitted


def _check_memo(raw: bytes, where: str) -> None:
    """Parse the whole opcode stream before anything is built (a malformed one fails here), refusing
    memo indices beyond the opcodes read so far: a genuine pickle numbers them in order."""
    for count, (opcode, arg, pos) in enumerate(pickletools.genops(raw)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            raise CertMaskError(f"{where}: memo index {arg} at byte {pos}, after {count} opcodes: not a "
                                "pickle written by pickle.dump")


def load_plain_pickle(raw: bytes, where: str):
    """The plain data pickled in ``raw`` (see the module docstring); ``where`` names it in errors."""
    _check_memo(raw, where)
    return _materialised(_CifarUnpickler(io.BytesIO(raw), where).load(), where)
