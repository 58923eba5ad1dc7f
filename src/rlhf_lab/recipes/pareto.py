"""The reward–tax Pareto front of model averaging (Lin et al. 2023, "Mitigating the Alignment Tax of RLHF", Fig. 1).

    points = plain interpolation at every --alphas value, each --partwise spec, each --ama run's merged model
    for each point θ (merged in memory from the base and tuned weights; same sampling seed for every point):
        responses ~ π_θ(· | eval prompts)                       short, batched, seeded
        reward    = mean proxy reward of the responses (an ensemble's members combined by --objective mean |
                    WCO | UWO), and mean gold RM score
        tax (NLL) = −(1/N) Σ log π_θ(y_ref) over held-out reference replies (the helpful-base chosen replies:
                    text the SFT model was trained to write; what RLHF forgets shows up here), perplexity = e^NLL
        tax (KL)  = mean over prompts of Σ_t k3 / k1 estimates of KL(π_θ ‖ π_SFT) on the sampled responses
    mark the points no other point beats on both reward (higher) and tax (lower); write pareto.jsonl,
    pareto.md and plots/pareto.png (reward vs NLL and reward vs KL)

``gain_vs_interp_*``: a point's reward minus the reward the plain-interpolation curve (piecewise linear in tax)
reaches at the same tax — positive means the point lies above the interpolation front. Every point answers the
same prompts with the same sampling seed, so points compare prompt by prompt: ``{proxy,gold}_vs_base*`` is each
point's per-prompt mean reward minus the base's (α = 1), ``paired_difference`` over the prompts (SE, t and
bootstrap CI, shown). Everything runs offline
on CPU: a handful of prompts and short generations by default (--num_prompts, --num_references,
--max_new_tokens); the lm-eval harness is not used.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf_lab.config import RewardArgs, arg, config_to_yaml, require, require_seed
from rlhf_lab.data import load_pairs, render_prompt, render_response
from rlhf_lab.errors import UserError
from rlhf_lab.eval.paired import paired_difference, prompt_means
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.io import atomic_write_text, read_jsonl, write_jsonl
from rlhf_lab.losses import sequence_kl
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.logprobs import response_logprobs
from rlhf_lab.models.merging import (
    WeightSource,
    base_key_for,
    check_compatible,
    materialized,
    merge_tensor,
    num_hidden_layers,
    parse_partwise,
    ratio_fn_for,
)
from rlhf_lab.rewards.ensemble import combine_scores, objective_name
from rlhf_lab.rundir import claim_run_dir


@dataclass
class ParetoConfig(RewardArgs):
    base: str = arg("default", "model before RLHF (the SFT model; also the KL reference)")
    tuned: str = arg("", "model after RLHF: an HF dir or a PEFT adapter dir")
    alphas: str = arg("0,0.2,0.4,0.6,0.8,1", "plain interpolation ratios (1 = base, 0 = tuned), comma-separated")
    partwise: list[str] = arg([], "partwise specs 'P1#P2|r0|r1|r2', comma-separated (see `rlhf-lab merge`)")
    partwise_alpha: float = arg(0.5, "ratio of lm_head and the final norm in the partwise points")
    ama: list[str] = arg([], "`rlhf-lab ama` run dirs (their merged model/), comma-separated")
    # reward_models (the proxy), objective, uwo_weight, ensemble_ddof, reward_batch_size: RewardArgs
    gold_model_name: list[str] = arg([], "gold reward model(s), comma-separated (optional)")
    dataset: str = arg("hh-rlhf:helpful-base", "preference data: eval prompts and their chosen replies")
    split: str = arg("auto", "fixed-seed split of the data to use; auto = the embedded dataset's eval split, or "
                     "every row of your own file(s)", ("auto", "train", "eval", "all"))
    template: str = arg("chat", "how prompts become text", ("chat", "hh", "lmflow", "question_answer", "oasst", "raw"))
    num_prompts: int = arg(16, "eval prompts to generate from (reward and KL)")
    num_references: int = arg(32, "held-out reference replies for the NLL tax (taken after the eval prompts)")
    max_length: int | None = arg(None, "leave out eval prompts longer than this many tokens and references whose "
                                 "prompt + reply is longer (the next ones that fit are taken); none = keep all")
    samples_per_prompt: int = arg(1, "responses per prompt")
    max_new_tokens: int = arg(48, "tokens per generated response at most")
    temperature: float = arg(1.0, "sampling temperature (1 = sample the policy itself, which the KL estimate needs)")
    generation_batch_size: int = arg(16, "sequences per generation batch and per log-prob pass (KL, NLL)")
    seed: int = arg(0, "sampling seed, the same for every point (common random numbers)")
    output_dir: str = arg("runs/pareto", "where pareto.jsonl, pareto.md, plots/ and samples/ go")
    resume: bool = arg(False, "keep the points already in output_dir/pareto.jsonl and evaluate only the rest")
    progress: bool = arg(False, "show generation progress bars")
    online: bool = arg(False, "allow fetching models from a hub (offline by default)")

    def validate(self) -> None:
        require(bool(self.tuned), "tuned", "give the tuned (post-RLHF) model directory")
        require(bool(self.reward_models), "reward_models", "give a proxy reward model (a train-rm run dir)")
        for a in self.alpha_values():
            require(0.0 <= a <= 1.0, "alphas", f"{a} is outside [0, 1]")
        for spec in self.partwise:
            parse_partwise(spec)
        require(0.0 <= self.partwise_alpha <= 1.0, "partwise_alpha", "must be in [0, 1]")
        require(self.num_prompts >= 1, "num_prompts", "must be at least 1")
        require(self.num_references >= 0, "num_references", "must be >= 0")
        require(self.max_length is None or self.max_length >= 2, "max_length", "must be at least 2")
        require(self.samples_per_prompt >= 1, "samples_per_prompt", "must be at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.generation_batch_size >= 1, "generation_batch_size", "must be at least 1")
        objective_name(self.objective)
        self.validate_reward()
        require_seed(self.seed, "seed")

    def alpha_values(self) -> list[float]:
        try:
            return [float(a) for a in self.alphas.split(",") if a.strip()]
        except ValueError:
            raise UserError(f"--alphas {self.alphas!r}: expected numbers joined by commas") from None


# ---------------------------------------------------------------------------------------------------------
# Pareto bookkeeping (pure functions)
# ---------------------------------------------------------------------------------------------------------


def pareto_optimal(rewards: list[float], taxes: list[float]) -> list[bool]:
    """True where no other point has reward ≥ and tax ≤ with at least one strict."""
    out = []
    for i, (r, t) in enumerate(zip(rewards, taxes, strict=True)):
        dominated = any(r2 >= r and t2 <= t and (r2 > r or t2 < t)
                        for j, (r2, t2) in enumerate(zip(rewards, taxes, strict=True)) if j != i)
        out.append(not dominated)
    return out


def interpolation_reward(curve: list[tuple[float, float]], tax: float) -> float | None:
    """The reward of the piecewise-linear (tax, reward) curve at ``tax``; None outside its tax range."""
    points = sorted(curve)
    if not points or tax < points[0][0] or tax > points[-1][0]:
        return None
    for (t0, r0), (t1, r1) in itertools.pairwise(points):
        if t0 <= tax <= t1:
            return r0 if t1 == t0 else r0 + (r1 - r0) * (tax - t0) / (t1 - t0)
    return points[-1][1]


# ---------------------------------------------------------------------------------------------------------
# Evaluating one model
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    messages: list[list[dict]]
    prompt_texts: list[str]
    prompt_ids: list[list[int]]
    ref_prompt_ids: list[list[int]]
    ref_response_ids: list[list[int]]


def build_eval_set(config: ParetoConfig, tokenizer) -> EvalSet:
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    wanted = config.num_prompts + config.num_references
    pairs, _ = load_pairs(config.dataset, split=config.split, limit=None if config.max_length else wanted)
    prompts, references, ref_ids = [], [], []
    for pair in pairs:  # the first num_prompts pairs (that fit) give the prompts, the next ones the references
        if len(prompts) + len(references) == wanted:
            break
        prompt_ids = ids(render_prompt(pair.prompt.messages, config.template, tokenizer))
        if len(prompts) < config.num_prompts:
            if config.max_length is None or len(prompt_ids) <= config.max_length:
                prompts.append(pair)
            continue
        reply_ids = ids(render_response(pair.chosen, config.template, tokenizer))
        if config.max_length is None or len(prompt_ids) + len(reply_ids) <= config.max_length:
            references.append(pair)
            ref_ids.append((prompt_ids, reply_ids))
    if len(prompts) + len(references) < wanted:
        fit = f" of at most {config.max_length} tokens" if config.max_length else ""
        raise UserError(f"{config.dataset}: only {len(prompts) + len(references)} pairs{fit} in split "
                        f"{config.split!r} for --num_prompts {config.num_prompts} + --num_references "
                        f"{config.num_references}")
    messages = [p.prompt.messages for p in prompts]
    texts = [render_prompt(m, config.template, tokenizer) for m in messages]
    return EvalSet(messages, texts, [ids(t) for t in texts], [p for p, _ in ref_ids], [r for _, r in ref_ids])


@torch.no_grad()
def proxy_rewards(members: torch.Tensor, config: ParetoConfig) -> torch.Tensor:
    """One proxy reward per response from the members' scores ``(k, N)``: mean, WCO (min) or UWO
    (mean − λ·Var with ``--ensemble_ddof``) by ``--objective``; one member: its own score."""
    objective = objective_name(config.objective) if members.shape[0] > 1 else "mean"
    return combine_scores(members, objective, config.uwo_weight, config.ensemble_ddof)


def evaluate_point(policy, reference, tokenizer, data: EvalSet, config: ParetoConfig, proxy, gold) -> tuple[dict, list]:
    """Reward, NLL tax and KL tax of ``policy`` (see the module docstring); also the samples."""
    decoding = DecodingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    outputs = generate(policy, tokenizer, data.prompt_texts, samples_per_prompt=config.samples_per_prompt,
                       decoding=decoding, batch_size=config.generation_batch_size, seed=config.seed, progress=config.progress)
    flat = [(i, g) for i, gens in enumerate(outputs) for g in gens]
    prompt_ids = [data.prompt_ids[i] for i, _ in flat]
    response_ids = [g.token_ids for _, g in flat]
    pad = tokenizer.pad_token_id
    row: dict[str, float] = {}
    # KL(π_θ ‖ π_SFT) per sequence: Σ_t of the per-token estimators on y ~ π_θ (empty responses count 0)
    keep = [k for k, r in enumerate(response_ids) if r]
    k1 = [0.0] * len(flat)
    k3 = [0.0] * len(flat)
    if keep and reference is not None:  # None: the point is the reference itself (α = 1), KL is exactly 0
        logp = response_logprobs(policy, [prompt_ids[k] for k in keep], [response_ids[k] for k in keep], pad,
                                 config.generation_batch_size)
        ref = response_logprobs(reference, [prompt_ids[k] for k in keep], [response_ids[k] for k in keep], pad,
                                config.generation_batch_size)
        for k, lp, lr in zip(keep, logp, ref, strict=True):
            kl = sequence_kl(lp, lr)
            k1[k], k3[k] = float(kl["k1"]), float(kl["k3"])
    row["kl_k3"], row["kl_k1"] = _mean(k3), _mean(k1)
    texts = [g.text for _, g in flat]
    messages = [data.messages[i] for i, _ in flat]
    proxy_scores = proxy_rewards(proxy.score(messages, texts), config)
    row["proxy_reward"] = float(proxy_scores.mean())
    row["proxy_reward_se"] = float(proxy_scores.std() / math.sqrt(len(texts))) if len(texts) > 1 else 0.0
    gold_scores = gold.score(messages, texts).mean(dim=0) if gold is not None else None
    if gold_scores is not None:
        row["gold_reward"] = float(gold_scores.mean())
    if data.ref_response_ids:
        ref_logps = response_logprobs(policy, data.ref_prompt_ids, data.ref_response_ids, pad, config.generation_batch_size)
        tokens = sum(len(x) for x in ref_logps)
        row["nll"] = -float(sum(x.sum() for x in ref_logps)) / max(tokens, 1)
        row["perplexity"] = math.exp(row["nll"])
    row["response_tokens"] = _mean([len(r) for r in response_ids])
    samples = [{"prompt_index": i, "prompt": data.messages[i][-1]["content"], "response": g.text,
                "tokens": g.num_tokens,
                "proxy": float(proxy_scores[k]), "kl_k3": k3[k],
                **({"gold": float(gold_scores[k])} if gold_scores is not None else {})}
               for k, (i, g) in enumerate(flat)]
    return row, samples


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------


def load_state(policy: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy stored tensors into ``policy`` (a tied head follows its embedding)."""
    missing, unexpected = policy.load_state_dict(state, strict=False)
    tied = getattr(policy.config, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise UserError(f"weights do not fit the base model (missing {missing[:2]}, unexpected {unexpected[:2]})")


def merged_state(base: dict[str, torch.Tensor], tuned: WeightSource, base_source: WeightSource, ratio_fn) -> dict:
    return {k: merge_tensor(v, tuned.get(k), float(ratio_fn(base_key_for(base_source, k)))) for k, v in base.items()}


def run(config: ParetoConfig) -> Path:
    out = Path(config.output_dir)
    check_bounds(config.base, tokens=(config.max_length or 1) + config.max_new_tokens, tokens_flag="max_new_tokens",
                 batch=config.generation_batch_size, batch_flag="generation_batch_size", online=config.online,
                 prompt_note=f" (--max_length {config.max_length or 1} + --max_new_tokens)")
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    rows_path = out / "pareto.jsonl"
    done = {r["name"]: r for r in read_jsonl(rows_path)} if config.resume and rows_path.is_file() else {}
    from rlhf_lab.rewards.scorer import RewardScorer

    proxy = RewardScorer(config.reward_models, batch_size=config.reward_batch_size)
    gold = RewardScorer(config.gold_model_name, batch_size=config.reward_batch_size) if config.gold_model_name else None
    with materialized(config.base, config.online) as base_dir, materialized(config.tuned, config.online) as tuned_dir:
        tokenizer = load_tokenizer(str(base_dir))
        data = build_eval_set(config, tokenizer)
        base_source, tuned_source = WeightSource(base_dir), WeightSource(tuned_dir)
        check_compatible(base_source, tuned_source)
        layers = num_hidden_layers(base_source.config)
        reference = load_causal_lm(str(base_dir)).eval()  # π_SFT, for the KL tax
        policy = load_causal_lm(str(base_dir)).eval()
        base_state = {k: base_source.get(k) for k in base_source.stored_keys()}

        points: list[tuple[str, str, dict, object]] = []
        for a in config.alpha_values():
            points.append((f"alpha={a:g}", "interpolation", {"alpha": a}, ratio_fn_for(a, None, layers)))
        for spec in config.partwise:
            points.append((f"partwise {spec} (α={config.partwise_alpha:g})", "partwise",
                           {"alpha": config.partwise_alpha, "partwise": spec},
                           ratio_fn_for(config.partwise_alpha, spec, layers)))
        for run_dir in config.ama:
            model_dir = Path(run_dir) / "model"
            if not (model_dir / "config.json").is_file():
                raise UserError(f"--ama {run_dir}: no merged model in {model_dir} (is it an `rlhf-lab ama` run?)")
            points.append((f"AMA {Path(run_dir).name}", "ama", {"ama": str(run_dir)}, model_dir))

        rows = []
        for name, kind, info, how in points:
            if name in done:
                rows.append(done[name])
                continue
            if isinstance(how, Path):
                state = WeightSource(how).get_all()
            else:
                state = merged_state(base_state, tuned_source, base_source, how)
            load_state(policy, state)
            del state
            is_base = kind == "interpolation" and info["alpha"] == 1.0  # 1·base + 0·tuned: the base, bit for bit
            metrics, samples = evaluate_point(policy, None if is_base else reference, tokenizer, data, config,
                                               proxy, gold)
            row = {"name": name, "kind": kind, **info, **metrics}
            rows.append(row)
            done[name] = row
            write_jsonl(rows_path, rows)  # after every point: a killed sweep keeps what it measured
            write_jsonl(out / "samples" / f"{_slug(name)}.jsonl", samples)
            print(f"pareto: {name}: proxy {row['proxy_reward']:.4f}, NLL {row.get('nll', float('nan')):.4f}, "
                  f"KL {row['kl_k3']:.3f}", flush=True)

    annotate(rows)
    paired_against_base(rows, out / "samples", config.seed)
    write_jsonl(rows_path, rows)
    atomic_write_text(out / "pareto.md", markdown_table(rows, config))
    plot(rows, out / "plots" / "pareto.png")
    print(f"pareto: {len(rows)} points -> {rows_path}, {out / 'pareto.md'}, {out / 'plots' / 'pareto.png'}", flush=True)
    return out


def annotate(rows: list[dict]) -> None:
    """Add ``pareto_nll`` / ``pareto_kl`` flags and each point's reward gain over the interpolation curve."""
    for tax in ("nll", "kl_k3"):
        if not all(tax in r for r in rows):
            continue
        flags = pareto_optimal([r["proxy_reward"] for r in rows], [r[tax] for r in rows])
        curve = [(r[tax], r["proxy_reward"]) for r in rows if r["kind"] == "interpolation"]
        for r, flag in zip(rows, flags, strict=True):
            r[f"pareto_{tax}"] = flag
            reference = interpolation_reward(curve, r[tax]) if r["kind"] != "interpolation" else None
            r[f"gain_vs_interp_{tax}"] = None if reference is None else r["proxy_reward"] - reference


def paired_against_base(rows: list[dict], samples_dir: Path, seed: int) -> None:
    """Add ``{proxy,gold}_vs_base`` (and ``_se``, ``_ci_low``, ``_ci_high``, ``_shown``) to every point: its
    per-prompt mean reward minus the base point's (plain interpolation at α = 1), paired over the prompts."""
    base = next((r for r in rows if r["kind"] == "interpolation" and r.get("alpha") == 1.0), None)
    if base is None:
        return

    def per_prompt(row: dict, key: str) -> np.ndarray | None:
        path = samples_dir / f"{_slug(row['name'])}.jsonl"
        samples = read_jsonl(path) if path.is_file() else []
        if not samples or key not in samples[0] or "prompt_index" not in samples[0]:
            return None
        by_prompt: dict[int, list[float]] = {}
        for sample in samples:
            by_prompt.setdefault(sample["prompt_index"], []).append(sample[key])
        return prompt_means([by_prompt[i] for i in sorted(by_prompt)])

    for key in ("proxy", "gold"):
        anchor = per_prompt(base, key)
        for row in rows:
            values = per_prompt(row, key)
            if anchor is None or values is None or values.shape != anchor.shape:
                continue
            result = paired_difference(values, anchor, seed=seed)
            row.update({f"{key}_vs_base": result["diff"], f"{key}_vs_base_se": result["se"],
                        f"{key}_vs_base_ci_low": result["ci_low"], f"{key}_vs_base_ci_high": result["ci_high"],
                        f"{key}_vs_base_shown": result["shown"]})


def markdown_table(rows: list[dict], config: ParetoConfig) -> str:
    gold = any("gold_reward" in r for r in rows)
    head = ["point", "proxy reward (± se)", *(["gold reward"] if gold else []),
            *([f"{k} vs base, paired (95% CI)" for k in ("proxy", "gold") if any(f"{k}_vs_base" in r for r in rows)]),
            "NLL on refs", "perplexity", "KL k3 to SFT", "response tokens", "Pareto (NLL / KL)",
            "gain vs interp (NLL / KL)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x, d=4):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    def vs_base(r: dict, key: str) -> str:
        if r.get(f"{key}_vs_base_ci_low") is None:
            return "–" if r.get(f"{key}_vs_base") is None else f"{r[f'{key}_vs_base']:+.4f}"
        shown = "shown" if r[f"{key}_vs_base_shown"] else "not shown"
        return (f"{r[f'{key}_vs_base']:+.4f} [{r[f'{key}_vs_base_ci_low']:+.4f}, {r[f'{key}_vs_base_ci_high']:+.4f}]"
                f" {shown}")

    for r in rows:
        pareto = "/".join("✓" if r.get(f"pareto_{t}") else "·" for t in ("nll", "kl_k3"))
        gain = " / ".join("–" if r.get(f"gain_vs_interp_{t}") is None else f"{r[f'gain_vs_interp_{t}']:+.4f}"
                          for t in ("nll", "kl_k3"))
        paired = [vs_base(r, k) for k in ("proxy", "gold") if any(f"{k}_vs_base" in x for x in rows)]
        cells = [r["name"], f"{r['proxy_reward']:.4f} ± {r['proxy_reward_se']:.4f}",
                 *([f(r.get("gold_reward"))] if gold else []), *paired, f(r.get("nll")), f(r.get("perplexity"), 2),
                 f(r["kl_k3"], 3), f(r["response_tokens"], 1), pareto, gain]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\n{config.num_prompts} eval prompts × {config.samples_per_prompt} samples, ≤{config.max_new_tokens} "
            f"new tokens, seed {config.seed}; NLL over {config.num_references} held-out chosen replies "
            f"of {config.dataset} ({config.split}); proxy RM {', '.join(config.reward_models)} "
            f"(objective {config.objective}).\n")
    return "\n".join(lines) + "\n" + note


def plot(rows: list[dict], path: Path) -> None:
    from rlhf_lab.report.plots import new_figure, save_figure

    taxes = [(t, label) for t, label in (("nll", "NLL on reference replies (tax)"),
                                         ("kl_k3", "KL(π ‖ π_SFT), k3 (tax)")) if all(t in r for r in rows)]
    fig, axes = new_figure(1, len(taxes))
    styles = {"interpolation": ("C0", "o"), "partwise": ("C1", "s"), "ama": ("C2", "D")}
    for ax, (tax, label) in zip(axes[0], taxes, strict=True):
        interp = sorted((r[tax], r["proxy_reward"]) for r in rows if r["kind"] == "interpolation")
        if interp:
            ax.plot(*zip(*interp, strict=True), color="C0", linewidth=1, alpha=0.6)
        for kind, (color, marker) in styles.items():
            pts = [r for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter([r[tax] for r in pts], [r["proxy_reward"] for r in pts], color=color, marker=marker,
                           label=kind, zorder=3)
        front = [r for r in rows if r.get(f"pareto_{tax}")]
        ax.scatter([r[tax] for r in front], [r["proxy_reward"] for r in front], s=160, facecolors="none",
                   edgecolors="k", label="Pareto-optimal", zorder=4)
        for r in rows:
            ax.annotate(r["name"].replace("partwise ", "").split(" (")[0], (r[tax], r["proxy_reward"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("proxy reward")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-" else "_" for c in name)[:80]
