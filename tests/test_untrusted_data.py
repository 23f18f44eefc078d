"""Every data reader treats its file as hostile: a one-line CertMaskError, never code execution, a hang, a
traceback or memory beyond the stated bound; and no silently wrong pixels or labels.

One regression test per finding, then Hypothesis properties over random and mutated files of every format.
"""
import builtins
import codecs
import gzip
import io
import os
import pickle
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmask_core import CertMaskError
from certmask_core.run import datasets, formats
from certmask_core.run.datasets import (
    MAX_DECODED_BYTES,
    load_cifar,
    load_data,
    load_dataset,
    load_image_folder,
    load_npz,
    read_idx,
    resize_images,
)
from tests.strategies import deadline

Image = pytest.importorskip("PIL.Image")
PngImagePlugin = pytest.importorskip("PIL.PngImagePlugin")


def refused(match, call, *args, **kwargs):
    with deadline(), pytest.raises(CertMaskError, match=match) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def peak_bytes(call, *args, **kwargs):
    tracemalloc.start()
    try:
        result = call(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- writers of genuine files ------------------------------------------------------------------------------


def idx_bytes(array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return header + np.asarray(array).astype(dtype).tobytes()


def write_idx_folder(folder, images, labels, gz=False, image_code=0x08, label_code=0x08):
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in (("t10k-images-idx3-ubyte", idx_bytes(images, image_code)),
                       ("t10k-labels-idx1-ubyte", idx_bytes(labels, label_code))):
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return folder


def npy_bytes(array, shape=None, descr=None):
    """A .npy member; ``shape`` / ``descr`` rewrite the header without touching the data."""
    header = np.lib.format.header_data_from_array_1_0(np.asarray(array))
    header.update({k: v for k, v in (("shape", shape), ("descr", descr)) if v is not None})
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + np.ascontiguousarray(array).tobytes()


def write_npz(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, blob in members.items():
            zf.writestr(f"{name}.npy", blob)
    return path


def png_bytes(array, **save):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", **save)
    return out.getvalue()


def with_ihdr_size(png, width, height):
    """A PNG whose IHDR claims another size, its CRC recomputed so that only the size lies."""
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def cifar_batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch 1 of 1", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def write_cifar(folder, batch, protocol=2, name="test_batch"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=protocol))
    return folder


def py2_batch_pickle(data, labels):
    """A batch as Python 2's cPickle wrote the original CIFAR files (protocol 2, str as SHORT/BINSTRING)."""
    rows, cols = data.shape
    return (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
            b"K\x00\x85U\x01b\x87Rq\x04(K\x01M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", cols)
            + b"\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff"
            b"\xff\xffK\x00tb\x89T" + struct.pack("<I", data.size) + data.tobytes()
            + b"tbU\x06labelsq\x07]q\x08(" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu.")


# --- 1. CIFAR batches cannot run code ----------------------------------------------------------------------


class Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenFile(Touch):
    def __reduce__(self):
        return builtins.open, (self.marker, "w")


class NumpyLoad(Touch):
    def __reduce__(self):
        return np.load, (self.marker,)


class Rot13(Touch):
    def __reduce__(self):
        return codecs.encode, ("abc", "rot13")


@pytest.mark.parametrize("payload, named", [(Touch, r"posix\.system|nt\.system"), (OpenFile, r"io\.open"),
                                            (NumpyLoad, r"numpy\.load"), (Rot13, "only latin1")])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_crafted_cifar_batch_cannot_run_code(tmp_path, payload, named, protocol):
    marker = tmp_path / "marker"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload(marker)]}
    folder = write_cifar(tmp_path / "cifar", batch, protocol)
    message = refused(named, load_data, str(folder))
    assert not marker.exists()
    assert payload is Rot13 or "CIFAR batches hold only arrays and lists" in message


def test_a_batch_cannot_alter_what_the_unpickler_admits(tmp_path):
    # BUILD sets attributes on the object below it: here the admitted _codecs.encode
    name_x = b"}X\x04\x00\x00\x00nameX\x01\x00\x00\x00xs"  # {"name": "x"}
    for state in (name_x, b"N" + name_x + b"\x86"):  # as __dict__, as (None, slots)
        folder = write_cifar(tmp_path / f"build{len(state)}", b"\x80\x02c_codecs\nencode\n" + state + b"b.")
        refused("cannot read .* as a CIFAR python batch: AttributeError", load_data, str(folder))
    assert load_data(str(write_cifar(tmp_path / "good", cifar_batch(2)))).images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("protocol", [0, 2, 3, pickle.HIGHEST_PROTOCOL])
def test_genuine_cifar_batches_still_load_identically(tmp_path, protocol):
    batch = cifar_batch(5)
    expected = batch[b"data"].reshape(5, 3, 32, 32) / np.float32(255)
    as_list = {**batch, b"data": batch[b"data"].tolist()}
    for name, variant in (("array", batch), ("list", as_list)):
        data = load_data(str(write_cifar(tmp_path / name, variant, protocol)))
        assert data.images.dtype == np.float32 and data.images.shape == (5, 3, 32, 32)
        np.testing.assert_array_equal(data.images, expected)
        assert data.labels.dtype == np.int64 and data.labels.tolist() == batch[b"labels"]
    # CIFAR-100 names its files train/test and its labels fine_labels
    hundred = {b"data": batch[b"data"], b"fine_labels": np.array(batch[b"labels"]), b"coarse_labels": [0] * 5}
    data = load_data(str(write_cifar(tmp_path / "c100", hundred, protocol, name="train")), split="train",
                     limit=3)
    assert data.labels.tolist() == batch[b"labels"][:3] and data.images.shape == (3, 3, 32, 32)


def test_a_python_2_batch_loads_as_the_standard_unpickler_reads_it(tmp_path):
    batch = cifar_batch(3)
    raw = py2_batch_pickle(batch[b"data"], batch[b"labels"])
    reference = pickle.loads(raw, encoding="bytes")
    np.testing.assert_array_equal(reference[b"data"], batch[b"data"])
    images, labels, _ = load_cifar(write_cifar(tmp_path / "py2", raw))
    np.testing.assert_array_equal(images, batch[b"data"].reshape(3, 3, 32, 32) / np.float32(255))
    assert labels.tolist() == batch[b"labels"]


def test_malformed_cifar_batches_are_refused_with_one_line(tmp_path):
    good = cifar_batch(4)
    cases = {
        "raw bytes": ({**good, b"data": good[b"data"].tobytes()}, "data must be an array or a list"),
        "wrong size": ({**good, b"data": np.zeros((4, 3000), np.uint8)}, r"\(N, 3072\), got shape"),
        "no labels": ({b"data": good[b"data"]}, "needs b'data' and b'labels'"),
        "few labels": ({**good, b"labels": [1, 2]}, "labels must be 4 integers, got 2 labels"),
        "bool labels": ({**good, b"labels": [True, False, True, True]}, "got a list holding a bool"),
        "float pixels": ({**good, b"data": [[0.5] * 3072] * 4}, r"integers 0-255, found \['float'\]"),
        "big pixels": ({**good, b"data": [[256] * 3072 for _ in range(4)]}, r"found \[256, 256\]"),
        "not a dict": ([1, 2, 3], "holds a list, not a dict"),
        "int16 data": ({**good, b"data": np.zeros((4, 3072), np.int16)}, "dtype int16 have no known"),
    }
    for name, (batch, match) in cases.items():
        refused(match, load_data, str(write_cifar(tmp_path / name.replace(" ", "_"), batch)))
    raw = pickle.dumps(good, protocol=2)
    for cut in (1, len(raw) // 2, len(raw) - 1):
        refused("cannot read .* as a CIFAR python batch", load_data,
                str(write_cifar(tmp_path / f"cut{cut}", raw[:cut])))
    # a pickle that numbers its memo far ahead would make the C unpickler fill gigabytes
    refused("memo index 268435456", load_data,
            str(write_cifar(tmp_path / "memo", b"\x80\x02}r\x00\x00\x00\x10.")))


# --- 2. pixels are scaled by their stored dtype ------------------------------------------------------------


def test_pixels_are_scaled_by_the_stored_dtype_never_by_a_guess(tmp_path):
    labels = np.arange(2)
    values = np.array([[[0, 1000], [40000, 65535]]] * 2, np.uint16)
    np.savez(tmp_path / "u16.npz", images=values, labels=labels)
    data = load_data(str(tmp_path / "u16.npz"))
    np.testing.assert_array_equal(data.images[:, 0], values / np.float32(65535))
    assert "uint16 / 65535" in data.source
    for dtype in (np.int8, np.int16, np.int32, np.uint32, np.int64, np.bool_):
        np.savez(tmp_path / "int.npz", images=np.zeros((2, 4, 4), dtype), labels=labels)
        refused(f"images of dtype {np.dtype(dtype)} have no known value range", load_data,
                str(tmp_path / "int.npz"))
    # a float32 idx file in [0, 1] is used as stored (it was divided by 255 a second time)
    images = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)
    folder = write_idx_folder(tmp_path / "idxf", images, np.array([0, 1, 2]), image_code=0x0D)
    np.testing.assert_array_equal(load_data(str(folder)).images[:, 0], images)
    refused(r"dtype >i2 have no known value range", load_data,
            str(write_idx_folder(tmp_path / "idx16", images * 100, np.array([0, 1, 2]), image_code=0x0B)))


def test_a_nan_pixel_is_reported_as_nan(tmp_path):
    images = np.full((2, 4, 4), 0.5)
    images[1, 2, 3] = np.nan
    images[1, 3, 3] = np.inf
    np.savez(tmp_path / "nan.npz", images=images, labels=[0, 1])
    refused(r"2 non-finite value\(s\) \(first at image 1, stored index \(1, 2, 3\)\), finite values in "
            r"\[0.5, 0.5\]", load_data, str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "over.npz", images=np.full((2, 4, 4), 1.5), labels=[0, 1])
    refused(r"lie in \[0, 1\], found \[1.5, 1.5\]", load_data, str(tmp_path / "over.npz"))


# --- 3. 16-bit PNGs ----------------------------------------------------------------------------------------


def test_16_bit_pngs_keep_their_range_and_depths_may_mix(tmp_path):
    deep = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    shallow = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "deep.png").write_bytes(png_bytes(deep))
    (tmp_path / "data" / "a" / "shallow.png").write_bytes(png_bytes(shallow))
    data = load_data(str(tmp_path / "data"))
    assert data.ids == ["a/deep.png", "a/shallow.png"]
    np.testing.assert_array_equal(data.images[0, 0], deep / np.float32(65535))
    np.testing.assert_array_equal(data.images[1, 0], shallow / np.float32(255))
    # resized in its own depth: as the float image would be, not clipped to 8 bits first
    resized = load_data(str(tmp_path / "data"), image_size=(4, 4)).images[0, 0]
    reference = np.asarray(Image.fromarray(deep / np.float32(65535), mode="F").resize((4, 4), Image.BILINEAR))
    np.testing.assert_allclose(resized, reference, atol=2e-5)


def test_images_whose_range_is_not_known_are_refused(tmp_path, monkeypatch):
    (tmp_path / "data" / "a").mkdir(parents=True)
    # a 32-bit float TIFF behind a .png name: Pillow read it as mode "F" and clipped it to 8 bits
    Image.fromarray(np.full((4, 4), 1000.0, np.float32)).save(tmp_path / "data/a/x.png", format="TIFF")
    refused(r"cannot read .*x\.png", load_data, str(tmp_path / "data"))
    # were TIFF admitted, its mode would be refused by name
    monkeypatch.setattr(formats, "PIL_FORMATS", (*formats.PIL_FORMATS, "TIFF"))
    refused(r"x\.png' has mode 'F' \(TIFF\), whose value range is not known", load_data,
            str(tmp_path / "data"))


# --- 4. ambiguous layouts ----------------------------------------------------------------------------------


def test_ambiguous_layouts_must_be_stated(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "amb.npz", images=images, labels=[0, 1])
    refused(r"\(2, 4, 4, 3\) are ambiguous .*pass --layout NCHW or --layout NHWC \(layout= in Python\)",
            load_data, str(tmp_path / "amb.npz"))
    nhwc = load_data(str(tmp_path / "amb.npz"), layout="NHWC")
    np.testing.assert_array_equal(nhwc.images, images.transpose(0, 3, 1, 2) / np.float32(255))
    assert "NHWC as stated" in nhwc.source
    assert load_dataset(str(tmp_path / "amb.npz"), layout="NCHW")[0].shape == (2, 4, 4, 3)
    refused("layout must be 'NCHW' or 'NHWC', got 'HWC'", load_data, str(tmp_path / "amb.npz"), layout="HWC")
    refused("layout applies to .npz data only", load_data, "fashion-mnist-subset", layout="NCHW")
    np.savez(tmp_path / "odd.npz", images=np.zeros((2, 5, 6, 7), np.uint8), labels=[0, 1])
    refused("neither axis 1 nor axis 3", load_data, str(tmp_path / "odd.npz"))
    assert load_npz(tmp_path / "odd.npz", layout="NHWC")[0].shape == (2, 7, 5, 6)


# --- 5. labels ---------------------------------------------------------------------------------------------


def test_labels_are_checked_in_their_stored_type(tmp_path):
    images = np.zeros((2, 4, 4), np.uint8)
    for labels, match in ((np.array([0, 2**64 - 1], np.uint64), r"values in \[0, 18446744073709551615\]"),
                          (np.array([0, 2**40]), r"\[0, 2147483647\], found values in \[0, 1099511627776\]"),
                          (np.array([-1, 0], np.int8), r"found values in \[-1, 0\]"),
                          (np.array([True, False]), "labels must be 2 integers, got shape .* dtype bool"),
                          (np.array([[0], [1]]), r"labels must be 2 integers, got shape \(2, 1\)")):
        np.savez(tmp_path / "labels.npz", images=images, labels=labels)
        refused(match, load_data, str(tmp_path / "labels.npz"))
    folder = write_idx_folder(tmp_path / "idx", images, np.array([0, -7]), label_code=0x0C)
    refused(r"found values in \[-7, 0\]", load_data, str(folder))
    refused(r"found values in \[0, 4294967296\]", load_data,
            str(write_cifar(tmp_path / "cifar", {b"data": np.zeros((2, 3072), np.uint8),
                                                 b"labels": [0, 2**32]})))


# --- 6. image folders --------------------------------------------------------------------------------------


def image_folder(root, layout):
    for rel, array in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png_bytes(array))
    return root


def gray(value, size=(6, 6)):
    return np.full(size, value, np.uint8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    root = image_folder(tmp_path / "data", {"a/x.png": gray(10)})
    os.mkfifo(root / "a" / "pipe.png")
    refused(r"pipe\.png' is a FIFO, not a regular file", load_data, str(root))
    os.mkfifo(tmp_path / "fifo.npz")
    refused("is a FIFO", load_data, str(tmp_path / "fifo.npz"))


def test_links_cannot_count_an_image_twice(tmp_path):
    root = image_folder(tmp_path / "data", {"a/x.png": gray(10), "b/y.png": gray(20)})
    (root / "c").symlink_to(root)
    refused("leads to .*which holds the data folder itself", load_data, str(root))
    (root / "c").unlink()
    (root / "c").symlink_to(root / "a")
    refused("class folders 'c' and 'a' lead to overlapping folders", load_data, str(root))
    (root / "c").unlink()
    (root / "b" / "again.png").symlink_to(root / "a" / "x.png")
    refused(r"images '.*a/x\.png' and '.*b/again\.png' are the same file", load_data, str(root))
    (root / "b" / "again.png").unlink()
    (root / "b" / "loop").symlink_to(root / "b")
    refused("are the same folder", load_data, str(root))
    (root / "b" / "loop").unlink()
    assert load_data(str(root)).labels.tolist() == [0, 1]


def test_an_empty_class_folder_keeps_its_label(tmp_path):
    root = image_folder(tmp_path / "data", {"a/x.png": gray(10), "c/y.png": gray(20)})
    (root / "b").mkdir()
    data = load_data(str(root))
    assert data.classes == ["a", "b", "c"] and data.labels.tolist() == [0, 2]


def test_classes_can_be_stated(tmp_path):
    root = image_folder(tmp_path / "data", {"cat/x.png": gray(10), "ant/y.png": gray(20)})
    data = load_data(str(root), classes=["cat", "bee", "ant"])
    assert data.classes == ["cat", "bee", "ant"] and data.labels.tolist() == [0, 2]
    assert data.ids == ["cat/x.png", "ant/y.png"]
    refused(r"subfolder\(s\) \['ant'\] not among the classes given", load_data, str(root), classes=["cat"])
    refused(r"repeated: \['cat'\]", load_data, str(root), classes=["cat", "cat", "ant"])
    refused("not a folder name", load_data, str(root), classes=["cat", "../ant"])
    refused("classes apply to image folders only", load_data, "fashion-mnist-subset", classes=["a"])
    _, labels, ids, classes = load_image_folder(root, classes=("ant", "cat"))
    assert labels.tolist() == [0, 1] and ids == ["ant/y.png", "cat/x.png"] and classes == ["ant", "cat"]


def test_pillow_failures_name_the_file(tmp_path):
    good = png_bytes(gray(10))
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 2_000_000, zip=True)
    cases = {
        # over twice Pillow's bomb limit: DecompressionBombError, which is not an OSError
        "bomb.png": (with_ihdr_size(good, 20000, 20000), "DecompressionBombError"),
        "text.png": (png_bytes(gray(10), pnginfo=info), "(?i)decompressed data too large"),
        "cut.png": (good[:len(good) // 2], "cannot read"),
        "noise.png": (b"\x89PNG\r\n\x1a\n" + bytes(100), "cannot read"),
    }
    for name, (blob, match) in cases.items():
        root = tmp_path / name
        (root / "a").mkdir(parents=True)
        (root / "a" / name).write_bytes(blob)
        assert name in refused(match, load_data, str(root))
    (tmp_path / "dir" / "a" / "x.png").mkdir(parents=True)
    refused(r"image '.*x\.png' is a directory", load_data, str(tmp_path / "dir"))


def test_image_folders_mixing_sizes_or_modes_name_both_files(tmp_path):
    root = image_folder(tmp_path / "sizes", {"a/x.png": gray(1), "a/y.png": gray(1, (5, 6))})
    refused(r"sizes \(6, 6\) \('.*x\.png'\) and \(5, 6\) \('.*y\.png'\); pass --image-size", load_data,
            str(root))
    assert load_data(str(root), image_size=(4, 4)).images.shape == (2, 1, 4, 4)
    root = image_folder(tmp_path / "modes", {"a/x.png": gray(1), "a/y.png": np.zeros((6, 6, 3), np.uint8)})
    refused("mixes grayscale and RGB images", load_data, str(root))


# --- 7. what the spec names --------------------------------------------------------------------------------


def test_a_directory_or_a_missing_file_is_named_as_such(tmp_path):
    (tmp_path / "x.npz").mkdir()
    refused(r"'.*x\.npz' is a directory", load_data, str(tmp_path / "x.npz"))
    refused(r"data file not found: '.*y\.npz'", load_data, str(tmp_path / "y.npz"))
    (tmp_path / "t10k-images-idx3-ubyte.gz").mkdir()
    refused("is a directory", read_idx, tmp_path / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "z.npy").write_bytes(b"")
    refused("unknown data .*a data file must be an .npz", load_data, str(tmp_path / "z.npy"))


# --- 8. .npz -----------------------------------------------------------------------------------------------


def test_npz_files_that_are_not_what_they_claim(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((2, 4, 4)))
    os.replace(tmp_path / "one.npy", tmp_path / "one.npz")
    refused("is a .npy file .*named .npz", load_data, str(tmp_path / "one.npz"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + bytes(60))
    refused("cannot read .* as an .npz file: BadZipFile", load_data, str(tmp_path / "bad.npz"))
    labels = npy_bytes(np.arange(2))
    lying = npy_bytes(np.zeros(16, np.uint8), shape=(100_000_000, 28, 28))
    huge = write_npz(tmp_path / "huge.npz", {"images": lying, "labels": labels})
    refused(r"header declares shape \(100000000, 28, 28\) of uint8 \(78,400,000,000 bytes \(73.0 GiB\)\) "
            "but the member holds 16 bytes", load_data, str(huge))
    objects = write_npz(tmp_path / "obj.npz", {"images": npy_bytes(np.zeros(2), descr="|O"),
                                               "labels": labels})
    refused("dtype object; only plain integers and floats", load_data, str(objects))
    np.savez(tmp_path / "pickled.npz", images=np.array([{}, {}], dtype=object), labels=np.arange(2))
    refused("dtype object", load_data, str(tmp_path / "pickled.npz"))


def test_npz_limit_decompresses_only_the_first_images(tmp_path):
    images = np.zeros((2000, 100, 100), np.uint8)  # 20 MB, a few KB compressed
    images[:5] = 7
    np.savez_compressed(tmp_path / "big.npz", images=images, labels=np.arange(2000) % 10)
    data, peak = peak_bytes(load_data, str(tmp_path / "big.npz"), limit=5)
    assert data.images.shape == (5, 1, 100, 100) and data.labels.tolist() == [0, 1, 2, 3, 4]
    assert np.all(data.images == np.float32(7) / 255)
    assert peak < 2_000_000, peak


def test_the_decoded_size_is_bounded_and_named(tmp_path, monkeypatch):
    assert MAX_DECODED_BYTES == 8 * 2**30
    assert datasets.MAX_DECODED_BYTES is formats.MAX_DECODED_BYTES  # the public name is the limit applied
    monkeypatch.setattr(formats, "MAX_DECODED_BYTES", 100_000)
    np.savez(tmp_path / "some.npz", images=np.zeros((100, 28, 28), np.uint8), labels=np.zeros(100, np.int64))
    refused(r"would decode to 313,600 bytes .*above the 100,000 bytes .*pass --limit N", load_data,
            str(tmp_path / "some.npz"))
    assert load_data(str(tmp_path / "some.npz"), limit=20).images.shape == (20, 1, 28, 28)


def test_fortran_order_npz_is_read_correctly(tmp_path):
    images = np.asfortranarray(np.random.default_rng(0).random((6, 5, 7)))
    np.savez(tmp_path / "f.npz", images=images, labels=np.arange(6))
    np.testing.assert_array_equal(load_data(str(tmp_path / "f.npz"), limit=2).images[:, 0],
                                  images[:2].astype(np.float32))


# --- 9. idx files ------------------------------------------------------------------------------------------


def test_idx_files_cut_short_or_lying_about_their_size(tmp_path):
    blob = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    for gz in (False, True):
        name = "f.gz" if gz else "f"
        pack = gzip.compress if gz else bytes
        (tmp_path / name).write_bytes(pack(blob[:-5]))
        refused(r"header says shape \(3, 4, 4\), found 43 values", read_idx, tmp_path / name)
        (tmp_path / name).write_bytes(pack(blob[:10]))
        refused("idx header cut short", read_idx, tmp_path / name)
        (tmp_path / name).write_bytes(pack(blob + b"\x00"))
        refused(r"header says shape \(3, 4, 4\), found (49|more than 48) values", read_idx, tmp_path / name)
        huge = bytes([0, 0, 8, 3]) + b"\xff\xff\xff\xff" * 3 + bytes(48)
        (tmp_path / name).write_bytes(pack(huge))
        refused(r"\(4294967295, 4294967295, 4294967295\)", read_idx, tmp_path / name)
        for ndim in (0, 5):
            (tmp_path / name).write_bytes(pack(bytes([0, 0, 8, ndim]) + bytes(4 * ndim) + b"\x00"))
            refused(f"declares {ndim} dimensions; 1 to 4 are read", read_idx, tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(blob)[:-12])
    refused("cannot read .* as an idx file: EOFError", read_idx, tmp_path / "bad.gz")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + bytes(30))
    refused("cannot read .* as an idx file: BadGzipFile", read_idx, tmp_path / "bad.gz")
    (tmp_path / "crc.gz").write_bytes(gzip.compress(blob)[:-8] + bytes(8))
    refused("cannot read .* as an idx file", read_idx, tmp_path / "crc.gz")


def test_a_gzip_idx_longer_than_declared_is_not_read_whole(tmp_path):
    blob = idx_bytes(np.zeros((3, 28, 28), np.uint8)) + bytes(30_000_000)
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(blob, compresslevel=1))
    _, peak = peak_bytes(refused, r"found more than 2352 values", read_idx, tmp_path / "bomb.gz")
    assert peak < 2_000_000, peak


def test_idx_limit_reads_the_first_rows(tmp_path):
    images = np.arange(5 * 4 * 4).reshape(5, 4, 4) % 256
    (tmp_path / "i.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert (read_idx(tmp_path / "i.gz", limit=2) == images[:2]).all()
    folder = write_idx_folder(tmp_path / "idx", images, np.arange(5), gz=True)
    data = load_data(str(folder), limit=3)
    assert data.images.shape == (3, 1, 4, 4) and data.labels.tolist() == [0, 1, 2]
    write_idx_folder(tmp_path / "idx", images, np.arange(4), gz=True)
    refused(r"idx images of shape \(5, 4, 4\) and 4 labels", load_data, str(folder), limit=3)


# --- 11. image sizes ---------------------------------------------------------------------------------------


def test_image_sizes_are_bounded_before_allocating():
    refused("image size 100000x100000: each side may be at most 16384", load_data, "fashion-mnist-subset",
            limit=1, image_size=(100000, 100000))
    refused(r"10 images resized to 16384x16384 would decode to .*\(10.0 GiB\)", load_data,
            "fashion-mnist-subset", limit=10, image_size=(16384, 16384))
    refused("each side may be at most 16384", resize_images, np.zeros((1, 1, 2, 2), np.float32), (16385, 2))


# --- the fuzz wall -----------------------------------------------------------------------------------------


def loads_or_refuses(spec, **kwargs):
    """The property: a consistent Dataset or a one-line CertMaskError; nothing else, and never a hang."""
    with deadline(20):
        try:
            data = load_data(str(spec), **kwargs)
        except CertMaskError as err:
            assert "\n" not in str(err)
            return None
    n = len(data.labels)
    assert n >= 1 and data.images.ndim >= 3 and len(data.images) == n and data.labels.shape == (n,)
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    assert np.isfinite(data.images).all() and data.images.min() >= 0 and data.images.max() <= 1
    assert data.labels.min() >= 0 and data.labels.max() <= 2**31 - 1
    assert data.ids is None or len(data.ids) == n
    return data


HUGE = st.sampled_from([0, 1, 255, 2**16, 2**24, 2**31 - 1, 2**32 - 1])


@st.composite
def mutated(draw, blob, header=None):
    """``blob`` truncated, with bytes flipped, or with a 4-byte field rewritten to a huge value."""
    data = bytearray(blob)
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    end = header if header is not None else len(data)
    at = draw(st.integers(0, max(0, end - 4)))
    data[at:at + 4] = draw(HUGE).to_bytes(4, draw(st.sampled_from(["big", "little"])))
    return bytes(data)


SEED = np.random.default_rng(7)
IDX_IMAGES = idx_bytes(SEED.integers(0, 256, (4, 5, 5)))
IDX_LABELS = idx_bytes(np.array([0, 1, 2, 3]))


@settings(max_examples=60)
@given(blob=st.one_of(mutated(IDX_IMAGES, header=16), mutated(IDX_IMAGES), st.binary(max_size=64)),
       gz=st.booleans(), compress_after=st.booleans(), limit=st.sampled_from([None, 2]))
def test_fuzz_idx(tmp_path_factory, blob, gz, compress_after, limit):
    folder = tmp_path_factory.mktemp("idx")
    labels = gzip.compress(IDX_LABELS) if gz else IDX_LABELS
    if gz:
        # mutate the stream inside the gzip (the header, the data) or the gzip bytes themselves
        blob = gzip.compress(blob) if compress_after else bytes(mutated_gzip(blob))
    suffix = ".gz" if gz else ""
    (folder / f"t10k-images-idx3-ubyte{suffix}").write_bytes(blob)
    (folder / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(labels)
    loads_or_refuses(folder, limit=limit)


def mutated_gzip(blob):
    packed = bytearray(gzip.compress(blob))
    packed[len(packed) // 2] ^= 0x5A
    return packed


def npz_seed(compression):
    out = io.BytesIO()
    images = SEED.integers(0, 256, (3, 6, 6, 3)).astype(np.uint8)
    write_npz(out, {"images": npy_bytes(images), "labels": npy_bytes(np.array([0, 1, 2]))}, compression)
    return out.getvalue()


NPZ_STORED, NPZ_DEFLATED = npz_seed(zipfile.ZIP_STORED), npz_seed(zipfile.ZIP_DEFLATED)
NPY_IMAGES = npy_bytes(SEED.random((3, 6, 6)).astype(np.float32))


@settings(max_examples=60)
@given(blob=st.one_of(mutated(NPZ_STORED), mutated(NPZ_DEFLATED), st.binary(max_size=200)),
       limit=st.sampled_from([None, 1]))
def test_fuzz_npz_bytes(tmp_path_factory, blob, limit):
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    path.write_bytes(blob)
    loads_or_refuses(path, limit=limit)


@settings(max_examples=60)
@given(member=st.one_of(mutated(NPY_IMAGES, header=128), mutated(NPY_IMAGES)),
       shape=st.one_of(st.none(), st.lists(st.sampled_from([0, 1, 3, 6, 2**20, 2**40]), min_size=0,
                                           max_size=5).map(tuple)),
       descr=st.sampled_from([None, "<f4", ">f8", "|u1", "<u2", "<i8", "|b1", "<c8", "|O", "|V4", "<M8[s]"]),
       limit=st.sampled_from([None, 2]))
def test_fuzz_npz_headers(tmp_path_factory, member, shape, descr, limit):
    """A valid zip whose .npy member lies in its header (shape, dtype) or is mutated."""
    if shape is not None or descr is not None:
        member = npy_bytes(SEED.random((3, 6, 6)).astype(np.float32), shape=shape, descr=descr)
    path = write_npz(tmp_path_factory.mktemp("npz") / "x.npz", {"images": member,
                                                                "labels": npy_bytes(np.array([0, 1, 2]))})
    loads_or_refuses(path, limit=limit)


CIFAR_SEEDS = [pickle.dumps(cifar_batch(2), protocol=p) for p in (2, pickle.HIGHEST_PROTOCOL)]
CIFAR_SEEDS.append(py2_batch_pickle(cifar_batch(2)[b"data"], [3, 4]))


@settings(max_examples=60)
@given(blob=st.one_of(*[mutated(seed) for seed in CIFAR_SEEDS], st.binary(max_size=100)),
       limit=st.sampled_from([None, 1]))
def test_fuzz_cifar(tmp_path_factory, blob, limit):
    folder = write_cifar(tmp_path_factory.mktemp("cifar"), blob)
    loads_or_refuses(folder, limit=limit)


PNG_SEEDS = [png_bytes(SEED.integers(0, 256, (5, 5)).astype(np.uint8)),
             png_bytes(SEED.integers(0, 256, (5, 5, 3)).astype(np.uint8)),
             png_bytes(SEED.integers(0, 65536, (5, 5)).astype(np.uint16))]


@settings(max_examples=60)
@given(blob=st.one_of(*[mutated(seed) for seed in PNG_SEEDS],
                      st.tuples(st.sampled_from(PNG_SEEDS), HUGE, HUGE).map(lambda t: with_ihdr_size(*t)),
                      st.binary(max_size=100)),
       other=st.sampled_from(PNG_SEEDS), image_size=st.sampled_from([None, (3, 4)]))
def test_fuzz_png_folders(tmp_path_factory, blob, other, image_size):
    root = tmp_path_factory.mktemp("png")
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a" / "x.png").write_bytes(blob)
    (root / "b" / "y.png").write_bytes(other)
    loads_or_refuses(root, image_size=image_size)


@pytest.mark.parametrize("patch", [
    # numpy's dtype state marks a float32 as holding Python objects: numpy would read the data as pointers
    (b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?t"),
    # ... or gives it another item size
    (b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", b"K\x10J\xff\xff\xff\xffK\x00t"),
    # a structured dtype, whose field offsets a later BUILD could move outside the buffer
    (b"X\x02\x00\x00\x00f4", b"X\x02\x00\x00\x00V4"),
])
def test_cifar_dtype_state_never_reaches_numpy(tmp_path, patch):
    """Found by an independent review: numpy's dtype __setstate__ (the pickle's BUILD) accepts any
    flags, sizes and offsets, which turned a crafted batch into reads and writes outside its buffer.
    The unpickler now hands numpy nothing but a checked plain dtype and exactly sized bytes."""
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, protocol=2)
    assert raw.count(patch[0]) == 1
    (tmp_path / "test_batch").write_bytes(raw.replace(*patch))
    with pytest.raises(CertMaskError, match="CIFAR"):
        load_cifar(tmp_path)


def test_cifar_rows_shared_through_the_memo_are_refused(tmp_path):
    row = list(range(256)) * 12
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": [row] * 5000, b"labels": [0] * 5000},
                                                       protocol=2))
    assert (tmp_path / "test_batch").stat().st_size < 5000 * 3072
    with pytest.raises(CertMaskError, match="repeats rows to expand in memory"):
        load_cifar(tmp_path)


def test_a_hard_linked_image_is_counted_once(tmp_path):
    """Found by an independent review: real paths told symbolic links apart, not hard links."""
    root = tmp_path / "folder"
    for name in ("0", "1"):
        (root / name).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "0" / "a.png")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(root / "1" / "b.png")
    os.link(root / "0" / "a.png", root / "1" / "a.png")
    with pytest.raises(CertMaskError, match="are the same file"):
        load_image_folder(root)


def test_an_image_past_pillows_warning_limit_is_one_named_error(tmp_path, monkeypatch):
    """Pillow only warns between its bomb limit and twice that (two lines on stderr, then the decode)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    (tmp_path / "folder" / "0").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "folder" / "0" / "a.png")  # 16 pixels
    with pytest.raises(CertMaskError, match="DecompressionBombWarning"):
        load_image_folder(tmp_path / "folder")


def _op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _shared_levels(levels, opener, closer):
    """A container at every level holding the previous level twice, shared through the memo: the file
    grows by a few bytes a level, its repr (or hash) doubles."""
    out = opener + b"r\x00\x00\x00\x00" + b"0"  # level 0, LONG_BINPUT 0, POP
    for i in range(levels):
        out += b"(" + (b"j" + struct.pack("<I", i)) * 2 + closer + b"r" + struct.pack("<I", i + 1) + b"0"
    return out + b"j" + struct.pack("<I", levels)  # LONG_BINGET the top level


_DTYPE_U1 = _op_global("numpy", "dtype") + b"(X\x02\x00\x00\x00u1\x89\x88tR"  # dtype('u1', False, True)
_HUGE = b"\x8b" + struct.pack("<I", 20000) + b"\xff" * 19999 + b"\x7f"  # LONG4: a 160,000-bit int


@pytest.mark.parametrize("body", [
    # a shared list DAG as _reconstruct's first argument: its repr (for the message) is 2**40 long
    _op_global("numpy.core.multiarray", "_reconstruct") + _shared_levels(40, b"]", b"l") + b"(K\x00tN\x87R.",
    # a shared tuple DAG as a dict key: hashing it takes 2**40 steps
    b"}(" + _shared_levels(40, b")", b"t") + b"K\x01u.",
    # ... or inside a frozenset label (sets are not CIFAR's)
    b"}(C\x04data]C\x06labels(" + _shared_levels(40, b")", b"t") + b"\x91u.",
    # _frombuffer(400000000, ...): bytes(n) makes n zero bytes from a 100-byte file
    _op_global("numpy.core.numeric", "_frombuffer") + b"(J\x00\x84\xd7\x17" + _DTYPE_U1
    + b"(J\x00\x84\xd7\x17tX\x01\x00\x00\x00CtR.",
    # a shape of 400 shared 160,000-bit integers: their product alone took seconds
    _op_global("numpy.core.numeric", "_frombuffer") + b"(C\x00" + _DTYPE_U1 + b"(" + _HUGE
    + b"r\x00\x00\x00\x00" + b"j\x00\x00\x00\x00" * 399 + b"tX\x01\x00\x00\x00CtR.",
    # a pixel of 2**127 - 1 in a list row: numpy's int64 conversion raised OverflowError
    b"}(C\x04data]](\x8a\x10" + b"\xff" * 15 + b"\x7f" + b"K\x00" * 3071 + b"eaC\x06labels]K\x00au.",
], ids=["repr", "hash", "set", "frombuffer", "shape", "pixel"])
def test_cifar_batches_built_to_amplify_are_refused_at_once(tmp_path, body):
    """Found by a second independent review: each made a file of a few hundred bytes cost gigabytes,
    hours or a traceback."""
    (tmp_path / "test_batch").write_bytes(b"\x80\x02" + body)
    with deadline(10), pytest.raises(CertMaskError) as caught:
        load_cifar(tmp_path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_a_stated_byte_order_is_read_as_numpy_reads_it(tmp_path):
    raw = pickle.dumps({b"data": np.arange(3072, dtype=">u2").reshape(1, 3072) % 256, b"labels": [3]},
                       protocol=2)
    for state_order in (b"=", b"|", b">", b"<"):
        patched = raw.replace(b"X\x01\x00\x00\x00>", b"X\x01\x00\x00\x00" + state_order, 1)
        (tmp_path / "test_batch").write_bytes(patched)
        want = pickle.loads(patched, encoding="bytes")[b"data"].astype(np.float32) / 65535
        np.testing.assert_array_equal(load_cifar(tmp_path)[0].reshape(1, 3072), want)
