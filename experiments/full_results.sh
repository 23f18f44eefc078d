#!/usr/bin/env bash
# Full-test-set results recorded in docs/results.md (about 70 minutes on 2 CPU cores).
# Usage: bash experiments/full_results.sh [OUT_DIR]   then   python experiments/results_to_md.py OUT_DIR
set -euo pipefail
out=${1:-results/full}
cm=${CERTMASK:-certmask}
common=(--data fashion-mnist --model bundled --masks-per-axis 4 --quiet --no-plots)
$cm certify "${common[@]}" --patch 3 3 --k 1 2 3 4 5 6 --strategy replicated offset \
    --mode detection covering_consensus paper --out "$out/oneround_p3"
for p in 4 5; do
  $cm certify "${common[@]}" --patch $p $p --k 1 2 3 4 5 6 --strategy replicated \
      --mode detection covering_consensus paper --out "$out/oneround_p$p"
done
for p in 3 4 5; do
  $cm certify "${common[@]}" --patch $p $p --k 1 --strategy patchcleanser \
      --mode detection recovery --out "$out/recovery_p$p"
done
