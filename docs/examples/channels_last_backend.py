"""A backend for models that take channels-last float64 input (docs/backends.md, "Write a backend").

Run: ``python docs/examples/channels_last_backend.py``; ``tests/test_backend_conformance.py`` checks it
against the numpy backend."""
import numpy as np

from certmask_core.array_backend import ArrayBackend
from certmask_core.registry import get_backend, register_backend


class ChannelsLastBackend(ArrayBackend):
    """Runs ``model(batch (N, *spatial, C) float64) -> (N, K)``; masking, batching, checks and the
    pair predictor come from ArrayBackend, so the run layer and the conformance suite accept it."""

    name = "channels-last"

    def load_model(self, spec, weights=None, *, trust_code=False):
        return np.load(spec)  # a weight matrix (pixels, classes) read as data: no code runs

    def _logits(self, model, batch):
        pixels = np.moveaxis(batch, 1, -1).astype(np.float64)  # (N, C, H, W) -> (N, H, W, C)
        return pixels.reshape(len(batch), -1) @ model


register_backend("channels-last", ChannelsLastBackend)

if __name__ == "__main__":
    from certmask_core import PatchThreat, certify, make_maskset
    backend = get_backend("channels-last", batch_size=64)
    images = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    weights = np.random.default_rng(1).normal(size=(3 * 8 * 8, 5))
    ms = make_maskset(PatchThreat((8, 8), (2, 2)), 2, "replicated", masks_per_axis=2)
    logits = backend.masked_predictions(weights, images, ms, return_logits=True)
    labels = backend.predict(weights, images)
    print(certify(logits, labels, ms, "recovery", pair_predictor=backend.pair_predictor(
        weights, images, ms, return_logits=True)).summary()["certified_accuracy"])
