#!/bin/bash
# usage: bash docs/raft_study.sh OUT (docs/raft.md). RAFT with the proxy ensemble (mean) as the ranker, then a paired held-out check against the start model with
# the gold (evaluate: same prompts, same sampling seed). One core.
set -euo pipefail
O=${1:-runs/raft-study}
PROXY=${PROXY:-runs/demo/bon-study/proxy_rm}
B=.venv/bin/rlhf-lab
s=$(date +%s)
$B raft --model_name default --reward_models $PROXY --objective mean --split train --num_raft_iteration 6 \
  --raft_batch_size 32 --top_reward_percentage 0.25 --collection_strategy local --output_min_length 16 \
  --output_max_length 33 --max_prompt_length 64 --generation_batch_size 32 --reward_batch_size 8 \
  --trainable lora --learning_rate 2e-4 --lr_scheduler_type constant --num_train_epochs 2 \
  --per_device_train_batch_size 4 --loss_on response --progress false --seed 0 --output_dir $O/raft --overwrite_output_dir
echo "raft-study: raft $(( $(date +%s) - s )) s"; s=$(date +%s)
EV="--dataset hh-rlhf:helpful-base --split eval --limit 32 --samples_per_prompt 2 --max_new_tokens 32
 --max_prompt_tokens 64 --generation_batch_size 8 --reward_batch_size 8 --seed 0 --reward_models $PROXY --objective mean --gold_model_name hh-gold"
$B evaluate --model_name default --ref_model_name default $EV --output_dir $O/eval-base
$B evaluate --model_name $O/raft/model --ref_model_name default $EV \
  --baseline_generations $O/eval-base/generations.jsonl --output_dir $O/eval-raft
echo "raft-study: evaluate $(( $(date +%s) - s )) s"
