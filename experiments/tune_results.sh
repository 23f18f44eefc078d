#!/usr/bin/env bash
# Figures of docs/results.md "Planning for a budget and choosing k from data", bundled
# model, Fashion-MNIST test set: `certmask tune` for a 3x3 and a 5x5 patch, budget 150 passes per
# image, k = 1..6, every sound mode; tuned on test images 0..499, the recommendations certified on the
# 9,500 test images that follow (never seen by the tuning). The two patches run side by side
# (OMP_NUM_THREADS=1 each on a 2-core box: about 40 minutes).
set -euo pipefail
out=${1:-results}
cm=${CERTMASK:-certmask}
for p in 3 5; do
  [ -f "$out/tune_p$p/tune.json" ] && continue
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $cm tune --data fashion-mnist --model "${MODEL:-bundled}" --patch $p $p \
    --budget 150 --k 1 2 3 4 5 6 --tune-images 500 --check-images 9500 --out "$out/tune_p$p" --quiet &
done
wait
