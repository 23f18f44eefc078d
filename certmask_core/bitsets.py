"""Sets of masks as packed bitsets (numpy only; internal to the package).

A set of masks of an ``n``-mask family is a row of ``ceil(n / 64)`` uint64 words, bit ``i`` for mask
``i``. Covering sets (:mod:`certmask_core.coverage`) and covering sets of tuples of positions
(:mod:`certmask_core.multipatch`) are stored this way. The names are public only so that no private
name crosses a module border: they are not part of the package's promised API.
"""
from __future__ import annotations

import numpy as np


def pack(incidence: np.ndarray) -> np.ndarray:
    """``(m, n)`` bool -> ``(m, ceil(n / 64))`` uint64 bitsets (bit ``i`` = mask ``i``)."""
    m, n = incidence.shape
    words = max(1, -(-n // 64))
    padded = np.zeros((m, words * 64), dtype=bool)
    padded[:, :n] = incidence
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64).reshape(m, words)


def unpack(bits: np.ndarray, n: int) -> np.ndarray:
    """Inverse of the bitset packing: ``(m, words)`` uint64 -> ``(m, n)`` bool."""
    as_bytes = np.ascontiguousarray(bits).view(np.uint8).reshape(len(bits), -1)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :n].astype(bool)


def unique_rows(bits: np.ndarray) -> np.ndarray:
    """The distinct rows of ``bits``, sorted (as byte strings)."""
    view = np.ascontiguousarray(bits).view(np.dtype((np.void, bits.dtype.itemsize * bits.shape[1])))
    return np.unique(view).view(bits.dtype).reshape(-1, bits.shape[1])


def popcount(bits: np.ndarray) -> np.ndarray:
    """The number of set bits (masks) of each row, int64."""
    return np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=1).sum(1, dtype=np.int64)
