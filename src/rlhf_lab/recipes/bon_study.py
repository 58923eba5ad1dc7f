"""The overoptimization study with best-of-n (Gao et al. 2022; Coste et al. 2023), on any policy: `rlhf-lab bon-study`.

The seeds' synthetic setup, end to end, in one run directory:

    1. sample      train prompts × `train_samples` and eval prompts × N answers from the policy (shared prefill)
    2. gold        score every answer with the gold RM (a stronger RM standing in for human judgement);
                   shifted so the policy's mean gold reward on the eval prompts is 0 (the seed authors' advice)
    3. label       pairs of the policy's own answers per train prompt, preferred = higher gold score, each label
                   flipped with probability `label_noise` (noise makes overoptimization visible, as advised)
    4. proxies     train-rm on those pairs: k members on a shared frozen trunk (`proxy_trainable`, `proxy_num_layers`
                   make the proxies weaker than the gold), member j with its own seed / data order
    5. score       every eval answer with each proxy member
    6. best-of-n   `rlhf-lab bon` over the scores: member curves, ensemble mean / WCO / UWO-λ, gold of the answer
                   each picks; proxy and gold vs n and vs KL_bon = log n − (n−1)/n
    7. verdict     per curve: does gold fall while proxy rises (overoptimization)? at which n does gold peak?

Outputs: `generations_{train,eval}.jsonl`, `proxy_pairs/{train,eval}.jsonl`, `proxy_rm/` (the train-rm run),
`scored.jsonl` (the rlhf-lab scores layout `bon` reads: `scores: {member…, "gold"}`), `bon/` (curves, plots),
`bon_study.json` (the verdicts), `config.yaml`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf_lab.config import ModelArgs, arg, config_to_yaml, make_config, require, require_seed, torch_dtype
from rlhf_lab.data import FORMATS, load_prompts
from rlhf_lab.data.records import Prompt
from rlhf_lab.data.templates import render_prompt
from rlhf_lab.errors import UserError
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.io import atomic_write_text, write_jsonl
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.recipes import bon as bon_recipe
from rlhf_lab.recipes import reward_model as rm_recipe
from rlhf_lab.rewards.model import parse_trainable
from rlhf_lab.rewards.scorer import RewardScorer
from rlhf_lab.rundir import claim_run_dir


@dataclass
class BonStudyConfig(ModelArgs):
    dataset: str = arg("hh-rlhf:helpful-base", "prompts: embedded name or file(s); its fixed-seed train split "
                       "feeds the proxies' pairs, its eval split the best-of-n prompts")
    data_format: str = arg("auto", "input format of --dataset (auto-detected by default)")
    on_bad_row: str = arg("auto", "bad rows: error, skip (counted), or auto (error for your files, skip for the "
                          "embedded dataset)", ("auto", "error", "skip"))
    output_dir: str = arg("runs/bon-study", "the study's run directory (replaced if it exists)")
    gold_model_name: str = arg("", "the gold reward model (a train-rm output dir or an HF sequence-classification "
                               "dir); it labels the proxies' training pairs and judges the picked answers")
    num_train_prompts: int = arg(256, "prompts (train split) whose sampled answers become the proxies' pairs")
    train_samples: int = arg(2, "answers per train prompt; consecutive answers form pairs (train_samples/2 each)")
    num_eval_prompts: int = arg(32, "prompts (eval split) for best-of-n")
    n_samples: int = arg(32, "answers per eval prompt: the N of the best-of-n estimator")
    max_prompt_tokens: int = arg(256, "skip prompts longer than this (counted and reported)")
    max_new_tokens: int = arg(48, "answer length limit")
    temperature: float = arg(1.0, "sampling temperature (1 = the policy's own distribution)")
    generation_batch_size: int = arg(32, "sequences per generation batch")
    label_noise: float = arg(0.25, "probability of flipping each gold preference label")
    ensemble_size: int = arg(4, "proxy members (k)")
    proxy_trainable: str = arg("head", "what trains in each proxy member (train-rm --trainable)")
    proxy_num_layers: int | None = arg(None, "use only the first L layers of the policy for the proxies (weaker "
                                       "proxies); default: all")
    proxy_model_name: str | None = arg(None, "backbone of the proxies (default: --model_name)")
    proxy_epochs: float = arg(2.0, "proxy training epochs")
    proxy_learning_rate: float | None = arg(None, "proxy learning rate (default: train-rm's for the trainable)")
    proxy_eval_fraction: float = arg(0.1, "share of the labelled pairs held out to measure proxy accuracy")
    uwo_weights: str = arg("0.5", "UWO λ values, comma-separated")
    normalize: bool = arg(False, "standardise each proxy member by its eval-set reward mean/std before the "
                          "ensembles combine them (bon --normalize; the seed combines raw scores)")
    sample_ns: str = arg("", "n values for best-of-n (default: 1, 2, 4, … up to N)")
    score_batch_size: int = arg(16, "texts per reward-model forward pass")
    feature_cache: str | None = arg(None, "train-rm feature cache directory for the proxies' frozen trunk")
    seed: int = arg(0, "seed of sampling, label noise and proxy training")
    progress: bool = arg(True, "show progress bars")

    def validate(self) -> None:
        require(bool(self.gold_model_name), "gold_model_name", "give the gold reward model")
        for key in ("num_train_prompts", "num_eval_prompts", "max_new_tokens", "generation_batch_size",
                    "ensemble_size", "score_batch_size", "max_prompt_tokens"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        require(self.train_samples >= 2 and self.train_samples % 2 == 0, "train_samples", "must be even and >= 2")
        require(self.n_samples >= 2, "n_samples", "must be at least 2")
        require(0.0 <= self.label_noise < 0.5, "label_noise", "must be in [0, 0.5)")
        require(0.0 < self.proxy_eval_fraction < 1.0, "proxy_eval_fraction", "must be in (0, 1)")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.proxy_epochs > 0, "proxy_epochs", "must be positive")
        # flags handed on to train-rm and bon only after sampling and training: check them before any work
        require(self.data_format in FORMATS, "data_format", f"{self.data_format!r} is not one of {', '.join(FORMATS)}")
        require(self.proxy_num_layers is None or self.proxy_num_layers >= 1, "proxy_num_layers", "must be at least 1")
        require(self.proxy_learning_rate is None or self.proxy_learning_rate > 0, "proxy_learning_rate",
                "must be positive")
        mode, _ = parse_trainable(self.proxy_trainable, self.proxy_num_layers, "proxy_trainable")
        require(self.ensemble_size == 1 or mode in ("head", "top"), "proxy_trainable",
                "an ensemble (--ensemble_size > 1) shares a frozen trunk: use head or top:K")
        bon_flags = bon_recipe.BonConfig(scores="-", sample_ns=self.sample_ns, uwo_weights=self.uwo_weights)
        too_big = [n for n in bon_flags.sample_n_list() or [] if n > self.n_samples]
        require(not too_big, "sample_ns", f"{', '.join(map(str, too_big))} > --n_samples {self.n_samples}")
        bon_flags.uwo_weight_list()
        require_seed(self.seed, "seed", self.ensemble_size)


def sample_answers(model, tokenizer, prompts: list[Prompt], config: BonStudyConfig, samples: int,
                   seed: int) -> list[dict]:
    """Rows ``{"messages", "responses", "response_tokens", "finished"}``: ``samples`` answers per prompt."""
    texts = [render_prompt(p.messages, config.template, tokenizer) for p in prompts]
    decoding = DecodingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    outputs = generate(model, tokenizer, texts, samples_per_prompt=samples, decoding=decoding,
                       batch_size=config.generation_batch_size, seed=seed, progress=config.progress)
    return [{"messages": p.messages, "responses": [g.text for g in gens],
             "response_tokens": [g.num_tokens for g in gens], "finished": [g.finished for g in gens]}
            for p, gens in zip(prompts, outputs, strict=True)]


def score_rows(scorer: RewardScorer, rows: list[dict]) -> np.ndarray:
    """(k, total answers) scores of every answer of every row, in row order."""
    prompts = [row["messages"] for row in rows for _ in row["responses"]]
    responses = [r for row in rows for r in row["responses"]]
    return scorer.score(prompts, responses).numpy().astype(np.float64)


def gold_labelled_pairs(rows: list[dict], gold: list[list[float]], label_noise: float,
                        rng: random.Random) -> tuple[list[dict], dict[str, int]]:
    """TRL conversational pairs from consecutive answers (0,1), (2,3), …; preferred = higher gold score, then each
    label flipped with probability ``label_noise``. Ties in gold and identical answers are skipped (counted)."""
    pairs, counts = [], {"pairs": 0, "flipped": 0, "skipped_ties": 0, "skipped_identical": 0}
    for row, scores in zip(rows, gold, strict=True):
        answers = row["responses"]
        for a in range(0, len(answers) - 1, 2):
            b = a + 1
            if answers[a].strip() == answers[b].strip():
                counts["skipped_identical"] += 1
                continue
            if scores[a] == scores[b]:
                counts["skipped_ties"] += 1
                continue
            chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
            if rng.random() < label_noise:
                chosen, rejected = rejected, chosen
                counts["flipped"] += 1
            pairs.append({"prompt": row["messages"],
                          "chosen": [{"role": "assistant", "content": answers[chosen]}],
                          "rejected": [{"role": "assistant", "content": answers[rejected]}]})
            counts["pairs"] += 1
    return pairs, counts


def overoptimization_verdict(rows: list[dict], z: float = 2.0) -> dict:
    """From one best-of-n curve: where gold peaks, how far it falls after, and whether proxy still rose.

    ``gold_fell``: gold ends below its peak while proxy ends above its value there. ``overoptimized``: that, with
    a drop larger than ``z`` standard errors of the difference, √(se_peak² + se_N²) over prompts (treating the
    two points as independent, which overstates the error of a paired difference: a conservative call). Without
    standard errors (one prompt) any drop counts.
    """
    gold = [r["gold_score"] for r in rows]
    proxy = [r["proxy_score"] for r in rows]
    peak = int(np.argmax(gold))
    drop = gold[peak] - gold[-1]
    se_peak, se_last = rows[peak].get("gold_se"), rows[-1].get("gold_se")
    drop_se = None if se_peak is None or se_last is None else float(np.hypot(se_peak, se_last))
    fell = bool(peak < len(rows) - 1 and drop > 0 and proxy[-1] > proxy[peak])
    return {
        "gold_at_n1": gold[0], "gold_peak": gold[peak], "gold_peak_n": rows[peak]["n"], "gold_at_max_n": gold[-1],
        "proxy_gain": proxy[-1] - proxy[0], "gold_gain": gold[-1] - gold[0],
        "gold_drop_after_peak": drop, "gold_drop_se": drop_se, "gold_fell": fell,
        # overoptimization: proxy keeps rising past gold's peak while gold falls from it, beyond the noise
        "overoptimized": fell and (drop_se is None or drop > z * drop_se),
    }


def run(config: BonStudyConfig) -> dict:
    out = Path(config.output_dir)
    check_bounds(config.model_name, tokens=1 + config.max_new_tokens, tokens_flag="max_new_tokens",
                 batch=config.generation_batch_size, batch_flag="generation_batch_size", online=config.online,
                 dtype=config.dtype, prompt_note=" (a 1-token prompt + --max_new_tokens)")
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    # --- 1. sample ------------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)
    load = dict(data_format=config.data_format, on_bad_row=config.on_bad_row)
    prompt_sets = {}
    for name, count in (("train", config.num_train_prompts), ("eval", config.num_eval_prompts)):
        prompts, _ = load_prompts(config.dataset, split=name, **load)
        kept, too_long = [], 0
        for prompt in prompts:
            if len(kept) == count:
                break
            ids = tokenizer(render_prompt(prompt.messages, config.template, tokenizer), add_special_tokens=False)
            if len(ids["input_ids"]) > config.max_prompt_tokens:
                too_long += 1
            else:
                kept.append(prompt)
        print(f"bon-study: {name}: {len(kept)} prompts ({too_long} skipped as longer than "
              f"{config.max_prompt_tokens} tokens)", flush=True)
        if len(kept) < 2:
            raise UserError(f"--dataset {config.dataset}: only {len(kept)} {name} prompts of at most "
                            f"{config.max_prompt_tokens} tokens (raise --max_prompt_tokens)")
        prompt_sets[name] = kept
    policy = load_causal_lm(config.model_name, torch_dtype(config.dtype), config.online, config.trust_remote_code,
                            config.allow_pickle)
    train_rows = sample_answers(policy, tokenizer, prompt_sets["train"], config, config.train_samples, config.seed)
    eval_rows = sample_answers(policy, tokenizer, prompt_sets["eval"], config, config.n_samples, config.seed + 1)
    del policy
    write_jsonl(out / "generations_train.jsonl", train_rows)
    write_jsonl(out / "generations_eval.jsonl", eval_rows)
    timings["sample"] = time.perf_counter() - clock

    # --- 2. gold ------------------------------------------------------------------------------------------------
    clock = time.perf_counter()
    gold_scorer = RewardScorer([config.gold_model_name], batch_size=config.score_batch_size,
                               allow_pickle=config.allow_pickle)
    if len(gold_scorer.members) != 1:
        raise UserError(f"--gold_model_name {config.gold_model_name}: has {len(gold_scorer.members)} members; "
                        "the gold is one reward model")
    gold_train, gold_eval = score_rows(gold_scorer, train_rows)[0], score_rows(gold_scorer, eval_rows)[0]
    del gold_scorer
    gold_shift = float(gold_eval.mean())  # the policy's mean gold reward becomes 0
    gold_eval -= gold_shift
    timings["gold"] = time.perf_counter() - clock

    # --- 3. label -----------------------------------------------------------------------------------------------
    clock = time.perf_counter()
    rng = random.Random(config.seed)
    per_row = np.split(gold_train, len(train_rows))
    pairs, counts = gold_labelled_pairs(train_rows, [s.tolist() for s in per_row], config.label_noise, rng)
    rng.shuffle(pairs)
    n_eval = max(1, round(len(pairs) * config.proxy_eval_fraction))
    if len(pairs) - n_eval < 2:
        raise UserError(f"only {len(pairs)} labelled pairs ({counts}); raise --num_train_prompts")
    write_jsonl(out / "proxy_pairs" / "eval.jsonl", pairs[:n_eval])
    write_jsonl(out / "proxy_pairs" / "train.jsonl", pairs[n_eval:])
    print(f"bon-study: {counts['pairs']} gold-labelled pairs ({counts['flipped']} labels flipped, "
          f"{counts['skipped_identical']} identical and {counts['skipped_ties']} tied answer pairs skipped); "
          f"{n_eval} held out", flush=True)

    # --- 4. proxies ---------------------------------------------------------------------------------------------
    proxy_config = make_config(rm_recipe.RewardModelConfig, {
        "output_dir": str(out / "proxy_rm"), "overwrite_output_dir": True,
        "model_name": config.proxy_model_name or config.model_name, "template": config.template,
        "dataset": str(out / "proxy_pairs" / "train.jsonl"), "eval_dataset": str(out / "proxy_pairs" / "eval.jsonl"),
        "split": "all", "data_format": "trl", "trainable": config.proxy_trainable,
        "num_layers": config.proxy_num_layers, "ensemble_size": config.ensemble_size,
        "num_train_epochs": config.proxy_epochs, "learning_rate": config.proxy_learning_rate,
        "max_length": config.max_prompt_tokens + config.max_new_tokens + 16, "eval_limit": n_eval,
        "eval_steps": 0, "feature_cache": config.feature_cache, "seed": config.seed, "progress": config.progress,
        "logging_steps": 10, "online": config.online, "allow_pickle": config.allow_pickle,
    })
    proxy_results = rm_recipe.run(proxy_config)
    timings["proxies"] = time.perf_counter() - clock

    # --- 5. score -----------------------------------------------------------------------------------------------
    clock = time.perf_counter()
    proxy_scorer = RewardScorer([str(out / "proxy_rm")], batch_size=config.score_batch_size)
    proxy_eval = score_rows(proxy_scorer, eval_rows)
    names = [f"proxy_{j}" for j in range(len(proxy_scorer.members))]
    N = config.n_samples
    # each member's eval-set reward mean/std (train-rm stores them), for bon --normalize
    stats = {name: {"mean": m.reward_mean, "std": m.reward_std}
             for name, m in zip(names, proxy_scorer.members, strict=True) if m.reward_mean is not None}
    scored = []
    for p, row in enumerate(eval_rows):
        window = slice(p * N, (p + 1) * N)
        scores = {name: proxy_eval[j, window].tolist() for j, name in enumerate(names)}
        scores["gold"] = gold_eval[window].tolist()
        scored.append({**row, "scores": scores, "score_stats": stats})
    write_jsonl(out / "scored.jsonl", scored)
    timings["score"] = time.perf_counter() - clock

    # --- 6. best-of-n -------------------------------------------------------------------------------------------
    clock = time.perf_counter()
    bon_config = make_config(bon_recipe.BonConfig, {
        "scores": str(out / "scored.jsonl"), "output_dir": str(out / "bon"), "proxy": ",".join(names),
        "gold": "gold", "ensembles": len(names) > 1, "uwo_weights": config.uwo_weights,
        "sample_ns": config.sample_ns, "ddof": 0, "normalize": config.normalize,
    })
    summary = json.loads(bon_recipe.run(bon_config).read_text(encoding="utf-8"))
    timings["bon"] = time.perf_counter() - clock

    # --- 7. verdict ---------------------------------------------------------------------------------------------
    verdicts = {label: overoptimization_verdict(curve["results"]) for label, curve in summary["curves"].items()}
    study = {
        "gold_model": config.gold_model_name, "gold_shift": gold_shift, "label_pairs": counts,
        # the ensemble-mean accuracy when train-rm reports it, else the members' mean
        "proxy_eval_accuracy": proxy_results.get("eval/accuracy", float(np.mean(
            [v for k, v in proxy_results.items() if k.startswith("eval/accuracy/")] or [float("nan")]))),
        "proxy_eval_accuracy_members": {k: v for k, v in proxy_results.items() if k.startswith("eval/accuracy/")},
        "N": N, "num_eval_prompts": len(eval_rows),
        "mean_response_tokens": float(np.mean([t for row in eval_rows for t in row["response_tokens"]])),
        "verdicts": verdicts, "timings_s": timings,
        "plot": str(out / "bon" / "plots" / "bon.png"),
    }
    atomic_write_text(out / "bon_study.json", json.dumps(study, indent=2) + "\n")
    print("bon-study: gold at n=1 -> peak (n) -> n=N, proxy gain; overoptimized (gold drop > 2 SE)?", flush=True)
    for label, v in verdicts.items():
        print(f"  {label:<22} gold {v['gold_at_n1']:+.3f} -> {v['gold_peak']:+.3f} (n={v['gold_peak_n']}) -> "
              f"{v['gold_at_max_n']:+.3f}   proxy +{v['proxy_gain']:.3f}   {verdict_words(v)}", flush=True)
    print(f"bon-study: {out / 'bon_study.json'}, plot {study['plot']}", flush=True)
    return study


def verdict_words(v: dict) -> str:
    """One verdict in words: overoptimized, a fall within the noise, or none."""
    if v["overoptimized"]:
        return "OVEROPTIMIZED" + (f" (gold drop {v['gold_drop_after_peak']:.3f} ± {v['gold_drop_se']:.3f})"
                                  if v["gold_drop_se"] is not None else "")
    if v["gold_fell"]:
        return f"no: gold fell {v['gold_drop_after_peak']:.3f}, within 2 SE (SE {v['gold_drop_se']:.3f})"
    return "no"
