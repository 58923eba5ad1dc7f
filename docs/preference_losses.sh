#!/bin/bash
# The offline-loss comparison of issue 22 (docs/preference_losses.md): DPO, R-DPO, SimPO, LD-DPO, ORPO and KTO on
# the same HH helpful-base pairs, same optimizer steps, batch, learning rate and seed; then every model and the
# start model generate on the same eval prompts and `rlhf-lab evaluate` measures, against the start model, paired
# over prompts: length, gold reward (the embedded hh-gold RM) and the gold gain left after length.
# usage: bash docs/preference_losses.sh OUT [LIMIT] [STEPS] [EVAL_LIMIT] [PROMPTS] [MAX_NEW_TOKENS]
set -euo pipefail
OUT=${1:-runs/preference-losses}
LIMIT=${2:-600}        # training pairs read (those over MAX_LENGTH tokens are dropped)
STEPS=${3:-60}         # optimizer steps, the same for every loss
EVAL_LIMIT=${4:-200}   # held-out pairs for the implicit-reward accuracy
PROMPTS=${5:-64}       # eval prompts for generation (2 samples each)
MAX_NEW=${6:-96}
B=${RLHF_LAB_BIN:-.venv/bin/rlhf-lab}
PY=${RLHF_LAB_PYTHON:-.venv/bin/python}
MAX_LENGTH=256
COMMON="--model_name default --dataset hh-rlhf:helpful-base --split train --limit $LIMIT --max_length $MAX_LENGTH
  --truncation drop --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --max_steps $STEPS
  --learning_rate 5e-4 --eval_limit $EVAL_LIMIT --ref_batch_size 8 --progress false --seed 0 --export adapter"
mkdir -p "$OUT"
t() {  # run one stage: its log in OUT/NAME.log, its wall time in OUT/times.txt; stop the study if it fails
  local n=$1 s; s=$(date +%s); shift
  "$@" > "$OUT/$n.log" 2>&1 || { echo "preference-losses: $n failed:"; tail -3 "$OUT/$n.log"; exit 1; }
  grep -E "^dpo: (seconds|held-out implicit)|^evaluate: " "$OUT/$n.log" || true
  echo "preference-losses: $n $(( $(date +%s) - s )) s wall" | tee -a "$OUT/times.txt"
}
train() { local n=$1; shift; t "$n" $B dpo $COMMON --output_dir "$OUT/$n" --overwrite_output_dir "$@"; }

train dpo    --loss dpo --beta 0.1
# R-DPO trains on the same pairs: it reuses DPO's cached reference (the fingerprint check accepts it)
mkdir -p "$OUT/rdpo" && cp "$OUT"/dpo/ref_train.safetensors "$OUT"/dpo/ref_eval.safetensors "$OUT/rdpo/"
t rdpo $B dpo $COMMON --output_dir "$OUT/rdpo" --loss dpo --beta 0.1 --rdpo_alpha 0.01
train simpo  --loss simpo --beta 2.0 --simpo_gamma 1.0          # the paper's β = 2, γ/β = 0.5
train ld_dpo --loss ld_dpo --beta 0.1 --ld_alpha 0.5
train orpo   --loss orpo --beta 0.1                            # β is ORPO's λ
# KTO sees every pair as two rows: twice the rows per step, so it trains on the same replies as the paired losses
train kto    --loss kto --beta 0.1 --per_device_train_batch_size 8

EVAL="--dataset hh-rlhf:helpful-base --split eval --limit $PROMPTS --samples_per_prompt 2 --max_new_tokens $MAX_NEW
  --seed 0 --gold_model_name hh-gold --ref_model_name default --bootstrap 2000 --progress false"
t eval_start $B evaluate --model_name default $EVAL --output_dir "$OUT/eval_start"
for m in dpo rdpo simpo ld_dpo orpo kto; do
  t "eval_$m" $B evaluate --model_name "$OUT/$m/model" $EVAL --baseline_generations "$OUT/eval_start/generations.jsonl" \
    --output_dir "$OUT/eval_$m"
done
$PY - "$OUT" <<'PY'
import json, math, re, sys
from pathlib import Path
out = Path(sys.argv[1])
times = dict(re.findall(r"preference-losses: (\S+) (\d+) s wall", (out / "times.txt").read_text()))
def ci(e, name):
    k = f"paired/{name}"
    return (f"{e[k + '/diff']:+.3f} [{e[k + '/ci_low']:+.3f}, {e[k + '/ci_high']:+.3f}] "
            f"{'shown' if e[k + '/shown'] else 'not shown'}")
print("| loss | held-out acc ± se (n pairs) | train s (ref s) | Δ length vs start, 95% CI | Δ gold vs start, 95% CI |"
      " gold gain after length |")
print("|---|---|---|---|---|---|")
for m in ("dpo", "rdpo", "simpo", "ld_dpo", "orpo", "kto"):
    rows = [json.loads(x) for x in (out / m / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if "eval/rewards/accuracies" in r][-1]
    log = (out / f"{m}.log").read_text()
    secs = re.search(r"reference passes ([\d.]+), in the training loop ([\d.]+)", log)
    n_eval = int(re.search(r"dpo: (\d+) held-out pairs", log).group(1))
    e = json.loads((out / f"eval_{m}" / "eval.json").read_text())
    e = e.get("metrics", e)
    acc = ev["eval/rewards/accuracies"]
    se = math.sqrt(acc * (1 - acc) / n_eval)
    gal = e.get("length_bias/gold/vs_baseline/gain_after_length", float("nan"))
    print(f"| {m} | {acc:.3f} ± {se:.3f} ({n_eval}) | {secs.group(2)} ({secs.group(1)}) | {ci(e, 'length')} | "
          f"{ci(e, 'gold')} | {gal:+.3f} |")
PY
