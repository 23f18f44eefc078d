"""The numpy backend: any callable as a classifier, and a whole certification with torch absent.

The subprocess tests block every ``torch`` import (a meta-path finder that raises ImportError) and
certify with :func:`nearest_mean_classifier`, a numpy model defined here and loaded by its factory spec
``tests.test_numpy_backend:nearest_mean_classifier``. This module imports no torch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from certmask_core import CertMaskError, PatchThreat, get_backend, make_maskset
from certmask_core.array_backend import NumpyBackend
from certmask_core.certification import DEFAULT_MARGIN_TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "tests.test_numpy_backend:nearest_mean_classifier"


def nearest_mean_classifier():
    """A Fashion-MNIST classifier in numpy: logits are minus the squared distances to the class means of
    the bundled subset, ``(N, 1, 28, 28) -> (N, 10)``."""
    from certmask_core.run.datasets import load_data
    data = load_data("fashion-mnist-subset")
    flat = data.images.reshape(len(data.images), -1).astype(np.float64)
    means = np.stack([flat[data.labels == c].mean(0) for c in range(10)])

    def model(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        return -((x ** 2).sum(1)[:, None] - 2 * x @ means.T + (means ** 2).sum(1)[None])

    return model


def not_callable():
    return 42


def failing():
    raise RuntimeError("no weights here")


BLOCK_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        '''Every torch import fails, as on a machine without torch.'''

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is not installed here ({name})")
            return None

    sys.meta_path.insert(0, NoTorch())
""")


def _run_without_torch(code: str, tmp_path) -> subprocess.CompletedProcess:
    program = BLOCK_TORCH + textwrap.dedent(code) + textwrap.dedent("""
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
        assert not leaked, leaked
    """)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=_env(tmp_path))


def _env(tmp_path):
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLCONFIGDIR"] = str(tmp_path)
    return env


def test_a_certification_runs_with_torch_absent(tmp_path):
    out = _run_without_torch(f"""
        import json
        from certmask_core import get_backend
        from certmask_core.run.datasets import load_data
        from certmask_core.run.config import RunConfig
        from certmask_core.run.experiment import run_certification
        backend = get_backend("numpy", batch_size=128)
        model = backend.load_model({FACTORY!r})
        data = load_data("fashion-mnist-subset", limit=10)
        config = RunConfig(patch=(3, 3), modes=("detection", "recovery"), masks_per_axis=3)
        results = run_certification(backend, model, data.images, data.labels, config, show_progress=False,
                                    num_classes=10)
        print(json.dumps([results["undefended_accuracy"]] + [sum(r["per_image"]["certified"])
                                                             for r in results["runs"]]))
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    accuracy, *certified = json.loads(out.stdout.strip().splitlines()[-1])
    assert accuracy >= 0.5 and len(certified) == 2


def test_the_torch_blocker_blocks(tmp_path):
    out = _run_without_torch("import torch\n", tmp_path)
    assert out.returncode != 0 and "torch is not installed here" in out.stderr


def test_the_command_line_certifies_with_the_numpy_backend(tmp_path):
    out_dir = tmp_path / "out"
    out = _run_without_torch(f"""
        from certmask_core.run.cli import main
        code = main(["certify", "--backend", "numpy", "--model", {FACTORY!r},
                     "--data", "fashion-mnist-subset", "--patch", "3", "3", "--limit", "10",
                     "--out", {str(out_dir)!r}, "--quiet", "--no-plots"])
        assert code == 0, code
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads((out_dir / "results.json").read_text())
    assert results["backend"] == "numpy" and results["images"] == 10
    record = json.loads((out_dir / "run.json").read_text())
    assert record["backend_versions"] == {"numpy": np.__version__}


@pytest.mark.parametrize("option", [["--channels-last"], ["--autocast", "bf16"],
                                    ["--memory-budget-mb", "64"]])
def test_the_command_line_refuses_torch_only_options_by_name(tmp_path, option):
    out = _run_without_torch(f"""
        from certmask_core.run.cli import main
        code = main(["certify", "--backend", "numpy", "--model", {FACTORY!r},
                     "--data", "fashion-mnist-subset", "--patch", "3", "3", "--limit", "10",
                     "--out", {str(tmp_path / "out")!r}, "--quiet", "--no-plots", *{option!r}])
        assert code == 2, code
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert option[0] in out.stderr and "numpy" in out.stderr


# ------------------------------------------------------------------------------ the backend itself
def test_load_model_runs_the_factory_it_is_given():
    backend = get_backend("numpy")
    assert isinstance(backend, NumpyBackend) and backend.name == "numpy"
    model = backend.load_model(FACTORY)
    images = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    assert backend.predict(model, images, return_logits=True).shape == (3, 10)
    assert backend.input_channels(model) is None and backend.model_fingerprint(model) is None
    assert backend.versions() == {"numpy": np.__version__}
    assert backend.margin_tolerance == DEFAULT_MARGIN_TOLERANCE
    assert NumpyBackend(margin_tolerance=0.25).margin_tolerance == 0.25


@pytest.mark.parametrize("spec, weights, message", [
    ("bundled", None, "the numpy backend loads models from 'package.module:factory' specs .* got 'bundled'"),
    ("model.onnx", None, "the numpy backend loads models from 'package.module:factory' specs"),
    (FACTORY, "w.npz", "weights .* do not apply to the numpy backend: the factory .* loads its own"),
    ("tests.no_such_module:make", None, "model spec 'tests.no_such_module:make': cannot import 'make' from "
                                        "'tests.no_such_module'"),
    ("tests.test_numpy_backend:missing", None, "cannot import 'missing'"),
    ("tests.test_numpy_backend:failing", None, r"calling failing\(\) failed: no weights here"),
    ("tests.test_numpy_backend:not_callable", None, r"not_callable\(\) returned a int, not a callable"),
])
def test_load_model_names_what_is_wrong(spec, weights, message):
    with pytest.raises(CertMaskError, match=message):
        NumpyBackend().load_model(spec, weights)


def test_any_array_like_answer_is_taken():
    ms = make_maskset(PatchThreat((4, 4), 2), 1, "patchcleanser", masks_per_axis=2)
    images = np.full((2, 1, 4, 4), 0.5, np.float32)
    as_lists = NumpyBackend().masked_predictions(lambda x: [[1.0, 2.0]] * len(x), images, ms,
                                                 return_logits=True)
    assert as_lists.dtype == np.float32 and as_lists.shape == (2, len(ms), 2)
    as_float64 = NumpyBackend().predict(lambda x: np.ones((len(x), 3)), images, return_logits=True)
    assert as_float64.dtype == np.float32
    with pytest.raises(CertMaskError, match=r"model must return \(batch, classes\) logits, got a dict"):
        NumpyBackend().predict(lambda x: {"logits": x}, images)
    with pytest.raises(CertMaskError, match=r"model must return \(batch, classes\) logits, got a list"):
        NumpyBackend().predict(lambda x: [[1.0], [2.0, 3.0]], images)
    with pytest.raises(CertMaskError, match=r"with classes >= 1, got shape \(2, 0\)"):
        NumpyBackend().predict(lambda x: np.zeros((len(x), 0)), images)


def test_chunks_never_exceed_the_batch_size():
    ms = make_maskset(PatchThreat((6, 6), 2), 1, "patchcleanser", masks_per_axis=3)
    sizes = []

    def model(x):
        sizes.append(len(x))
        return x.reshape(len(x), -1)[:, :4]

    backend = NumpyBackend(batch_size=5)
    backend.masked_predictions(model, np.full((3, 1, 6, 6), 0.5, np.float32), ms)
    assert max(sizes) == 5 and sum(sizes) == 3 * len(ms)
    assert backend.effective_batch(model, np.zeros((1, 1, 6, 6), np.float32)) == 5


def test_out_of_memory_halves_the_chunk():
    sizes = []

    def model(x):
        sizes.append(len(x))
        if len(x) > 2:
            raise MemoryError("out of memory")
        return np.zeros((len(x), 2))

    assert NumpyBackend(batch_size=8).predict(model, np.zeros((5, 1, 3, 3), np.float32)).shape == (5,)
    assert sizes == [5, 4, 2, 2, 1]  # 5 and 4 fail, 2 fits: the rest in chunks of 2

    def never(x):
        raise MemoryError("out of memory")

    with pytest.raises(CertMaskError, match=r"the model failed on input of shape \(1, 1, 3, 3\), "
                                            r"dtype float32: out of memory"):
        NumpyBackend(batch_size=4).predict(never, np.zeros((2, 1, 3, 3), np.float32))


def test_mean_and_std_are_checked():
    with pytest.raises(CertMaskError, match="mean and std need the same length, finite values and std > 0"):
        NumpyBackend().normalized(lambda x: x, [0.5, 0.5], [0.2])
    with pytest.raises(CertMaskError, match="mean and std need the same length"):
        NumpyBackend().normalized(lambda x: x, [0.5], [0.0])
    model = NumpyBackend().normalized(lambda x: x.reshape(len(x), -1)[:, :2], [0.5, 0.5, 0.5], [1, 1, 1])
    with pytest.raises(CertMaskError, match="mean and std have 3 values but the images have 1 channels"):
        NumpyBackend().predict(model, np.zeros((1, 1, 3, 3), np.float32))
