#!/usr/bin/env bash
# Training-for-certification ablation (docs/results.md, "Training for certification").
# Trains the bundled architecture from scratch under each recipe with the same schedule, then certifies
# each model with the 16-mask replicated set (k = 1) for 3x3 and 5x5 patches: detection on the full
# Fashion-MNIST test set, recovery on its first N_RECOVERY images. Tables: python experiments/ablation_to_md.py results/ablation
# Environment: OUT (results/ablation), EPOCHS (7), LIMIT (detection on the first N test images only),
# CERTMASK (the command, default "certmask").
set -euo pipefail
OUT=${OUT:-results/ablation}
EPOCHS=${EPOCHS:-7}
CERTMASK=${CERTMASK:-certmask}
LIMIT_ARGS=${LIMIT:+--limit $LIMIT}
COMMON="--model fashion-cnn --epochs $EPOCHS --hflip --seed 0 --quiet"

train() {  # name, then train options
  local name=$1; shift
  if [ ! -f "$OUT/$name/model.pt" ]; then
    $CERTMASK train $COMMON --out "$OUT/$name" --resume "$@"
  fi
}

train none --augment none
train cutout --augment cutout --cutout-size 12
for p in 3 5; do
  train "single-p$p" --augment maskset --patch $p $p --p-none 0.5 --p-single 0.5 --p-pair 0
  train "pairs-p$p" --augment maskset --patch $p $p --p-none 0.2 --p-single 0.4 --p-pair 0.4
  train "greedy-p$p" --augment greedy --patch $p $p --p-none 0.2 --greedy-samples 4
done

# Detection on the full test set; recovery's second round asks ~100 pair passes per image at 16 masks,
# so it runs on the first N_RECOVERY test images (default 2000).
n_recovery=${N_RECOVERY:-2000}
for p in 3 5; do
  for name in none cutout "single-p$p" "pairs-p$p" "greedy-p$p"; do
    certify=($CERTMASK certify --model "$OUT/$name/model.pt" --patch $p $p --k 1 --masks-per-axis 4
             --no-plots --quiet --overwrite)
    [ -f "$OUT/$name/detection-p$p/results.json" ] || \
      "${certify[@]}" --mode detection $LIMIT_ARGS --out "$OUT/$name/detection-p$p"
    [ -f "$OUT/$name/recovery-p$p/results.json" ] || \
      "${certify[@]}" --mode recovery --limit "$n_recovery" --out "$OUT/$name/recovery-p$p"
  done
done
