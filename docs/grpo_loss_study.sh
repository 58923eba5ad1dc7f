#!/usr/bin/env bash
# grpo vs dr_grpo loss (docs/grpo.md): the same reward model, seed, prompts and eval prompts; only --loss_type differs.
# Paired differences per eval prompt (same prompt, same eval sampling seed) at the last eval, with 95% CIs.
set -euo pipefail
OUT=${OUT:-/tmp/grpo_exp}
STEPS=${STEPS:-10}
for LOSS in grpo dr_grpo; do
  OMP_NUM_THREADS=1 .venv/bin/rlhf-lab grpo --model_name default --reward_models hh-gold --max_new_tokens 64 \
    --max_prompt_length 64 --num_generations 4 --per_device_train_batch_size 8 --learning_rate 3e-4 \
    --lr_scheduler_type constant --beta 0.04 --loss_type "$LOSS" --max_steps "$STEPS" --eval_interval "$STEPS" \
    --num_eval_prompts 16 --output_dir "$OUT/loss_$LOSS" --seed 0 --progress false &
done
wait
.venv/bin/python - "$OUT" "$STEPS" <<'PY'
import sys
from rlhf_lab.eval.paired import interval_words, paired_difference
from rlhf_lab.io import read_jsonl
out, step = sys.argv[1], sys.argv[2]
a = read_jsonl(f"{out}/loss_dr_grpo/eval/eval-{step}.jsonl")
b = read_jsonl(f"{out}/loss_grpo/eval/eval-{step}.jsonl")
assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
for key in ("length", "proxy_score", "kl_k1"):
    print(f"dr_grpo − grpo, eval {key} at step {step}:",
          interval_words(paired_difference([r[key] for r in a], [r[key] for r in b])))
PY
