#!/usr/bin/env bash
# Adaptive-attack results recorded in docs/results.md (about 15 minutes on 2 CPU cores).
# Usage: bash experiments/attack_results.sh [OUT_DIR]
set -euo pipefail
out=${1:-results/attack}
cm=${CERTMASK:-certmask}
common=(--data fashion-mnist --model bundled --patch 5 5 --k 2 --strategy replicated --masks-per-axis 4
        --limit 25 --steps 15 --stride 6 --attack-all --quiet)
for mode in detection covering_consensus recovery paper; do
  $cm attack "${common[@]}" --mode $mode --out "$out/$mode"
done
