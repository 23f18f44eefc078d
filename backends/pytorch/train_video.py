"""Train the bundled 3-D CNN for moving Fashion-MNIST clips (model spec ``bundled-video``).

Reproduce the committed ``weights/fmnist_video_cnn.pt`` (20 to 40 minutes on 2 CPU cores; its record
says 2,368 s, with other jobs sharing the cores)::

    python -m certmask_backends.pytorch.train_video

Clips come from :mod:`certmask_core.run.video` (train clips from train images only, test clips from
test images only). Training hides each clip under nothing, one mask or the union of two masks of the
certification mask sets (:class:`~.training.MaskSetAugment`, fill 0.0): the sets for a 4x3x3 patch
(a short sticker) and for a 16x3x3 patch (a sticker present in every frame), with k = 1 and k = 2.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from certmask_core import PatchThreat, make_maskset
from certmask_core.run.video import CLIP_DEFAULTS, fashion_mnist_clips

from .backend import TorchBackend
from .models import VideoCNN, bundled_weights_path
from .training import train

FRAMES, SIDE = CLIP_DEFAULTS["frames"], CLIP_DEFAULTS["size"]
VIDEO_THREATS = {"short": (4, 3, 3), "full": (FRAMES, 3, 3)}
"""The two patches of the video results: 4 frames of 3x3, and 3x3 in every frame."""
VIDEO_MASKS_PER_AXIS = {"short": (2, 3, 3), "full": (1, 3, 3)}
"""Single-cover masks per axis (time, height, width) of the certification sets for each patch."""


def video_masksets(ks=(1, 2)) -> list:
    """The certification mask sets the bundled video model is trained for: replicated k-fold sets for
    both :data:`VIDEO_THREATS`, each with the window of its :data:`VIDEO_MASKS_PER_AXIS` single cover."""
    sets = []
    for name, patch in VIDEO_THREATS.items():
        threat = PatchThreat((FRAMES, SIDE, SIDE), patch)
        size = make_maskset(threat, masks_per_axis=VIDEO_MASKS_PER_AXIS[name]).spec.mask_size
        sets += [make_maskset(threat, k, "replicated" if k > 1 else "patchcleanser", mask_size=size)
                 for k in ks]
    return sets


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clips", type=int, default=60000, help="first N train images as clips")
    parser.add_argument("--eval-clips", type=int, default=1000, help="first N test images as clips")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=bundled_weights_path("fmnist_video_cnn.pt"))
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    clips, labels, _, source = fashion_mnist_clips("train", args.train_clips)
    test_clips, test_labels, _, _ = fashion_mnist_clips("test", args.eval_clips)
    x = torch.from_numpy(clips).float().div_(255.0)
    x_test = torch.from_numpy(test_clips).float().div_(255.0)
    sets = video_masksets()
    model = VideoCNN()
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "augmentation": "maskset"}
    record = train(model, x, labels, config, masksets=sets, backend=TorchBackend(),
                   eval_images=x_test, eval_labels=test_labels, eval_maskset=sets[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    record.update(command="python -m certmask_backends.pytorch.train_video " + " ".join(argv or []),
                  data={"source": source, "train_clips": len(x), "eval_clips": len(x_test), **CLIP_DEFAULTS},
                  masksets=[{"patch": list(ms.threat.patch_size), "k": ms.k, "num_masks": len(ms),
                             "mask_size": list(ms.spec.mask_size)} for ms in sets],
                  test_accuracy=record["epochs"][-1]["clean_accuracy"], threads=torch.get_num_threads())
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    print(json.dumps({key: record[key] for key in ("test_accuracy", "train_seconds")}))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    main()
