"""Small classifiers in plain torch (torchvision is not a dependency).

The bundled model normalises inside ``forward`` so that callers feed pixel values in ``[0, 1]``
and a mask fill of ``0.0`` means "black pixel" both at training time (Cutout) and at
certification time.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from certmask_core import CertMaskError

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
BUNDLED_WEIGHTS = "fmnist_cnn_cutout.pt"


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


def bundled_weights_path() -> Path:
    return Path(__file__).with_name("weights") / BUNDLED_WEIGHTS


def load_model(name: str = "bundled", device: str | torch.device = "cpu") -> nn.Module:
    """Load a classifier in eval mode.

    Parameters
    ----------
    name : str
        ``"bundled"`` for the committed Fashion-MNIST CNN, or a path to a ``state_dict`` file of
        :class:`FashionCNN`.
    device : str or torch.device
    """
    path = bundled_weights_path() if name == "bundled" else Path(name)
    if not path.is_file():
        raise CertMaskError(f"model weights not found: {str(path)!r}")
    model = FashionCNN()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # not a torch file, or the state dict of another architecture
        raise CertMaskError(f"cannot load {str(path)!r} as a FashionCNN state_dict: {err}") from err
    return model.eval().to(device)
