#!/usr/bin/env bash
# Full-test-set results recorded in docs/results.md (about an hour on 2 CPU cores).
# Usage: bash experiments/full_results.sh [OUT_DIR]   then   python experiments/results_to_md.py OUT_DIR
set -euo pipefail
out=${1:-results/full}
cm=${CERTMASK:-certmask}
common=(--data fashion-mnist --model bundled --masks-per-axis 4 --quiet --no-plots)
for p in 3 4 5; do
  $cm certify "${common[@]}" --patch $p $p --k 1 2 3 4 5 6 --strategy replicated offset \
      --mode detection covering_consensus paper --out "$out/oneround_p$p"
  $cm certify "${common[@]}" --patch $p $p --k 1 --strategy patchcleanser \
      --mode detection recovery --out "$out/recovery_p$p"
done
