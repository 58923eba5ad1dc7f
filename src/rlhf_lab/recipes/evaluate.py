"""Evaluate a policy: did alignment help, or did it game the reward / just get longer?

    rows      = responses of the model on fixed eval prompts (generated here with --model_name, or read from
                --generations, a generations.jsonl of `rlhf-lab generate`)
    rewards   = proxy R (--reward_models, ensembles combined by --objective mean | WCO | UWO) and gold (--gold_model_name)
    KL        = Σ_t k1 | k2 | k3 of log π_ref(y_t) − log π(y_t) per response (π = --model_name,
                π_ref = --ref_model_name; Schulman's estimators, rlhf_lab.losses.kl_estimates)
    shape     = response length (mean, median, p90, in tokens), EOS rate, distinct-1/2
    length    = per-prompt and global Pearson r(length, reward), reward spread, R² of reward ~ length
                ("A Long Way to Go", Singhal et al. 2023, its intrinsic metrics) and, with a baseline,
                how much of the reward gain over it a length regression explains
    paired    = against --baseline_generations on the same prompts: per-prompt mean of the model's responses minus
                the baseline's (gold / proxy reward, length) with SE, normal and paired-bootstrap CI and
                shown / not shown (rlhf_lab.eval.paired); the win rate's CI and whether it differs from ½
    win rate  = against --baseline_generations, judged by the gold RM (else the proxy), and the
                length-controlled win rate of Dubois et al. 2024 (rlhf_lab.eval.winrate); optionally by an LLM
                judge behind an OpenAI-compatible endpoint (rlhf_lab.eval.judge)

Outputs: ``OUT/eval.json`` (every number, flat ``group/name`` keys, plus ``notes``), ``OUT/generations.jsonl``
(the rows plus ``scores``, ``kl``, ``lengths``), ``OUT/plots/length_vs_reward.png``, ``OUT/config.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf_lab.config import RewardArgs, arg, config_to_yaml, require, torch_dtype
from rlhf_lab.data import load_prompts
from rlhf_lab.data.generations import read_generations
from rlhf_lab.data.templates import render_prompt
from rlhf_lab.errors import UserError
from rlhf_lab.eval import length as length_metrics
from rlhf_lab.eval.findings import Finding, write_findings
from rlhf_lab.eval.judge import JudgeClient, judge_pairs
from rlhf_lab.eval.metrics import distinct_n, eos_rate
from rlhf_lab.eval.paired import interval_words, paired_difference, prompt_means
from rlhf_lab.eval.winrate import (
    all_pairs,
    bootstrap_lc_interval,
    length_controlled_win_rate,
    win_rate_standard_error,
)
from rlhf_lab.generation import GenerationArgs, generate
from rlhf_lab.io import atomic_write_text, write_jsonl
from rlhf_lab.losses import sequence_kl
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.logprobs import response_logprobs
from rlhf_lab.rewards.ensemble import combine_scores, objective_name
from rlhf_lab.rundir import claim_run_dir

NAN = float("nan")


@dataclass
class EvaluateConfig(RewardArgs, GenerationArgs):
    # GenerationArgs fields (prompts, decoding, samples_per_prompt, generation_batch_size, seed) drive the
    # generation and the log-prob passes; RewardArgs the proxy (and the gold's reward_batch_size).
    model_name: str | None = arg(None, "policy to evaluate: generates on the eval prompts; with --generations "
                                 "it only gives the log-probs for KL (without it KL is skipped)")
    output_dir: str = arg("runs/evaluate", "where eval.json, generations.jsonl, plots/ and config.yaml go")
    limit: int | None = arg(None, "evaluate on the first N prompts of the split (or rows of --generations); "
                            "none = all")
    samples_per_prompt: int = arg(2, "responses per prompt (per-prompt length correlations need >= 2)")
    max_prompt_tokens: int | None = arg(None, "when generating: leave out prompts longer than this many tokens "
                                        "(templated; --limit then counts the prompts that fit); none = keep all")
    max_new_tokens: int = arg(64, "new tokens per response at most")
    generations: str | None = arg(None, "evaluate this generations.jsonl (rows as `rlhf-lab generate` writes "
                                  "them) instead of generating")
    ref_model_name: str = arg("default", "reference policy π_ref of the KL; 'base' = the base of a PEFT adapter "
                              "--model_name (the adapter switched off, no second copy)")
    gold_model_name: str | None = arg(None, "gold reward model (judges the win rate when given)")
    baseline_generations: str | None = arg(None, "generations.jsonl of a baseline (e.g. the SFT model) on the "
                                           "same prompts: win rate and length-controlled win rate against it")
    lc_l2: float = arg(1e-3, "L2 penalty of the length-controlled win rate's logistic fit (keeps it finite "
                       "when length separates the preferences)")
    judge_base_url: str | None = arg(None, "OpenAI-compatible endpoint of an LLM judge (e.g. "
                                     "http://localhost:8000/v1); off when empty")
    judge_model: str | None = arg(None, "the judge's model name")
    judge_api_key_env: str = arg("OPENAI_API_KEY", "environment variable holding the judge's API key (the key "
                                 "itself is never written anywhere)")
    judge_max_pairs: int = arg(64, "judge at most this many pairs (API calls), one per prompt")
    judge_timeout: float = arg(60.0, "seconds per judge request")
    confidence: float = arg(0.95, "confidence level of the paired intervals against the baseline")
    bootstrap: int = arg(2000, "paired bootstrap resamples of the prompts per interval (0 = normal interval only)")

    def validate(self) -> None:
        super().validate()
        require(self.generations is not None or self.model_name is not None, "model_name",
                "give a model to generate with, or --generations FILE")
        require(self.limit is None or self.limit >= 1, "limit", "must be at least 1")
        require(self.max_prompt_tokens is None or self.max_prompt_tokens >= 1, "max_prompt_tokens",
                "must be at least 1")
        objective_name(self.objective)
        self.validate_reward()
        require(self.lc_l2 >= 0, "lc_l2", "must be >= 0")
        require(self.judge_base_url is None or bool(self.judge_model), "judge_model",
                "name the judge's model (with --judge_base_url)")
        require(self.judge_base_url is None or self.baseline_generations is not None, "baseline_generations",
                "the judge compares against a baseline: give --baseline_generations")
        require(self.judge_max_pairs >= 1, "judge_max_pairs", "must be at least 1")
        require(self.judge_timeout > 0, "judge_timeout", "must be positive")
        require(0.0 < self.confidence < 1.0, "confidence", "must be in (0, 1)")
        require(self.bootstrap >= 0, "bootstrap", "must be >= 0")
        require(self.ref_model_name != "base" or self.model_name is not None, "ref_model_name",
                "'base' is the base of the PEFT adapter --model_name: give --model_name")


def prompt_key(row: dict) -> str:
    """What pairs a model row with a baseline row: the whole conversation, or the prompt text."""
    return json.dumps(row["messages"], sort_keys=True, ensure_ascii=False) if row.get("messages") else row["prompt"]


def summarise(values: list[float], prefix: str) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {f"{prefix}/mean": float(a.mean()), f"{prefix}/std": float(a.std()), f"{prefix}/median": float(np.median(a)),
            f"{prefix}/p90": float(np.percentile(a, 90)), f"{prefix}/min": float(a.min()), f"{prefix}/max": float(a.max())}


def _nested(flat: list[float], rows: list[dict]) -> list[list[float]]:
    out, position = [], 0
    for row in rows:
        n = len(row["responses"])
        out.append([float(v) for v in flat[position:position + n]])
        position += n
    return out


def length_bias(lengths: list[list[float]], rewards: list[list[float]], prefix: str) -> dict[str, float]:
    """Singhal et al. 2023's intrinsic metrics of one reward (see rlhf_lab.eval.length)."""
    flat_l = [v for g in lengths for v in g]
    flat_r = [v for g in rewards for v in g]
    fit = length_metrics.reward_after_length_regression(flat_l, flat_r)
    return {f"{prefix}/per_prompt_corr": length_metrics.per_prompt_length_reward_corr(lengths, rewards),
            f"{prefix}/global_corr": length_metrics.global_length_reward_corr(lengths, rewards),
            f"{prefix}/reward_spread": length_metrics.reward_spread(rewards),
            f"{prefix}/r2": fit.r2, f"{prefix}/slope": fit.slope,
            f"{prefix}/residual_std": float(np.std(fit.residuals)) if flat_l else NAN}


def gain_explained_by_length(model_l: list[list[float]], model_r: list[list[float]], base_l: list[list[float]],
                             base_r: list[list[float]], prefix: str, *, confidence: float = 0.95,
                             bootstrap: int = 2000, seed: int = 0) -> dict[str, float]:
    """Reward gain over the baseline split into length and the rest, per matched prompt's responses
    (``eval.length.length_share_of_gain``: the reward's slope in length fitted within each set):

        gain = r̄_model − r̄_base,   explained = b · (L̄_model − L̄_base),   after_length = gain − explained,
        share = explained / gain — each with a percentile interval from resampling the prompts.
    """
    r = length_metrics.length_share_of_gain(model_l, model_r, base_l, base_r, confidence=confidence, bootstrap=bootstrap,
                             seed=seed)
    out = {f"{prefix}/gain": r["gain"], f"{prefix}/gain_explained_by_length": r["explained"],
           f"{prefix}/gain_after_length": r["after_length"], f"{prefix}/length_share": r["share"],
           f"{prefix}/within_slope": r["slope"], f"{prefix}/num_prompts": r["n_prompts"]}
    for name, key in (("gain", "gain"), ("explained", "gain_explained_by_length"),
                      ("after_length", "gain_after_length"), ("share", "length_share")):
        for part in ("ci_low", "ci_high", "se", "shown"):
            out[f"{prefix}/{key}_{part}"] = r[f"{name}_{part}"]
    return out


# --------------------------------------------------------------------------------------------------------------
def run(config: EvaluateConfig, given: set[str] | None = None) -> dict:
    out = Path(config.output_dir)
    if config.model_name and not config.generations:
        check_bounds(config.model_name, tokens=(config.max_prompt_tokens or 1) + config.max_new_tokens,
                     tokens_flag="max_new_tokens", batch=config.generation_batch_size, batch_flag="generation_batch_size",
                     online=config.online, dtype=config.dtype,
                     prompt_note=f" (--max_prompt_tokens {config.max_prompt_tokens or 1} + --max_new_tokens)")
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    dtype = torch_dtype(config.dtype)
    metrics: dict[str, float] = {}
    notes: list[str] = []
    scorers = _Scorers(config, dtype)
    timings: dict[str, float] = {}

    # 1. The responses: generated here, or read from a file. Response token ids are kept for the KL.
    tokenizer = load_tokenizer(config.model_name or config.ref_model_name, config.online, config.trust_remote_code)
    decoding = config.decoding(given or set())
    policy = None
    if config.model_name is not None:
        policy = load_causal_lm(config.adapter or config.model_name, dtype, config.online, config.trust_remote_code,
                                config.allow_pickle)
    start = time.perf_counter()
    if config.generations is None:
        rows, response_ids = _generate_rows(config, policy, tokenizer, decoding)
    else:
        rows = read_generations(config.generations)
        if config.limit is not None:
            rows = rows[:config.limit]
        response_ids = None
        notes.append(f"responses read from {config.generations}; their decoding settings are not known here")
    timings["generate"] = time.perf_counter() - start
    for row in rows:
        row.setdefault("prompt", row["messages"][-1]["content"])
        row.setdefault("prompt_text", render_prompt(row["messages"], config.template, tokenizer))
    texts = [r for row in rows for r in row["responses"]]
    if not texts:
        raise UserError(f"{config.generations}: no responses to evaluate")

    # 2. Shape of the responses: token lengths (the response text under the policy's tokenizer, EOS excluded, so
    #    generated and file responses and the baseline's are measured alike), EOS rate, diversity.
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    metrics.update({"num_prompts": len(rows), "num_responses": len(texts)})
    metrics.update(summarise(lengths, "length"))
    finished = [f for row in rows for f in row.get("finished", [])]
    if len(finished) == len(texts):
        metrics["eos_rate"] = eos_rate(finished)
    else:
        notes.append("eos_rate skipped: the rows carry no 'finished' flags")
    metrics["distinct_1"] = distinct_n(texts, 1)
    metrics["distinct_2"] = distinct_n(texts, 2)

    # 3. Rewards: proxy (members combined by the objective) and gold.
    start = time.perf_counter()
    scores: dict[str, list[float]] = {}
    messages = [row["messages"] for row in rows for _ in row["responses"]]
    if config.reward_models:
        members, proxy = _proxy_scores(config, scorers, messages, texts)
        scores.update(members)
        scores["proxy"] = proxy
    else:
        notes.append("no --reward_models: proxy reward and its length bias skipped")
    if config.gold_model_name:
        scores["gold"] = scorers([config.gold_model_name]).score(messages, texts)[0].tolist()
    for name in ("proxy", "gold"):
        if name in scores:
            metrics.update(summarise(scores[name], f"reward/{name}"))
            metrics.update(length_bias(_nested(lengths, rows), _nested(scores[name], rows), f"length_bias/{name}"))
    timings["rewards"] = time.perf_counter() - start

    # 4. KL(π‖π_ref) per response: Σ over its tokens of k1, k2, k3.
    start = time.perf_counter()
    kl: dict[str, list[float]] = {}
    if policy is None:
        notes.append("KL skipped: the policy's log-probs need --model_name (the model that wrote --generations)")
    else:
        kl = _kl(config, policy, tokenizer, rows, response_ids, dtype, notes)
        if config.generations is None and not _pure_sampling(decoding):
            notes.append("responses were not sampled from π itself (temperature / top-p / top-k / penalty / greedy): "
                         "the KL estimators assume y ~ π, read them as indicative")
        for name, values in kl.items():
            metrics[f"kl/{name}"] = float(np.mean(values))
            metrics[f"kl/{name}_std"] = float(np.std(values))
    timings["kl"] = time.perf_counter() - start

    # 5. Against a baseline: the same judge RM on its responses, win rate and length-controlled win rate.
    if config.baseline_generations:
        start = time.perf_counter()
        metrics.update(_versus_baseline(config, rows, lengths, scores, tokenizer, scorers, notes))
        timings["baseline"] = time.perf_counter() - start

    # 6. Outputs.
    position = 0
    for row in rows:
        n = len(row["responses"])
        row["lengths"] = lengths[position:position + n]
        row["scores"] = {name: values[position:position + n] for name, values in scores.items()}
        if kl:
            row["kl"] = {name: values[position:position + n] for name, values in kl.items()}
        position += n
    write_jsonl(out / "generations.jsonl", rows)
    for stage, seconds in timings.items():
        metrics[f"time/{stage}_s"] = seconds
    result = {**{k: _json_number(v) for k, v in metrics.items()}, "notes": notes}
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if scores:
        _plot(out / "plots" / "length_vs_reward.png", lengths, scores)
    if "paired/length/diff" in metrics:
        write_findings(out, baseline_findings(metrics, "plots/length_vs_reward.png" if scores else None))
    _print_summary(metrics, notes, out)
    return result


def baseline_findings(metrics: dict, plot: str | None) -> list[Finding]:
    """The model against its baseline on the same prompts, as findings (``findings.json``; the report opens with
    them): more gold reward, more proxy reward, longer answers — each the paired per-prompt difference."""
    claims = {"gold": "the model earns more gold reward than the baseline",
              "proxy": "the model earns more proxy reward than the baseline",
              "length": "the model answers longer than the baseline"}
    effects = {"gold": "gold reward, model − baseline", "proxy": "proxy reward, model − baseline",
               "length": "length in tokens, model − baseline"}
    findings = []
    for name, claim in claims.items():
        prefix = f"paired/{name}"
        if f"{prefix}/diff" not in metrics or metrics[f"{prefix}/diff"] is None:
            continue
        diff = metrics[f"{prefix}/diff"]
        findings.append(Finding(
            key=f"evaluate/{name}", claim=claim, effect=effects[name], estimate=diff, se=metrics[f"{prefix}/se"],
            ci_low=metrics[f"{prefix}/ci_low"], ci_high=metrics[f"{prefix}/ci_high"],
            shown=bool(metrics[f"{prefix}/shown"] and diff > 0), n_prompts=metrics[f"{prefix}/num_prompts"],
            confidence=metrics[f"{prefix}/confidence"], plot=plot,
            design="per-prompt means of the responses, paired over the prompts both answered; t and bootstrap "
                   "intervals"))
    for name in ("gold", "proxy"):
        prefix = f"length_bias/{name}/vs_baseline"
        if metrics.get(f"{prefix}/gain_explained_by_length_ci_low") is None:
            continue
        share = metrics[f"{prefix}/length_share"]
        share_ci = (f"share of the gain {share:.0%}, {round(metrics[f'paired/{name}/confidence'] * 100)}% CI "
                    f"[{metrics[f'{prefix}/length_share_ci_low']:.0%}, {metrics[f'{prefix}/length_share_ci_high']:.0%}]"
                    if metrics.get(f"{prefix}/length_share_ci_low") is not None
                    else "no share: the gain itself is not shown")
        findings.append(Finding(
            key=f"evaluate/length_share/{name}", claim=f"part of the {name} reward gain over the baseline is length",
            effect=f"{name} reward gain explained by length (slope within each set × length difference)",
            estimate=metrics[f"{prefix}/gain_explained_by_length"],
            se=metrics[f"{prefix}/gain_explained_by_length_se"],
            ci_low=metrics[f"{prefix}/gain_explained_by_length_ci_low"],
            ci_high=metrics[f"{prefix}/gain_explained_by_length_ci_high"],
            shown=bool(metrics[f"{prefix}/gain_explained_by_length_shown"]
                       and metrics[f"{prefix}/gain_explained_by_length"] > 0),
            n_prompts=metrics[f"{prefix}/num_prompts"], confidence=metrics[f"paired/{name}/confidence"], plot=plot,
            design=f"gain {metrics[f'{prefix}/gain']:+.3f}, left at equal length "
                   f"{metrics[f'{prefix}/gain_after_length']:+.3f}; {share_ci}; percentile intervals from "
                   "resampling the prompts (the slope refitted each time)"))
    return findings


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null = undefined (e.g. a correlation of one sample per prompt)
    return value


def _generate_rows(config: EvaluateConfig, policy, tokenizer, decoding) -> tuple[list[dict], list[list[int]]]:
    cap = config.max_prompt_tokens
    prompts, reports = load_prompts(config.dataset, data_format=config.data_format, split=config.split,
                                    limit=None if cap else config.limit, bottom=config.bottom, top=config.top,
                                    on_bad_row=config.on_bad_row)
    for report in reports:
        print(report.summary(), flush=True)
    texts = [render_prompt(p.messages, config.template, tokenizer) for p in prompts]
    if cap:
        fits = [i for i, t in enumerate(texts) if len(tokenizer(t, add_special_tokens=False)["input_ids"]) <= cap]
        fits = fits[:config.limit] if config.limit is not None else fits
        print(f"evaluate: {len(fits)} prompts of at most {cap} tokens", flush=True)
        prompts, texts = [prompts[i] for i in fits], [texts[i] for i in fits]
    if not prompts:
        raise UserError(f"--dataset {config.dataset}: no prompts in split {config.split!r}"
                        + (f" of at most {cap} tokens" if cap else ""))
    outputs = generate(policy, tokenizer, texts, samples_per_prompt=config.samples_per_prompt,
                       decoding=decoding, batch_size=config.generation_batch_size, seed=config.seed,
                       progress=config.progress)
    rows = [{"prompt": p.text, "messages": p.messages, "prompt_text": t, "responses": [g.text for g in gens],
             "response_tokens": [g.num_tokens for g in gens], "finished": [g.finished for g in gens],
             "meta": {k: v for k, v in p.meta.items() if isinstance(v, (str, int, float, bool))}}
            for p, t, gens in zip(prompts, texts, outputs, strict=True)]
    return rows, [g.token_ids for gens in outputs for g in gens]


class _Scorers:
    """One RewardScorer per RM list for the whole run: the baseline is scored by the models already loaded."""

    def __init__(self, config: EvaluateConfig, dtype) -> None:
        self.config, self.dtype, self.loaded = config, dtype, {}

    def __call__(self, names: list[str]):
        from rlhf_lab.rewards.scorer import RewardScorer

        key = tuple(names)
        if key not in self.loaded:
            self.loaded[key] = RewardScorer(names, self.dtype, self.config.reward_batch_size, self.config.allow_pickle)
        return self.loaded[key]


def _proxy_scores(config: EvaluateConfig, scorers: _Scorers, messages,
                  texts) -> tuple[dict[str, list[float]], list[float]]:
    scorer = scorers(config.reward_models)
    member_scores = scorer.score(messages, texts)  # (k, N)
    members = {}
    if len(scorer.names) > 1:
        members = {f"proxy_member/{name}": member_scores[j].tolist() for j, name in enumerate(scorer.names)}
    objective = objective_name(config.objective)
    if objective != "mean" and len(scorer.names) == 1:
        objective = "mean"  # one member: WCO and UWO are that member's score
    combined = combine_scores(member_scores, objective, config.uwo_weight, config.ensemble_ddof)
    return members, combined.tolist()


def _kl(config: EvaluateConfig, policy, tokenizer, rows: list[dict], response_ids, dtype,
        notes: list[str]) -> dict[str, list[float]]:
    prompt_ids = [tokenizer(row["prompt_text"], add_special_tokens=False)["input_ids"]
                  for row in rows for _ in row["responses"]]
    if response_ids is None:  # from a file: re-tokenise the text; a finished response ended with EOS
        eos = tokenizer.eos_token_id
        response_ids = []
        for row in rows:
            flags = row.get("finished") or [False] * len(row["responses"])
            for text, done in zip(row["responses"], flags, strict=False):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                response_ids.append(ids + ([eos] if done and eos is not None else []))
        notes.append("KL of file responses: the text was re-tokenised (EOS appended when 'finished')")
    keep = [i for i, ids in enumerate(response_ids) if ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    p_rows = [prompt_ids[i] for i in keep]
    r_rows = [response_ids[i] for i in keep]
    policy_logps = response_logprobs(policy, p_rows, r_rows, pad, config.generation_batch_size)
    if config.ref_model_name == config.model_name and config.adapter is None:
        # π_ref is the policy itself (e.g. evaluating the starting model): the same log-probs, no second copy
        ref_logps = policy_logps
        notes.append("--ref_model_name is --model_name: π_ref = π, every KL estimate is 0")
    elif config.ref_model_name == "base":
        if not hasattr(policy, "disable_adapter"):
            raise UserError("--ref_model_name base: --model_name is not a PEFT adapter directory")
        with policy.disable_adapter():
            ref_logps = response_logprobs(policy, p_rows, r_rows, pad, config.generation_batch_size)
    else:
        ref_tok = load_tokenizer(config.ref_model_name, config.online, config.trust_remote_code)
        if ref_tok.get_vocab() != tokenizer.get_vocab():
            raise UserError(f"--ref_model_name {config.ref_model_name}: its tokenizer differs from the policy's; "
                            "KL needs both models on the same tokens")
        reference = load_causal_lm(config.ref_model_name, dtype, config.online, config.trust_remote_code,
                                   config.allow_pickle)
        ref_logps = response_logprobs(reference, p_rows, r_rows, pad, config.generation_batch_size)
        del reference
    kl = {"k1": [0.0] * len(response_ids), "k2": [0.0] * len(response_ids), "k3": [0.0] * len(response_ids)}
    for i, pol, ref in zip(keep, policy_logps, ref_logps, strict=True):
        for name, value in sequence_kl(pol, ref).items():
            kl[name][i] = float(value)
    return kl


def _pure_sampling(decoding) -> bool:
    return (decoding.temperature == 1.0 and decoding.top_p == 1.0 and decoding.top_k == 0
            and decoding.repetition_penalty == 1.0 and decoding.do_sample)


def _versus_baseline(config: EvaluateConfig, rows, lengths, scores, tokenizer, scorers: _Scorers,
                     notes) -> dict[str, float]:
    base_rows = read_generations(config.baseline_generations)
    by_key: dict[str, dict] = {}
    for row in base_rows:
        by_key.setdefault(prompt_key(row), row)
    matched = [(x, by_key[prompt_key(row)]) for x, row in enumerate(rows) if prompt_key(row) in by_key]
    if not matched:
        raise UserError(f"{config.baseline_generations}: no prompt in common with the evaluated responses")
    if len(matched) < len(rows):
        notes.append(f"{len(rows) - len(matched)} of {len(rows)} prompts have no baseline response and are left "
                     "out of the win rates")
    metrics: dict[str, float] = {"baseline/num_prompts": len(matched)}
    b_messages = [b["messages"] for _, b in matched for _ in b["responses"]]
    b_texts = [t for _, b in matched for t in b["responses"]]
    b_lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in b_texts]
    metrics.update(summarise(b_lengths, "baseline/length"))
    starts = np.cumsum([0] + [len(row["responses"]) for row in rows])
    model_idx = [list(range(starts[x], starts[x + 1])) for x, _ in matched]
    b_starts = np.cumsum([0] + [len(b["responses"]) for _, b in matched])
    base_idx = [list(range(b_starts[j], b_starts[j + 1])) for j in range(len(matched))]

    paired = dict(confidence=config.confidence, bootstrap=config.bootstrap, seed=config.seed)
    metrics.update(_paired_metrics("paired/length", paired_difference(
        prompt_means([[lengths[i] for i in ids] for ids in model_idx]),
        prompt_means([[b_lengths[i] for i in ids] for ids in base_idx]), **paired)))

    b_scores: dict[str, list[float]] = {}
    if "proxy" in scores:
        b_scores["proxy"] = _proxy_scores(config, scorers, b_messages, b_texts)[1]
    if "gold" in scores:
        b_scores["gold"] = scorers([config.gold_model_name]).score(b_messages, b_texts)[0].tolist()
    for name, values in b_scores.items():
        metrics.update(summarise(values, f"baseline/reward/{name}"))
        metrics.update(gain_explained_by_length([[lengths[i] for i in ids] for ids in model_idx],
                                                [[scores[name][i] for i in ids] for ids in model_idx],
                                                [[b_lengths[i] for i in ids] for ids in base_idx],
                                                [[values[i] for i in ids] for ids in base_idx],
                                                f"length_bias/{name}/vs_baseline", **paired))
        comp = all_pairs([[scores[name][i] for i in ids] for ids in model_idx],
                         [[values[i] for i in ids] for ids in base_idx],
                         [[lengths[i] for i in ids] for ids in model_idx],
                         [[b_lengths[i] for i in ids] for ids in base_idx])
        lc = length_controlled_win_rate(comp.preference, comp.length_diff, comp.weight, l2=config.lc_l2)
        interval = bootstrap_lc_interval(comp.preference, comp.length_diff, comp.prompt, comp.weight,
                                         l2=config.lc_l2, seed=config.seed)
        metrics.update(_win_metrics(f"win_rate/{name}", lc,
                                    win_rate_standard_error(comp.preference, comp.prompt, comp.weight), interval))
        metrics.update(_paired_metrics(f"paired/{name}", paired_difference(
            prompt_means([[scores[name][i] for i in ids] for ids in model_idx]),
            prompt_means([[values[i] for i in ids] for ids in base_idx]), **paired)))
        metrics.update(_win_interval(f"win_rate/{name}", comp, paired))
        _support_note(f"win_rate/{name}", lc, notes)
    scored_base = []
    for j, (_, b) in enumerate(matched):
        ids = base_idx[j]
        scored_base.append({**b, "lengths": [b_lengths[i] for i in ids],
                            "scores": {name: [values[i] for i in ids] for name, values in b_scores.items()}})
    write_jsonl(Path(config.output_dir) / "baseline_generations.jsonl", scored_base)
    if not b_scores:
        notes.append("no reward model: the win rate needs --gold_model_name or --reward_models")
    else:
        metrics["win_rate/judge_rm"] = "gold" if "gold" in b_scores else "proxy"  # type: ignore[assignment]

    if config.judge_base_url:
        key = os.environ.get(config.judge_api_key_env) or None
        if key is None:
            notes.append(f"judge: ${config.judge_api_key_env} is not set; requests are sent without a key")
        client = JudgeClient(config.judge_base_url, config.judge_model or "", key, config.judge_timeout)
        chosen = matched[:config.judge_max_pairs]  # first model sample vs first baseline sample of each prompt
        prefs = judge_pairs(client, [_conversation(rows[x]) for x, _ in chosen],
                            [rows[x]["responses"][0] for x, _ in chosen], [b["responses"][0] for _, b in chosen],
                            seed=config.seed)
        diffs = [lengths[model_idx[j][0]] - b_lengths[base_idx[j][0]] for j in range(len(chosen))]
        valid = [(p, d, j) for j, (p, d) in enumerate(zip(prefs, diffs, strict=True)) if p is not None]
        metrics["win_rate/llm_judge/unparsed"] = len(prefs) - len(valid)
        if valid:
            p, d, j = (list(v) for v in zip(*valid, strict=True))
            lc = length_controlled_win_rate(p, d, l2=config.lc_l2)
            interval = bootstrap_lc_interval(p, d, j, l2=config.lc_l2, seed=config.seed)
            metrics.update(_win_metrics("win_rate/llm_judge", lc, win_rate_standard_error(p, j), interval))
            _support_note("win_rate/llm_judge", lc, notes)
    return metrics


def _conversation(row: dict) -> str:
    """The instruction shown to the judge: the prompt, or the whole conversation when it has earlier turns."""
    messages = row.get("messages") or []
    if len(messages) <= 1:
        return row["prompt"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


LOW_SUPPORT = 0.2  # share of pairs near equal length (|z| < 0.5) under which the LC rate is an extrapolation


def _support_note(prefix: str, lc, notes: list[str]) -> None:
    if lc.length_support < LOW_SUPPORT:
        notes.append(f"{prefix}: only {lc.length_support:.0%} of the pairs are near equal length (|z| < 0.5); the "
                     "LC win rate extrapolates to Δlen = 0 — see its bootstrap interval and "
                     "length_bias/*/vs_baseline/gain_after_length")


PAIRED_KEYS = ("diff", "se", "ci_low", "ci_high", "bootstrap_ci_low", "bootstrap_ci_high", "confidence", "shown")


def _paired_metrics(prefix: str, result: dict) -> dict:
    """``{prefix}/diff, /se, /ci_low, /ci_high, /bootstrap_ci_low, /bootstrap_ci_high, /confidence, /shown,
    /num_prompts}`` of a ``paired_difference`` (model − baseline, per prompt)."""
    return {**{f"{prefix}/{key}": result[key] for key in PAIRED_KEYS}, f"{prefix}/num_prompts": result["n_prompts"]}


def _win_interval(prefix: str, comp, paired: dict) -> dict:
    """The win rate's interval over prompts: each prompt's weighted mean preference p̄_x, then
    ``paired_difference(p̄, ½)`` (the win rate minus ½) shifted back by ½; ``shown`` = the rate differs from ½."""
    per_prompt = [float(np.average(comp.preference[comp.prompt == x], weights=comp.weight[comp.prompt == x]))
                  for x in np.unique(comp.prompt)]
    result = paired_difference(per_prompt, 0.5, **paired)
    shift = {key: None if result[key] is None else result[key] + 0.5
             for key in ("ci_low", "ci_high", "bootstrap_ci_low", "bootstrap_ci_high")}
    return {f"{prefix}/ci_low": shift["ci_low"], f"{prefix}/ci_high": shift["ci_high"],
            f"{prefix}/bootstrap_ci_low": shift["bootstrap_ci_low"],
            f"{prefix}/bootstrap_ci_high": shift["bootstrap_ci_high"], f"{prefix}/shown": result["shown"]}


def _win_metrics(prefix: str, lc, se: float, interval: tuple[float, float]) -> dict[str, float]:
    return {f"{prefix}/win_rate": lc.win_rate, f"{prefix}/standard_error": se,
            f"{prefix}/lc_win_rate": lc.lc_win_rate, f"{prefix}/lc_win_rate_ci_low": interval[0],
            f"{prefix}/lc_win_rate_ci_high": interval[1], f"{prefix}/lc_intercept": lc.intercept,
            f"{prefix}/lc_length_slope": lc.length_slope, f"{prefix}/lc_length_scale": lc.length_scale,
            f"{prefix}/lc_length_support": lc.length_support, f"{prefix}/mean_length_diff": lc.mean_length_diff,
            f"{prefix}/num_pairs": lc.num_pairs}


def _plot(path: Path, lengths: list[float], scores: dict[str, list[float]]) -> None:
    from rlhf_lab.report.plots import new_figure, save_figure

    names = [n for n in ("proxy", "gold") if n in scores]
    fig, axes = new_figure(1, len(names))
    for ax, name in zip(axes[0], names, strict=True):
        x, y = np.asarray(lengths, dtype=float), np.asarray(scores[name], dtype=float)
        ax.scatter(x, y, s=10, alpha=0.6)
        fit = length_metrics.reward_after_length_regression(x.tolist(), y.tolist())
        if math.isfinite(fit.slope) and x.size:
            grid = np.linspace(x.min(), x.max(), 2)
            ax.plot(grid, fit.intercept + fit.slope * grid, color="C3",
                    label=f"OLS slope {fit.slope:.3g}, R² {fit.r2:.2f}")
            ax.legend(fontsize=8)
        ax.set_xlabel("response length (tokens)")
        ax.set_ylabel(f"{name} reward")
        ax.set_title(f"{name} reward vs length")
        ax.grid(True, alpha=0.3)
    save_figure(fig, path)


def _print_summary(metrics: dict, notes: list[str], out: Path) -> None:
    keys = ["reward/proxy/mean", "reward/gold/mean", "kl/k3", "length/mean", "eos_rate", "distinct_2",
            "length_bias/proxy/per_prompt_corr", "length_bias/gold/per_prompt_corr", "win_rate/gold/win_rate",
            "win_rate/gold/lc_win_rate", "win_rate/proxy/win_rate", "win_rate/proxy/lc_win_rate",
            "win_rate/llm_judge/win_rate", "win_rate/llm_judge/lc_win_rate"]
    shown = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))]
    print("evaluate: " + ", ".join(shown), flush=True)
    if "paired/length/diff" in metrics:
        parts = []
        for name, label in (("gold", "gold reward"), ("proxy", "proxy reward"), ("length", "length (tokens)")):
            if f"paired/{name}/diff" in metrics:
                result = {key: metrics[f"paired/{name}/{key}"] for key in PAIRED_KEYS}
                result["reason"] = "fewer than 2 prompts"
                parts.append(f"{label} {interval_words(result)}")
        print(f"evaluate: model − baseline, paired over {metrics['paired/length/num_prompts']} prompts: "
              + "; ".join(parts), flush=True)
        for name in ("gold", "proxy"):
            if metrics.get(f"win_rate/{name}/ci_low") is not None:
                low, high = metrics[f"win_rate/{name}/ci_low"], metrics[f"win_rate/{name}/ci_high"]
                call = "differs from 1/2: shown" if metrics[f"win_rate/{name}/shown"] else "not shown to differ from 1/2"
                print(f"evaluate: {name} win rate {metrics[f'win_rate/{name}/win_rate']:.3f}, "
                      f"{metrics[f'paired/{name}/confidence']:.0%} CI [{low:.3f}, {high:.3f}], {call}", flush=True)
    for note in notes:
        print(f"evaluate: note: {note}", flush=True)
    print(f"evaluate: -> {out / 'eval.json'}", flush=True)
