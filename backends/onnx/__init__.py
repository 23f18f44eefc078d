"""The ONNX backend (``pip install certmask[onnx]``): an ``.onnx`` classifier run by onnxruntime.

Masking, batching and validation are :class:`certmask_core.array_backend.ArrayBackend`'s (numpy,
on the host, one chunk of masked inputs at a time); each chunk is fed to an
``onnxruntime.InferenceSession``. Loading a model is reading data: the graph runs the operators
onnxruntime implements and nothing else (no custom-operator library is registered, so a graph naming
one fails to load), which is why ``.onnx`` files need no ``trust_code``. External-data tensors are
read from beside the model file, as onnxruntime resolves them.

Examples
--------
>>> backend = OnnxBackend(device="cpu", batch_size=256)  # doctest: +SKIP
>>> model = backend.load_model("model.onnx")  # doctest: +SKIP
>>> backend.masked_predictions(model, images, maskset).shape  # doctest: +SKIP
(B, n)
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from certmask_core.array_backend import ArrayBackend, NormalizedModel, unwrapped
from certmask_core.contract import check_class_count, checked_logits
from certmask_core.errors import CertMaskError
from certmask_core.predictions import DEFAULT_MARGIN_TOLERANCE

__all__ = ["OnnxBackend", "OnnxModel"]

INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
"""Element types of a model input certmask can feed, and the numpy dtype fed (images are cast)."""

CUDA_MARGIN_TOLERANCE = 0.02
"""Margin tolerance on CUDA: onnxruntime's CUDA provider runs float32 convolutions and matrix products
in TF32 by default, as torch does on GPUs (see ``TorchBackend.margin_tolerance``)."""


def _dims_text(dims) -> str:
    """An input shape as onnxruntime reports it: ``[N, 3, 32, 32]`` (a free dimension by its name)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _data_text(shape: tuple) -> str:
    return "(" + ", ".join(["B", *(str(s) for s in shape[1:])]) + ")"


@dataclass(frozen=True, eq=False)
class OnnxModel:
    """An opened ``.onnx`` classifier (what :meth:`OnnxBackend.load_model` returns).

    Attributes
    ----------
    session : onnxruntime.InferenceSession
    path : str
        The file it was read from.
    input_name, output_name : str
    input_dims : tuple
        The input's shape as the graph declares it: ints (fixed), strings (named free dimensions) or
        None (anonymous free dimensions).
    input_dtype : numpy dtype
        What the input takes (float32, float16 or float64); images are cast to it.
    fixed_batch : int or None
        The batch dimension when the graph fixes it: every run then takes exactly that many inputs.
    sha256 : str
        Of the file's bytes.
    """

    session: object
    path: str
    input_name: str
    output_name: str
    input_dims: tuple
    input_dtype: np.dtype
    fixed_batch: int | None
    sha256: str

    @property
    def name(self) -> str:
        return Path(self.path).name


class OnnxBackend(ArrayBackend):
    """Run an ONNX classifier under masks with onnxruntime.

    The model takes one input ``(N, C, *spatial)`` of element type float32 (float16 and float64 inputs
    are fed cast images) and gives one output ``(N, K)``. A free batch dimension takes chunks of
    ``batch_size`` inputs; a fixed batch dimension ``b`` takes exactly ``b`` inputs per run: chunks are
    whole multiples of ``b`` (at least ``b``) and a short last run is padded by repeating its last input,
    the padding's outputs dropped.

    Parameters
    ----------
    device : {None, "cpu", "cuda", "cuda:N"}
        None: CUDA when onnxruntime offers its CUDA provider, else the CPU. ``"cuda"`` on a machine
        whose onnxruntime has no CUDA provider is a CertMaskError.
    batch_size : int
        Most inputs per run (see above for a fixed batch dimension).
    margin_tolerance : float, optional
        Default: ``1e-3`` on the CPU, ``0.02`` on CUDA (TF32). A float16 model needs more: pass
        ``0.25``, the torch backend's figure for half-precision autocast.
    **options
        ``fill``, ``fill_space``, ``mean``, ``std``, ``value_range``: see :class:`ArrayBackend`.
    """

    name = "onnx"

    def __init__(self, device: str | None = None, batch_size: int = 512, *,
                 margin_tolerance: float | None = None, **options):
        self.providers, self.device = self._providers(device)
        if margin_tolerance is None:
            margin_tolerance = CUDA_MARGIN_TOLERANCE if self.device != "cpu" else DEFAULT_MARGIN_TOLERANCE
        super().__init__(batch_size=batch_size, margin_tolerance=margin_tolerance, **options)

    @staticmethod
    def _providers(device) -> tuple[list, str]:
        """onnxruntime's execution providers for ``device``, and the device they run on."""
        available = onnxruntime.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if device is None:
            device = "cuda" if has_cuda else "cpu"
        match = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
        if device == "cpu":
            return ["CPUExecutionProvider"], "cpu"
        if match is None:
            raise CertMaskError(f"device must be 'cpu', 'cuda' or 'cuda:N' for the onnx backend, got "
                                f"{device!r}")
        if not has_cuda:
            raise CertMaskError(f"device {device!r}: this onnxruntime ({onnxruntime.__version__}) has no "
                                f"CUDA provider (it has {', '.join(available)}); install onnxruntime-gpu, "
                                f"or use device 'cpu'")
        options = {"device_id": int(match.group(1) or 0)}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"], device

    @staticmethod
    def versions() -> dict:
        """Versions that decide this backend's numbers (for run records)."""
        return {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}

    # ----------------------------------------------------------------- models
    def load_model(self, spec: str, weights=None, *, trust_code: bool = False) -> OnnxModel:
        """Open ``spec``, a ``.onnx`` file, as an :class:`OnnxModel` on this backend's device.

        Reading it is reading data (see the module's docstring), so ``trust_code`` changes nothing.

        Raises
        ------
        CertMaskError
            ``weights`` given (the file holds its own); a missing file or one that is not ``.onnx``; a
            file onnxruntime cannot load; a graph without exactly one input and one output; an input
            that is not ``(N, C, *spatial)`` of a floating-point type.
        """
        if weights is not None:
            raise CertMaskError(f"weights (--weights) do not apply to ONNX models: {spec!r} holds its own")
        path = Path(spec)
        if path.suffix.lower() != ".onnx":
            raise CertMaskError(f"the onnx backend loads FILE.onnx models, got {spec!r}")
        if not path.is_file():
            raise CertMaskError(f"model file not found: {spec!r}")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: they reach the user as CertMaskErrors
        options.use_deterministic_compute = True  # a prediction must not depend on its batch
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=self.providers)
        except Exception as err:
            raise CertMaskError(f"cannot load {spec!r} as an ONNX model: {err}") from err
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise CertMaskError(f"{path.name} has {len(inputs)} inputs "
                                f"({', '.join(repr(i.name) for i in inputs)}) and {len(outputs)} outputs; "
                                f"the onnx backend runs models of one input (the images) and one output "
                                f"(the logits)")
        given, dims = inputs[0], tuple(inputs[0].shape)
        if given.type not in INPUT_DTYPES:
            raise CertMaskError(f"{path.name} takes input {given.name!r} of element type {given.type}; the "
                                f"onnx backend feeds floating-point images (tensor(float), tensor(float16) "
                                f"or tensor(double))")
        if not 3 <= len(dims) <= 5:
            raise CertMaskError(f"{path.name} takes input {given.name!r} of shape {_dims_text(dims)}; the "
                                f"onnx backend feeds (N, C, *spatial) images with 1 to 3 spatial axes")
        fixed = dims[0] if isinstance(dims[0], int) and dims[0] >= 1 else None
        return OnnxModel(session, str(path), given.name, outputs[0].name, dims,
                         np.dtype(INPUT_DTYPES[given.type]), fixed, digest.hexdigest())

    def input_channels(self, model) -> int | None:
        """Channels the model's input declares (None when the graph leaves it free)."""
        channels = _model(model).input_dims[1]
        return channels if isinstance(channels, int) else None

    def model_fingerprint(self, model) -> str:
        """sha256 of the model file's bytes (and of the normalisation, for a normalised model)."""
        onnx_model = _model(model)
        if not isinstance(model, NormalizedModel):
            return onnx_model.sha256
        digest = hashlib.sha256(onnx_model.sha256.encode())
        while isinstance(model, NormalizedModel):
            digest.update(model.mean.tobytes() + b"/" + model.std.tobytes())
            model = model.model
        return digest.hexdigest()

    # ----------------------------------------------------------------- running
    def _check_input(self, model, shape: tuple) -> None:
        onnx_model = _model(model)
        dims = onnx_model.input_dims
        fits = len(dims) == len(shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(dims[1:], shape[1:]))
        if not fits:
            raise CertMaskError(f"{onnx_model.name} takes input {onnx_model.input_name!r} of shape "
                                f"{_dims_text(dims)}; the data are {_data_text(shape)}")

    def _chunk_size(self, model) -> int:
        """``batch_size``; with a fixed batch dimension ``b``, a whole multiple of ``b`` (at least ``b``)."""
        fixed = _model(model).fixed_batch
        if fixed is None:
            return self.batch_size
        return max(fixed, self.batch_size // fixed * fixed)

    def _logits(self, model: OnnxModel, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(model.input_dtype, copy=False)
        run = model.session.run
        if model.fixed_batch is None:
            return run([model.output_name], {model.input_name: x})[0]
        b, out = model.fixed_batch, []
        for start in range(0, len(x), b):
            part = x[start:start + b]
            real = len(part)
            if real < b:  # the graph takes exactly b inputs: repeat the last, drop its outputs
                part = np.concatenate([part, np.repeat(part[-1:], b - real, axis=0)])
            logits = checked_logits(run([model.output_name], {model.input_name: part})[0], part.shape)
            if out:
                check_class_count(out[0].shape[1], logits.shape[1])
            out.append(logits[:real])
        return np.concatenate(out)


def _model(model) -> OnnxModel:
    """The :class:`OnnxModel` inside ``model``, else CertMaskError."""
    inner = unwrapped(model)
    if not isinstance(inner, OnnxModel):
        raise CertMaskError(f"the onnx backend runs models it loaded (OnnxBackend.load_model), got a "
                            f"{type(inner).__name__}")
    return inner
