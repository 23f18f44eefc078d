#!/usr/bin/env bash
# Retrain the bundled Fashion-MNIST CNN with the recipe chosen by the ablation
# (experiments/train_ablation.sh): greedy worst-case masks and pairs, for the replicated sets of
# 3x3 and 5x5 patches at k = 1, 2, 3 (so several k and both patch sizes of the docs are seen),
# then commit backends/pytorch/weights/fmnist_cnn.pt and its record fmnist_cnn.json.
set -euo pipefail
OUT=${OUT:-results/bundled}
CERTMASK=${CERTMASK:-certmask}
EPOCHS=${EPOCHS:-12}
$CERTMASK train --model fashion-cnn --augment greedy --greedy-samples 4 --patch 3 3 --patch 5 5 --k 1 2 3 \
  --p-none 0.2 --epochs "$EPOCHS" --hflip --seed 0 --quiet \
  --out "$OUT" --resume
WEIGHTS=$(dirname "$0")/../backends/pytorch/weights
cp "$OUT/model.pt" "$WEIGHTS/fmnist_cnn.pt"
cp "$OUT/train.json" "$WEIGHTS/fmnist_cnn.json"
