#!/usr/bin/env bash
# The full reference benchmark: RecBole 1.2.1 SASRec and GRU4Rec on ML-100K, seeds 0 1 2, one after
# another (never in parallel: the timings are part of the result). Run it on a quiet machine.
#
#   bash experiments/recbole/run_benchmark.sh                        # defaults below
#   EPOCHS=300 MAX_MINUTES=30 BATCH=256 SEEDS="0 1 2" MODELS="SASRec GRU4Rec" \
#       bash experiments/recbole/run_benchmark.sh
#
# Results: experiments/recbole/results/recbole_<model>_seed<seed>.json (+ .log), then a summary table.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/setup_venv.sh"

EPOCHS=${EPOCHS:-300}
MAX_MINUTES=${MAX_MINUTES:-30}
BATCH=${BATCH:-2048}
SEEDS=${SEEDS:-"0 1 2"}
MODELS=${MODELS:-"SASRec GRU4Rec"}

cap=()
if [[ -n "$MAX_MINUTES" && "$MAX_MINUTES" != "none" ]]; then cap=(--max-minutes "$MAX_MINUTES"); fi
for model in $MODELS; do
    for seed in $SEEDS; do
        echo "=== $model seed $seed (batch $BATCH, <= $EPOCHS epochs, cap ${MAX_MINUTES:-none} min) ==="
        "$here/.venv/bin/python" "$here/run_recbole.py" --model "$model" --seed "$seed" \
            --epochs "$EPOCHS" --train-batch-size "$BATCH" "${cap[@]}"
    done
done
"$here/.venv/bin/python" "$here/summarize.py" --json "$here/results/summary.json"
