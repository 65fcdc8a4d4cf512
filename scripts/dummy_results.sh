#!/usr/bin/env bash
# Train dummy1-6 with the shipped configs, evaluate and explain each on freshly generated cases, and compose
# docs/results.md (leaderboards + pictures). Long: run it on a GPU machine, or lower N_TEST / MAX_CASES.
#
#   scripts/dummy_results.sh                 # all levels
#   LEVELS="1 4" scripts/dummy_results.sh    # a subset
#
# CONFIG_PATTERN names each level's config ({L} = level); set SKIP_TRAIN=1 to reuse runs/<name>.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LEVELS=${LEVELS:-"1 2 3 4 5 6"}
CONFIG_PATTERN=${CONFIG_PATTERN:-"configs/dummy{L}.yaml"}
N_TEST=${N_TEST:-100}
SIZE=${SIZE:-32}
MAX_CASES=${MAX_CASES:-40}
METHODS=${METHODS:-"head,head_loc,gradcam,gradcam_embed,gradcampp,gradcampp_embed,polycam,occlusion,feature_pca_embed,feature_pca_tokens"}
WORK=${WORK:-results_work}
entries=()
for L in $LEVELS; do
  name="dummy${L}"
  cfg=${CONFIG_PATTERN//\{L\}/$L}
  if [ "${SKIP_TRAIN:-0}" != 1 ]; then
    $PY run.py train --config "$cfg" out_dir="$WORK/runs" name="$name"
  fi
  # fresh cases: a seed the training data never used
  $PY run.py dummy --level "$L" --n "$N_TEST" --size "$SIZE" --seed $((9000 + L)) --out "$WORK/data/$name" --overwrite --no-progress
  $PY run.py evaluate --checkpoint "$WORK/runs/$name" --data "$WORK/data/$name/manifest.csv" --out "$WORK/eval/$name"
  $PY run.py explain --checkpoint "$WORK/runs/$name" --data "$WORK/data/$name/manifest.csv" --methods "$METHODS" \
    --max-cases "$MAX_CASES" --out "$WORK/explain/$name"
  entries+=(--entry "$name=$WORK/eval/$name,$WORK/explain/$name")
done
$PY -m survival3d.explain.results "${entries[@]}" --title "Results on dummy1-6" --out docs/results.md
echo "wrote docs/results.md"
