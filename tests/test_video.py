"""The Fashion-MNIST moving-clip data set."""
import hashlib

import numpy as np
import pytest

from certmask_core import CertMaskError
from certmask_core.run.datasets import FASHION_MNIST_ROOT, load_fashion_mnist
from certmask_core.run.video import clip_paths, fashion_mnist_clips, moving_clips, shrink


def test_shrink_is_the_identity_at_full_size_and_keeps_constants():
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    assert np.array_equal(shrink(x, 28), x.astype(np.float32))
    assert np.allclose(shrink(np.full((1, 28, 28), 7, np.uint8), 13), 7)


def test_each_frame_shows_the_item_on_its_path():
    images = np.random.default_rng(1).integers(1, 256, (5, 28, 28)).astype(np.uint8)
    clips = moving_clips(images, [4, 1], frames=6, size=28, item=20, seed=3)
    items = np.rint(shrink(images[[4, 1]], 20)).clip(0, 255).astype(np.uint8)
    paths = clip_paths(np.array([4, 1]), 6, 8, 3)
    for row in range(2):
        for t in range(6):
            y, x = paths[row, t]
            frame = clips[row, 0, t].copy()
            assert np.array_equal(frame[y:y + 20, x:x + 20], items[row])
            frame[y:y + 20, x:x + 20] = 0
            assert not frame.any()  # black outside the item
    assert (paths >= 0).all() and (paths <= 8).all()
    assert not np.array_equal(paths[0, 0], paths[0, -1]) or not np.array_equal(paths[1, 0], paths[1, -1])


def test_a_clip_depends_only_on_its_image_index_and_seed():
    images = np.random.default_rng(2).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    every = moving_clips(images, range(6), frames=5)
    assert np.array_equal(moving_clips(images, [3, 5], frames=5), every[[3, 5]])
    assert np.array_equal(moving_clips(images, range(6), frames=5), every)
    assert not np.array_equal(moving_clips(images, range(6), frames=5, seed=1), every)


@pytest.mark.skipif(not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                    reason="the train split needs the dataset-fashion-mnist package")
def test_no_test_image_appears_in_a_training_clip():
    train, _, _ = load_fashion_mnist("train")
    test, _, _ = load_fashion_mnist("test")
    clips, labels, index, _ = fashion_mnist_clips("train", limit=300, frames=4)
    items = np.rint(shrink(train[index], 20)).clip(0, 255).astype(np.uint8)
    paths = clip_paths(index, 4, 8, 0)
    shown = {hashlib.sha1(clips[i, 0, 0, y:y + 20, x:x + 20].tobytes()).hexdigest()
             for i, (y, x) in enumerate(paths[:, 0].tolist())}
    assert shown == {hashlib.sha1(item.tobytes()).hexdigest() for item in items}
    test_items = np.rint(shrink(test, 20)).clip(0, 255).astype(np.uint8)
    assert not shown & {hashlib.sha1(item.tobytes()).hexdigest() for item in test_items}
    assert len(labels) == 300


@pytest.mark.parametrize("kwargs,message", [
    ({"item": 30}, "item 30 is larger than the canvas 28"),
    ({"frames": 0}, "frames must be an integer >= 1, got 0"),
    ({"size": True}, "size must be an integer >= 1, got True"),
    ({"indices": [7]}, r"indices in \[0, M\), got shape \(2, 28, 28\)"),
])
def test_bad_clip_parameters_are_named(kwargs, message):
    images = np.zeros((2, 28, 28), np.uint8)
    indices = kwargs.pop("indices", [0])
    with pytest.raises(CertMaskError, match=message):
        moving_clips(images, indices, **kwargs)


def test_script_writes_the_npz(tmp_path):
    from certmask_core.run.video import main
    out = tmp_path / "clips.npz"
    assert main(["--split", "test", "--limit", "7", "--frames", "3", "--out", str(out)]) == 0
    saved = np.load(out)
    assert saved["clips"].shape == (7, 1, 3, 28, 28) and saved["labels"].shape == (7,)
    assert saved["source_index"].tolist() == list(range(7))
