#!/usr/bin/env bash
# Results recorded in docs/results.md, "Headline: what k buys, certified" (about 90 minutes on 2 busy
# CPU cores).
# Usage: bash experiments/full_results.sh [OUT_DIR]   then   python experiments/results_to_md.py OUT_DIR
# One-round modes share one forward pass per mask, so they run together. Recovery's second round
# costs 10-30x more passes per image, so it runs on the first N_RECOVERY test images.
set -euo pipefail
out=${1:-results/full}
cm=${CERTMASK:-certmask}
n_subset=${N_SUBSET:-500}
n_recovery=${N_RECOVERY:-100}
model=${MODEL:-bundled-cutout}  # the documented figures are the first-release model's
common=(--data fashion-mnist --model "$model" --masks-per-axis 4 --quiet --no-plots --k 1 2 3 4 5 6 --overwrite)
oneround=(--mode detection plurality covering_consensus paper)
$cm certify "${common[@]}" "${oneround[@]}" --patch 3 3 --strategy replicated --out "$out/oneround_p3"
$cm certify "${common[@]}" "${oneround[@]}" --patch 3 3 --strategy offset --limit "$n_subset" \
    --out "$out/oneround_p3_offset"
for p in 4 5; do
  $cm certify "${common[@]}" "${oneround[@]}" --patch $p $p --strategy replicated --limit "$n_subset" \
      --out "$out/oneround_p$p"
done
for p in 3 4 5; do
  $cm certify "${common[@]}" --patch $p $p --strategy replicated --mode recovery --limit "$n_recovery" \
      --out "$out/recovery_p$p"
done
$cm certify "${common[@]}" --patch 3 3 --strategy replicated --mode recovery --limit "$n_recovery" \
    --recovery-certificate all_pairs --out "$out/recovery_allpairs_p3"
$cm certify "${common[@]}" --patch 3 3 --strategy offset --mode recovery --limit "$n_recovery" \
    --out "$out/recovery_p3_offset"
