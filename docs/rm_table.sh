#!/bin/bash
# The reward-model table of docs/reward_model.md: SmolLM2-135M-Instruct on the HH-RLHF helpful-base train split,
# top:2 and head, four data treatments (plain, balance_len, R-DA 0.25, cartography-truncated). Held out: the
# helpful-base eval split (picks the best step) and helpful-rejection-sampled-test (used for nothing else).
# All runs share one feature cache: the first top:2 run pays for the frozen 28 layers once; the head runs
# reuse it and only run the top 2 layers (train-rm finds the top:2 cache itself).
# usage: bash docs/rm_table.sh OUT [RLHF_LAB_BIN]   (pin it with taskset if the machine is shared)
set -euo pipefail
OUT=${1:-runs/rm-table}
B=${2:-.venv/bin/rlhf-lab}
SHARED=${SHARED:-../shared/data/hh-rlhf}
COMMON="--model_name default --dataset hh-rlhf:helpful-base --split train --max_length 512
  --per_device_train_batch_size 8 --eval_limit 400 --eval_steps 50 --test_dataset $SHARED/helpful-rejection-sampled-test.jsonl.gz
  --test_limit 300 --on_bad_row skip --feature_cache $OUT/features --progress false --seed 0"
mkdir -p "$OUT"
timed() {  # timed NAME ARGS...: one train-rm run, its wall time printed
    local name=$1 start; shift
    start=$(date +%s)
    $B train-rm $COMMON "$@" --output_dir "$OUT/$name" --overwrite_output_dir
    echo "rm-table: $name $(( $(date +%s) - start )) s"
}
# plain, 3 epochs: cartography needs two passes after the first (confidence = mean, variability = stdev)
timed top2-plain --trainable top:2 --num_train_epochs 3
timed top2-balance_len --trainable top:2 --num_train_epochs 2 --balance_len
timed top2-rand_ratio --trainable top:2 --num_train_epochs 2 --rand_ratio 0.25
# HH has no seed threshold: cut at the 67th percentile of confidence (drop the most confident third)
$B carto "$OUT/top2-plain" > /dev/null
UPPER=$(python3 -c "
import json
c = sorted(json.loads(line)['confidence'] for line in open('$OUT/top2-plain/carto_stats.jsonl'))
print(c[int(0.67 * len(c))])")
$B carto "$OUT/top2-plain" --upper "$UPPER"
timed top2-carto --trainable top:2 --num_train_epochs 2 --carto_file "$OUT/top2-plain/carto_keep.txt"
for treatment in plain balance_len rand_ratio carto; do
    case $treatment in
        plain) extra=() ;;
        balance_len) extra=(--balance_len) ;;
        rand_ratio) extra=(--rand_ratio 0.25) ;;
        carto) extra=(--carto_file "$OUT/top2-plain/carto_keep.txt") ;;
    esac
    timed "head-$treatment" --trainable head --num_train_epochs 3 "${extra[@]}"
done
