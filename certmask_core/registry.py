"""Lazy backend discovery: built-in names plus the ``certmask.backends`` entry-point group.

The core imports no framework: a backend module is imported only when asked for by name.
"""
from __future__ import annotations

import importlib
from importlib import metadata

from .errors import CertMaskError

ENTRY_POINT_GROUP = "certmask.backends"
_BUILTIN = {"torch": "certmask_backends.pytorch:TorchBackend",
            "numpy": "certmask_core.array_backend:NumpyBackend",
            "onnx": "certmask_backends.onnx:OnnxBackend"}
_REGISTERED: dict[str, object] = {}


def register_backend(name: str, factory) -> None:
    """Register a backend class (or factory, or ``"module:attr"`` string) under ``name``."""
    _REGISTERED[name] = factory


def available_backends() -> list[str]:
    names = set(_BUILTIN) | set(_REGISTERED)
    names |= {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def _resolve(target):
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_backend(name: str = "torch", **options):
    """Instantiate backend ``name`` with ``options`` (e.g. ``device="cuda"``).

    Examples
    --------
    >>> backend = get_backend("torch", device="cpu")  # doctest: +SKIP
    """
    if name in _REGISTERED:
        target = _REGISTERED[name]
    else:
        eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if name in eps:
            target = eps[name].value
        elif name in _BUILTIN:
            target = _BUILTIN[name]
        else:
            raise CertMaskError(f"unknown backend {name!r}; available: {available_backends()}")
    try:
        factory = _resolve(target)
    except ImportError as err:
        raise CertMaskError(f"backend {name!r} could not be imported ({err}); "
                            f"install it, e.g. pip install 'certmask[{name}]'") from None
    return factory(**options)
