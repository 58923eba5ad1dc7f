#!/usr/bin/env bash
# grpo vs dr_grpo loss (docs/grpo.md): the same reward model, seed, prompts and eval prompts; only --loss_type differs.
# The design leaves the length room to move: prompts of at most 256 tokens (HH's multi-turn prompts, whose answers
# often end before the limit; single-turn ones of at most 64 tokens are answered past any short limit) and a
# 64-token limit. Eval: 16 fixed prompts × 4 answers at steps 0, STEPS/2 and STEPS; a prompt's value is the mean
# of its 4 answers. Paired differences per eval prompt (same prompt, same eval sampling seed), 95% CIs.
# usage: OUT=runs/grpo-loss STEPS=20 SEED=0 bash docs/grpo_loss_study.sh [RLHF_LAB_BIN]
set -euo pipefail
OUT=${OUT:-runs/grpo-loss}
STEPS=${STEPS:-20}
SEED=${SEED:-0}
B=${1:-.venv/bin/rlhf-lab}
for LOSS in grpo dr_grpo; do
  OMP_NUM_THREADS=1 $B grpo --model_name default --reward_models hh-gold --max_new_tokens 64 \
    --max_prompt_length 256 --num_generations 8 --per_device_train_batch_size 32 --learning_rate 3e-4 \
    --lr_scheduler_type constant --beta 0.04 --loss_type "$LOSS" --max_steps "$STEPS" \
    --eval_interval $((STEPS / 2)) --num_eval_prompts 16 --eval_samples_per_prompt 4 \
    --output_dir "$OUT/loss_$LOSS-seed$SEED" --overwrite_output_dir --seed "$SEED" --progress false &
done
wait
PYTHONPATH=${PYTHONPATH:-src} ${PYTHON:-.venv/bin/python} - "$OUT" "$STEPS" "$SEED" <<'PY'
import sys

from rlhf_lab.eval.paired import interval_words, paired_difference
from rlhf_lab.eval.runs import read_eval_table
from rlhf_lab.io import read_jsonl

out, steps, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {loss: f"{out}/loss_{loss}-seed{seed}" for loss in ("grpo", "dr_grpo")}
for loss, run in runs.items():
    lengths = [row["completions/mean_length"] for row in read_jsonl(f"{run}/metrics.jsonl")
               if "completions/mean_length" in row]
    print(f"{loss} rollout mean length by step:", " ".join(f"{v:.1f}" for v in lengths))
tables = {loss: read_eval_table(run) for loss, run in runs.items()}
assert tables["grpo"].prompts == tables["dr_grpo"].prompts and tables["grpo"].steps[-1] == steps
for key in ("length", "proxy_score", "kl_k1"):
    a, b = tables["dr_grpo"].values[key][-1], tables["grpo"].values[key][-1]
    print(f"dr_grpo − grpo, eval {key} at step {steps}:", interval_words(paired_difference(a, b)))
for loss, table in tables.items():
    change = paired_difference(table.values["length"][-1], table.values["length"][0])
    print(f"{loss}: eval length step {steps} − step 0:", interval_words(change))
PY
