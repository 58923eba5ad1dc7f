#!/bin/bash
# The reward-model table of docs/reward_model.md: top:2 on SmolLM2-135M-Instruct, HH-RLHF helpful-base train
# split, four data treatments (plain, balance_len, R-DA 0.25, cartography-truncated). Held out: the helpful-base
# eval split (picks the best step) and helpful-rejection-sampled-test (used for nothing else).
# All runs share one trunk-feature cache, so only the first pays for the frozen 28 layers.
# usage: bash docs/rm_table.sh OUT [RLHF_LAB_BIN]   (pin it with taskset if the machine is shared)
set -euo pipefail
OUT=${1:-runs/rm-table}
B=${2:-.venv/bin/rlhf-lab}
SHARED=${SHARED:-../shared/data/hh-rlhf}
COMMON="--model_name default --dataset hh-rlhf:helpful-base --split train --trainable top:2 --max_length 512
  --per_device_train_batch_size 8 --eval_limit 400 --eval_steps 50 --test_dataset $SHARED/helpful-rejection-sampled-test.jsonl.gz
  --test_limit 300 --on_bad_row skip --feature_cache $OUT/features --progress false --seed 0"
mkdir -p "$OUT"
stamp() { date +%s; }
t0=$(stamp)
# plain, 3 epochs: cartography needs two passes after the first (confidence = mean, variability = stdev)
$B train-rm $COMMON --num_train_epochs 3 --output_dir "$OUT/plain" --overwrite_output_dir
t1=$(stamp); echo "rm-table: plain $((t1 - t0)) s"
$B train-rm $COMMON --num_train_epochs 2 --balance_len --output_dir "$OUT/balance_len" --overwrite_output_dir
t2=$(stamp); echo "rm-table: balance_len $((t2 - t1)) s"
$B train-rm $COMMON --num_train_epochs 2 --rand_ratio 0.25 --output_dir "$OUT/rand_ratio" --overwrite_output_dir
t3=$(stamp); echo "rm-table: rand_ratio $((t3 - t2)) s"
# HH has no seed threshold: cut at the 67th percentile of confidence (drop the most confident third)
$B carto "$OUT/plain" > /dev/null
UPPER=$(python3 -c "
import json, statistics, sys
c = sorted(json.loads(l)['confidence'] for l in open('$OUT/plain/carto_stats.jsonl'))
print(c[int(0.67 * len(c))])")
$B carto "$OUT/plain" --upper "$UPPER"
t4=$(stamp)
$B train-rm $COMMON --num_train_epochs 2 --carto_file "$OUT/plain/carto_keep.txt" --output_dir "$OUT/carto" --overwrite_output_dir
t5=$(stamp); echo "rm-table: carto $((t5 - t4)) s (upper $UPPER)"
