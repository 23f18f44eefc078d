#!/usr/bin/env bash
# Figures of docs/results.md "Video: certified classification of moving Fashion-MNIST clips": the bundled
# 3-D CNN (bundled-video) on the moving Fashion-MNIST test clips (16 x 28 x 28), all by `certmask`.
#
#   bash experiments/video.sh [OUT] [certify|attack|all]      then   python experiments/video_to_md.py OUT
#
# certify (every certification figure; one-round modes on the first N_CLIPS clips, recovery on the first
# N_RECOVERY, so each setting is two runs: a run certifies every mode on the same clips):
#   vs-k-PATCH:   the two threats the model was trained for, 4x3x3 (masks 2 per clip in time, 3 per
#                 spatial axis: 10x11x11) and 16x3x3 (tubes 16x11x11), replicated and offset, k = 1, 2, 3
#   halves-tT:    a 3x3 patch lasting T frames, k = 1, masks 2 x 3 x 3 per axis (each lasts 8 + T - 1
#                 frames); patchcleanser, the single cover whose last mask is flush with the clip's end
#   tubes:        the 9 tubes (masks 1 x 3 x 3 per axis, planned for 16x3x3) certified for every duration
#                 from the same predictions (--sizes): a tube holds every frame of any patch under it
# attack (the adaptive attack in 3-D, k = 1, one set and one mode per run; small CPU budget):
#   4x3x3 on N_ATTACK_SHORT clips, 16x3x3 and 16x8x8 (tubes) on N_ATTACK clips
#
# A finished run is skipped and a killed one resumes (certify), so rerunning the script continues it.
set -euo pipefail
out=${1:-results/video}
part=${2:-all}
cm=${CERTMASK:-certmask}
n_clips=${N_CLIPS:-500}
n_recovery=${N_RECOVERY:-100}
n_attack_short=${N_ATTACK_SHORT:-6}
n_attack=${N_ATTACK:-20}
common=(--data fashion-mnist-clips --model bundled-video --quiet)

certify() {  # certify NAME ARGS...: one-round modes into $out/NAME/one-round, recovery into .../recovery
  local name=$1; shift
  local sub limit modes
  for sub in one-round recovery; do
    if [ "$sub" = one-round ]; then limit=$n_clips; modes=(detection plurality)
    else limit=$n_recovery; modes=(recovery); fi
    local dir="$out/$name/$sub"
    [ -f "$dir/results.json" ] && continue
    mkdir -p "$out/$name"
    local resume=(); [ -f "$dir/per_image.jsonl" ] && resume=(--resume)
    local start=$SECONDS
    $cm certify "${common[@]}" "$@" --limit "$limit" --mode "${modes[@]}" --no-plots "${resume[@]}" \
        --out "$dir" > "$dir.log"
    echo "$name/$sub: $((SECONDS - start)) s"
  done
}

attack() {  # attack NAME ARGS...: into $out/attack/NAME
  local name=$1; shift
  local dir="$out/attack/$name"
  [ -f "$dir/attack.json" ] && return
  mkdir -p "$out/attack"
  local start=$SECONDS
  $cm attack "${common[@]}" --k 1 --strategy patchcleanser --steps 10 --stride 12 "$@" --out "$dir" \
      > "$dir.log"
  echo "attack/$name: $((SECONDS - start)) s"
}

mkdir -p "$out"
if [ "$part" = certify ] || [ "$part" = all ]; then
  ks=(--k 1 2 3 --strategy replicated offset)
  certify vs-k-4x3x3 --patch 4 3 3 --masks-per-axis 2 3 3 "${ks[@]}"
  certify vs-k-16x3x3 --patch 16 3 3 --masks-per-axis 1 3 3 "${ks[@]}"
  for t in 1 2 4 8 12 16; do
    certify "halves-t$t" --patch "$t" 3 3 --masks-per-axis 2 3 3 --strategy patchcleanser
  done
  certify tubes --patch 16 3 3 --masks-per-axis 1 3 3 --strategy patchcleanser \
      --sizes 1x3x3 2x3x3 4x3x3 8x3x3 12x3x3 16x3x3
fi
if [ "$part" = attack ] || [ "$part" = all ]; then
  for mode in detection plurality recovery; do
    attack "4x3x3-$mode" --patch 4 3 3 --masks-per-axis 2 3 3 --mode "$mode" --limit "$n_attack_short"
    attack "16x3x3-$mode" --patch 16 3 3 --masks-per-axis 1 3 3 --mode "$mode" --limit "$n_attack"
    # an 8x8 sticker in every frame (tubes of 16x14x14; a set the model was not trained for): large
    # enough to fool the undefended model
    attack "16x8x8-$mode" --patch 16 8 8 --masks-per-axis 1 3 3 --mode "$mode" --limit "$n_attack"
  done
fi
