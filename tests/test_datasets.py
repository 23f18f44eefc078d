import gzip

import numpy as np
import pytest

from certmask_core import CertMaskError
from certmask_core.run.datasets import load_dataset, load_fashion_mnist, read_idx


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_roundtrip_and_loader(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    assert (read_idx(tmp_path / "t10k-images-idx3-ubyte.gz") == images).all()
    x, y, source = load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 28, 28) and y.tolist() == [1, 2, 3] and source == str(tmp_path)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(CertMaskError, match="is not an idx file"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(CertMaskError, match=r"header says shape \(5,\), found 2 values"):
        read_idx(short)
    with pytest.raises(CertMaskError, match="idx file not found"):
        read_idx(tmp_path / "none.gz")


def test_missing_named_root_is_an_error_and_subset_is_the_fallback(tmp_path):
    with pytest.raises(CertMaskError, match="Fashion-MNIST test files not found in"):
        load_fashion_mnist("test", root=tmp_path / "nowhere")
    x, y, source = load_dataset("fashion-mnist-subset", limit=10)
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert "bundled subset" in source and y.dtype == np.int64
    with pytest.raises(CertMaskError, match="limit must be >= 1, got 0"):
        load_dataset("fashion-mnist-subset", limit=0)
    with pytest.raises(CertMaskError, match="unknown data 'cifar'"):
        load_dataset("cifar")
