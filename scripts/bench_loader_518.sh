#!/usr/bin/env bash
# Training-loader throughput at the paper's 518 px (docs/performance.md): generates 400 built-in-benchmark
# images at 448 px (about the size of Waterbirds' images) into a scratch folder, then times the training
# DataLoader with the Waterbirds preset's augmentation, batch 16, for 0, 1 and 2 workers.
#
#   scripts/bench_loader_518.sh [SCRATCH_DIR]      (default /tmp/hardmask-loader-518; removed first)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
SCRATCH=${1:-/tmp/hardmask-loader-518}
rm -rf "$SCRATCH"
SETTINGS=(
    --set "base.data_dir=$SCRATCH" --set "base.reports_dir=$SCRATCH/reports" --set data.image_size=518
    --set data.synthetic.image_size=448 --set data.synthetic.n_train=400 --set data.synthetic.n_val=8
    --set data.synthetic.n_test=8 --set data.synthetic.n_ood=8
    --set data.augment.degrees=90 --set data.augment.translate=0.2 --set "data.augment.scale=[0.8,1.2]"
    --set data.augment.color_jitter=0 --set data.augment.planckian_jitter=0.8
)
"$PY" stages/prepare.py "${SETTINGS[@]}"
"$PY" -m hardmask.bench --only train_loader --loader-workers 0,1,2 --loader-batches 20 --batch 16 "${SETTINGS[@]}"
