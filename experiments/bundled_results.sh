#!/usr/bin/env bash
# The retrained bundled model's figures in docs/results.md ("Training for certification").
# 16 masks (k = 1), 3x3 and 5x5: detection, plurality and recovery on the full test set; then what k
# buys with this model (k = 1..6, one-round modes) on the first N_K test images (default 2000).
set -euo pipefail
out=${1:-results/bundled-certify}
cm=${CERTMASK:-certmask}
model=${MODEL:-bundled}
n_k=${N_K:-2000}
common=(--data fashion-mnist --model "$model" --masks-per-axis 4 --quiet --no-plots --overwrite)
for p in 3 5; do
  [ -f "$out/p$p-k1/results.json" ] || $cm certify "${common[@]}" --patch $p $p --k 1 \
    --mode detection plurality recovery --out "$out/p$p-k1"
done
[ -f "$out/p3-k1to6/results.json" ] || $cm certify "${common[@]}" --patch 3 3 --k 1 2 3 4 5 6 \
  --mode detection plurality covering_consensus --limit "$n_k" --out "$out/p3-k1to6"
