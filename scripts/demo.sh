#!/usr/bin/env bash
# The main job on the built-in demo dataset, end to end (creating ./.venv first when needed):
# a short architecture search, then the found network retrained, evaluated, exported and
# run on a few images. Minutes on 2 CPU cores. Extra args go to the search.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
RUN="${DEMO_RUN_DIR:-runs/demo}"
echo "== 1/1 architecture search (runs/demo/search; TensorBoard: tensorboard --logdir $RUN)"
python -m train.search --dataset=demo --model_dir="$RUN/search" "$@"
