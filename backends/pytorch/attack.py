"""White-box adaptive patch attack against the whole defence (not only the base model).

For each image the attacker searches patch positions (a stride grid, then the neighbours of the most
promising ones) and optimises the patch pixels with PGD against a differentiable surrogate of the
defence's aggregation, computed over the masks that do *not* cover the patch (the ones the patch can
influence). Every candidate is then judged by the real defence (:func:`certmask_core.defend`) on the
real masked predictions, so a reported break is a real one.

Surrogate targets per mode:

* ``detection``, ``plurality``, ``covering_consensus``, ``recovery``: every free mask should predict
  the target class ``c`` (the strongest wrong class of the clean image). For ``plurality`` this makes
  ``c`` the plurality of every minimal covering set the patch can reach, which is what the rule needs
  to output ``c``; the minimal sets inside ``S(l)`` are out of reach, which is why T12 holds.
* ``paper``: the masks of a covering set ``S(l2)`` disjoint from ``S(l)`` should predict ``c`` and the
  other free masks the true label, which is the structure of the T9 counterexample (``c`` then has
  exactly ``k`` voters sharing a position, and the true label does not).

The undefended model is attacked with the same budget for reference. The model runs in eval mode
throughout (each submodule's ``training`` flag is restored afterwards), as in the backend.

For the unsound ``paper`` mode nothing is certified: the images whose one-round check holds are
reported as ``claim_holds`` and a break of one of them as ``claim_broken_UNSOUND``; ``certified`` and
``certified_broken`` belong to the sound modes only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from certmask_core import ALERT, MaskSet, PatchThreat, certify, defend, make_maskset
from certmask_core.coverage import covered_windows
from certmask_core.run.progress import progress_bar

from .backend import eval_mode

WINS = {"detection": "wrong label, not ALERT", "plurality": "wrong label, not ALERT",
        "covering_consensus": "wrong label, not ALERT", "recovery": "wrong label", "paper": "wrong label"}


def _positions(threat: PatchThreat, stride: int) -> list[tuple[int, int]]:
    P_h, P_w = threat.num_positions
    rows = sorted(set(range(0, P_h, stride)) | {P_h - 1})
    cols = sorted(set(range(0, P_w, stride)) | {P_w - 1})
    return [(a, b) for a in rows for b in cols]


def _paste(image: torch.Tensor, patch: torch.Tensor, positions) -> torch.Tensor:
    """``(P, C, H, W)`` copies of ``image`` with ``patch[i]`` pasted at ``positions[i]``."""
    out = image.expand(len(positions), *image.shape).clone()
    ph, pw = patch.shape[-2:]
    for i, (a, b) in enumerate(positions):
        out[i, :, a:a + ph, b:b + pw] = patch[i]
    return out


class PatchAttack:
    """Adaptive patch attack on a defended model.

    Parameters
    ----------
    backend : TorchBackend
    model : nn.Module
    maskset : MaskSet
    patch : (ph, pw)
    mode : str
    steps : int
        PGD steps per position.
    stride : int
        Position grid stride of the first stage; the 3 best positions are then refined over their
        neighbours at distance 1.
    step_size : float
        PGD step in pixel units (images in ``[0, 1]``).
    """

    def __init__(self, backend, model, maskset: MaskSet, patch, mode: str, steps: int = 40,
                 stride: int = 3, step_size: float = 0.1, restarts_per_position: int = 1):
        self.backend, self.model, self.maskset, self.mode = backend, model, maskset, mode
        self.threat = PatchThreat(maskset.image_size, patch)
        self.steps, self.stride, self.step_size = steps, stride, step_size
        self.restarts = restarts_per_position
        self.hidden = backend.hidden_pixels(maskset)
        self.windows = covered_windows(maskset, self.threat)

    def _covering(self, a: int, b: int) -> np.ndarray:
        w = self.windows
        return (w[:, 0] <= a) & (a <= w[:, 2]) & (w[:, 1] <= b) & (b <= w[:, 3])

    def _targets(self, positions, y: int, c: int) -> torch.Tensor:
        """``(P, n)`` target class per mask (-1: covered, ignored in the loss)."""
        n = len(self.maskset)
        targets = np.full((len(positions), n), c, dtype=np.int64)
        if self.mode == "paper":
            P_h, P_w = self.threat.num_positions
            far = [(P_h - 1, P_w - 1), (0, P_w - 1), (P_h - 1, 0), (0, 0)]
        for i, (a, b) in enumerate(positions):
            cov = self._covering(a, b)
            if self.mode == "paper":
                targets[i] = y
                for a2, b2 in far:  # a far covering set disjoint from S(l) gets the wrong class
                    other = self._covering(a2, b2)
                    if not (other & cov).any():
                        targets[i, other] = c
                        break
            targets[i, cov] = -1
        return torch.as_tensor(targets, device=self.backend.device)

    def _masked_logits(self, patched: torch.Tensor) -> torch.Tensor:
        """``(P, n, K)`` logits of ``(P, C, H, W)`` patched images under every mask (with grad)."""
        x = self.backend.masked_inputs(patched.unsqueeze(1), self.hidden.unsqueeze(0))
        P, n = x.shape[:2]
        return self.model(x.reshape(P * n, *x.shape[2:])).view(P, n, -1)

    def _optimise(self, image: torch.Tensor, positions, y: int, c: int, gen: torch.Generator):
        """PGD on the surrogate; returns patches ``(P, C, ph, pw)`` and final losses ``(P,)``."""
        ph, pw = self.threat.patch_size
        C = image.shape[0]
        targets = self._targets(positions, y, c)
        patch = torch.rand(len(positions), C, ph, pw, generator=gen).to(image.device, image.dtype)
        patch.requires_grad_(True)
        for _ in range(self.steps):
            logits = self._masked_logits(_paste(image, patch, positions))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).clamp(min=0),
                                   reduction="none").view(targets.shape)
            loss = (loss * (targets >= 0)).sum(1)
            grad, = torch.autograd.grad(loss.sum(), patch)
            with torch.no_grad():
                patch -= self.step_size * grad.sign()
                patch.clamp_(0.0, 1.0)
        return patch.detach(), loss.detach()

    def _defend(self, patched: torch.Tensor) -> np.ndarray:
        preds = self.backend.masked_predictions(self.model, patched, self.maskset)
        kwargs = {}
        if self.mode == "recovery":
            kwargs["pair_predictor"] = self.backend.pair_predictor(self.model, patched, self.maskset)
        return defend(preds, self.maskset, self.mode, **kwargs).output

    def _wins(self, outputs: np.ndarray, y: int) -> np.ndarray:
        wrong = outputs != y
        return wrong & (outputs != ALERT) if WINS[self.mode].endswith("not ALERT") else wrong

    def attack_image(self, image: np.ndarray, y: int, seed: int = 0) -> dict:
        """Search positions and patch contents for one image; return the best attack found."""
        with eval_mode(self.model):
            return self._attack_image(image, y, seed)

    def _attack_image(self, image, y: int, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        x = self.backend.prepare_images(self.model, image[None], self.maskset)[0]
        with torch.no_grad():
            clean_logits = self._masked_logits(x[None])[0].mean(0)
        clean_logits[y] = -float("inf")
        c = int(clean_logits.argmax())
        grid = _positions(self.threat, self.stride)
        patches, losses = self._optimise_in_chunks(x, grid, y, c, gen)
        outputs = self._defend(_paste(x, patches, grid))
        best = self._record(grid, patches, losses, outputs, y)
        if not best["success"]:
            P_h, P_w = self.threat.num_positions
            near = {(a + da, b + db) for a, b in [grid[i] for i in torch.argsort(losses)[:3].tolist()]
                    for da in (-1, 0, 1) for db in (-1, 0, 1)}
            near = sorted((a, b) for a, b in near if 0 <= a < P_h and 0 <= b < P_w and (a, b) not in grid)
            if near:
                patches, losses = self._optimise_in_chunks(x, near, y, c, gen)
                outputs = self._defend(_paste(x, patches, near))
                refined = self._record(near, patches, losses, outputs, y)
                if refined["success"] or refined["loss"] < best["loss"]:
                    best = refined
        best["target_class"] = c
        return best

    def _optimise_in_chunks(self, x, positions, y, c, gen, chunk: int = 16):
        out_p, out_l = [], []
        for i in range(0, len(positions), chunk):
            p, l = self._optimise(x, positions[i:i + chunk], y, c, gen)
            out_p.append(p)
            out_l.append(l)
        return torch.cat(out_p), torch.cat(out_l)

    def _record(self, positions, patches, losses, outputs, y) -> dict:
        wins = self._wins(outputs, y)
        i = int(np.flatnonzero(wins)[0]) if wins.any() else int(torch.argmin(losses))
        return {"success": bool(wins.any()), "position": list(positions[i]), "output": int(outputs[i]),
                "loss": float(losses[i]), "patch": patches[i].cpu().numpy()}


def attack_undefended(backend, model, image: np.ndarray, y: int, patch, steps: int, stride: int,
                      step_size: float = 0.1, seed: int = 0) -> tuple[bool, list[int]]:
    """PGD patch attack on the plain model at every position of a stride grid; (success, position)."""
    threat = PatchThreat(image.shape[1:], patch)
    x = backend.prepare_images(model, image[None])[0]
    gen = torch.Generator().manual_seed(seed)
    positions = _positions(threat, stride)
    ph, pw = threat.patch_size
    p = torch.rand(len(positions), x.shape[0], ph, pw, generator=gen).to(x.device, x.dtype)
    p.requires_grad_(True)
    target = torch.full((len(positions),), y, device=x.device)
    with eval_mode(model):
        for _ in range(steps):
            loss = F.cross_entropy(model(_paste(x, p, positions)), target)
            grad, = torch.autograd.grad(loss, p)
            with torch.no_grad():
                p += step_size * grad.sign()  # untargeted: push the true class down
                p.clamp_(0.0, 1.0)
        with torch.no_grad():
            wrong = model(_paste(x, p, positions)).argmax(1) != y
    i = int(wrong.nonzero()[0]) if wrong.any() else 0
    return bool(wrong.any()), list(positions[i])


def run_attack(backend, model, images, labels, patch, k: int, strategy: str, mode: str, steps: int = 40,
               stride: int = 3, masks_per_axis=(4, 4), mask_size=None, out_dir=None,
               show_progress=None, attack_all: bool = False) -> dict:
    """Certify, then attack, every image; report breaks of certified images and robust accuracy.

    Certified images are always attacked (a break is a bug); with ``attack_all`` the others too, which
    gives the empirical robust accuracy of the defence. Recovery is certified with its default
    certificate (T11, hitting set), so its certified images include ones with wrong masks. The
    unsound ``paper`` mode certifies nothing:
    its rows say ``claim_holds`` and a break of such an image counts as ``claim_broken_UNSOUND``.
    """
    threat = PatchThreat(images.shape[2:], patch)
    ms = make_maskset(threat, k, strategy, mask_size=mask_size,
                      masks_per_axis=None if mask_size else masks_per_axis)
    preds = backend.masked_predictions(model, images, ms)
    kwargs = {"pair_predictor": backend.pair_predictor(model, images, ms)} if mode == "recovery" else {}
    report = certify(preds, labels, ms, mode, k=k, **kwargs)
    # an unsound mode certifies nothing; what its breaks refute is the claim its check makes
    claim = "certified" if report.sound else "claim_holds"
    holds = report.certified if report.sound else getattr(report, "claim_holds", report.certified)
    broken_key = "certified_broken" if report.sound else "claim_broken_UNSOUND"
    attack = PatchAttack(backend, model, ms, patch, mode, steps, stride)
    rows = []
    with progress_bar(len(images), f"attack {mode}", show_progress) as bar:
        for i, (x, y) in enumerate(zip(images, labels)):
            y = int(y)
            row = {"label": y, "clean_output": int(report.output[i]), claim: bool(holds[i])}
            if row["clean_output"] != y and not attack_all:
                row.update(attacked=False, attacked_output=row["clean_output"], success=True)
            else:
                best = attack.attack_image(x, y, seed=i)
                row.update(attacked=True, attacked_output=best["output"], success=best["success"],
                           position=best["position"], patch=best["patch"])
            row["undefended_broken"], _ = attack_undefended(backend, model, x, y, patch, steps, stride,
                                                            seed=i)
            rows.append(row)
            bar.update()
    n = len(rows)
    broken = [i for i, r in enumerate(rows) if r[claim] and r["success"]]
    undefended_clean = backend.predict(model, images) == labels
    result = {
        "mode": mode, "guarantee": report.guarantee, "sound": report.sound, "attacker_wins_with": WINS[mode],
        "strategy": strategy, "k": k, "num_masks": len(ms), "patch": list(patch), "steps": steps,
        "stride": stride, "images": n,
        "clean_accuracy": float(np.mean([r["clean_output"] == r["label"] for r in rows])),
        ("certified_accuracy" if report.sound else "claimed_certified_accuracy_UNSOUND"): float(holds.mean()),
        # correct on the clean image and the attacker found no win (for detection modes ALERT is no win)
        "empirical_robust_accuracy": float(np.mean([not r["success"] and r["clean_output"] == r["label"]
                                                    for r in rows])),
        broken_key: len(broken), f"{broken_key}_images": broken,
        "undefended_clean_accuracy": float(undefended_clean.mean()),
        "undefended_robust_accuracy": float(np.mean([c and not r["undefended_broken"]
                                                     for c, r in zip(undefended_clean, rows)])),
        "per_image": [{k2: v for k2, v in r.items() if k2 != "patch"} for r in rows],
    }
    if out_dir is not None:
        _write(result, rows, images, ms, patch, Path(out_dir))
    return result


def _write(result, rows, images, ms, patch, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shown = [i for i, r in enumerate(rows) if r.get("attacked")][:8]
    if shown:
        from certmask_core.run.datasets import FASHION_MNIST_CLASSES
        from certmask_core.run.plots import example_images
        attacked = images[shown].copy()
        boxes = []
        for j, i in enumerate(shown):
            a, b = rows[i]["position"]
            attacked[j, :, a:a + patch[0], b:b + patch[1]] = rows[i]["patch"]
            boxes.append(((a, b), patch))
        example_images(attacked, ms, [rows[i]["attacked_output"] for i in shown], FASHION_MNIST_CLASSES,
                       out / "attack.png", patch_boxes=boxes)
    tmp = out / "attack.json.partial"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "attack.json")
