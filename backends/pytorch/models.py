"""Small classifiers in plain torch (torchvision is not a dependency).

The bundled model normalises inside ``forward`` so that callers feed pixel values in ``[0, 1]``
and a mask fill of ``0.0`` means "black pixel" both at training time (Cutout) and at
certification time.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from certmask_core import CertMaskError, contract

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
BUNDLED_WEIGHTS = "fmnist_cnn.pt"
# model spec -> committed weights file (the video model's is a VideoCNN, the others FashionCNNs)
BUNDLED = {"bundled": BUNDLED_WEIGHTS, "bundled-cutout": "fmnist_cnn_cutout.pt",
           "bundled-video": "fmnist_video_cnn.pt"}


class FashionCNN(nn.Module):
    """A 4-conv CNN (about 3.7 M multiply-adds): ``(B, 1, 28, 28)`` in ``[0, 1]`` -> ``(B, 10)`` logits."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w * 3 * 3, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - FMNIST_MEAN) / FMNIST_STD))


class VideoCNN(nn.Module):
    """A small 3-D CNN (about 11 M multiply-adds per 16-frame clip): ``(B, 1, T, 28, 28)`` in ``[0, 1]``
    -> ``(B, 10)`` logits, for any ``T >= 1``.

    Three 3x3x3 convolutions, each followed by pooling over time and space, then global max and mean
    pooling: the moving item is recognised wherever (and whenever) it is seen, which is what lets the
    clip keep its label when a mask hides it in some frames.
    """

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv3d(1, w, 3, padding=1), nn.BatchNorm3d(w), nn.ReLU(inplace=True),
            nn.MaxPool3d(2, ceil_mode=True),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.BatchNorm3d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool3d(2, ceil_mode=True),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm3d(4 * w), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, 64), nn.ReLU(inplace=True),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features((x - FMNIST_MEAN) / FMNIST_STD).flatten(2)
        return self.head(torch.cat([f.amax(2), f.mean(2)], 1))


def bundled_model(name: str) -> nn.Module:
    """The architecture of bundled model spec ``name``, freshly initialised."""
    return VideoCNN() if name in ("bundled-video", "video-cnn") else FashionCNN()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (CIFAR stem) in plain torch, used by the GPU throughput benchmark."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def bundled_weights_path(name: str = BUNDLED_WEIGHTS) -> Path:
    return Path(__file__).with_name("weights") / name


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder; ``torch.save`` archives do not (only the zip's
    names are read: nothing in the file is deserialised)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def load_failure(err: Exception) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` failed.

    torch's own message advises loading with ``weights_only=False`` or allow-listing what the file
    asks for: both would run code from the file, so only the unpickler's reason is kept (torch raises
    its message from the unpickler's error, which stays in ``__context__``).
    """
    text = str(err).strip()
    if text.startswith("Weights only load failed"):
        inner = err.__context__ or "torch's weights-only reader refused it"
        reason = str(inner).strip().split(". ")[0].rstrip(".")
    else:
        reason = f"{type(err).__name__}: {(text.splitlines() or [''])[0]}"
    if "GLOBAL" in reason:
        return (f"it holds more than tensors and plain data ({reason}); such a file is refused because "
                f"reading it could run code")
    return f"not a file torch.save wrote, or a damaged one ({reason})"


def _load_state_dict(model: nn.Module, path: Path, what: str) -> nn.Module:
    if not path.is_file():
        raise CertMaskError(f"weights file {str(path)!r} is a directory" if path.is_dir()
                            else f"weights file not found: {str(path)!r}")
    try:
        # weights_only: tensors and plain containers only, so reading the file runs no code from it
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, damaged, or asks for objects beyond plain data
        raise CertMaskError(f"cannot load {str(path)!r} as a {what} state_dict: {load_failure(err)}") from err
    try:
        model.load_state_dict(state)
    except Exception as err:  # not a dict, or the state dict of another architecture
        raise CertMaskError(f"cannot load {str(path)!r} as a {what} state_dict: {err}") from err
    return model


def _from_factory(spec: str) -> nn.Module:
    model = contract.model_from_factory(spec)
    attr = spec.partition(":")[2]
    if not isinstance(model, nn.Module):
        raise CertMaskError(f"model spec {spec!r}: {attr}() returned a {type(model).__name__}, not an "
                            f"nn.Module")
    return model


MODEL_SPECS = ("bundled", "bundled-cutout", "bundled-video", "fashion-cnn", "video-cnn",
               "FILE.pt2 (torch.export: runs code from the file, so needs --trust-model-code, "
               "trust_code=True in Python)",
               "FILE.pt (TorchScript, likewise, or a FashionCNN state dict)",
               "package.module:factory (imports and runs that Python code)")
TRUST_HINT = ("Load it only if you trust where it came from: --trust-model-code on the command line, "
              "trust_code=True in Python")


def _refuse_code(path: Path, kind: str, trust_code: bool) -> None:
    """CertMaskError unless the user opted in to running code stored in ``path``."""
    if not trust_code:
        raise CertMaskError(f"model file {str(path)!r} is {kind}: loading it runs code stored in the file. "
                            f"{TRUST_HINT}")


def load_model(name: str = "bundled", device: str | torch.device = "cpu", weights=None, *,
               trust_code: bool = False) -> nn.Module:
    """Load a classifier in eval mode from a model spec.

    Reading a file is reading data: a file that can only be loaded by running code stored in it (a
    ``torch.export`` program or a TorchScript archive) is refused unless ``trust_code`` is True.

    Parameters
    ----------
    name : str
        * ``"bundled"``: the committed Fashion-MNIST CNN (trained for certification, see
          ``weights/fmnist_cnn.json``); ``"bundled-cutout"``: the first release's Cutout-trained one;
          ``"bundled-video"``: the 3-D CNN for moving Fashion-MNIST clips ``(B, 1, 16, 28, 28)``
          (``weights/fmnist_video_cnn.json``);
        * ``"fashion-cnn"`` / ``"video-cnn"``: a bundled architecture, freshly initialised (to train
          from scratch);
        * a file path: a ``torch.export`` program (``.pt2``, ``torch.export.save``) or a TorchScript
          archive (``torch.jit.save``), both only with ``trust_code``; or a :class:`FashionCNN` state
          dict (read with ``torch.load(weights_only=True)``: tensors only, no code runs);
        * ``"package.module:factory"``: imports ``package.module`` and calls ``factory()``, which must
          return an ``nn.Module``. This runs that Python code (the module's import-time code too): it
          is code the user names, so it needs no ``trust_code``.
    device : str or torch.device
    weights : path, optional
        A state dict loaded into the model (for ``fashion-cnn`` and factories), read as tensors only.
    trust_code : bool
        Allow ``.pt2`` and TorchScript files. Loading them unpickles objects and runs code stored in
        the file (``torch.export.load`` unpickles with ``weights_only=False``), so a crafted file runs
        anything it likes; pass True only for files from a source you trust (the command line's
        ``--trust-model-code``).

    Raises
    ------
    CertMaskError
        An unknown spec, a missing or unreadable file, a ``.pt2`` or TorchScript file without
        ``trust_code`` (refused before anything in it is deserialised), or ``weights`` for a spec that
        takes none.
    """
    path = Path(name)
    if name in BUNDLED:
        model = bundled_model(name)
        model = _load_state_dict(model, bundled_weights_path(BUNDLED[name]), type(model).__name__)
    elif name in ("fashion-cnn", "video-cnn"):
        model = bundled_model(name)
    elif path.is_file() and path.suffix == ".pt2":
        _refuse_code(path, "a torch.export program", trust_code)
        try:
            model = ExportedModel(torch.export.load(str(path)).module())
        except Exception as err:
            raise CertMaskError(f"cannot load {str(path)!r} as a torch.export program: {err}") from err
    elif path.is_file():
        if _is_torchscript(path):
            _refuse_code(path, "a TorchScript archive", trust_code)
            try:
                model = torch.jit.load(str(path), map_location="cpu")
            except Exception as err:
                raise CertMaskError(f"cannot load {str(path)!r} as TorchScript: {err}") from err
        else:
            model = _load_state_dict(FashionCNN(), path, "FashionCNN")
    elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
        model = _from_factory(name)
    elif "/" in name or path.suffix in (".pt", ".pth", ".ts"):
        raise CertMaskError(f"model weights not found: {name!r}")
    else:
        raise CertMaskError(f"model {name!r} is neither an existing file nor a model spec: "
                            f"{', '.join(MODEL_SPECS)}")
    if weights is not None:
        if isinstance(model, torch.jit.ScriptModule) or name in BUNDLED or path.is_file():
            raise CertMaskError(f"weights (--weights) apply to 'fashion-cnn' and factory specs, not to "
                                f"{name!r}")
        _load_state_dict(model, Path(weights), type(model).__name__)
    return model.eval().to(device)


def save_model(model: nn.Module, path, spec: str) -> tuple[Path, str]:
    """Save ``model`` (loaded from model spec ``spec``) so that it loads back as it is.

    TorchScript modules are saved with ``torch.jit.save``, every other module as its state dict; a model
    wrapped by ``--mean``/``--std`` (:class:`Normalized`) is saved unwrapped. Returns the path and the
    command-line model arguments that load the file back (for a factory,
    ``"package.module:factory --weights PATH"``; for TorchScript, ``"PATH --trust-model-code"``, as
    loading it runs code from the file; for a wrapped model, with its ``--mean``/``--std``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    normalization = ""
    if isinstance(model, Normalized):
        values = [" ".join(f"{v:g}" for v in t.flatten().tolist()) for t in (model.mean, model.std)]
        normalization = f" --mean {values[0]} --std {values[1]}"
        model = model.model
    if isinstance(model, ExportedModel):
        raise CertMaskError("a torch.export program cannot be saved for further use; save the trained "
                            "module and export it again")
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, str(path))
        return path, f"{path} --trust-model-code{normalization}"
    torch.save(model.state_dict(), path)
    if isinstance(model, FashionCNN):
        return path, f"{path}{normalization}"
    return path, f"{spec} --weights {path}{normalization}"


class ExportedModel(nn.Module):
    """A ``torch.export`` program's module. Its train/eval behaviour was fixed when it was exported
    (export from eval mode), so ``train()``/``eval()`` only set the flag instead of failing."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


class Normalized(nn.Module):
    """``model((x - mean) / std)``: lets a model trained on normalised input take pixel-space input,
    so that masks and their fill stay in pixel space ``[0, 1]``."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        mean_a, std_a = contract.checked_normalization(mean, std)
        self.model = model
        self.register_buffer("mean", torch.from_numpy(mean_a))
        self.register_buffer("std", torch.from_numpy(std_a))

    def forward(self, x):
        # per channel, whatever the spatial axes: (B, C, L) signals, (B, C, H, W), (B, C, T, H, W)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.model((x - self.mean.to(x.dtype).view(shape)) / self.std.to(x.dtype).view(shape))
