#!/usr/bin/env bash
# Does the search beat chance? (README, "Searched vs random architectures: the experiment")
# Runs SEARCH_SEEDS demo searches, draws NUM_RANDOM architectures uniformly from the same
# space, retrains all of them under one budget with every seed of RETRAIN_SEEDS, and
# compares them (with the first search's supernet for inherited accuracy and Kendall's tau).
# Every stage resumes when the script is re-run; extra arguments go to
# train.compare_architectures (any train.retrain flag, e.g. --train_steps=1000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
OUT="${EXPERIMENT_DIR:-runs/search_vs_random}"
SEARCH_SEEDS="${SEARCH_SEEDS:-0 1 2}"
NUM_RANDOM="${NUM_RANDOM:-8}"
RETRAIN_SEEDS="${RETRAIN_SEEDS:-0,1}"

searched=()
for seed in $SEARCH_SEEDS; do
  echo "== search, seed $seed -> $OUT/search_s$seed"
  python -m train.search --dataset=demo --seed="$seed" --model_dir="$OUT/search_s$seed"
  searched+=("$OUT/search_s$seed/architecture.json")
done
first="$OUT/search_s${SEARCH_SEEDS%% *}"

# The random architectures come from the space the searches used.
read -r L B LEVELS < <(python - "$first/search_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print(c["num_layers"], c["num_blocks"], c["num_levels"])
PY
)
echo "== $NUM_RANDOM random architectures (L=$L, B=$B, $LEVELS levels) -> $OUT/random"
python -m train.sample_architectures --num="$NUM_RANDOM" --seed=0 --output_dir="$OUT/random" \
  --num_layers="$L" --num_blocks="$B" --num_levels="$LEVELS"

echo "== retraining and comparing -> $OUT/compare"
archs="$(IFS=,; echo "${searched[*]}"),$OUT/random/*.json"
python -m train.compare_architectures --dataset=demo --model_dir="$OUT/compare" \
  --architectures="$archs" --retrain_seeds="$RETRAIN_SEEDS" --supernet_dir="$first" "$@"
