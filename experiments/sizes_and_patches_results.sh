#!/usr/bin/env bash
# Figures of docs/results.md "Unknown patch size and several patches", bundled model,
# Fashion-MNIST test set. Every run writes results.json (+ per_image.jsonl) under $out; a finished run
# is skipped, a killed one resumes.
#   sizes:     planned 5x5, replicated k = 1, 2, 3; every square 1..9 and four aspect ratios; one-round
#              modes on the full test set, recovery on the first N_REC images (default 2000)
#   multisize: one set for 5x5 against a multi-size set (3x3 and 5x5 grids, 32 masks) at 32 passes,
#              and replicated k = 2 (36 passes); sizes 1..7
#   twopatch:  two 3x3 patches over the 120 pairs of the 16-mask set: one-round modes on the full test
#              set, recovery on the first N_TWO images (default 200)
set -euo pipefail
out=${1:-results/sizes_and_patches}
cm=${CERTMASK:-certmask}
model=${MODEL:-bundled}
n_rec=${N_REC:-2000}
n_two=${N_TWO:-200}
sizes=(1-9 2x6 6x2 3x8 8x3)
common=(--data fashion-mnist --model "$model" --quiet)
run() {  # run NAME ARGS...: certify into $out/NAME unless it finished
  local name=$1; shift
  [ -f "$out/$name/results.json" ] && return
  local resume=(); [ -f "$out/$name/per_image.jsonl" ] && resume=(--resume)
  $cm certify "${common[@]}" "$@" "${resume[@]}" --out "$out/$name"
}
mkdir -p "$out"
run sizes-one-round --patch 5 5 --k 1 2 3 --masks-per-axis 4 \
  --mode detection plurality covering_consensus --sizes "${sizes[@]}"
run sizes-recovery --patch 5 5 --k 1 2 --masks-per-axis 4 --mode recovery --sizes "${sizes[@]}" \
  --limit "$n_rec"
$cm plan --image 28 28 --patch 3 3 --patch 5 5 --masks-per-axis 4 --json > "$out/multisize-3and5.json"
$cm plan --image 28 28 --patch 5 5 --masks-per-axis 4 8 --json > "$out/single-5-32masks.json"
run multisize-one-round --patch 5 5 --masks "$out/multisize-3and5.json" --masks "$out/single-5-32masks.json" \
  --strategy replicated --k 2 --masks-per-axis 4 --mode detection plurality covering_consensus --sizes 1-7
run multisize-recovery --patch 5 5 --masks "$out/multisize-3and5.json" --masks "$out/single-5-32masks.json" \
  --strategy replicated --k 2 --masks-per-axis 4 --mode recovery --sizes 1-7 --limit "$n_rec"
run twopatch-one-round --patch 3 3 --patches 2 --masks-per-axis 4 \
  --mode detection plurality covering_consensus --sizes 1-3
run twopatch-recovery --patch 3 3 --patches 2 --masks-per-axis 4 --mode recovery --limit "$n_two"
