"""The onnx backend on the bundled model: the torch backend's certificates, from an exported graph.

The bundled Fashion-MNIST CNN is exported to ONNX in a temporary folder (once with a free batch
dimension, once with a fixed one); every mode of ``run_certification`` on the bundled subset must give
the per-image outputs and certificates the torch backend gives. Also: what ``load_model`` refuses and
names, the fixed-batch padding, fingerprints, and a printed measurement of masked throughput against
torch on the CPU (not a timed assertion).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from certmask_backends.onnx import OnnxBackend  # noqa: E402
from certmask_backends.onnx.bench import export_bundled, measure  # noqa: E402
from certmask_backends.pytorch import TorchBackend  # noqa: E402
from certmask_backends.pytorch.models import load_model  # noqa: E402

from certmask_core import CertMaskError, PatchThreat, get_backend, make_maskset  # noqa: E402
from certmask_core.certification import MODES  # noqa: E402
from certmask_core.run.config import RunConfig  # noqa: E402
from certmask_core.run.datasets import load_data  # noqa: E402
from certmask_core.run.experiment import run_certification  # noqa: E402

FIXED_BATCH = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {"free": str(export_bundled(folder / "bundled.onnx")),
            "fixed": str(export_bundled(folder / "bundled-fixed.onnx", fixed_batch=FIXED_BATCH))}


@pytest.fixture(scope="module")
def subset():
    return load_data("fashion-mnist-subset", limit=40)


CONFIG = RunConfig(patch=(3, 3), ks=(1, 2), strategies=("replicated",), modes=MODES, masks_per_axis=3)


def _certify(backend, model, data):
    return run_certification(backend, model, data.images, data.labels, CONFIG, show_progress=False,
                             num_classes=10)


@pytest.fixture(scope="module")
def torch_results(subset):
    return _certify(TorchBackend(device="cpu"), load_model("bundled"), subset)


def _assert_same_results(results, expected):
    assert results["undefended_accuracy"] == expected["undefended_accuracy"]
    assert [(r["k"], r["mode"]) for r in results["runs"]] == [(r["k"], r["mode"]) for r in expected["runs"]]
    for run, want in zip(results["runs"], expected["runs"]):
        got, ref = run["per_image"], want["per_image"]
        assert got["output"] == ref["output"], (run["k"], run["mode"])
        assert got["certified"] == ref["certified"], (run["k"], run["mode"])
        assert got.get("claim_holds") == ref.get("claim_holds")
        assert [m is None for m in got["min_margin"]] == [m is None for m in ref["min_margin"]]
        np.testing.assert_allclose([m for m in got["min_margin"] if m is not None],
                                   [m for m in ref["min_margin"] if m is not None], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", ["free", "fixed"])
def test_every_mode_certifies_as_the_torch_backend_does(exported, subset, torch_results, batch):
    backend = OnnxBackend(device="cpu", batch_size=100)  # 100: chunks of 96 for the fixed batch of 8
    model = backend.load_model(exported[batch])
    assert model.fixed_batch == (FIXED_BATCH if batch == "fixed" else None)
    results = _certify(backend, model, subset)
    _assert_same_results(results, torch_results)
    by_mode = {run["mode"]: sum(run["per_image"]["certified"]) for run in torch_results["runs"]}
    assert by_mode["detection"] > 0 and by_mode["recovery"] > 0  # a comparison of something


def test_a_fixed_batch_pads_its_last_run_and_drops_the_padding(exported, subset):
    ms = make_maskset(PatchThreat((28, 28), 3), 1, "replicated", masks_per_axis=3)
    images = subset.images[:5]  # 45 masked inputs: 5 runs of 8 and one of 5 padded to 8
    free_backend = OnnxBackend(device="cpu", batch_size=64)
    expected = free_backend.masked_predictions(free_backend.load_model(exported["free"]), images, ms,
                                               return_logits=True)
    for batch_size in (1, 8, 20, 64):  # below, at, between and above multiples of the fixed batch
        backend = OnnxBackend(device="cpu", batch_size=batch_size)
        model = backend.load_model(exported["fixed"])
        assert backend.effective_batch(model, images) == max(8, batch_size // 8 * 8)
        np.testing.assert_allclose(backend.masked_predictions(model, images, ms, return_logits=True),
                                   expected, rtol=1e-5, atol=1e-5)
        pairs = np.array([[0, 1], [2, 3], [4, 5]])
        np.testing.assert_array_equal(backend.pair_predictor(model, images, ms)(1, pairs),
                                      free_backend.pair_predictor(free_backend.load_model(exported["free"]),
                                                                  images, ms)(1, pairs))
    assert backend.predict(model, images[:0]).shape == (0,)


def test_the_model_file_is_described(exported):
    backend = get_backend("onnx", device="cpu")
    model = backend.load_model(exported["free"])
    assert backend.input_channels(model) == 1
    with open(exported["free"], "rb") as f:
        assert backend.model_fingerprint(model) == hashlib.sha256(f.read()).hexdigest()
    normalized = backend.normalized(model, [0.5], [0.25])
    assert backend.input_channels(normalized) == 1
    assert backend.model_fingerprint(normalized) not in (None, backend.model_fingerprint(model))
    assert backend.model_fingerprint(backend.normalized(model, [0.5], [0.25])) == backend.model_fingerprint(
        normalized)
    assert "onnxruntime" in backend.versions()
    assert backend.margin_tolerance == 1e-3


def test_data_the_model_does_not_take_are_named(exported, subset):
    backend = OnnxBackend(device="cpu")
    model = backend.load_model(exported["free"])
    rgb = np.repeat(subset.images[:2], 3, axis=1)
    with pytest.raises(CertMaskError) as info:
        backend.predict(model, rgb)
    assert str(info.value) == ("bundled.onnx takes input 'x' of shape [N, 1, 28, 28]; "
                               "the data are (B, 3, 28, 28)")
    with pytest.raises(CertMaskError, match=r"of shape \[N, 1, 28, 28\]; the data are \(B, 1, 32, 32\)$"):
        ms = make_maskset(PatchThreat((32, 32), 3), 1, "replicated", masks_per_axis=3)
        backend.masked_predictions(model, np.zeros((2, 1, 32, 32), np.float32), ms)
    with pytest.raises(CertMaskError, match=r"of shape \[N, 1, 28, 28\]; the data are \(B, 1, 6, 28, 28\)$"):
        backend.predict(model, np.zeros((2, 1, 6, 28, 28), np.float32))
    with pytest.raises(CertMaskError, match="the onnx backend runs models it loaded .* got a function"):
        backend.predict(lambda x: x, subset.images[:2])


def test_what_load_model_refuses(exported, tmp_path):
    backend = OnnxBackend(device="cpu")
    with pytest.raises(CertMaskError, match="weights .* do not apply to ONNX models"):
        backend.load_model(exported["free"], weights="w.pt")
    with pytest.raises(CertMaskError, match=r"the onnx backend loads FILE.onnx models, got 'bundled'"):
        backend.load_model("bundled")
    with pytest.raises(CertMaskError, match=r"model file not found: '.*missing.onnx'"):
        backend.load_model(str(tmp_path / "missing.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(CertMaskError, match=r"cannot load '.*garbage.onnx' as an ONNX model"):
        backend.load_model(str(garbage))


def _graph(tmp_path, name, inputs, outputs, nodes, initializers=()):
    onnx = pytest.importorskip("onnx")
    from onnx import helper
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_graphs_the_backend_cannot_feed_are_named(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    backend = OnnxBackend(device="cpu")
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])
    as_int = _graph(tmp_path, "ints", [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1, 2, 2])],
                    [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 1, 2, 2])],
                    [helper.make_node("Identity", ["x"], ["y"])])
    with pytest.raises(CertMaskError, match=r"ints.onnx takes input 'x' of element type tensor\(int64\)"):
        backend.load_model(as_int)
    flat = _graph(tmp_path, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [logits], [helper.make_node("Identity", ["x"], ["logits"])])
    with pytest.raises(CertMaskError, match=r"flat.onnx takes input 'x' of shape \[N, 4\]; the onnx backend "
                                            r"feeds \(N, C, \*spatial\) images"):
        backend.load_model(flat)
    two = _graph(tmp_path, "two",
                 [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4]) for name in "ab"],
                 [logits], [helper.make_node("Add", ["a", "b"], ["logits"])])
    with pytest.raises(CertMaskError, match=r"two.onnx has 2 inputs \('a', 'b'\) and 1 outputs"):
        backend.load_model(two)


def test_a_float16_graph_is_fed_cast_images(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    weights = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float16)
    path = _graph(tmp_path, "half",
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 1, 4, 4])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [None, 3])],
                  [helper.make_node("Flatten", ["x"], ["flat"]),
                   helper.make_node("MatMul", ["flat", "w"], ["logits"])],
                  [numpy_helper.from_array(weights, "w")])
    backend = OnnxBackend(device="cpu", batch_size=3)
    model = backend.load_model(path)
    assert model.input_dtype == np.float16 and backend.input_channels(model) == 1
    images = np.random.default_rng(1).random((5, 1, 4, 4)).astype(np.float32)
    logits = backend.predict(model, images, return_logits=True)
    assert logits.dtype == np.float32
    expected = images.astype(np.float16).reshape(5, -1).astype(np.float32) @ weights.astype(np.float32)
    np.testing.assert_allclose(logits, expected, rtol=1e-2, atol=1e-2)


def test_devices():
    import onnxruntime
    with pytest.raises(CertMaskError, match="device must be 'cpu', 'cuda' or 'cuda:N' for the onnx backend, "
                                            "got 'tpu'"):
        OnnxBackend(device="tpu")
    assert OnnxBackend(device="cpu").providers == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert OnnxBackend(device="cuda:0").margin_tolerance == 0.02
    else:
        with pytest.raises(CertMaskError, match="has no CUDA provider .* install onnxruntime-gpu"):
            OnnxBackend(device="cuda")
        assert OnnxBackend().device == "cpu"


def test_masked_throughput_against_torch_is_measured(exported, capsys):
    figures = measure(images=20, masks_per_axis=4, repeats=1, onnx_path=exported["free"])
    assert figures["largest_logit_difference"] < 1e-3
    with capsys.disabled():
        print(f"\nmasked throughput on the CPU ({figures['passes']} passes): torch "
              f"{figures['torch_passes_per_second']:.0f}/s, onnx {figures['onnx_passes_per_second']:.0f}/s, "
              f"onnx/torch {figures['onnx_over_torch']:.2f}x")
