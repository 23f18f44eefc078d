"""certmask backends (installed as ``certmask_backends``): thin adapters from frameworks to the core.

Each backend turns (model, images, MaskSet) into a ``(B, n)`` prediction matrix; aggregation and
certification stay in ``certmask_core``. Backends are found through
:func:`certmask_core.get_backend`.
"""
