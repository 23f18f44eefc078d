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

Two patches (``run_attack(..., patches=2)``, :class:`MultiPatchAttack`). The defence runs over
:func:`certmask_core.all_pairs_groups` of the mask set (one prediction per pair of masks hidden
together; recovery's second round hides pairs of groups) and is certified with ``patches=2`` (T15).
The attacker places two patches (they may overlap) and optimises both jointly against the surrogate
over the groups that leave some patch pixel visible (a group hiding both patches whole is out of
reach). Positions: each stride-grid position first gets a short single-patch PGD against the base
masks; every pair of grid positions is scored by one forward pass per base mask with both single
patches pasted (no gradient); the most promising pairs are optimised jointly (warm-started from
their single patches), then the best are refined by moving one patch to a neighbouring position.
Every candidate is judged by the real two-patch defence on the backend's group predictions.

Misestimated size (``run_attack(..., true_patch=(qh, qw))``): the mask set is planned and certified
for ``patch`` but the attacker's patch is ``true_patch``. An image counts as certified against the
attack only when :func:`certmask_core.certify_sizes` certifies it for ``true_patch``, which never
happens for a size the set does not cover; breaks of images certified only for the planned size are
reported as the attack's success rate against them, not as broken certificates.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from certmask_core import (
    ALERT,
    CertMaskError,
    MaskSet,
    PatchThreat,
    all_pairs_groups,
    certify,
    certify_sizes,
    defend,
    make_maskset,
)
from certmask_core.coverage import coverage_extremes, covered_windows
from certmask_core.multipatch import check_patches
from certmask_core.run.outputs import AttackExamples
from certmask_core.run.progress import progress_bar

from .backend import eval_mode

WINS = {"detection": "wrong label, not ALERT", "plurality": "wrong label, not ALERT",
        "covering_consensus": "wrong label, not ALERT", "recovery": "wrong label", "paper": "wrong label"}


def _positions(threat: PatchThreat, stride: int) -> list[tuple[int, ...]]:
    """The stride grid of patch positions, each axis's last position included (row-major)."""
    axes = [sorted(set(range(0, P, stride)) | {P - 1}) for P in threat.num_positions]
    return list(itertools.product(*axes))


def _neighbours(positions, threat: PatchThreat) -> set[tuple[int, ...]]:
    """The positions at Chebyshev distance <= 1 of ``positions``, inside the position grid."""
    steps = itertools.product((-1, 0, 1), repeat=threat.ndim)
    return {q for q in (tuple(a + da for a, da in zip(p, step)) for p in positions for step in steps)
            if all(0 <= a < P for a, P in zip(q, threat.num_positions))} if positions else set()


def _paste(image: torch.Tensor, patch: torch.Tensor, positions) -> torch.Tensor:
    """``(P, C, *spatial)`` copies of ``image`` with ``patch[i]`` pasted at ``positions[i]``."""
    return _paste_many(image, patch[:, None], [(tuple(p),) for p in positions])


def _paste_many(image: torch.Tensor, patches: torch.Tensor, positions) -> torch.Tensor:
    """``(P, C, *spatial)`` copies of ``image`` (``(C, H, W)``, or any number of spatial axes) with
    ``patches[i, t]`` (``(P, m, C, *patch)``) pasted at ``positions[i][t]``, in order (a later patch
    overwrites an earlier one where they overlap).

    One scatter per patch slot, differentiable in ``patches``: slice assignment per candidate would
    make the backward pass copy the whole batch once per candidate.
    """
    P, m, C = patches.shape[:3]
    patch, spatial = tuple(patches.shape[3:]), tuple(image.shape[1:])
    d, volume, size = len(spatial), math.prod(patch), math.prod(spatial)
    out = image.expand(P, C, *spatial)
    if P == 0:
        return out.clone()
    pos = torch.as_tensor(np.asarray(positions, dtype=np.int64).reshape(P, m, d), device=image.device)
    strides = [math.prod(spatial[axis + 1:]) for axis in range(d)]
    for t in range(m):
        flat = torch.zeros((P,) + patch, dtype=torch.long, device=image.device)
        for axis in range(d):
            offset = torch.arange(patch[axis], device=image.device).view(
                (1,) + (1,) * axis + (patch[axis],) + (1,) * (d - axis - 1))
            flat = flat + (pos[:, t, axis].view((P,) + (1,) * d) + offset) * strides[axis]
        flat = flat.view(P, 1, volume)
        placed = torch.zeros(P, C, size, device=image.device, dtype=patches.dtype).scatter(
            2, flat.expand(P, C, volume), patches[:, t].reshape(P, C, volume))
        inside = torch.zeros(P, 1, size, device=image.device, dtype=torch.bool).scatter(2, flat, True)
        out = torch.where(inside.view(P, 1, *spatial), placed.view(P, C, *spatial), out)
    return out


class PatchAttack:
    """Adaptive patch attack on a defended model.

    Parameters
    ----------
    backend : TorchBackend
    model : nn.Module
    maskset : MaskSet
        Any number of axes (images ``(H, W)``, clips ``(T, H, W)``).
    patch : (ph, pw)
        One size per axis of the mask set.
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

    def _covering(self, *position: int) -> np.ndarray:
        d = len(position)
        return ((self.windows[:, :d] <= position) & (np.array(position) <= self.windows[:, d:])).all(1)

    def _targets(self, positions, y: int, c: int) -> torch.Tensor:
        """``(P, n)`` target class per mask (-1: covered, ignored in the loss)."""
        n = len(self.maskset)
        targets = np.full((len(positions), n), c, dtype=np.int64)
        if self.mode == "paper":  # the corners, the first axis varying fastest
            far = [corner[::-1] for corner in itertools.product(*((P - 1, 0) for P in
                                                                   self.threat.num_positions[::-1]))]
        for i, position in enumerate(positions):
            cov = self._covering(*position)
            if self.mode == "paper":
                targets[i] = y
                for corner in far:  # a far covering set disjoint from S(l) gets the wrong class
                    other = self._covering(*corner)
                    if not (other & cov).any():
                        targets[i, other] = c
                        break
            targets[i, cov] = -1
        return torch.as_tensor(targets, device=self.backend.device)

    def _masked_logits(self, patched: torch.Tensor) -> torch.Tensor:
        """``(P, n, K)`` logits of ``(P, C, H, W)`` patched images under every mask (with grad)."""
        x = self.backend.masked_inputs(patched.unsqueeze(1), self.hidden.unsqueeze(0), self.threat.ndim)
        P, n = x.shape[:2]
        return self.model(x.reshape(P * n, *x.shape[2:])).view(P, n, -1)

    def _optimise(self, image: torch.Tensor, positions, y: int, c: int, gen: torch.Generator):
        """PGD on the surrogate; returns patches ``(P, C, ph, pw)`` and final losses ``(P,)``."""
        C = image.shape[0]
        targets = self._targets(positions, y, c)
        patch = torch.rand(len(positions), C, *self.threat.patch_size, generator=gen)
        patch = patch.to(image.device, image.dtype)
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
        return _wins(self.mode, outputs, y)

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
            near = sorted(_neighbours([grid[i] for i in torch.argsort(losses)[:3].tolist()], self.threat)
                          - set(grid))
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


class MultiPatchAttack:
    """Adaptive attack with two patches on the defence over all pairs of masks.

    The defended family is :func:`certmask_core.all_pairs_groups` of ``maskset``; predictions, the
    real defence (:func:`certmask_core.defend` with ``patches=2``) and recovery's second round (pairs
    of groups) all run over it. The surrogate asks every group that sees a pixel of either patch to
    predict the target class ``c`` (the strongest wrong class of the clean image); the groups hiding
    both patches whole are out of the attacker's reach and ignored.

    Position search, all positions on the stride grid of :func:`_positions`:

    1. a single patch at every grid position, ``score_steps`` PGD steps against the base masks that
       see it; per base mask its final cross-entropy to ``c``;
    2. each pair of distinct grid positions gets both its single patches pasted and one forward pass
       per base mask (no gradient); its score is ``sum_g loss(g)``, where ``loss(g)`` is the larger
       cross-entropy of group ``g``'s two masks when ``g`` sees a patch, ``g``'s clean loss otherwise.
       At most ``score_budget`` such passes: beyond it only the best single positions are paired;
    3. the ``pair_budget`` best pairs get ``steps`` joint PGD steps, warm-started from their single
       patches, and are judged by the real defence;
    4. without a win, the ``refine`` best pairs move one patch to each neighbouring position
       (distance 1), are optimised again from their current patches and judged.

    Parameters
    ----------
    backend, model, maskset, patch, mode, steps, stride, step_size
        As in :class:`PatchAttack`; ``mode`` may not be ``paper`` (defined for one patch only).
    patches : int
        Number of patches; only 2 (the all-pairs family covers pairs of positions).
    pair_budget : int
        Position pairs optimised jointly in stage 3.
    refine : int
        Pairs refined in stage 4.
    score_steps : int, optional
        PGD steps of stage 1 (default ``max(2, steps // 4)``).
    score_budget : int
        Forward passes (no gradient) of the pair score in stage 2.
    group_sample : int, optional
        When given, each PGD step of stages 3-4 uses this many groups drawn at random (the same for
        every candidate of the step) instead of all of them; judging always uses every group.
    """

    def __init__(self, backend, model, maskset: MaskSet, patch, mode: str, steps: int = 40,
                 stride: int = 3, step_size: float = 0.1, patches: int = 2, pair_budget: int = 16,
                 refine: int = 1, score_steps: int | None = None, group_sample: int | None = None,
                 score_budget: int = 20000):
        if check_patches(patches) != 2:
            raise CertMaskError(f"MultiPatchAttack handles 2 patches (the all-pairs family covers pairs "
                                f"of positions), got patches={patches}")
        if mode == "paper":
            raise CertMaskError("mode 'paper' is defined for one patch only; choose a sound mode")
        if mode not in WINS:
            raise CertMaskError(f"mode must be one of {tuple(WINS)}, got {mode!r}")
        for name, value in (("steps", steps), ("stride", stride), ("pair_budget", pair_budget)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise CertMaskError(f"{name} must be an integer >= 1, got {value!r}")
        if group_sample is not None and (isinstance(group_sample, bool) or not isinstance(
                group_sample, (int, np.integer)) or group_sample < 1):
            raise CertMaskError(f"group_sample must be None or an integer >= 1, got {group_sample!r}")
        if maskset.ndim != 2:
            raise CertMaskError(f"the two-patch attack is for images (2-D mask sets), got a "
                                f"{maskset.ndim}-D set")
        self.backend, self.model, self.maskset, self.mode = backend, model, maskset, mode
        self.patches = 2
        self.family = all_pairs_groups(maskset)
        self.threat = PatchThreat(maskset.image_size, patch)
        self.steps, self.stride, self.step_size = steps, stride, step_size
        self.pair_budget, self.refine = pair_budget, refine
        self.score_steps = score_steps if score_steps is not None else max(2, steps // 4)
        self.group_sample, self.score_budget = group_sample, score_budget
        self.base_hidden = backend.hidden_pixels(maskset)       # (n, 1, H, W)
        self.hidden = backend.hidden_pixels(self.family)         # (G, 1, H, W)
        self.members = torch.as_tensor(np.array(self.family.members), device=backend.device)

    # ---------------------------------------------------------------- geometry
    def _boxes(self, positions) -> torch.Tensor:
        """``(P, H, W)`` bool: the pixels of the patches of each position tuple."""
        H, W = self.threat.image_size
        ph, pw = self.threat.patch_size
        out = torch.zeros(len(positions), H, W, dtype=torch.bool, device=self.backend.device)
        for i, tup in enumerate(positions):
            for a, b in tup:
                out[i, a:a + ph, b:b + pw] = True
        return out

    @staticmethod
    def _sees(boxes: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``(P, M)`` bool: member ``g`` leaves some pixel of box ``p`` visible (the patch reaches it)."""
        return (boxes[:, None] & ~hidden[None, :, 0]).flatten(2).any(2)

    # ---------------------------------------------------------------- optimisation
    def _logits(self, patched: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x = self.backend.masked_inputs(patched.unsqueeze(1), hidden.unsqueeze(0))
        P, n = x.shape[:2]
        return self.model(x.reshape(P * n, *x.shape[2:])).view(P, n, -1)

    def _optimise(self, image, positions, hidden, targets, patch, steps, gen, sample=None):
        """PGD from ``patch`` ``(P, m, C, ph, pw)``; targets ``(P, M)`` (-1: ignored)."""
        patch = patch.clone().requires_grad_(True)
        M = hidden.shape[0]
        for _ in range(steps):
            idx = (torch.randperm(M, generator=gen)[:sample].to(hidden.device)
                   if sample is not None and sample < M else None)
            h, t = (hidden, targets) if idx is None else (hidden[idx], targets[:, idx])
            logits = self._logits(_paste_many(image, patch, positions), h)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1).clamp(min=0),
                                   reduction="none").view(t.shape)
            grad, = torch.autograd.grad((loss * (t >= 0)).sum(), patch)
            with torch.no_grad():
                patch -= self.step_size * grad.sign()
                patch.clamp_(0.0, 1.0)
        return patch.detach()

    def _chunked(self, image, positions, hidden, targets, init, steps, gen, sample=None, chunk=8):
        out = [self._optimise(image, positions[i:i + chunk], hidden, targets[i:i + chunk],
                              init[i:i + chunk], steps, gen, sample)
               for i in range(0, len(positions), chunk)]
        return torch.cat(out) if out else init

    def _member_losses(self, patched: torch.Tensor, hidden: torch.Tensor, c: int, chunk: int = 16):
        """``(P, M)`` cross-entropy to ``c`` and ``(P, M, K)`` logits, no gradient."""
        logits = []
        with torch.no_grad():
            for i in range(0, len(patched), chunk):
                logits.append(self._logits(patched[i:i + chunk], hidden))
        logits = torch.cat(logits)
        target = torch.full(logits.shape[:2], c, device=logits.device)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        return ce.view(target.shape), logits

    # ---------------------------------------------------------------- judging
    def _judge(self, image, positions, patches, c: int, y: int) -> dict:
        """Real defence on every candidate; the first win, else the lowest surrogate loss."""
        with torch.no_grad():
            patched = _paste_many(image, patches, positions)
        # the real defence on the backend's group predictions of the attacked images (logits: the
        # core maps non-finite ones to NO_VOTE), and for recovery its pair predictor over groups
        logits = self.backend.masked_predictions(self.model, patched, self.family, return_logits=True)
        kwargs = {}
        if self.mode == "recovery":
            kwargs["pair_predictor"] = self.backend.pair_predictor(self.model, patched, self.family)
        outputs = defend(logits, self.family, self.mode, patch=self.threat.patch_size, patches=2,
                         **kwargs).output
        logits = torch.as_tensor(logits, device=image.device)
        target = torch.full(logits.shape[:2], c, device=image.device)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                             reduction="none").view(target.shape)
        losses = (ce * self._sees(self._boxes(positions), self.hidden)).sum(1)
        wins = _wins(self.mode, outputs, y)
        i = int(np.flatnonzero(wins)[0]) if wins.any() else int(torch.argmin(losses))
        return {"success": bool(wins.any()), "positions": [list(p) for p in positions[i]],
                "output": int(outputs[i]), "loss": float(losses[i]), "patch": patches[i].cpu().numpy(),
                "_losses": losses, "_patches": patches, "_positions": positions,
                "_candidates": len(positions)}

    def attack_image(self, image: np.ndarray, y: int, seed: int = 0) -> dict:
        """Search pairs of positions and both patches' contents for one image; the best attack found.

        Returns ``success``, ``positions`` (two ``[a, b]``), ``output`` (the real defence's),
        ``loss``, ``patch`` (``(2, C, ph, pw)``), ``target_class`` and ``candidates`` (pairs judged).
        """
        with eval_mode(self.model):
            return self._attack_image(image, y, seed)

    def _attack_image(self, image, y: int, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        x = self.backend.prepare_images(self.model, image[None], self.maskset)[0]
        C = x.shape[0]
        ph, pw = self.threat.patch_size
        with torch.no_grad():
            clean_logits = self._logits(x[None], self.base_hidden)[0].mean(0)
        clean_logits[y] = -float("inf")
        c = int(clean_logits.argmax())
        dev = x.device

        # 1. one patch per grid position against the base masks: per-mask losses
        grid = _positions(self.threat, self.stride)
        single = [((a, b),) for a, b in grid]
        sees_base = self._sees(self._boxes(single), self.base_hidden)
        targets = torch.where(sees_base, c, -1)
        init = torch.rand(len(grid), 1, C, ph, pw, generator=gen).to(dev, x.dtype)
        singles = self._chunked(x, single, self.base_hidden, targets, init, self.score_steps, gen, chunk=16)
        ce_base, _ = self._member_losses(_paste_many(x, singles, single), self.base_hidden, c)
        clean_base, _ = self._member_losses(x[None], self.base_hidden, c)
        ce_base = torch.where(sees_base, ce_base, clean_base)            # (S, n)

        # 2. cheap pair score: both single patches pasted, one forward pass per base mask (no
        # gradient); a group's loss is the larger of its two masks', or its clean loss when it sees
        # neither patch. Beyond the forward budget only the best single positions are paired.
        keep = torch.argsort(ce_base.sum(1))
        most = max(2, int((1 + (1 + 8 * self.score_budget / len(self.maskset)) ** 0.5) / 2))
        keep = keep[:most].sort().values
        first, second = (keep[i] for i in torch.triu_indices(len(keep), len(keep), offset=1, device=dev))
        pairs = [(grid[int(f)], grid[int(t)]) for f, t in zip(first, second)]
        starts = torch.cat([singles[first], singles[second]], 1)             # (Q, 2, C, ph, pw)
        clean_group, _ = self._member_losses(x[None], self.hidden, c)        # (1, G)
        score = torch.empty(len(pairs), device=dev)
        for i in range(0, len(pairs), 256):
            part = pairs[i:i + 256]
            ce, _ = self._member_losses(_paste_many(x, starts[i:i + 256], part), self.base_hidden, c)
            boxes = self._boxes(part)
            ce = torch.where(self._sees(boxes, self.base_hidden), ce, clean_base)
            per_group = torch.maximum(ce[:, self.members[:, 0]], ce[:, self.members[:, 1]])
            score[i:i + 256] = torch.where(self._sees(boxes, self.hidden), per_group, clean_group).sum(1)
        order = torch.argsort(score)[:self.pair_budget].tolist()
        init = starts[order]
        pairs = [pairs[i] for i in order]

        # 3. joint PGD over the groups, judged by the real defence
        best = self._optimise_and_judge(x, pairs, init, c, y, gen)
        judged = best["_candidates"]
        tried = set(pairs)
        # 4. refine: move one patch of the best pairs by one position
        if not best["success"] and self.refine > 0:
            P_h, P_w = self.threat.num_positions
            losses, patches = best["_losses"], best["_patches"]
            near, starts = [], []
            for i in torch.argsort(losses)[:self.refine].tolist():
                for t in range(2):
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            moved = list(best["_positions"][i])
                            a, b = moved[t][0] + da, moved[t][1] + db
                            if not (0 <= a < P_h and 0 <= b < P_w):
                                continue
                            moved[t] = (a, b)
                            moved = tuple(moved)
                            if moved not in tried:
                                tried.add(moved)
                                near.append(moved)
                                starts.append(patches[i])
            if near:
                refined = self._optimise_and_judge(x, near, torch.stack(starts), c, y, gen)
                judged += refined["_candidates"]
                if refined["success"] or refined["loss"] < best["loss"]:
                    best = refined
        best = {k: v for k, v in best.items() if not k.startswith("_")}
        best.update(target_class=c, candidates=judged)
        return best

    def _optimise_and_judge(self, x, positions, init, c, y, gen) -> dict:
        targets = torch.where(self._sees(self._boxes(positions), self.hidden), c, -1)
        patches = self._chunked(x, positions, self.hidden, targets, init, self.steps, gen,
                                sample=self.group_sample)
        return self._judge(x, positions, patches, c, y)


def _wins(mode: str, outputs: np.ndarray, y: int) -> np.ndarray:
    wrong = outputs != y
    return wrong & (outputs != ALERT) if WINS[mode].endswith("not ALERT") else wrong


def attack_undefended(backend, model, image: np.ndarray, y: int, patch, steps: int, stride: int,
                      step_size: float = 0.1, seed: int = 0, patches: int = 1,
                      chunk: int = 64) -> tuple[bool, list]:
    """PGD patch attack on the plain model at every position of a stride grid; (success, position).

    With ``patches=2`` every pair of distinct grid positions gets two patches optimised jointly, in
    chunks of ``chunk`` pairs, stopping at the first chunk with a win; the position is then a list of
    two ``[a, b]``.
    """
    threat = PatchThreat(image.shape[1:], patch)
    x = backend.prepare_images(model, image[None])[0]
    gen = torch.Generator().manual_seed(seed)
    grid = _positions(threat, stride)
    single = check_patches(patches) == 1
    # one patch: every position in one batch; several: every tuple of distinct positions, in chunks
    tuples = [(q,) for q in grid] if single else list(itertools.combinations(grid, patches))
    step = len(tuples) if single else chunk
    with eval_mode(model):
        for start in range(0, len(tuples), step):
            tups = tuples[start:start + step]
            p = torch.rand(len(tups), patches, x.shape[0], *threat.patch_size, generator=gen)
            p = p.to(x.device, x.dtype)
            p.requires_grad_(True)
            target = torch.full((len(tups),), y, device=x.device)
            for _ in range(steps):
                loss = F.cross_entropy(model(_paste_many(x, p, tups)), target)
                grad, = torch.autograd.grad(loss, p)
                with torch.no_grad():
                    p += step_size * grad.sign()  # untargeted: push the true class down
                    p.clamp_(0.0, 1.0)
            with torch.no_grad():
                wrong = model(_paste_many(x, p, tups)).argmax(1) != y
            if wrong.any():
                return True, _position_list(tups[int(wrong.nonzero()[0])], single)
    return False, _position_list(tuples[0], single) if tuples else []


def _position_list(positions, single: bool) -> list:
    return list(positions[0]) if single else [list(q) for q in positions]


@dataclass(frozen=True)
class AttackOutcome:
    """What :func:`run_attack_with_examples` found: the results and the images to show.

    Attributes
    ----------
    results : dict
        :func:`run_attack`'s results (``attack.json``).
    examples : AttackExamples or None
        The first attacked images with their patches pasted in; None for clips and signals (no
        picture) or when no image was attacked.
    """

    results: dict
    examples: AttackExamples | None


def run_attack(*args, **kwargs) -> dict:
    """The results of :func:`run_attack_with_examples` (same arguments), without the example images.

    The attack writes no file: the run layer does (:func:`certmask_core.run.outputs.write_attack_outputs`,
    given the data's class names).
    """
    return run_attack_with_examples(*args, **kwargs).results


def run_attack_with_examples(backend, model, images, labels, patch, k: int, strategy: str, mode: str,
                             steps: int = 40, stride: int = 3, masks_per_axis=(4, 4), mask_size=None,
                             show_progress=None, attack_all: bool = False, patches: int = 1,
                             true_patch=None, pair_budget: int = 16, refine: int = 1,
                             group_sample: int | None = None) -> AttackOutcome:
    """Certify, then attack, every image; report breaks of certified images and robust accuracy.

    Certified images are always attacked (a break is a bug); with ``attack_all`` the others too, which
    gives the empirical robust accuracy of the defence. Recovery is certified with its default
    certificate (T11, hitting set), so its certified images include ones with wrong masks. The
    unsound ``paper`` mode certifies nothing:
    its rows say ``claim_holds`` and a break of such an image counts as ``claim_broken_UNSOUND``.

    ``patches=2``: two patches of size ``patch`` against the defence over all pairs of masks
    (:class:`MultiPatchAttack`; ``pair_budget``, ``refine`` and ``group_sample`` are its knobs),
    certified with ``patches=2``; rows give ``positions`` (two ``[a, b]``) instead of ``position``;
    the undefended model is attacked with two patches too. ``paper`` is refused.

    ``true_patch=(qh, qw)``: the set is planned and certified for ``patch`` but the attacker's patch is
    ``true_patch`` (the undefended model is attacked with it too). Rows say ``certified_planned`` and
    ``certified_true_size`` (from :func:`certmask_core.certify_sizes`; never True for a size the set
    does not cover) and ``certified`` is the latter, so ``certified_accuracy`` and
    ``certified_broken`` are against the true size; ``attack_success_on_planned_certified`` is the
    share of the images certified for the planned size that the attack breaks (``None`` when there
    are none). ``paper`` is refused.

    Nothing is written: the outcome's ``results`` are ``attack.json`` and its ``examples`` the first
    attacked images for ``attack.png`` (:func:`certmask_core.run.outputs.write_attack_outputs`).
    """
    patches = check_patches(patches)
    if patches > 2:
        raise CertMaskError(f"patches={patches}: only 1 or 2 patches are attacked (the defence over all "
                            "pairs of masks covers pairs of positions)")
    if mode == "paper" and (patches > 1 or true_patch is not None):
        raise CertMaskError("mode 'paper' certifies nothing and is defined for one patch of the planned "
                            "size; choose a sound mode for patches=2 or true_patch")
    if patches > 1 and true_patch is not None:
        raise CertMaskError("give patches=2 or true_patch, not both")
    threat = PatchThreat(images.shape[2:], patch)
    ms = make_maskset(threat, k, strategy, mask_size=mask_size,
                      masks_per_axis=None if mask_size else masks_per_axis)
    family = all_pairs_groups(ms) if patches > 1 else ms
    attack_patch = threat.patch_size
    if true_patch is not None:
        attack_patch = PatchThreat(images.shape[2:], true_patch).patch_size
    preds = backend.masked_predictions(model, images, family)
    pair_predictor = backend.pair_predictor(model, images, family) if mode == "recovery" else None
    kwargs = {"pair_predictor": pair_predictor} if mode == "recovery" else {}
    if patches > 1:
        report = certify(preds, labels, family, mode, patch=threat.patch_size, patches=patches, **kwargs)
    else:
        report = certify(preds, labels, ms, mode, k=k, **kwargs)
    # an unsound mode certifies nothing; what its breaks refute is the claim its check makes
    claim = "certified" if report.sound else "claim_holds"
    holds = report.certified if report.sound else getattr(report, "claim_holds", report.certified)
    broken_key = "certified_broken" if report.sound else "claim_broken_UNSOUND"
    sizes = None
    if true_patch is not None:
        sizes = certify_sizes(preds, labels, ms, [threat.patch_size, attack_patch], mode, **kwargs)
        true_index = sizes.sizes.index(attack_patch)
        covered = coverage_extremes(ms, attack_patch)[0] > 0
        planned = report.certified.copy()
        # certified against the attack actually mounted: for the true size, and only where covered
        holds = sizes.certified[:, true_index] & covered
    if patches > 1:
        attack = MultiPatchAttack(backend, model, ms, patch, mode, steps, stride, patches=patches,
                                  pair_budget=pair_budget, refine=refine, group_sample=group_sample)
    else:
        attack = PatchAttack(backend, model, ms, attack_patch, mode, steps, stride)
    where = "positions" if patches > 1 else "position"
    rows = []
    with progress_bar(len(images), f"attack {mode}", show_progress) as bar:
        for i, (x, y) in enumerate(zip(images, labels)):
            y = int(y)
            row = {"label": y, "clean_output": int(report.output[i]), claim: bool(holds[i])}
            if sizes is not None:
                row.update(certified_planned=bool(planned[i]), certified_true_size=bool(holds[i]))
            if row["clean_output"] != y and not attack_all:
                row.update(attacked=False, attacked_output=row["clean_output"], success=True)
            else:
                best = attack.attack_image(x, y, seed=i)
                row.update(attacked=True, attacked_output=best["output"], success=best["success"],
                           patch=best["patch"])
                row[where] = best[where]
            row["undefended_broken"], _ = attack_undefended(backend, model, x, y, attack_patch, steps, stride,
                                                            seed=i, patches=patches)
            rows.append(row)
            bar.update()
    n = len(rows)
    broken = [i for i, r in enumerate(rows) if r[claim] and r["success"]]
    undefended_clean = backend.predict(model, images) == labels
    result = {
        "mode": mode, "guarantee": report.guarantee, "sound": report.sound, "attacker_wins_with": WINS[mode],
        "strategy": strategy, "k": k, "num_masks": len(ms), "patch": list(threat.patch_size), "steps": steps,
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
        "patches": patches,
        "per_image": [{k2: v for k2, v in r.items() if k2 != "patch"} for r in rows],
    }
    if patches > 1:
        result.update(family="all_pairs_groups", num_groups=len(family), pair_budget=pair_budget,
                      refine=refine, group_sample=group_sample)
    if sizes is not None:
        on_planned = [r for r in rows if r["certified_planned"]]
        planned_broken = [i for i, r in enumerate(rows) if r["certified_planned"] and r["success"]]
        result.update({
            "true_patch": list(attack_patch), "true_size_covered": bool(covered),
            "true_size_min_coverage": int(coverage_extremes(ms, attack_patch)[0]),
            "certified_planned_accuracy": float(planned.mean()),
            "certified_true_size_accuracy": float(holds.mean()),
            "certified_planned": int(planned.sum()), "certified_true_size": int(holds.sum()),
            "planned_certified_broken": len(planned_broken),
            "planned_certified_broken_images": planned_broken,
            # share of the images certified for the planned size that the larger patch breaks
            "attack_success_on_planned_certified": (float(np.mean([r["success"] for r in on_planned]))
                                                    if on_planned else None),
            "sizes": sizes.summary()["sizes"],
        })
    return AttackOutcome(result, _examples(rows, images, ms, attack_patch))


EXAMPLES = 8
"""Attacked images shown in ``attack.png``."""


def _examples(rows, images, ms: MaskSet, patch) -> AttackExamples | None:
    """The first :data:`EXAMPLES` attacked images with their best patches pasted in (2-D images only)."""
    shown = [i for i, r in enumerate(rows) if r.get("attacked")][:EXAMPLES]
    if not shown or ms.ndim != 2:  # the picture is of images; clips and signals get the JSON only
        return None
    attacked = images[shown].copy()
    boxes = []
    for j, i in enumerate(shown):
        # several patches are pasted in order (a later one over an earlier one)
        positions, contents = ((rows[i]["positions"], rows[i]["patch"]) if "positions" in rows[i]
                               else ([rows[i]["position"]], [rows[i]["patch"]]))
        for (a, b), content in zip(positions, contents):
            attacked[j, :, a:a + patch[0], b:b + patch[1]] = content
        boxes.append([(tuple(position), tuple(patch)) for position in positions])
    return AttackExamples(attacked, [rows[i]["attacked_output"] for i in shown], boxes, ms)
