"""Argument checks shared by the core modules (numpy only; internal to the package).

One integer validator, :func:`positive_int`, serves every module, so that the same argument gets the
same error text wherever it is checked; :func:`shape_text` writes a size per axis as ``28x28``.
These names are public only so that no private name crosses a module border: they are not part of
the package's promised API.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import CertMaskError


def positive_int(name: str, value, low: int = 1, high: int | None = None, *,
                 whole_range: bool = False) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (``high=None``: no upper bound), or a
    :class:`~certmask_core.errors.CertMaskError` naming ``name``.

    Any integral value is accepted (``int``, numpy integers); ``bool`` and ``np.bool_`` are refused.
    Two message forms, both kept because callers (and their tests) rely on them:

    * ``whole_range=False`` (the default) names the one fault: ``"{name} must be an integer, got
      {value!r}"``, ``"{name} must be >= {low}, got {value}"``, ``"{name} must be <= {high}, got
      {value}"``;
    * ``whole_range=True`` states the whole range whatever the fault: ``"{name} must be an integer
      >= {low}, got {value!r}"``, or with ``high`` ``"{name} must be an integer in [{low}, {high}],
      got {value!r}"``.

    Examples
    --------
    >>> positive_int("k", 3)
    3
    >>> positive_int("k", 0)
    Traceback (most recent call last):
    certmask_core.errors.CertMaskError: k must be >= 1, got 0
    >>> positive_int("patches", 9, 1, 8, whole_range=True)
    Traceback (most recent call last):
    certmask_core.errors.CertMaskError: patches must be an integer in [1, 8], got 9
    """
    integral = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Integral)
    if whole_range:
        if not integral or value < low or (high is not None and value > high):
            want = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise CertMaskError(f"{name} must be an integer {want}, got {value!r}")
        return int(value)
    if not integral:
        raise CertMaskError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise CertMaskError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise CertMaskError(f"{name} must be <= {high}, got {value}")
    return int(value)


def shape_text(size) -> str:
    """A size per axis as text: ``(28, 28)`` -> ``"28x28"``.

    Examples
    --------
    >>> shape_text((16, 28, 28))
    '16x28x28'
    """
    return "x".join(map(str, size))


def distinct_list(name: str, values) -> list:
    """``values`` as a list with no value twice (compared by ``repr``); a string is not a list."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise CertMaskError(f"{name} must be a list, got {values!r}")
    values = list(values)
    if len({repr(v) for v in values}) != len(values):
        raise CertMaskError(f"{name} lists a value twice: {values}")
    return values
