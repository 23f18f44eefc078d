#!/usr/bin/env bash
# Adaptive-attack results recorded in docs/results.md.
# Usage: bash experiments/attack_results.sh [OUT_DIR]
# k = 2 (about 15 minutes on 2 CPU cores) for the first-release modes; k = 3 for plurality and
# recovery (T12 and T11), whose certificates then accept images with some wrong masks.
set -euo pipefail
out=${1:-results/attack}
cm=${CERTMASK:-certmask}
model=${MODEL:-bundled-cutout}  # the documented figures are the first-release model's
common=(--data fashion-mnist --model "$model" --patch 5 5 --strategy replicated --masks-per-axis 4
        --steps 15 --stride 6 --attack-all --quiet)
if [ -z "${ONLY_K3:-}" ]; then
  for mode in detection covering_consensus recovery paper; do
    $cm attack "${common[@]}" --k 2 --limit 25 --mode $mode --out "$out/$mode"
  done
fi
for mode in plurality recovery; do
  $cm attack "${common[@]}" --k 3 --limit "${N_K3:-20}" --mode $mode --out "$out/k3_$mode"
done
