"""Online-RL runs compared on their fixed eval prompts (PPO and GRPO write ``eval/eval-{step}.jsonl``).

Every evaluation of a run answers the same prompts with the same sampling seed, and runs started with the same
``--seed`` share them too, so two evaluations (two steps of one run, or the same step of two runs) compare prompt
by prompt. Two sources of noise matter, and the functions here keep them apart:

* prompts and sampling: within one run, per-prompt differences d_p → ``paired_difference`` over the prompts;
* training: another seed gives another policy. With S seeds, the per-seed effects e_s (each a mean over prompts)
  give the across-seed interval ē ± t_{S−1} · std(e)/√S — the one a claim about the *method* needs. With S = 3
  its t quantile is 4.30: only a large, consistent effect is shown. With S = 1 it does not exist, and the
  prompt-paired interval (which treats the trained policy as fixed) is all there is; findings say which they used.

Per-prompt values are means over a prompt's eval answers (``--eval_samples_per_prompt``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf_lab.errors import UserError
from rlhf_lab.eval.paired import paired_difference, split_halves


@dataclass
class EvalTable:
    """A run's evaluations: ``values[key]`` is (steps, prompts), the mean over each prompt's answers."""

    run_dir: str
    steps: list[int]
    prompts: list[str]
    values: dict[str, np.ndarray]

    def mean_kl(self) -> np.ndarray:
        return self.values["kl_k1"].mean(axis=1)


def read_eval_table(run_dir: str | Path) -> EvalTable:
    """``eval/eval-{step}.jsonl`` of one run → an ``EvalTable`` (keys gold_score when a gold was given,
    proxy_score, kl_k1, length). Every evaluation must have answered the same prompts."""
    root = Path(run_dir) / "eval"
    files = sorted(root.glob("eval-*.jsonl"), key=lambda f: int(re.sub(r"\D", "", f.stem) or -1))
    if not files:
        raise UserError(f"{run_dir}: no eval/eval-STEP.jsonl (run it with --num_eval_prompts > 0)")
    steps, prompts, columns = [], None, {}
    for file in files:
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        order: dict[int, str] = {}
        sums: dict[str, dict[int, list[float]]] = {}
        for position, row in enumerate(rows):
            index = row.get("prompt_index", position)  # rows before prompt_index existed: one answer per prompt
            order.setdefault(index, row["prompt"])
            for key in ("gold_score", "proxy_score", "kl_k1", "length"):
                if key in row:
                    sums.setdefault(key, {}).setdefault(index, []).append(float(row[key]))
        these = [order[i] for i in sorted(order)]
        if prompts is None:
            prompts = these
        elif these != prompts:
            raise UserError(f"{file}: its prompts differ from those of {files[0].name}; evaluations of one run "
                            "must answer the same prompts")
        steps.append(int(rows[0]["step"]) if rows else int(re.sub(r"\D", "", file.stem)))
        for key, per_prompt in sums.items():
            columns.setdefault(key, []).append([float(np.mean(per_prompt[i])) for i in sorted(order)])
    return EvalTable(str(run_dir), steps, prompts or [], {k: np.asarray(v) for k, v in columns.items()})


def at_kl(table: EvalTable, target: float, key: str = "gold_score") -> np.ndarray | None:
    """Per-prompt ``key`` at the point where the run's mean eval KL first reaches ``target``: linear between the
    two evaluations around the crossing, w = (target − m_{t−1}) / (m_t − m_{t−1}) with m the mean KL per step, and
    the same w for every prompt. None when the run never reaches ``target``."""
    kl = table.mean_kl()
    values = table.values[key]
    if kl[0] >= target:
        return values[0]
    for t in range(1, len(kl)):
        if kl[t] >= target:
            w = (target - kl[t - 1]) / (kl[t] - kl[t - 1])
            return (1 - w) * values[t - 1] + w * values[t]
    return None


def across_seeds(effects: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of per-seed effects with its t interval over seeds (S − 1 degrees of freedom); ``paired_difference``
    of the effects against 0, without a bootstrap (3 seeds have no bootstrap worth the name)."""
    return paired_difference(list(effects), 0.0, confidence=confidence, bootstrap=0)


def rl_fall(tables: list[EvalTable], *, confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Does gold fall past its peak while the proxy keeps rising, over training? One ``EvalTable`` per seed.

    Per run s: the prompts are split by ``split_halves(P, seed)``; the peak step t*_s = argmax_t of the selection
    half's mean gold; on the test half T, per prompt

        fall_s,p = gold_s,p(t*_s) − gold_s,p(last step),   rise_s = mean_T proxy_s(last) − mean_T proxy_s(t*_s)

    ``per_seed``: each run's ``paired_difference`` of its falls over T. ``across_seeds``: the t interval of the
    per-seed mean falls. ``prompt_paired``: fall_p averaged over the seeds, paired over T (training randomness
    not in it). ``shown_by`` says which interval ``shown`` used: across seeds when S ≥ 2, else prompt-paired.
    ``shown`` also needs the mean proxy rise > 0 and the fall > 0.
    """
    if not tables:
        raise ValueError("rl_fall: no runs")
    P = len(tables[0].prompts)
    select, test = split_halves(P, seed)
    per_seed, falls, rises, peaks = [], [], [], []
    paired = dict(confidence=confidence, bootstrap=bootstrap, seed=seed)
    for table in tables:
        if table.prompts != tables[0].prompts or "gold_score" not in table.values:
            raise UserError(f"{table.run_dir}: runs compared need the same eval prompts and a gold reward model")
        gold, proxy = table.values["gold_score"], table.values["proxy_score"]
        peak = int(np.argmax(gold[:, select].mean(axis=1)))
        fall = gold[peak, test] - gold[-1, test]
        per_seed.append(paired_difference(fall, 0.0, **paired))
        falls.append(fall)
        rises.append(float(proxy[-1, test].mean() - proxy[peak, test].mean()))
        peaks.append(table.steps[peak])
    seeds = across_seeds([float(f.mean()) for f in falls], confidence)
    pooled = paired_difference(np.mean(falls, axis=0), 0.0, **paired)
    main = seeds if len(tables) >= 2 else pooled
    rise = float(np.mean(rises))
    return {"per_seed": per_seed, "across_seeds": seeds, "prompt_paired": pooled, "peak_steps": peaks,
            "last_step": tables[0].steps[-1], "proxy_rise": rise, "test_prompts": int(test.size),
            "shown_by": "across_seeds" if len(tables) >= 2 else "prompt_paired",
            "shown": bool(main["shown"] and (main["diff"] or 0) > 0 and rise > 0)}


def matched_kl(tables_a: list[EvalTable], tables_b: list[EvalTable], target: float | None = None, *,
               key: str = "gold_score", confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """``key`` (gold) of run A minus run B at the same KL to the reference; the runs are paired by seed
    (``tables_a[s]`` and ``tables_b[s]`` share the seed, hence the eval prompts and the sampling uniforms).

        target  = the highest mean eval KL every run reached: min over runs of max_t m_t (unless given)
        d_s,p   = at_kl(A_s, target)_p − at_kl(B_s, target)_p                (``at_kl``: per prompt)
        e_s     = mean_p d_s,p   → ``across_seeds``;   d_p = mean_s d_s,p → ``paired_difference`` over prompts

    ``shown_by`` as in ``rl_fall``; ``shown`` = that interval excludes 0 (either sign: ``diff`` says which run
    keeps more gold).
    """
    if len(tables_a) != len(tables_b) or not tables_a:
        raise ValueError("matched_kl: one run of A and one of B per seed")
    if target is None:
        target = float(min(t.mean_kl().max() for t in [*tables_a, *tables_b]))
    per_seed, diffs = [], []
    paired = dict(confidence=confidence, bootstrap=bootstrap, seed=seed)
    for a, b in zip(tables_a, tables_b, strict=True):
        if a.prompts != b.prompts:
            raise UserError(f"{a.run_dir} and {b.run_dir}: different eval prompts; compared runs need the same")
        va, vb = at_kl(a, target, key), at_kl(b, target, key)
        if va is None or vb is None:
            raise UserError(f"KL {target:.3f} not reached by {a.run_dir if va is None else b.run_dir}")
        per_seed.append(paired_difference(va, vb, **paired))
        diffs.append(va - vb)
    seeds = across_seeds([float(d.mean()) for d in diffs], confidence)
    pooled = paired_difference(np.mean(diffs, axis=0), 0.0, **paired)
    main = seeds if len(diffs) >= 2 else pooled
    return {"target_kl": target, "per_seed": per_seed, "across_seeds": seeds, "prompt_paired": pooled,
            "shown_by": "across_seeds" if len(diffs) >= 2 else "prompt_paired", "diff": main["diff"],
            "shown": bool(main["shown"])}


def _interval(result: dict) -> dict:
    """The fields of a ``Finding`` from a ``paired_difference`` result."""
    return dict(estimate=result["diff"] if result["diff"] is not None else 0.0, se=result["se"],
                ci_low=result["ci_low"], ci_high=result["ci_high"], confidence=result["confidence"])


def _curve(table: EvalTable) -> list[tuple[float, float, float]]:
    """(mean KL, mean gold — nan without a gold, mean proxy) per evaluation."""
    gold = table.values["gold_score"].mean(axis=1) if "gold_score" in table.values else np.full(len(table.steps),
                                                                                                  np.nan)
    return [(float(k), float(g), float(p))
            for k, g, p in zip(table.mean_kl(), gold, table.values["proxy_score"].mean(axis=1), strict=True)]


def rl_findings(single: list[str | Path], ensemble: list[str | Path], *, algorithm: str, label: str = "UWO",
                plot: str | None = None, confidence: float = 0.95, bootstrap: int = 2000,
                seed: int = 0) -> tuple[list, dict]:
    """Findings of online RL against one proxy and against an ensemble objective, one run of each per seed
    (``single[s]``, ``ensemble[s]`` share seed s): the single proxy overoptimizes over training (``rl_fall``), and
    the ensemble keeps more gold at the same KL (``matched_kl``). ``algorithm`` is the recipe that ran (ppo,
    grpo): the findings' key prefix (``ppo/single_proxy_overoptimized``) and, upper-cased, the claims' subject.
    Returns the findings (none without a gold) and ``{"curves": {label: [(kl, gold, proxy) per evaluation]},
    "target_kl"}`` for a plot (``plot`` is its path, relative to where the findings are written)."""
    from rlhf_lab.eval.findings import Finding

    singles, ensembles = [read_eval_table(r) for r in single], [read_eval_table(r) for r in ensemble]
    curves = {f"{name} · seed {s}": _curve(t) for name, tables in (("single", singles), (label, ensembles))
              for s, t in enumerate(tables)}
    if any("gold_score" not in t.values for t in singles + ensembles):
        return [], {"curves": curves, "target_kl": None}
    paired = dict(confidence=confidence, bootstrap=bootstrap, seed=seed)
    fall, compared = rl_fall(singles, **paired), matched_kl(ensembles, singles, **paired)
    seeds = len(singles)
    how = (f"t interval over the {seeds} seeds' effects ({seeds - 1} dof)" if seeds >= 2 else
           "one seed: the interval covers prompts and sampling, not training randomness")
    main_fall = fall[fall["shown_by"]]
    main_kl = compared[compared["shown_by"]]
    name = algorithm.upper()
    return [
        Finding(key=f"{algorithm}/single_proxy_overoptimized",
                claim=f"{name} against a single proxy overoptimizes: gold falls from its peak eval step to the last "
                      "while the proxy rises", effect="gold(peak step) − gold(last step), held-out prompts",
                shown=fall["shown"], n_prompts=fall["test_prompts"], plot=plot, **_interval(main_fall),
                design=f"peak step per seed chosen on the other half of the prompts ({fall['peak_steps']}; last "
                       f"step {fall['last_step']}); proxy rise past it {fall['proxy_rise']:+.3f}; {how}"),
        Finding(key=f"{algorithm}/{label}_vs_single_at_matched_kl",
                claim=f"{name} against the {label} ensemble keeps more gold than against one proxy at the same KL",
                effect=f"gold({label}) − gold(single) at KL {compared['target_kl']:.3f}",
                shown=bool(compared["shown"] and (main_kl["diff"] or 0) > 0),
                n_prompts=len(singles[0].prompts), plot=plot, **_interval(main_kl),
                design=f"KL {compared['target_kl']:.3f} = the highest mean eval KL every run reached (linear between "
                       f"evaluations, per prompt); runs paired by seed; {how}"),
    ], {"curves": curves, "target_kl": compared["target_kl"]}
