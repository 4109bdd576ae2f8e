#!/usr/bin/env bash
# The main job on the built-in demo dataset, end to end (creating ./.venv first when needed):
# a short architecture search, then the found network retrained, evaluated, exported as a
# SavedModel and run on a few images. Minutes on 2 CPU cores; each stage resumes if re-run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
RUN="${DEMO_RUN_DIR:-runs/demo}"
SEARCH="$RUN/search"
RETRAIN="$RUN/retrain"

echo "== 1/5 architecture search on the demo dataset -> $SEARCH"
python -m train.search --dataset=demo --model_dir="$SEARCH"

echo "== 2/5 retraining the found architecture -> $RETRAIN"
python -m train.retrain --dataset=demo --architecture="$SEARCH/architecture.json" \
  --model_dir="$RETRAIN"

echo "== 3/5 evaluating on demo val"
python -m train.evaluate --model_dir="$RETRAIN"

echo "== 4/5 exporting a SavedModel -> $RETRAIN/export"
python -m train.export --model_dir="$RETRAIN"

# (import train first: it imports TensorFlow without its start-up lines, as every script does)
DEMO_IMAGES="$(python -c 'import os, train; from auto_deeplab_datasets import demo; print(os.path.join(os.path.dirname(demo.ensure_demo_data()), "cityscapes", "leftImg8bit", "val", "demo"))')"
echo "== 5/5 predicting 4 demo val images -> $RUN/predictions"
python -m train.predict --export_dir="$RETRAIN/export" \
  --images="$DEMO_IMAGES/demo_000001_00000[0-3]_leftImg8bit.png" --output_dir="$RUN/predictions"

python - "$RUN" <<'PY'
import json, os, sys
run = sys.argv[1]
result = json.load(open(os.path.join(run, "retrain", "eval_val.json")))
print("\nDemo finished.")
print(f"  architecture found by the search: {run}/search/architecture.json")
print(f"  demo val mIoU of the retrained network: {100 * result['miou']:.1f}%")
print(f"  SavedModel: {run}/retrain/export")
print(f"  predictions: {run}/predictions")
print(f"  TensorBoard: tensorboard --logdir {run}")
PY
