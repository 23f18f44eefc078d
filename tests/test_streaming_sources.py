"""Data sources: every data spec opened with labels, names and shapes known, pixels decoded per batch.

The property throughout: a source's batches, read in any order, from any thread, through prefetch or not,
equal ``load_data``'s in-memory arrays byte for byte, and equal an independent reading of the stored data.
"""
import gzip
import os
import pickle
import threading
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmask_core import CertMaskError
from certmask_core.run import sources
from certmask_core.run.datasets import (
    DATA_SPECS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    LAYOUTS,
    load_data,
)
from certmask_core.run.sources import DataSource, open_data, prefetch
from certmask_core.run.video import fashion_mnist_clips

Image = pytest.importorskip("PIL.Image")


# --- writers ---------------------------------------------------------------------------------------------


def idx_bytes(array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    dtype = {0x08: np.uint8, 0x0D: ">f4"}[code]
    return header + np.asarray(array).astype(dtype).tobytes()


def write_idx(folder, images, labels, gz=False, prefix="t10k", image_code=0x08):
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in ((f"{prefix}-images-idx3-ubyte", idx_bytes(images, image_code)),
                       (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels))):
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return folder


def write_cifar(folder, names, n, rng, hundred=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"data": data.tolist() if i % 2 else data}  # an array, or a list of rows
        if hundred:
            batch.update({b"fine_labels": rng.integers(0, 100, n), b"coarse_labels": [0] * n})
        else:
            batch[b"labels"] = [int(v) for v in rng.integers(0, 10, n)]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def write_images(root, arrays):
    for rel, array in arrays.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / rel)
    return root


def reference_items(stored, layout):
    """Stored items as (N, C, *spatial) float32, scaled by dtype: the reading spelled out with numpy."""
    x = stored.astype(np.float32) / np.float32(255 if stored.dtype == np.uint8 else 65535) \
        if stored.dtype.kind == "u" else stored.astype(np.float32)
    channel = layout.find("C")
    if channel < 0:
        return x[:, None]
    if channel == 1:
        return x
    return np.moveaxis(x, -1, 1)


LAYOUT_SHAPES = {"NHW": (7, 5), "NCHW": (3, 7, 5), "NHWC": (7, 5, 3), "NCL": (2, 9), "NLC": (9, 2),
                 "NTHW": (5, 6, 5), "NCTHW": (3, 5, 6, 5), "NTHWC": (5, 6, 5, 3)}
INFERRED = {"NHW", "NCHW", "NHWC", "NCTHW", "NTHWC"}  # the others must be stated


# --- every spec ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """``{name: (spec, load_data keyword arguments, reference images or None)}`` of every kind of data."""
    root = tmp_path_factory.mktemp("specs")
    rng = np.random.default_rng(0)
    out = {}
    for layout, item in LAYOUT_SHAPES.items():
        stored = rng.integers(0, 256, (11,) + item, dtype=np.uint8)
        labels = rng.integers(0, 5, 11)
        stated = {} if layout in INFERRED else {"layout": layout}
        np.savez(root / f"{layout}.npz", images=stored, labels=labels)
        out[f"npz stored {layout}"] = (root / f"{layout}.npz", stated, reference_items(stored, layout))
        np.savez_compressed(root / f"{layout}z.npz", images=stored, labels=labels)
        out[f"npz compressed {layout}"] = (root / f"{layout}z.npz", stated, reference_items(stored, layout))
        np.savez(root / f"{layout}f.npz", images=np.asfortranarray(stored), labels=labels)
        out[f"npz fortran {layout}"] = (root / f"{layout}f.npz", stated, reference_items(stored, layout))
    u16 = rng.integers(0, 65536, (9, 6, 5, 3)).astype(np.uint16)
    np.savez(root / "u16.npz", images=u16, labels=np.arange(9))
    out["npz uint16 NHWC"] = (root / "u16.npz", {}, reference_items(u16, "NHWC"))
    floats = rng.random((9, 3, 6, 5))
    np.savez_compressed(root / "f64.npz", images=floats, labels=np.arange(9))
    out["npz float64 NCHW limit"] = (root / "f64.npz", {"limit": 6}, reference_items(floats[:6], "NCHW"))
    out["npz resized"] = (root / "f64.npz", {"image_size": (4, 9)}, None)
    clips = rng.integers(0, 256, (8, 1, 5, 6, 6), dtype=np.uint8)
    np.savez_compressed(root / "clips.npz", clips=clips, labels=np.arange(8), source_index=np.arange(8))
    out["npz clips member"] = (root / "clips.npz", {}, reference_items(clips, "NCTHW"))

    images, labels = rng.integers(0, 256, (13, 9, 7)), rng.integers(0, 10, 13)
    out["idx plain"] = (write_idx(root / "idx", images, labels), {},
                        reference_items(images.astype(np.uint8), "NHW"))
    out["idx gz limit"] = (write_idx(root / "idxgz", images, labels, gz=True), {"limit": 10},
                           reference_items(images[:10].astype(np.uint8), "NHW"))
    unit = rng.random((13, 9, 7)).astype(np.float32)
    out["idx float"] = (write_idx(root / "idxf", unit, labels, image_code=0x0D), {}, unit[:, None])
    fashion = str(write_idx(root / "fm", images, labels, gz=True))
    write_idx(root / "fm", images, labels, gz=True, prefix="train")
    out["fashion-mnist root"] = ("fashion-mnist", {"root": fashion, "limit": 12}, None)
    out["fashion-mnist train root"] = ("fashion-mnist", {"root": fashion, "split": "train"}, None)
    out["fashion-mnist-subset"] = ("fashion-mnist-subset", {"limit": 40}, None)
    out["fashion-mnist-subset resized"] = ("fashion-mnist-subset", {"limit": 9, "image_size": (12, 10)}, None)
    if (FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        out["fashion-mnist"] = ("fashion-mnist", {"limit": 25}, None)
        out["fashion-mnist-clips"] = ("fashion-mnist-clips", {"limit": 14}, None)

    out["cifar-10 test"] = (write_cifar(root / "c10", ["test_batch"], 6, rng), {}, None)
    # five files of three images: random reads evict and decode batch files again
    out["cifar-10 train"] = (write_cifar(root / "c10", [f"data_batch_{i}" for i in range(1, 6)], 3, rng),
                             {"split": "train"}, None)
    out["cifar-10 train limit"] = (root / "c10", {"split": "train", "limit": 8}, None)
    out["cifar-100"] = (write_cifar(root / "c100", ["test", "train"], 5, rng, hundred=True),
                        {"split": "train"}, None)

    gray = {f"{c}/{i}.png": rng.integers(0, 256, (8, 6), dtype=np.uint8) for c in "ab" for i in range(4)}
    out["folder gray"] = (write_images(root / "gray", gray), {}, None)
    rgb = {f"{c}/{i}.png": rng.integers(0, 256, (5 + i, 7, 3), dtype=np.uint8)  # sizes differ: resized
           for c in "abc" for i in range(3)}
    out["folder rgb resized"] = (write_images(root / "rgb", rgb), {"image_size": (6, 4)}, None)
    deep = {f"{c}/{i}.png": rng.integers(0, 65536, (6, 6)).astype(np.uint16) for c in "ab" for i in range(2)}
    out["folder 16-bit classes limit"] = (write_images(root / "deep", deep), {"classes": ["b", "z", "a"],
                                                                             "limit": 3}, None)
    return out


def batch_orders(n, rng):
    """Index batches in several orders: in order, reversed, random, with repeats, empty."""
    everything = np.arange(n)
    yield np.array_split(everything, 3)
    yield [b[::-1] for b in np.array_split(everything[::-1], 2)]
    yield np.array_split(rng.permutation(n), 4)
    yield [rng.integers(0, n, 2 * n), np.array([], np.int64), everything]


def assert_same(got, want):
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_every_spec_reads_as_load_data_in_any_order(specs):
    rng = np.random.default_rng(1)
    for name, (spec, kwargs, reference) in specs.items():
        whole = load_data(str(spec), **kwargs)
        if reference is not None:
            assert_same(whole.images, reference)
        with open_data(str(spec), **kwargs) as data:
            assert isinstance(data, DataSource), name
            assert len(data) == len(whole.labels) and data.item_shape == whole.images.shape[1:], name
            assert data.labels.dtype == np.int64 and np.array_equal(data.labels, whole.labels), name
            assert (data.ids, data.classes, data.source) == (whole.ids, whole.classes, whole.source), name
            for batches in batch_orders(len(data), rng):
                for indices in batches:
                    assert_same(data.read(indices), whole.images[indices])
            for workers in (1, 3):
                batches = np.array_split(rng.permutation(len(data)), 5)
                ahead = prefetch(data, batches, depth=3, workers=workers)
                for (indices, items), wanted in zip(ahead, batches, strict=True):
                    assert indices is wanted or np.array_equal(indices, wanted)
                    assert_same(items, whole.images[wanted])


def test_the_specs_name_what_they_are(specs):
    assert "fashion-mnist-clips" in DATA_SPECS
    assert LAYOUTS == ("NHW", "NCHW", "NHWC", "NCL", "NLC", "NTHW", "NCTHW", "NTHWC")
    with open_data(str(specs["folder rgb resized"][0]), image_size=(6, 4)) as data:
        assert data.ids[0] == "a/0.png" and data.classes == ["a", "b", "c"] and data.item_shape == (3, 6, 4)
        assert data.source.endswith("(image folder, 3 classes), resized to 6x4")
    with open_data(str(specs["npz stored NLC"][0]), layout="NLC") as data:
        assert data.item_shape == (2, 9) and "NLC as stated, uint8 / 255, 2 channel(s)" in data.source
    with open_data(str(specs["npz compressed NTHWC"][0])) as data:
        assert data.item_shape == (3, 5, 6, 5) and "NTHWC, uint8 / 255" in data.source
    subset = open_data("fashion-mnist-subset", limit=3)
    assert subset.classes == list(FASHION_MNIST_CLASSES)
    assert subset.source == "bundled subset (1,000 test images)"
    subset.close()


@pytest.mark.skipif(not (FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="needs the dataset-fashion-mnist package")
def test_fashion_mnist_clips_are_the_video_modules_clips():
    clips, labels, _, source = fashion_mnist_clips("test", limit=20)
    with open_data("fashion-mnist-clips", limit=20) as data:
        assert data.item_shape == (1, 16, 28, 28) and data.classes == list(FASHION_MNIST_CLASSES)
        assert np.array_equal(data.labels, labels) and data.source.startswith(source)
        order = np.array([17, 3, 3, 0, 19])
        assert_same(data.read(order), clips[order].astype(np.float32) / np.float32(255))
    with pytest.raises(CertMaskError, match=r"resizes images \(C, H, W\); .* of shape \(1, 16, 28, 28\)"):
        open_data("fashion-mnist-clips", limit=2, image_size=(14, 14))
    with pytest.raises(CertMaskError, match="layout applies to .npz data only"):
        open_data("fashion-mnist-clips", layout="NCTHW")


def test_the_video_script_output_is_read_as_clips(tmp_path):
    from certmask_core.run.video import main
    assert main(["--split", "test", "--limit", "5", "--frames", "3", "--out", str(tmp_path / "c.npz")]) == 0
    clips = np.load(tmp_path / "c.npz")["clips"]
    with open_data(str(tmp_path / "c.npz")) as data:
        assert data.item_shape == (1, 3, 28, 28) and "NCTHW" in data.source
        assert_same(data.read(np.arange(5)), clips.astype(np.float32) / np.float32(255))


# --- a property over random .npz files -------------------------------------------------------------------


@settings(max_examples=40)
@given(data=st.data(), layout=st.sampled_from(sorted(LAYOUT_SHAPES)),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
       storage=st.sampled_from(["stored", "compressed", "fortran"]), state=st.booleans(),
       n=st.integers(1, 12), limit=st.one_of(st.none(), st.integers(1, 14)))
def test_random_npz_files_read_alike_in_random_batches(tmp_path_factory, data, layout, dtype, storage, state,
                                                       n, limit):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    item = LAYOUT_SHAPES[layout]
    stored = (rng.random((n,) + item) if dtype == np.float32 else
              rng.integers(0, np.iinfo(dtype).max + 1, (n,) + item)).astype(dtype)
    if storage == "fortran":
        stored = np.asfortranarray(stored)
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    save = np.savez_compressed if storage == "compressed" else np.savez
    save(path, images=stored, labels=rng.integers(0, 3, n))
    stated = {"layout": layout} if state or layout not in INFERRED else {}
    whole = load_data(str(path), limit=limit, **stated)
    rows = n if limit is None else min(n, limit)
    assert_same(whole.images, reference_items(np.ascontiguousarray(stored[:rows]), layout))
    cuts = sorted(data.draw(st.lists(st.integers(0, rows), max_size=4)))
    order = rng.permutation(rows) if data.draw(st.booleans()) else np.arange(rows)
    with open_data(str(path), limit=limit, **stated) as source:
        batches = np.split(order, cuts)
        read = [source.read(b) for b in batches]
        ahead = [items for _, items in prefetch(source, batches, depth=2, workers=2)]
    for b, items, again in zip(batches, read, ahead):
        assert_same(items, whole.images[b])
        assert_same(again, whole.images[b])


# --- memory: only what is read is decoded ----------------------------------------------------------------


def peak_bytes(call, *args):
    tracemalloc.start()
    try:
        return call(*args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def big_npz(tmp_path_factory):
    """2000 images of 100x100 (20 MB of uint8, 80 MB as float32), stored and compressed."""
    root = tmp_path_factory.mktemp("big")
    images = np.zeros((2000, 100, 100), np.uint8)
    images[:, 0, 0] = np.arange(2000) % 256  # each image tells where it came from
    np.savez(root / "stored.npz", images=images, labels=np.arange(2000) % 10)
    np.savez_compressed(root / "compressed.npz", images=images, labels=np.arange(2000) % 10)
    return root, images


@pytest.mark.parametrize("name", ["stored.npz", "compressed.npz"])
def test_opening_and_reading_a_few_items_allocates_for_those_only(big_npz, name):
    root, images = big_npz

    def open_and_read(indices):
        with open_data(str(root / name)) as data:
            return data.read(indices)

    for indices in (np.arange(5), np.array([1995, 1999, 1996])):  # the end: a compressed member is skipped
        items, peak = peak_bytes(open_and_read, indices)
        assert_same(items, images[indices][:, None].astype(np.float32) / np.float32(255))
        assert peak < 2_000_000, peak  # the whole set is 80 MB of float32
    with open_data(str(root / name), limit=5) as data:
        assert len(data) == 5
        with pytest.raises(CertMaskError, match=r"indices must lie in \[0, 5\), got values in \[0, 5\]"):
            data.read(np.arange(6))


def test_an_image_folder_decodes_only_the_images_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    root = write_images(tmp_path / "f", {f"{c}/{i}.png": rng.integers(0, 256, (6, 6), dtype=np.uint8)
                                         for c in "ab" for i in range(10)})
    decoded = []
    real = sources.decode_image
    monkeypatch.setattr(sources, "decode_image", lambda *a: decoded.append(1) or real(*a))
    with open_data(str(root)) as data:
        assert len(data) == 20 and decoded == []
        data.fingerprint()
        assert decoded == []
        data.read([13, 2])
        assert len(decoded) == 2
    with open_data(str(root), limit=4) as data:
        data.read(np.arange(4))
        assert len(decoded) == 6


# --- errors ----------------------------------------------------------------------------------------------


def test_images_of_another_size_or_mode_are_refused_when_read(tmp_path):
    rng = np.random.default_rng(3)
    root = write_images(tmp_path / "s", {"a/x.png": rng.integers(0, 256, (6, 6), dtype=np.uint8),
                                         "a/y.png": rng.integers(0, 256, (5, 6), dtype=np.uint8),
                                         "b/z.png": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)})
    with open_data(str(root)) as data:
        assert data.item_shape == (1, 6, 6)
        assert data.read([0]).shape == (1, 1, 6, 6)
        with pytest.raises(CertMaskError, match=r"sizes \(6, 6\) \('.*x\.png'\) and \(5, 6\) \('.*y\.png'\)"):
            data.read([1])
        with pytest.raises(CertMaskError, match=r"mixes grayscale and RGB images \('.*x\.png', '.*z\.png'\)"):
            data.read([2])


def test_a_corrupt_image_is_named_when_read_never_skipped(tmp_path):
    root = write_images(tmp_path / "c", {f"a/{i}.png": np.full((6, 6), i, np.uint8) for i in range(4)})
    blob = (root / "a/2.png").read_bytes()
    (root / "a/2.png").write_bytes(blob[:len(blob) // 2])
    with open_data(str(root)) as data:
        assert data.read([0, 1, 3]).shape == (3, 1, 6, 6)
        with pytest.raises(CertMaskError, match=r"cannot read '.*a/2\.png' as an image"):
            data.read([1, 2])


def test_wrong_ranks_and_layouts_name_the_shapes(tmp_path):
    labels = np.arange(2)
    cases = {
        "six.npz": ({"clips": np.zeros((2, 1, 2, 3, 4, 5), np.uint8)}, {},
                    r"items must be .* got shape \(2, 1, 2, 3, 4, 5\)"),
        "flat.npz": ({"clips": np.zeros((2, 5), np.uint8)}, {}, r"got shape \(2, 5\)"),
        "rank.npz": ({"clips": np.zeros((2, 1, 4, 5, 6), np.uint8)}, {"layout": "NTHW"},
                     r"layout NTHW names 4-D arrays, but the array has shape \(2, 1, 4, 5, 6\)"),
        "amb.npz": ({"clips": np.zeros((2, 3, 4, 5, 3), np.uint8)}, {},
                    r"clips of shape \(2, 3, 4, 5, 3\) are ambiguous .*--layout NCTHW or --layout NTHWC"),
        "grey.npz": ({"images": np.zeros((2, 16, 28, 28), np.uint8)}, {}, "grayscale clips .*--layout NTHW"),
        "both.npz": ({"images": np.zeros((2, 4, 4), np.uint8), "clips": np.zeros((2, 4, 4), np.uint8)}, {},
                     "holds both 'images' and 'clips'"),
    }
    for name, (arrays, kwargs, match) in cases.items():
        np.savez(tmp_path / name, labels=labels, **arrays)
        for call in (open_data, load_data):
            with pytest.raises(CertMaskError, match=match):
                call(str(tmp_path / name), **kwargs)
    np.savez(tmp_path / "sig.npz", images=np.zeros((2, 3, 40), np.uint8), labels=labels)
    with pytest.raises(CertMaskError, match=r"resizes images .* items of shape \(3, 40\)"):
        open_data(str(tmp_path / "sig.npz"), layout="NCL", image_size=(4, 4))
    assert open_data(str(tmp_path / "sig.npz")).item_shape == (1, 3, 40)  # 3-D stays grayscale images


def test_reads_are_checked_and_closed_sources_refuse(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 3, 3), np.uint8), labels=np.arange(4))
    data = open_data(str(tmp_path / "x.npz"))
    for bad, match in (([[0, 1]], "1-D array of integers, got shape"), ([0.5], "dtype float64"),
                       ([-1], r"\[0, 4\), got values in \[-1, -1\]")):
        with pytest.raises(CertMaskError, match=match):
            data.read(bad)
    assert data.read([]).shape == (0, 1, 3, 3)
    with data:
        pass
    with pytest.raises(CertMaskError, match="is closed"):
        data.read([0])
    data.close()  # twice is harmless


def test_a_float_pixel_out_of_range_names_its_item(tmp_path):
    images = np.full((6, 4, 4), 0.5)
    images[4, 1, 2] = np.nan
    np.savez_compressed(tmp_path / "nan.npz", images=images, labels=np.arange(6))
    with open_data(str(tmp_path / "nan.npz")) as data:
        assert data.read([0, 1, 5]).shape == (3, 1, 4, 4)
        with pytest.raises(CertMaskError, match=r"first at image 4, stored index \(4, 1, 2\)"):
            data.read([5, 4])


def test_a_damaged_stored_member_fails_its_crc_when_read_through(tmp_path):
    # larger than zipfile's first read (4 KiB): opening does not reach the member's end and its check
    images = (np.arange(6 * 40 * 40) % 251).astype(np.uint8).reshape(6, 40, 40)
    np.savez(tmp_path / "x.npz", images=images, labels=np.arange(6))
    blob = bytearray((tmp_path / "x.npz").read_bytes())
    at = bytes(blob).index(images[5].tobytes())
    blob[at + 3] ^= 0xFF
    (tmp_path / "x.npz").write_bytes(bytes(blob))
    with pytest.raises(CertMaskError, match="Bad CRC-32 for file 'images.npy'"):
        load_data(str(tmp_path / "x.npz"))
    with open_data(str(tmp_path / "x.npz")) as data:
        data.read(np.arange(3))  # a part cannot be checked, as zipfile would not
        batches = [np.arange(3, 5), np.arange(5, 6)]
        with pytest.raises(CertMaskError, match="Bad CRC-32"):
            list(prefetch(data, batches, workers=2))


def test_a_file_cut_short_after_opening_is_an_error_not_a_crash(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.ones((50, 8, 8), np.uint8), labels=np.arange(50))
    with open_data(str(tmp_path / "x.npz")) as data:
        with open(tmp_path / "x.npz", "r+b") as f:
            f.truncate(2000)
        for index in (0, 49):  # rows still there or not: the file is not what was opened
            with pytest.raises(CertMaskError, match="changed while certmask was reading it|cut short"):
                data.read([index])


def test_a_cifar_batch_changed_after_opening_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    folder = write_cifar(tmp_path / "c", [f"data_batch_{i}" for i in range(1, 6)], 2, rng)
    with open_data(str(folder), split="train") as data:
        write_cifar(tmp_path / "c", ["data_batch_5"], 2, np.random.default_rng(5))
        with pytest.raises(CertMaskError, match=r"data_batch_5' changed while certmask was reading it"):
            data.read([0, 3])  # from files that did not change: the data as a whole did


# --- fingerprints ----------------------------------------------------------------------------------------


def test_fingerprints_tell_data_apart_without_decoding(tmp_path):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(5))
    np.savez(tmp_path / "b.npz", images=images, labels=np.arange(5)[::-1])
    prints = {}
    variants = (("a.npz", {}), ("a.npz", {"limit": 4}), ("b.npz", {}), ("a.npz", {"image_size": (2, 2)}))
    for name, kwargs in variants:
        with open_data(str(tmp_path / name), **kwargs) as data:
            first = data.fingerprint()
            assert len(first) == 64 and first == data.fingerprint()
            prints[name, tuple(kwargs.items())] = first
    assert len(set(prints.values())) == 4
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(5), extra=np.zeros(3))  # a larger file
    with open_data(str(tmp_path / "a.npz")) as data:
        assert data.fingerprint() != prints["a.npz", ()]


# --- prefetch --------------------------------------------------------------------------------------------


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("certmask-prefetch")]


def test_prefetch_keeps_order_and_surfaces_a_failed_read_when_reached(tmp_path):
    root = write_images(tmp_path / "p", {f"a/{i:02d}.png": np.full((5, 5), i, np.uint8) for i in range(12)})
    blob = (root / "a/09.png").read_bytes()
    (root / "a/09.png").write_bytes(blob[:20])
    batches = [np.arange(0, 3), np.arange(3, 4), np.arange(4, 8), np.arange(8, 12)]
    seen = []
    with open_data(str(root)) as data:
        with pytest.raises(CertMaskError, match=r"a/09\.png") as caught:
            for indices, items in prefetch(data, batches, depth=3, workers=3):
                seen.append(indices)
                assert np.array_equal(np.rint(items[:, 0, 0, 0] * 255), indices)
        assert "\n" not in str(caught.value)
    assert [b.tolist() for b in seen] == [b.tolist() for b in batches[:3]]
    assert not prefetch_threads()


def test_closing_prefetch_early_leaves_no_thread(tmp_path):
    np.savez_compressed(tmp_path / "x.npz", images=np.zeros((64, 8, 8), np.uint8), labels=np.arange(64))
    before = warnings.filters[:]
    with open_data(str(tmp_path / "x.npz")) as data:
        reading = prefetch(data, np.array_split(np.arange(64), 16), depth=4, workers=4)
        indices, items = next(reading)
        assert indices.tolist() == [0, 1, 2, 3] and items.shape == (4, 1, 8, 8)
        reading.close()
        assert not prefetch_threads()
    assert warnings.filters == before
    with pytest.raises(CertMaskError, match="depth must be an integer >= 0"):
        next(prefetch(None, [], depth=-1))
    with pytest.raises(CertMaskError, match="workers must be an integer >= 1"):
        next(prefetch(None, [], workers=0))


def test_reads_from_many_threads_agree_and_restore_warning_filters(specs):
    import concurrent.futures
    before = warnings.filters[:]
    for name in ("folder gray", "npz compressed NHWC", "cifar-10 train", "idx gz limit"):
        spec, kwargs, _ = specs[name]
        whole = load_data(str(spec), **kwargs)
        rng = np.random.default_rng(7)
        batches = [rng.integers(0, len(whole.labels), 5) for _ in range(24)]
        with open_data(str(spec), **kwargs) as data, concurrent.futures.ThreadPoolExecutor(4) as pool:
            for indices, items in zip(batches, pool.map(data.read, batches)):
                assert_same(items, whole.images[indices])
    assert warnings.filters == before


def test_prefetch_without_depth_reads_in_the_caller(specs):
    spec, kwargs, reference = specs["npz stored NCHW"]
    with open_data(str(spec), **kwargs) as data:
        out = list(prefetch(data, [[1, 0], [5]], depth=0))
    assert [i.tolist() for i, _ in out] == [[1, 0], [5]]
    assert_same(out[0][1], reference[[1, 0]])


def test_sources_import_no_framework():
    import subprocess
    import sys
    code = ("import sys; import certmask_core.run.sources; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.stdout.strip() == "[]"
    assert sources.open_data is open_data
