#!/bin/bash
# The reward-model table of docs/reward_model.md: SmolLM2-135M-Instruct on the HH-RLHF helpful-base train split,
# top:2 and head, four data treatments (plain, balance_len, R-DA 0.25, cartography-truncated). Held out: the
# helpful-base eval split (picks the best step) and helpful-rejection-sampled-test (used for nothing else).
# All runs share one feature cache: the first top:2 run pays for the frozen 28 layers once; the head runs
# reuse it and only run the top 2 layers (train-rm finds the top:2 cache itself).
# Cartography comes from the head run (4 passes are nearly free there; confidence and variability need two
# passes after the first); its keep file is applied to both modes.
# usage: bash docs/rm_table.sh OUT [RLHF_LAB_BIN] 2>&1 | tee OUT/log.txt; python docs/rm_table.py OUT  (the table)
set -euo pipefail
OUT=${1:-runs/rm-table}
B=${2:-.venv/bin/rlhf-lab}
SHARED=${SHARED:-../shared/data/hh-rlhf}
COMMON="--model_name default --dataset hh-rlhf:helpful-base --split train --max_length 512
  --per_device_train_batch_size 8 --eval_limit 400 --eval_steps 50 --test_dataset $SHARED/helpful-rejection-sampled-test.jsonl.gz
  --test_limit 300 --on_bad_row skip --feature_cache $OUT/features --progress false --seed 0"
HEAD="--trainable head --num_train_epochs 4"
TOP2="--trainable top:2 --num_train_epochs 1"
mkdir -p "$OUT"
timed() {  # timed NAME ARGS...: one train-rm run, its wall time printed
    local name=$1 start; shift
    start=$(date +%s)
    $B train-rm $COMMON "$@" --output_dir "$OUT/$name" --overwrite_output_dir
    echo "rm-table: $name $(( $(date +%s) - start )) s"
}
timed top2-plain $TOP2            # pays for the trunk features of every text
timed head-plain $HEAD
# HH has no seed threshold: cut at the 67th percentile of confidence (drop the most confident third)
$B carto "$OUT/head-plain" > /dev/null
UPPER=$(python3 -c "
import json
c = sorted(json.loads(line)['confidence'] for line in open('$OUT/head-plain/carto_stats.jsonl'))
print(c[int(0.67 * len(c))])")
$B carto "$OUT/head-plain" --upper "$UPPER"
KEEP="$OUT/head-plain/carto_keep.txt"
timed head-balance_len $HEAD --balance_len
timed head-rand_ratio $HEAD --rand_ratio 0.25
timed head-carto $HEAD --carto_file "$KEEP"
# the "both" variant: also drop the fifth the RM is most confidently wrong about (confidence < its 20th percentile)
LOWER=$(python3 -c "
import json
c = sorted(json.loads(line)['confidence'] for line in open('$OUT/head-plain/carto_stats.jsonl'))
print(c[int(0.20 * len(c))])")
$B carto "$OUT/head-plain" --upper "$UPPER" --lower "$LOWER" --output "$OUT/carto_keep_both.txt" --plot false
timed head-carto_both $HEAD --carto_file "$OUT/carto_keep_both.txt"
timed top2-balance_len $TOP2 --balance_len
timed top2-rand_ratio $TOP2 --rand_ratio 0.25
timed top2-carto $TOP2 --carto_file "$KEEP"
