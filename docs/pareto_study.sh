#!/bin/bash
# Reward vs alignment tax of a PPO-tuned SmolLM2 (TUNED, docs/ppo_study.sh): interpolation, partwise, AMA (docs/merge.md).
# usage: bash docs/pareto_study.sh OUT
set -euo pipefail
O=${1:-runs/pareto-study}
TUNED=${TUNED:-runs/ppo-study/single/model}
PROXY=${PROXY:-runs/demo/bon-study/proxy_rm}/members/seed-0
B=.venv/bin/rlhf-lab
s=$(date +%s)
# AMA's data: the tuned model's samples on train prompts, the proxy's best of 2 per prompt (Lin et al.'s code used RAFT's kept set)
$B generate --model_name $TUNED --dataset hh-rlhf:helpful-base --split train --limit 64 --samples_per_prompt 2 \
  --max_new_tokens 32 --seed 0 --generation_batch_size 16 --output_dir $O/gen_tuned
$B score --model_name $PROXY --input $O/gen_tuned/generations.jsonl --reward_batch_size 8 --output_dir $O/scored
echo "pareto-study: data $(( $(date +%s) - s )) s"; s=$(date +%s)
for lvl in layerwise block3; do
  $B ama --base default --tuned $TUNED --dataset $O/scored/scored.jsonl --mask_level $lvl --init_val 0.4 \
    --learning_rate 0.1 --lr_scheduler_type constant --max_steps 32 --per_device_train_batch_size 2 \
    --max_length 256 --loss_on response --seed 0 --output_dir $O/ama-$lvl --overwrite_output_dir
  echo "pareto-study: ama-$lvl $(( $(date +%s) - s )) s"; s=$(date +%s)
done
$B pareto --base default --tuned $TUNED --alphas 0,0.2,0.4,0.6,0.8,1 \
  --partwise "10#20|0.2|0.4|0.6,10#20|0.6|0.4|0.2" --partwise_alpha 0.4 \
  --ama $O/ama-layerwise,$O/ama-block3 --reward_models $PROXY --gold_model_name hh-gold \
  --num_prompts 24 --num_references 32 --max_length 128 --samples_per_prompt 2 --max_new_tokens 32 \
  --generation_batch_size 16 --reward_batch_size 16 --seed 0 --output_dir $O/pareto
echo "pareto-study: pareto $(( $(date +%s) - s )) s"
