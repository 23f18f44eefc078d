"""The PyTorch backend (``pip install certmask[torch]``)."""
from .backend import TorchBackend

__all__ = ["TorchBackend"]
