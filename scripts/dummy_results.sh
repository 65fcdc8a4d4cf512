#!/usr/bin/env bash
# Train dummy1-6 with the shipped configs, evaluate and explain each on freshly generated cases, and compose
# docs/results.md (leaderboards + pictures). Long: run it on a GPU machine, or lower N_TEST / MAX_CASES.
#
#   scripts/dummy_results.sh                                   # all levels, GPU-sized configs for 4-6
#   LEVELS="4 5 6" CONFIG_PATTERN="configs/dummy{L}_cpu.yaml" scripts/dummy_results.sh   # CPU-sized 4-6
#
# {L} in CONFIG_PATTERN / RUN_PATTERN is the level. SKIP_TRAIN=1 reuses the run folder RUN_PATTERN (default
# $WORK/runs/dummy{L}); COMPOSE=0 skips writing docs/results.md (e.g. to compose several invocations by hand with
# python -m survival3d.explain.results). Fresh cases have the size of the level's config and a seed (9000 + L) that
# training never used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LEVELS=${LEVELS:-"1 2 3 4 5 6"}
CONFIG_PATTERN=${CONFIG_PATTERN:-"configs/dummy{L}.yaml"}
WORK=${WORK:-results_work}
RUN_PATTERN=${RUN_PATTERN:-"$WORK/runs/dummy{L}"}
N_TEST=${N_TEST:-100}
MAX_CASES=${MAX_CASES:-40}
MAX_VIEWS=${MAX_VIEWS:-4}
METHODS=${METHODS:-"head,head_grid,head_loc,gradcam,gradcam_embed,gradcampp,gradcampp_embed,polycam,occlusion,feature_pca_embed,feature_pca_tokens"}
entries=()
for L in $LEVELS; do
  name="dummy${L}"
  cfg=${CONFIG_PATTERN//\{L\}/$L}
  run=${RUN_PATTERN//\{L\}/$L}
  if [ "${SKIP_TRAIN:-0}" != 1 ]; then
    $PY run.py train --config "$cfg" out_dir="$(dirname "$run")" name="$(basename "$run")"
  fi
  size=$($PY -c "import sys; from survival3d.config import ExperimentConfig, load_config; \
print(load_config(sys.argv[1], schema=ExperimentConfig).data.dummy.size)" "$cfg")
  $PY run.py dummy --level "$L" --n "$N_TEST" --size "$size" --seed $((9000 + L)) --out "$WORK/data/$name" \
    --overwrite --no-progress
  $PY run.py evaluate --checkpoint "$run" --data "$WORK/data/$name/manifest.csv" --out "$WORK/eval/$name"
  $PY run.py explain --checkpoint "$run" --data "$WORK/data/$name/manifest.csv" --methods "$METHODS" \
    --max-cases "$MAX_CASES" --max-views "$MAX_VIEWS" --out "$WORK/explain/$name"
  entries+=(--entry "$name=$WORK/eval/$name,$WORK/explain/$name")
done
if [ "${COMPOSE:-1}" != 0 ]; then
  $PY -m survival3d.explain.results "${entries[@]}" --title "Results on dummy1-6" --out docs/results.md
  echo "wrote docs/results.md"
fi
