#!/bin/bash
# Issue #20's shift test: reward models trained on one HH-RLHF distribution, judged on others.
# Train: the embedded helpful-base train split (its eval split picks each run's best step). Judge, with eval-rm, on
#   in-distribution: the helpful-base eval split
#   shifted:         helpful-rejection-sampled-test and harmless-base-test (../shared/data/hh-rlhf/), LIMIT pairs each
# Treatments (--trainable head: the whole trunk frozen, linear heads; 1 epoch): plain, --balance_len,
# --rand_ratio 0.25, --length_head (ODIN, Chen et al. 2024, λ_L = λ_O = 1), and --length_head --balance_len.
# head, not the default RM's top:2, for cost (docs/length_bias.md); TRAINABLE=top:2 runs the grid on the default.
# Seeds 0 1 2, fixed before any run; every (treatment, seed) cell is trained and reported, none dropped. For each split one eval-rm call scores all
# the models on the same pairs, so each treatment's accuracy and longer-preferred rate come with a paired
# difference from plain of the same seed (SE, CI, shown / not shown); `python docs/shift_table.py OUT` prints the
# table.
# All runs share one feature cache: the frozen trunk runs once per text, whatever the treatment or seed.
# usage: bash docs/shift_test.sh OUT [RLHF_LAB_BIN] 2>&1 | tee OUT/log.txt; python docs/shift_table.py OUT
# Size knobs (defaults are the full grid): TRAIN_LIMIT (train pairs, default all), LIMIT (pairs per judged split,
# default 400), SEEDS, TREATMENTS, TRAINABLE.
set -euo pipefail
OUT=${1:-runs/shift-test}
B=${2:-.venv/bin/rlhf-lab}
SHARED=${SHARED:-../shared/data/hh-rlhf}
LIMIT=${LIMIT:-400}
SEEDS=${SEEDS:-"0 1 2"}
TREATMENTS=${TREATMENTS:-"plain balance_len rand_ratio length_head length_head+balance_len"}
TRAINABLE=${TRAINABLE:-head}
TRAIN_LIMIT_FLAG=${TRAIN_LIMIT:+--limit $TRAIN_LIMIT}
COMMON="--model_name default --dataset hh-rlhf:helpful-base --split train $TRAIN_LIMIT_FLAG --max_length 512
  --trainable $TRAINABLE --num_train_epochs 1 --per_device_train_batch_size 8 --eval_limit $LIMIT --eval_steps 50
  --on_bad_row skip --feature_cache $OUT/features --progress false"
flags() {  # the train-rm flags of a treatment
    case $1 in
        plain) echo "" ;;
        balance_len) echo "--balance_len" ;;
        rand_ratio) echo "--rand_ratio 0.25" ;;
        length_head) echo "--length_head" ;;
        length_head+balance_len) echo "--length_head --balance_len" ;;
        *) echo "shift_test.sh: unknown treatment $1" >&2; exit 2 ;;
    esac
}
mkdir -p "$OUT"
for seed in $SEEDS; do
    for t in $TREATMENTS; do
        start=$(date +%s)
        # shellcheck disable=SC2046
        $B train-rm $COMMON $(flags "$t") --seed "$seed" --output_dir "$OUT/$t/seed-$seed" --overwrite_output_dir
        echo "shift-test: train $t seed-$seed $(( $(date +%s) - start )) s"
    done
done
# One eval-rm call per judged split scores every trained model on the same pairs: models that share their frozen
# trunk (all of them here) cost one trunk pass, and pair_scores.jsonl lets shift_table.py pair each treatment with
# plain of the same seed, pair by pair.
models=$(for seed in $SEEDS; do for t in $TREATMENTS; do printf '%s,' "$OUT/$t/seed-$seed/model"; done; done)
models=${models%,}
$B eval-rm --model_name "$models" --dataset hh-rlhf:helpful-base --split eval --limit "$LIMIT" \
    --on_bad_row skip --output_dir "$OUT/eval/in-distribution"
for split in helpful-rejection-sampled harmless-base; do
    $B eval-rm --model_name "$models" --dataset "$SHARED/$split-test.jsonl.gz" --split all --limit "$LIMIT" \
        --on_bad_row skip --output_dir "$OUT/eval/$split"
done
