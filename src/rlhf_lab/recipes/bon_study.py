"""The overoptimization study with best-of-n (Gao et al. 2022; Coste et al. 2023), on any policy: `rlhf-lab bon-study`.

The synthetic setup of Coste et al. 2023 (reward-model ensembles), end to end, in one run directory:

    1. sample      train prompts × `train_samples` and eval prompts × N answers from the policy (shared prefill)
    2. gold        score every answer with the gold RM (a stronger RM standing in for human judgement);
                   shifted so the policy's mean gold reward on the eval prompts is 0 (Coste et al.'s advice)
    3. label       pairs of the policy's own answers per train prompt, preferred = higher gold score; a share
                   `proxy_eval_fraction` is held out with its clean gold labels (the proxies' accuracy against the
                   gold), and each training label is flipped with probability `label_noise` (noise makes
                   overoptimization visible, as Coste et al. advise)
    4. proxies     train-rm on those pairs: k members on a shared frozen trunk (`proxy_trainable`, `proxy_num_layers`
                   make the proxies weaker than the gold), member j with its own seed / data order
    5. score       every eval answer with the gold and each proxy member, one trunk pass for all of them when they
                   are heads on the same base model (rlhf_lab.rewards.scorer)
    6. best-of-n   `rlhf-lab bon` over the scores: member curves, ensemble mean / WCO / UWO-λ, gold of the answer
                   each picks; proxy and gold vs n and vs KL_bon = log n − (n−1)/n
    7. verdict     per curve: does gold fall while proxy rises (overoptimization)? The peak n is chosen on one
                   half of the eval prompts, the fall past it measured on the other half, paired per prompt
                   (rlhf_lab.eval.paired); ensembles against the members' mean, paired, at every n

Outputs: `generations_{train,eval}.jsonl`, `proxy_pairs/{train,eval}.jsonl`, `proxy_rm/` (the train-rm run),
`scored.jsonl` (the rlhf-lab scores layout `bon` reads: `scores: {member…, "gold"}`), `bon/` (curves, plots),
`bon_study.json` (verdicts, comparisons, the half split), `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf_lab.config import (
    ModelArgs,
    arg,
    config_to_yaml,
    load_yaml_config,
    make_config,
    require,
    require_seed,
    torch_dtype,
)
from rlhf_lab.data import FORMATS, load_prompts
from rlhf_lab.data.records import Prompt
from rlhf_lab.data.templates import render_prompt
from rlhf_lab.errors import UserError
from rlhf_lab.eval.bon import kl_bon, read_per_prompt
from rlhf_lab.eval.findings import Finding, verdict_words, write_findings
from rlhf_lab.eval.paired import interval_words, paired_difference, split_halves
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.io import atomic_write_text, read_jsonl, write_jsonl
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
                          "ensembles combine them (bon --normalize; Coste et al.'s code combines raw scores)")
    sample_ns: str = arg("", "n values for best-of-n (default: 1, 2, 4, … up to N)")
    reward_batch_size: int = arg(16, "texts per reward-model forward pass")
    feature_cache: str | None = arg(None, "train-rm feature cache directory for the proxies' frozen trunk")
    samples_from: str | None = arg(None, "reuse the answers of an earlier bon-study run directory instead of "
                                   "sampling (its sampling settings must equal this run's; a larger bank gives its "
                                   "first prompts and answers): vary the proxies on one sample bank")
    confidence: float = arg(0.95, "confidence level of the paired intervals (the fall past the peak, ensembles "
                            "vs members)")
    bootstrap: int = arg(2000, "paired bootstrap resamples of the prompts per interval (0 = normal interval only)")
    seed: int = arg(0, "seed of sampling, label noise, proxy training, the prompts' half split and the bootstrap")
    progress: bool = arg(True, "show progress bars")

    def validate(self) -> None:
        require(bool(self.gold_model_name), "gold_model_name", "give the gold reward model")
        for key in ("num_train_prompts", "num_eval_prompts", "max_new_tokens", "generation_batch_size",
                    "ensemble_size", "reward_batch_size", "max_prompt_tokens"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        require(self.train_samples >= 2 and self.train_samples % 2 == 0, "train_samples", "must be even and >= 2")
        require(self.n_samples >= 2, "n_samples", "must be at least 2")
        require(0.0 <= self.label_noise < 0.5, "label_noise", "must be in [0, 0.5)")
        require(0.0 < self.proxy_eval_fraction < 1.0, "proxy_eval_fraction", "must be in (0, 1)")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.proxy_epochs > 0, "proxy_epochs", "must be positive")
        require(0.0 < self.confidence < 1.0, "confidence", "must be in (0, 1)")
        require(self.bootstrap >= 0, "bootstrap", "must be >= 0")
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


# The settings that decide which answers a bon-study samples: a bank is reusable only when they are equal. Counts
# may shrink: prompts are kept in data order and every answer has its own random stream, seeded by (seed, prompt,
# answer), so a smaller run's prompts and answers are the first ones of a larger bank.
BANK_SETTINGS = ("model_name", "template", "dtype", "dataset", "data_format", "on_bad_row", "max_prompt_tokens",
                 "max_new_tokens", "temperature", "seed")
BANK_COUNTS = {"train": ("num_train_prompts", "train_samples"), "eval": ("num_eval_prompts", "n_samples")}


def read_sample_bank(config: BonStudyConfig) -> tuple[dict[str, list[dict]], np.ndarray | None]:
    """The ``train`` and ``eval`` answer rows of the bon-study run ``config.samples_from``, cut to this run's prompt
    and answer counts, and the gold's raw scores of those eval answers (P, N) when that run scored them with the
    same ``gold_model_name`` (else None); a ``UserError`` naming the first setting that differs (or the count that
    is short) before any model loads."""
    source = Path(config.samples_from)
    where = f"--samples_from {source}"
    files = [source / "config.yaml"] + [source / f"generations_{name}.jsonl" for name in BANK_COUNTS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{where}: no {', '.join(missing)} (not a finished bon-study run directory)")
    theirs = load_yaml_config(str(files[0]), BonStudyConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(BonStudyConfig)}
    for key in BANK_SETTINGS:
        value = theirs.get(key, defaults[key])
        if value != getattr(config, key):
            raise UserError(f"{where}: its {key} is {value!r}, this run's {getattr(config, key)!r}: its answers are "
                            "not the ones this run would sample")
    bank = {}
    for (name, (prompts_key, samples_key)), path in zip(BANK_COUNTS.items(), files[1:], strict=True):
        rows = read_jsonl(path)
        prompts, samples = getattr(config, prompts_key), getattr(config, samples_key)
        have = min(len(row["responses"]) for row in rows) if rows else 0
        if len(rows) < prompts or have < samples:
            raise UserError(f"{where}: {path.name} has {len(rows)} prompts × {have} answers; --{prompts_key} "
                            f"{prompts} × --{samples_key} {samples} needs more (sample a new bank instead)")
        bank[name] = [{"messages": row["messages"],
                       **{key: row[key][:samples] for key in ("responses", "response_tokens", "finished")}}
                      for row in rows[:prompts]]
    gold = None
    study_file, scored_file = source / "bon_study.json", source / "scored.jsonl"
    if study_file.is_file() and scored_file.is_file():
        study = json.loads(study_file.read_text(encoding="utf-8"))
        if study.get("gold_model") == config.gold_model_name:  # scored.jsonl holds the gold minus gold_shift
            scored = read_jsonl(scored_file)[:config.num_eval_prompts]
            gold = np.array([row["scores"]["gold"][:config.n_samples] for row in scored]) + study["gold_shift"]
    return bank, gold


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


def flip_labels(pairs: list[dict], noise: float, rng: random.Random) -> tuple[list[dict], int]:
    """Each pair's chosen and rejected swapped with probability ``noise`` (one ``rng.random()`` per pair, in
    order); returns the new pairs and how many were flipped."""
    out, flipped = [], 0
    for pair in pairs:
        if rng.random() < noise:
            pair = {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}
            flipped += 1
        out.append(pair)
    return out, flipped


def proxy_accuracy(results: dict, n_pairs: int) -> dict:
    """The proxies' held-out accuracy against the gold from train-rm's results: ``mean`` (the ensemble's
    ``eval/accuracy`` when reported, else the members' mean), its binomial SE √(a(1−a)/n) over the ``n_pairs``
    pairs, and each member's accuracy with its SE."""
    members = {k.removeprefix("eval/accuracy/"): v for k, v in results.items() if k.startswith("eval/accuracy/")}
    mean = results.get("eval/accuracy", float(np.mean(list(members.values()))) if members else float("nan"))

    def se(a: float) -> float:
        return float(np.sqrt(a * (1 - a) / n_pairs)) if n_pairs > 0 and np.isfinite(a) else float("nan")

    return {"mean": float(mean), "se": se(mean), "n_pairs": n_pairs,
            "members": {m: {"accuracy": a, "se": se(a)} for m, a in members.items()}}


def accuracy_words(accuracy: dict) -> str:
    """``0.680 ± 0.033 (SE; members 0.66–0.70)``."""
    members = [m["accuracy"] for m in accuracy["members"].values()]
    spread = f"; members {min(members):.2f}–{max(members):.2f}" if len(members) > 1 else ""
    return f"{accuracy['mean']:.3f} ± {accuracy['se']:.3f} (SE{spread})"


def overoptimization_verdict(rows: list[dict], gold: np.ndarray | None = None, proxy: np.ndarray | None = None,
                             *, seed: int = 0, confidence: float = 0.95, bootstrap: int = 2000) -> dict:
    """One best-of-n curve's verdict: does gold fall past its peak while the proxy keeps rising, beyond noise?

    Raw, from the curve ``rows`` (all prompts): gold at n = 1, its peak and the peak's n, gold at the largest n,
    ``gold_fell`` (gold ends below its peak while proxy ends above its value there) and ``gold_drop_se`` =
    √(se_peak² + se_N²), the unpaired error the old call used (kept for reading old results).

    Paired and held out, from the per-prompt estimates ``gold``, ``proxy`` (P, len(rows)) of ``bon_per_prompt``:
    the prompts are split by ``split_halves(P, seed)``; the peak n* = argmax_n of the selection half's mean gold
    (the first on ties); on the test half T

        fall_p = gold_p(n*) − gold_p(n_max),   p ∈ T     → ``paired_difference``: mean, SE, normal and bootstrap CI
        proxy_rise = mean_T proxy_p(n_max) − mean_T proxy_p(n*)

    ``overoptimized`` = n* < n_max, proxy_rise > 0, and the fall is positive and shown (its CI excludes 0).
    Choosing n* on other prompts than those it is tested on keeps the maximum's upward bias (the winner's curse)
    out of the fall. Without per-prompt values ``overoptimized`` is False (no paired test possible).
    """
    gold_curve = [r["gold_score"] for r in rows]
    proxy_curve = [r["proxy_score"] for r in rows]
    peak = int(np.argmax(gold_curve))
    drop = gold_curve[peak] - gold_curve[-1]
    se_peak, se_last = rows[peak].get("gold_se"), rows[-1].get("gold_se")
    verdict = {
        "gold_at_n1": gold_curve[0], "gold_peak": gold_curve[peak], "gold_peak_n": rows[peak]["n"],
        "gold_at_max_n": gold_curve[-1], "proxy_gain": proxy_curve[-1] - proxy_curve[0],
        "gold_gain": gold_curve[-1] - gold_curve[0], "gold_drop_after_peak": drop,
        "gold_drop_se": None if se_peak is None or se_last is None else float(np.hypot(se_peak, se_last)),
        "gold_fell": bool(peak < len(rows) - 1 and drop > 0 and proxy_curve[-1] > proxy_curve[peak]),
        "overoptimized": False,
    }
    if gold is None or proxy is None:
        return {**verdict, "gold_drop_reason": "no per-prompt values: no paired test"}
    select, test = split_halves(gold.shape[0], seed)
    if select.size == 0 or test.size == 0:
        return {**verdict, "gold_drop_reason": f"{gold.shape[0]} prompt(s): too few to split into two halves"}
    chosen = int(np.argmax(gold[select].mean(axis=0)))
    fall = paired_difference(gold[test, chosen], gold[test, -1], confidence=confidence, bootstrap=bootstrap,
                             seed=seed)
    proxy_rise = float(proxy[test, -1].mean() - proxy[test, chosen].mean())
    overoptimized = chosen < len(rows) - 1 and proxy_rise > 0 and fall["shown"] and fall["diff"] > 0
    return {
        **verdict,
        "gold_peak_n_selected": rows[chosen]["n"], "max_n": rows[-1]["n"], "held_out_prompts": fall["n_prompts"],
        "gold_drop_paired": fall["diff"], "gold_drop_paired_se": fall["se"],
        "gold_drop_ci_low": fall["ci_low"], "gold_drop_ci_high": fall["ci_high"],
        "gold_drop_bootstrap_ci_low": fall["bootstrap_ci_low"],
        "gold_drop_bootstrap_ci_high": fall["bootstrap_ci_high"], "gold_drop_confidence": confidence,
        "gold_drop_shown": fall["shown"], "gold_drop_reason": fall["reason"],
        "proxy_rise_after_peak": proxy_rise, "overoptimized": bool(overoptimized),
    }


def ensemble_comparisons(ns: list[int], gold: dict[str, np.ndarray], members: list[str], ensembles: list[str], *,
                         confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> list[dict]:
    """Every ensemble objective against the mean of the single members, at every n, paired over all prompts.

        d_p(n) = gold_ens,p(n) − (1/k) Σ_j gold_member_j,p(n)     → ``paired_difference`` over the P prompts

    ``gold`` maps curve labels to per-prompt estimates (P, len(ns)). The n values are the fixed grid (nothing is
    selected from the data), but each n has its own interval: they are not simultaneous.
    Rows ``{"a", "b", "n", "kl_bon", "gold_diff", "se", "ci_low", "ci_high", "bootstrap_ci_low",
    "bootstrap_ci_high", "shown", "n_prompts"}``, ``b`` = "members_mean".
    """
    if not members or not ensembles:
        return []
    members_mean = np.mean([gold[label] for label in members], axis=0)
    rows = []
    for label in ensembles:
        for column, n in enumerate(ns):
            result = paired_difference(gold[label][:, column], members_mean[:, column], confidence=confidence,
                                       bootstrap=bootstrap, seed=seed)
            rows.append({"a": label, "b": "members_mean", "n": n, "kl_bon": kl_bon(n), "gold_diff": result["diff"],
                         "se": result["se"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
                         "bootstrap_ci_low": result["bootstrap_ci_low"],
                         "bootstrap_ci_high": result["bootstrap_ci_high"], "confidence": confidence,
                         "shown": result["shown"], "n_prompts": result["n_prompts"]})
    return rows


def member_fall(ns: list[int], gold: dict[str, np.ndarray], proxy: dict[str, np.ndarray], members: list[str],
                seed: int, *, confidence: float = 0.95, bootstrap: int = 2000) -> dict:
    """Finding (a) pooled over the single proxies: does gold fall past its peak while each proxy keeps rising?

    Each member j gets its peak column c_j = argmax_n of its mean gold on the selection half (``split_halves``);
    on the test half T, per prompt,

        fall_p = (1/k) Σ_j [gold_j,p(n_{c_j}) − gold_j,p(n_max)]      rise_p = (1/k) Σ_j [proxy_j,p(n_max) − proxy_j,p(n_{c_j})]

    and ``paired_difference(fall, 0)`` gives the effect and its CI. Averaging the k members' falls per prompt
    keeps the prompt the unit (the members share the prompts and answers) and uses every member at once.
    A member whose selection-half peak is the largest n contributes a fall of 0 there.
    """
    select, test = split_halves(next(iter(gold.values())).shape[0], seed)
    if select.size == 0 or test.size == 0 or not members:
        return {"fall": paired_difference([], [], confidence=confidence, bootstrap=0), "peaks": {}, "proxy_rise": None}
    peaks = {m: int(np.argmax(gold[m][select].mean(axis=0))) for m in members}
    fall = np.mean([gold[m][test, c] - gold[m][test, -1] for m, c in peaks.items()], axis=0)
    rise = np.mean([proxy[m][test, -1] - proxy[m][test, c] for m, c in peaks.items()], axis=0)
    return {"fall": paired_difference(fall, 0.0, confidence=confidence, bootstrap=bootstrap, seed=seed),
            "peaks": {m: ns[c] for m, c in peaks.items()}, "proxy_rise": float(rise.mean())}


def study_findings(ns: list[int], fall: dict, comparisons: list[dict], num_prompts: int,
                   plots: dict[str, str]) -> list[Finding]:
    """The study's answer: (a) the single proxies overoptimize; (b) each ensemble keeps more gold than a member."""
    n_max = ns[-1]
    f = fall["fall"]
    peaks = ", ".join(f"{m.removeprefix('member_')}: n={n}" for m, n in fall["peaks"].items())
    rise = "n/a" if fall["proxy_rise"] is None else f"{fall['proxy_rise']:+.3f}"
    findings = [Finding(
        key="bon/single_proxy_overoptimized",
        claim=f"best-of-n overoptimizes a single proxy: its gold falls from its peak n to n={n_max} while its proxy "
              "rises",
        effect="gold(peak n) − gold(max n), mean over members", estimate=f["diff"] if f["diff"] is not None else 0.0,
        se=f["se"], ci_low=f["ci_low"], ci_high=f["ci_high"], n_prompts=f["n_prompts"],
        shown=bool(f["shown"] and (f["diff"] or 0) > 0 and (fall["proxy_rise"] or 0) > 0),
        confidence=f["confidence"], plot=plots.get("curves"),
        design=f"peak n of each member chosen on the other {num_prompts - f['n_prompts']} prompts ({peaks}); "
               f"proxy rise past the peak {rise}; "
               "paired over prompts, t and bootstrap intervals")]
    for row in comparisons:
        if row["n"] != n_max:
            continue
        objective = row["a"].removeprefix("ensemble_")
        findings.append(Finding(
            key=f"bon/ensemble_beats_members/{objective}",
            claim=f"the {objective} ensemble keeps more gold than a single proxy at n={n_max}",
            effect=f"gold({objective}) − mean gold of the members", estimate=row["gold_diff"], se=row["se"],
            ci_low=row["ci_low"], ci_high=row["ci_high"], n_prompts=row["n_prompts"],
            shown=bool(row["shown"] and row["gold_diff"] > 0), confidence=row["confidence"],
            plot=plots.get("ensembles"),
            design=f"n={n_max} fixed in advance (the largest n); paired over all prompts; every n in bon_study.json"))
    return findings


def run(config: BonStudyConfig) -> dict:
    out = Path(config.output_dir)
    check_bounds(config.model_name, tokens=1 + config.max_new_tokens, tokens_flag="max_new_tokens",
                 batch=config.generation_batch_size, batch_flag="generation_batch_size", online=config.online,
                 dtype=config.dtype, prompt_note=" (a 1-token prompt + --max_new_tokens)")
    # read before this run rewrites any file (--samples_from may name its own output_dir)
    bank, bank_gold = read_sample_bank(config) if config.samples_from else (None, None)
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
        if len(kept) < count:  # a study sized for more prompts than the data has would silently lose power
            flag = "num_train_prompts" if name == "train" else "num_eval_prompts"
            raise UserError(f"--{flag} {count}: only {len(kept)} {name}-split prompts of {config.dataset} have at "
                            f"most {config.max_prompt_tokens} tokens (raise --max_prompt_tokens or lower --{flag})")
        prompt_sets[name] = kept
    if bank is not None:
        for name, rows in bank.items():  # the same settings must have kept the same prompts
            for index, (row, prompt) in enumerate(zip(rows, prompt_sets[name], strict=True)):
                if row["messages"] != prompt.messages:
                    raise UserError(f"--samples_from {config.samples_from}: generations_{name}.jsonl line "
                                    f"{index + 1} answers another prompt than this run's {name} prompt {index + 1} "
                                    "(has the data changed?)")
        train_rows, eval_rows = bank["train"], bank["eval"]
        print(f"bon-study: reusing {sum(len(r['responses']) for r in train_rows)} train and "
              f"{sum(len(r['responses']) for r in eval_rows)} eval answers from {config.samples_from} (no sampling)",
              flush=True)
    else:
        policy = load_causal_lm(config.model_name, torch_dtype(config.dtype), config.online,
                                config.trust_remote_code, config.allow_pickle)
        train_rows = sample_answers(policy, tokenizer, prompt_sets["train"], config, config.train_samples,
                                    config.seed)
        eval_rows = sample_answers(policy, tokenizer, prompt_sets["eval"], config, config.n_samples, config.seed + 1)
        del policy
    write_jsonl(out / "generations_train.jsonl", train_rows)
    write_jsonl(out / "generations_eval.jsonl", eval_rows)
    timings["sample"] = time.perf_counter() - clock

    # --- 2. gold (the train answers; the eval answers are scored with the proxies in step 5) -------------------
    clock = time.perf_counter()
    gold_scorer = RewardScorer([config.gold_model_name], batch_size=config.reward_batch_size,
                               allow_pickle=config.allow_pickle)
    if len(gold_scorer.members) != 1:
        raise UserError(f"--gold_model_name {config.gold_model_name}: has {len(gold_scorer.members)} members; "
                        "the gold is one reward model")
    gold_train = score_rows(gold_scorer, train_rows)[0]
    del gold_scorer
    timings["gold"] = time.perf_counter() - clock

    # --- 3. label -----------------------------------------------------------------------------------------------
    clock = time.perf_counter()
    rng = random.Random(config.seed)
    per_row = np.split(gold_train, len(train_rows))
    pairs, counts = gold_labelled_pairs(train_rows, [s.tolist() for s in per_row], 0.0, rng)
    rng.shuffle(pairs)
    n_eval = max(1, round(len(pairs) * config.proxy_eval_fraction))
    if len(pairs) - n_eval < 2:
        raise UserError(f"only {len(pairs)} labelled pairs ({counts}); raise --num_train_prompts")
    # the held-out pairs keep the gold's own labels: the proxies' eval accuracy is their agreement with the gold
    train_pairs, counts["flipped"] = flip_labels(pairs[n_eval:], config.label_noise, rng)
    write_jsonl(out / "proxy_pairs" / "eval.jsonl", pairs[:n_eval])
    write_jsonl(out / "proxy_pairs" / "train.jsonl", train_pairs)
    print(f"bon-study: {counts['pairs']} gold-labelled pairs ({counts['skipped_identical']} identical and "
          f"{counts['skipped_ties']} tied answer pairs skipped): {len(train_pairs)} train the proxies "
          f"({counts['flipped']} labels flipped), {n_eval} held out with the gold's labels", flush=True)

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
    if bank_gold is not None:  # the bank's gold scores: the pass only runs the proxies' layers
        scorer = RewardScorer([str(out / "proxy_rm")], batch_size=config.reward_batch_size,
                              allow_pickle=config.allow_pickle)
        proxy_eval, gold_eval = score_rows(scorer, eval_rows), bank_gold.ravel()
        proxy_members = scorer.members
        judges = f"{len(proxy_members)} proxies (the gold's scores from {config.samples_from})"
    else:
        scorer = RewardScorer([config.gold_model_name, str(out / "proxy_rm")], batch_size=config.reward_batch_size,
                              allow_pickle=config.allow_pickle)  # the gold first; one trunk pass when they share it
        all_eval = score_rows(scorer, eval_rows)
        gold_eval, proxy_eval = all_eval[0], all_eval[1:]
        proxy_members = scorer.members[1:]
        judges = f"the gold and {len(proxy_members)} proxies"
    gold_shift = float(gold_eval.mean())  # the policy's mean gold reward becomes 0
    gold_eval = gold_eval - gold_shift
    names = [f"proxy_{j}" for j in range(len(proxy_members))]
    N = config.n_samples
    # each member's eval-set reward mean/std (train-rm stores them), for bon --normalize
    stats = {name: {"mean": m.reward_mean, "std": m.reward_std}
             for name, m in zip(names, proxy_members, strict=True) if m.reward_mean is not None}
    print(f"bon-study: scored {len(eval_rows) * N} eval answers with {judges} in {len(scorer.trunks)} trunk "
          "pass(es) per batch", flush=True)
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
        "sample_ns": config.sample_ns, "ensemble_ddof": 0, "normalize": config.normalize,
    })
    summary = json.loads(bon_recipe.run(bon_config).read_text(encoding="utf-8"))
    timings["bon"] = time.perf_counter() - clock

    # --- 7. verdict ---------------------------------------------------------------------------------------------
    ns, proxy_pp, gold_pp = read_per_prompt(out / "bon" / summary["per_prompt"])
    paired = dict(confidence=config.confidence, bootstrap=config.bootstrap, seed=config.seed)
    verdicts = {label: overoptimization_verdict(curve["results"], gold_pp[label], proxy_pp[label], **paired)
                for label, curve in summary["curves"].items()}
    labels = list(summary["curves"])
    comparisons = ensemble_comparisons(ns, gold_pp, [x for x in labels if x.startswith("member_")],
                                       [x for x in labels if x.startswith("ensemble_")], **paired)
    select, test = split_halves(len(eval_rows), config.seed)
    members = [x for x in labels if x.startswith("member_")]
    fall = member_fall(ns, gold_pp, proxy_pp, members, **paired)
    plots = {"curves": "bon/plots/bon.png"}
    if comparisons:
        from rlhf_lab.report.plots import plot_paired_differences

        series = {}
        for row in comparisons:
            series.setdefault(f"{row['a'].removeprefix('ensemble_')} − members' mean", []).append(
                {"kl_bon": row["kl_bon"], "diff": row["gold_diff"], "ci_low": row["ci_low"], "ci_high": row["ci_high"]})
        plot_paired_differences(series, out / "bon" / "plots" / "ensembles_vs_members.png", y_label="gold difference",
                                title=f"ensemble − single proxy, gold, paired over {len(eval_rows)} prompts "
                                      f"({round(config.confidence * 100)}% CI)")
        plots["ensembles"] = "bon/plots/ensembles_vs_members.png"
    findings = study_findings(ns, fall, comparisons, len(eval_rows), plots)
    write_findings(out, findings)
    accuracy = proxy_accuracy(proxy_results, n_eval)
    print(f"bon-study: proxy accuracy against the gold on {n_eval} held-out pairs: {accuracy_words(accuracy)}",
          flush=True)
    study = {
        "gold_model": config.gold_model_name, "gold_shift": gold_shift, "label_pairs": counts,
        # against the gold's own labels on the held-out pairs (the ensemble mean when train-rm reports it)
        "proxy_eval_accuracy": accuracy["mean"], "proxy_eval_accuracy_se": accuracy["se"],
        "proxy_eval_pairs": n_eval, "proxy_eval_accuracy_members": accuracy["members"],
        "N": N, "num_eval_prompts": len(eval_rows),
        "mean_response_tokens": float(np.mean([t for row in eval_rows for t in row["response_tokens"]])),
        "verdicts": verdicts, "comparisons": comparisons,
        "member_fall": {**fall["fall"], "peaks": fall["peaks"], "proxy_rise": fall["proxy_rise"]},
        "findings": [f.sentence() for f in findings],
        # the peak n of each curve is chosen on the selection half and its fall tested on the test half
        "peak_selection": {"method": "half split", "seed": config.seed, "selection_prompts": select.tolist(),
                           "test_prompts": test.tolist()},
        "timings_s": timings,
        "plot": str(out / "bon" / "plots" / "bon.png"),
    }
    atomic_write_text(out / "bon_study.json", json.dumps(study, indent=2) + "\n")
    print(f"bon-study: gold at n=1 -> peak (n) -> n=N, proxy gain (all prompts); overoptimized? (peak n chosen "
          f"on {select.size} prompts, its fall tested on the other {test.size}, paired)", flush=True)
    for label, v in verdicts.items():
        print(f"  {label:<22} gold {v['gold_at_n1']:+.3f} -> {v['gold_peak']:+.3f} (n={v['gold_peak_n']}) -> "
              f"{v['gold_at_max_n']:+.3f}   proxy +{v['proxy_gain']:.3f}   {verdict_words(v)}", flush=True)
    if comparisons:
        print(f"bon-study: ensembles vs the members' mean, gold at n = {ns[-1]} (paired over {len(eval_rows)} "
              "prompts; every n in bon_study.json):", flush=True)
        for row in comparisons:
            if row["n"] == ns[-1]:
                print(f"  {row['a']:<22} {comparison_words(row)}", flush=True)
    print("bon-study: findings", flush=True)
    for finding in findings:
        print(f"  {finding.sentence()}", flush=True)
    print(f"bon-study: {out / 'bon_study.json'}, plot {study['plot']}", flush=True)
    return study


def comparison_words(row: dict) -> str:
    """``ensemble − members' mean at n=32: gold +0.080, 95% CI [+0.010, +0.150], shown``."""
    result = {"diff": row["gold_diff"], "se": row["se"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
              "shown": row["shown"], "confidence": row["confidence"],
              "reason": f"{row['n_prompts']} prompt(s): no standard error"}
    return f"- members' mean at n={row['n']}: gold {interval_words(result)}"
