#!/usr/bin/env bash
# Adaptive attacks beyond one patch of the planned size, bundled model, Fashion-MNIST test set.
# Usage: bash experiments/attack_sizes_and_patches.sh [OUT_DIR]
#   then   python experiments/attack_sizes_and_patches_to_md.py OUT_DIR
# (a) two 3x3 patches against the defence over all pairs of a replicated k=1 set (4 masks per axis:
#     16 masks, 120 groups), detection on N images and recovery on N_RECOVERY (its second round asks
#     n - 1 = 119 group pairs per disagreeing group of every candidate, the dominant cost);
# (b) a set planned for 3x3 attacked with larger patches (5x5, 7x7, 11x11), detection on N images.
# `certmask attack --patches 2` and `--true-patch` run these attacks with the default search budget;
# this script calls experiments/attack_sizes_and_patches.py to pass the smaller budgets (pair budget, group sample) used
# for the figures of docs/results.md.
set -euo pipefail
# One torch thread by default: on 2 shared cores torch's two-thread pool spun so badly that a batch took
# 15x longer (1.2 s vs 21 s for the same undefended two-patch attack); set OMP_NUM_THREADS=2 on an idle machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${1:-results/attack_sizes_and_patches}
py=${PYTHON:-python}
n=${N:-10}
n_recovery=${N_RECOVERY:-10}
here=$(dirname "$0")
start=$SECONDS
steps=${STEPS:-12}
two=(two --patch 3 --masks-per-axis 4 --steps "$steps" --stride 6 --attack-all --group-sample 48)
$py "$here/attack_sizes_and_patches.py" "${two[@]}" --mode detection --limit "$n" --pair-budget 12 --refine 2 \
    --out "$out/two_detection"
$py "$here/attack_sizes_and_patches.py" "${two[@]}" --mode recovery --limit "$n_recovery" --pair-budget 8 --refine 1 \
    --out "$out/two_recovery"
for q in 5 7 11; do
  $py "$here/attack_sizes_and_patches.py" size --patch 3 --true-patch $q --masks-per-axis 4 --steps "$steps" \
      --stride 4 --attack-all --mode detection --limit "$n" --out "$out/size_p3_true$q"
done
echo "total $((SECONDS - start))s"
