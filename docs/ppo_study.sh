#!/bin/bash
# PPO against one proxy vs the UWO ensemble vs one proxy + --len_penalty, gold scored in-run (docs/ppo.md).
# usage: bash docs/ppo_study.sh OUT  (PROXY = the 4-member proxy ensemble of `rlhf-lab demo --stages bon`, the default)
set -euo pipefail

O=${1:-runs/ppo-study}
P=${PROXY:-runs/demo/bon-study/proxy_rm}/members
B=.venv/bin/rlhf-lab
COMMON="--model_name default --gold_model_name hh-gold --max_new_tokens 32 --max_prompt_length 64
 --per_device_train_batch_size 4 --num_mini_batches 2 --ppo_epochs 4 --learning_rate 1e-3
 --lr_scheduler_type constant --init_kl_coef 0.01 --adap_kl_ctrl false --max_steps 16 --eval_interval 4
 --num_eval_prompts 16 --save_steps 0 --seed 1 --overwrite_output_dir"
t() { local n=$1 s=$(date +%s); shift; $B ppo $COMMON "$@" --output_dir $O/$n; echo "ppo-study: $n $(( $(date +%s) - s )) s"; }
t single --reward_models $P/seed-0
t uwo --reward_models $P/seed-0,$P/seed-1,$P/seed-2,$P/seed-3 --objective UWO --uwo_weight 0.5
t single-lenpen --reward_models $P/seed-0 --len_penalty
