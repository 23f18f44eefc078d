"""The torch backend on signals (B, C, L), images and clips (B, C, T, H, W): one code path, checked
against a numpy reference that masks each input pixel by pixel."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from certmask_backends.pytorch.attack import _paste_many, run_attack  # noqa: E402
from certmask_backends.pytorch.backend import TorchBackend  # noqa: E402
from certmask_backends.pytorch.training import Cutout, MaskSetAugment, train  # noqa: E402

from certmask_core import CertMaskError, PatchThreat, make_maskset  # noqa: E402

CASES = {1: ((3, 17), (3,), 2), 3: ((3, 3, 5, 6), (2, 2, 3), (2, 1, 2))}
"""ndim -> ((C, *spatial), patch, masks per axis); C = T = 3 in 3-D so a fill laid on the wrong axis shows."""


def tiny_model(channels: int, spatial: tuple, classes: int = 4) -> torch.nn.Module:
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[len(spatial)]
    torch.manual_seed(0)
    return torch.nn.Sequential(conv(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * int(np.prod(spatial)), classes)).eval()


def reference_logits(model, images: np.ndarray, hidden: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Logits of every image under every hidden-pixel map ``(n, *spatial)``, one masked input at a time."""
    out = []
    for x in images:
        for h in hidden:
            masked = np.where(h[None], fill.reshape((-1,) + (1,) * h.ndim), x)
            with torch.no_grad():
                out.append(model(torch.from_numpy(masked[None]).float())[0].numpy())
    return np.array(out).reshape(len(images), len(hidden), -1)


@pytest.mark.parametrize("ndim", [1, 3])
def test_masked_and_pair_predictions_equal_the_numpy_reference(ndim):
    shape, patch, per_axis = CASES[ndim]
    C, spatial = shape[0], shape[1:]
    ms = make_maskset(PatchThreat(spatial, patch), 2, "replicated", masks_per_axis=per_axis)
    model = tiny_model(C, spatial)
    images = np.random.default_rng(1).random((3,) + shape, dtype=np.float32)
    fill = np.array([0.1, 0.5, 0.9], np.float32)
    backend = TorchBackend(fill=fill.tolist())
    dense = ms.dense()
    want = reference_logits(model, images, dense, fill)
    got = backend.masked_predictions(model, images, ms, return_logits=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (backend.masked_predictions(model, images, ms) == want.argmax(-1)).all()
    pairs = np.array([[0, 1], [0, len(ms) - 1], [2, 3]])
    union = dense[pairs[:, 0]] | dense[pairs[:, 1]]
    pair_want = reference_logits(model, images[1:2], union, fill)[0]
    np.testing.assert_allclose(backend.pair_predictions(model, images[1], ms, pairs, return_logits=True),
                               pair_want, rtol=1e-5, atol=1e-5)
    many = backend.pair_predictor(model, images, ms, return_logits=True).many(np.array([1, 1, 1]), pairs)
    np.testing.assert_allclose(many, pair_want, rtol=1e-5, atol=1e-5)


def test_wrong_layouts_are_named():
    ms = make_maskset(PatchThreat((4, 6, 6), (2, 2, 2)), masks_per_axis=2)
    backend = TorchBackend()
    model = tiny_model(1, (4, 6, 6))
    with pytest.raises(CertMaskError, match=r"images must have shape \(B, C, T, H, W\), got \(2, 1, 6, 6\)"):
        backend.masked_predictions(model, np.zeros((2, 1, 6, 6), np.float32), ms)
    last = r"look channels-last \(B, T, H, W, C\).*transpose\(0, 4, 1, 2, 3\)"
    with pytest.raises(CertMaskError, match=last):
        backend.masked_predictions(model, np.zeros((2, 4, 6, 6, 3), np.float32), ms)
    with pytest.raises(CertMaskError, match=r"have \(T, H, W\) = \(4, 6, 5\) but the mask set is for"):
        backend.masked_predictions(model, np.zeros((2, 1, 4, 6, 5), np.float32), ms)
    with pytest.raises(CertMaskError, match=r"image must have shape \(C, T, H, W\), got \(1, 6, 6\)"):
        backend.pair_predictions(model, np.zeros((1, 6, 6), np.float32), ms, [[0, 1]])
    signal = make_maskset(PatchThreat((12,), (3,)), masks_per_axis=3)
    with pytest.raises(CertMaskError, match=r"images must have shape \(B, C, L\), got \(2, 12\)"):
        backend.masked_predictions(tiny_model(1, (12,)), np.zeros((2, 12), np.float32), signal)


def test_paste_many_equals_slicing_in_three_dimensions():
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.random((2, 5, 6, 7), dtype=np.float32))
    patches = torch.from_numpy(rng.random((3, 2, 2, 2, 3, 2), dtype=np.float32))
    positions = [((0, 0, 0), (3, 3, 5)), ((1, 2, 3), (1, 3, 4)), ((3, 0, 5), (0, 3, 0))]
    got = _paste_many(image, patches, positions).numpy()
    for i, pair in enumerate(positions):
        want = image.numpy().copy()
        for t, (a, b, c) in enumerate(pair):
            want[:, a:a + 2, b:b + 3, c:c + 2] = patches[i, t].numpy()
        assert (got[i] == want).all()


def test_augmentations_hide_boxes_of_clips():
    ms = make_maskset(PatchThreat((4, 6, 6), (2, 2, 2)), masks_per_axis=2)
    x = torch.ones(64, 1, 4, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = MaskSetAugment(ms, p_none=0, p_single=1, p_pair=0)(None, x, None, gen)
    hidden = (out[:, 0] == 0).numpy()
    dense = ms.dense()
    assert all(any((h == d).all() for d in dense) for h in hidden)  # each clip lost exactly one mask
    cut = Cutout(size=3)(None, x, None, gen)[:, 0] == 0
    for h in cut.numpy():  # a clipped cube: its bounding box is all hidden
        idx = np.argwhere(h)
        lo, hi = idx.min(0), idx.max(0) + 1
        assert h[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].all() and h.sum() == np.prod(hi - lo)
        assert (hi - lo <= 3).all()


def test_training_and_attack_run_on_clips():
    rng = np.random.default_rng(3)
    threat = PatchThreat((4, 6, 6), (2, 2, 2))
    ms = make_maskset(threat, masks_per_axis=2)
    labels = rng.integers(0, 2, 64)
    images = np.zeros((64, 1, 4, 6, 6), np.float32)
    images[labels == 1] = 1.0
    model = tiny_model(1, (4, 6, 6), classes=2)
    record = train(model, images, labels, {"epochs": 2, "batch_size": 32, "augmentation": "maskset"},
                   masksets=ms)
    assert len(record["epochs"]) == 2
    result = run_attack(TorchBackend(), model, images[:3], labels[:3], (2, 2, 2), 1, "patchcleanser",
                        "detection", steps=2, stride=2, masks_per_axis=(2, 2, 2))
    assert result["num_masks"] == len(ms) and result["images"] == 3
    assert result["certified_broken"] == 0


def test_bundled_video_model_classifies_real_clips():
    from certmask_backends.pytorch.train_video import VIDEO_MASKS_PER_AXIS, video_masksets

    from certmask_core.run.video import fashion_mnist_clips
    clips, labels, _, _ = fashion_mnist_clips("test", 64)
    x = clips.astype(np.float32) / 255.0
    backend = TorchBackend()
    model = backend.load_model("bundled-video")
    assert (backend.predict(model, x) == labels).mean() > 0.7  # an untrained model is at 0.1
    ms = video_masksets(ks=(1,))[0]
    assert len(ms) == int(np.prod(VIDEO_MASKS_PER_AXIS["short"]))
    assert (backend.masked_predictions(model, x, ms) == labels[:, None]).mean() > 0.7
