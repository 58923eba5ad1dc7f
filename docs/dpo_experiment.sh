#!/bin/bash
# DPO vs R-DPO on embedded HH helpful-base, SmolLM2-135M-Instruct + LoRA; then generation lengths (docs/dpo.md).
# usage: bash docs/dpo_experiment.sh OUT [LIMIT] [EVAL_LIMIT] [MAX_LENGTH]
set -euo pipefail
OUT=${1:-runs/dpo-exp}
LIMIT=${2:-600}
EVAL_LIMIT=${3:-400}
MAX_LENGTH=${4:-256}
B=${RLHF_LAB_BIN:-.venv/bin/rlhf-lab}
COMMON="--model_name default --dataset hh-rlhf:helpful-base --split train --limit $LIMIT --max_length $MAX_LENGTH
  --truncation drop --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --num_train_epochs 1
  --learning_rate 5e-4 --beta 0.1 --eval_limit $EVAL_LIMIT --eval_steps 0 --ref_batch_size 8 --progress false
  --seed 0 --export adapter"
t() { local n=$1 s=$(date +%s); shift; "$@"; echo "dpo-exp: $n $(( $(date +%s) - s )) s"; }
t dpo $B dpo $COMMON --output_dir "$OUT/dpo" --overwrite_output_dir
# same pairs: the R-DPO run reuses the cached reference (the fingerprint check accepts it)
mkdir -p "$OUT/rdpo" && cp "$OUT"/dpo/ref_train.safetensors "$OUT"/dpo/ref_eval.safetensors "$OUT/rdpo/"
t rdpo $B dpo $COMMON --rdpo_alpha 0.01 --output_dir "$OUT/rdpo"
GEN="--dataset hh-rlhf:helpful-base --split eval --limit 24 --samples_per_prompt 1 --max_new_tokens 96 --seed 0
  --generation_batch_size 12 --progress false"
t gen_base $B generate --model_name default $GEN --output_dir "$OUT/gen_base"
t gen_dpo $B generate --model_name default --adapter "$OUT/dpo/model" $GEN --output_dir "$OUT/gen_dpo"
t gen_rdpo $B generate --model_name default --adapter "$OUT/rdpo/model" $GEN --output_dir "$OUT/gen_rdpo"
