"""Best-of-n curves from a scored generations file (Gao et al. 2022; Coste et al. 2023): no sampling, exact.

    scores    = per prompt N answers, each with proxy score(s) (k ensemble members) and a gold score
    members   = each proxy member on its own                   -> one curve each
    ensembles = R = mean | WCO (min) | UWO (mean − λ·Var) across members, per answer   -> one curve each
    curve(n)  = mean over prompts of E[score of the best-by-proxy of n drawn from N]   (rlhf_lab.eval.bon)

Input (JSON lines, or one JSON list like Coste et al. 2023's ``proxy_labelled_sorted.json``), one row per prompt, in
either layout (docs/bon.md):

    seed:     {"instruction", "input"?, "answers"?: [N], "proxy_scores": [N] | [[N] × k], "gold_scores"?: [N]}
    rlhf-lab: {"prompt", "responses"?: [N], "scores": {name: [N], ...}, "score_stats"?: {name: {"mean", "std"}}}

Every prompt must have the same N (after ``--big_n``): the estimator's N is one number, and cutting prompts to the
shortest one silently would keep the lowest-proxy answers of a proxy-sorted file. Outputs, under ``--output_dir``:
``bon_sampled_results.json`` (one proxy) or ``member_{name}/…``, ``ensemble_{mean,WCO,UWO-λ}/…`` (rows
``{"n", "proxy_score", "gold_score", "kl_bon"}``), ``bon_summary.json`` (all curves), ``per_prompt.npz`` (each
prompt's own estimate per curve and n, for paired comparisons), ``plots/bon.png``, ``config.yaml``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_lab.config import arg, config_to_yaml, require, warn
from rlhf_lab.data.rows import read_json_objects
from rlhf_lab.errors import UserError
from rlhf_lab.eval.bon import SEED_SAMPLE_NS, bon_per_prompt, curve_from_per_prompt
from rlhf_lab.io import atomic_file, atomic_write_text
from rlhf_lab.rewards.ensemble import combine_scores, normalize_scores, objective_name
from rlhf_lab.rundir import claim_run_dir

RESULTS = "bon_sampled_results.json"
PER_PROMPT = "per_prompt.npz"


@dataclass
class BonConfig:
    scores: str | None = arg(None, "scored generations (.jsonl or a .json list, .gz ok): one row per prompt with "
                             "N answers' proxy and gold scores, seed or rlhf-lab layout (docs/bon.md)")
    output_dir: str = arg("runs/bon", "where the curves, bon_summary.json, plots/ and config.yaml go")
    sample_ns: str = arg("", "n values, comma-separated; empty = Coste et al. 2023's 1,2,4,…,8192,12500 up to N")
    big_n: int | None = arg(None, "use only the first big_n answers of every prompt (Coste et al. 2023's --big-n)")
    proxy: str | None = arg(None, "rlhf-lab layout: the proxy RM score name(s), comma-separated (k > 1 = "
                            "ensemble members); default: every score except the gold")
    gold: str | None = arg(None, "rlhf-lab layout: the gold RM score name; default: the score named 'gold', if any")
    ensembles: bool = arg(False, "also combine the k >= 2 proxy members with each of --objectives")
    objectives: str = arg("mean,WCO,UWO", "ensemble objectives, comma-separated: mean, WCO (min), UWO "
                          "(mean − λ·variance); any case")
    uwo_weights: str = arg("0.5", "UWO weights λ >= 0, comma-separated: one ensemble_UWO-λ curve each "
                           "(0 = mean, unlike Coste et al. 2023's code where 0 meant 1)")
    ensemble_ddof: int = arg(0, "ddof of the UWO variance across members: 0 = population, as the best-of-n of "
                             "Coste et al. 2023 (np.var); 1 = unbiased, as their PPO")
    normalize: bool = arg(False, "standardise member j's scores as (r − μ_j)/σ_j from the rows' score_stats "
                          "before anything else (rlhf-lab layout only)")
    plot: bool = arg(True, "draw plots/bon.png (proxy and gold vs n and vs KL_bon)")

    def validate(self) -> None:
        require(bool(self.scores), "scores", "give the scored generations file")
        self.sample_n_list()
        require(self.big_n is None or self.big_n >= 1, "big_n", "must be at least 1")
        require(self.ensemble_ddof in (0, 1), "ensemble_ddof", "must be 0 or 1")
        objectives = self.objective_list()  # an unknown name is an error even without --ensembles
        if self.ensembles:
            require(bool(objectives), "objectives", "give at least one of mean, WCO, UWO")
            require("UWO" not in objectives or bool(self.uwo_weight_list()), "uwo_weights",
                    "give at least one weight for UWO")
        self.uwo_weight_list()
        proxies = self.proxy_names()
        require(proxies is None or len(set(proxies)) == len(proxies), "proxy", "a name is given twice")
        require(proxies is None or self.gold not in proxies, "gold", "the gold score cannot also be a proxy")

    def sample_n_list(self) -> list[int] | None:
        """The explicit n values (sorted, without repeats), or None for the default."""
        if not self.sample_ns.strip():
            return None
        ns = set()
        for item in self.sample_ns.split(","):
            text = item.strip()
            positive = re.fullmatch(r"[0-9]+", text) is not None and int(text) >= 1
            require(positive, "sample_ns", f"{text!r} is not a positive integer")
            ns.add(int(text))
        return sorted(ns)

    def objective_list(self) -> list[str]:
        names = [objective_name(t.strip(), "objectives") for t in self.objectives.split(",") if t.strip()]
        return list(dict.fromkeys(names))

    def uwo_weight_list(self) -> list[float]:
        weights = []
        for item in self.uwo_weights.split(","):
            if not item.strip():
                continue
            try:
                weight = float(item)
            except ValueError:
                raise UserError(f"--uwo_weights: {item.strip()!r} is not a number") from None
            require(math.isfinite(weight) and weight >= 0, "uwo_weights", f"{item.strip()} must be a number >= 0")
            weights.append(weight)
        return list(dict.fromkeys(weights))

    def proxy_names(self) -> list[str] | None:
        if self.proxy is None:
            return None
        names = [t.strip() for t in self.proxy.split(",") if t.strip()]
        require(bool(names), "proxy", "give at least one score name")
        return names


@dataclass
class ScoreTable:
    """The scores of a file: ``proxy[j, p, a]`` = member j's score of answer a of prompt p; ``gold[p, a]``."""

    members: list[str]
    proxy: np.ndarray  # (k, P, N)
    gold: np.ndarray | None  # (P, N)
    gold_name: str | None  # "gold_scores" in the layout of Coste et al. 2023's code
    layout: str  # "seed" or "rlhf-lab"
    stats: np.ndarray | None = None  # (k, P, 2): member j's (mean, std) in row p, when --normalize


# ------------------------------------------------------------------------------------------------------------
# Reading the scores file
# ------------------------------------------------------------------------------------------------------------
def _numbers(value: Any, loc: str, key: str, ndims: tuple[int, ...] = (1,)) -> np.ndarray:
    """A JSON list of finite numbers (or of k such lists) as a float array; anything else is a user error."""
    if not isinstance(value, list) or not value:
        raise UserError(f"{loc}: {key} must be a non-empty list of numbers")
    try:
        array = np.asarray(value)
    except ValueError:
        raise UserError(f"{loc}: {key}: ragged lists (every member needs one score per answer)") from None
    if array.dtype.kind not in "iuf" or array.ndim not in ndims or array.shape[-1] == 0:
        shape = "a list of numbers" + (" or a list of k such lists" if 2 in ndims else "")
        raise UserError(f"{loc}: {key} must be {shape}")
    array = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        where = ", ".join(map(str, bad[0]))
        raise UserError(f"{loc}: {key}[{where}] is not a finite number ({array[tuple(bad[0])]})")
    return array


def _count(row: dict, key: str, n: int, loc: str) -> None:
    """The answers list, when the row has one, must have one entry per score."""
    if key in row:
        if not isinstance(row[key], list):
            raise UserError(f"{loc}: {key} must be a list")
        if len(row[key]) != n:
            raise UserError(f"{loc}: {len(row[key])} {key} but {n} scores")


def _seed_row(row: dict, loc: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(proxy (k, N), gold (N,) or None, flat?) of a seed-layout row."""
    proxy = _numbers(row["proxy_scores"], loc, "proxy_scores", (1, 2))
    flat = proxy.ndim == 1
    proxy = proxy[None, :] if flat else proxy
    gold = _numbers(row["gold_scores"], loc, "gold_scores") if row.get("gold_scores") is not None else None
    n = proxy.shape[1]
    if gold is not None and gold.shape[0] != n:
        raise UserError(f"{loc}: {gold.shape[0]} gold_scores but {n} proxy_scores")
    _count(row, "answers", n, loc)
    return proxy, gold, flat


def _lab_row(row: dict, loc: str, members: list[str], gold_name: str | None,
             normalize: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(proxy (k, N), gold (N,) or None, stats (k, 2) or None) of an rlhf-lab-layout row."""
    scores = row["scores"]
    if not isinstance(scores, dict):
        raise UserError(f"{loc}: scores must be a mapping {{score name: [N numbers]}}")
    for name in [*members, *([gold_name] if gold_name else [])]:
        if name not in scores:
            raise UserError(f"{loc}: no score named {name!r} (this row has: {', '.join(map(repr, scores))})")
    proxy_rows = [_numbers(scores[name], loc, f"scores[{name!r}]") for name in members]
    gold = _numbers(scores[gold_name], loc, f"scores[{gold_name!r}]") if gold_name else None
    n = proxy_rows[0].shape[0]
    for name, array in zip([*members, gold_name], [*proxy_rows, gold], strict=True):
        if array is not None and array.shape[0] != n:
            raise UserError(f"{loc}: scores[{name!r}] has {array.shape[0]} scores but "
                            f"scores[{members[0]!r}] has {n}")
    _count(row, "responses", n, loc)
    stats = None
    if normalize:
        stats = np.array([_member_stats(row, name, loc) for name in members])
    return np.stack(proxy_rows), gold, stats


def _member_stats(row: dict, name: str, loc: str) -> tuple[float, float]:
    entry = row.get("score_stats", {})
    entry = entry.get(name) if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
        raise UserError(f"{loc}: --normalize needs score_stats[{name!r}] = {{\"mean\": μ, \"std\": σ}}")
    mean, std = entry["mean"], entry["std"]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (mean, std))
    if not ok or std <= 0:
        raise UserError(f"{loc}: score_stats[{name!r}] needs a finite mean and a std > 0, got {entry}")
    return float(mean), float(std)


def _layout(row: dict, loc: str) -> str:
    if "scores" in row:
        return "rlhf-lab"
    if "proxy_scores" in row:
        return "seed"
    raise UserError(f"{loc}: a row needs 'proxy_scores' (seed layout) or 'scores' (rlhf-lab layout)")


def _lab_names(row: dict, loc: str, config: BonConfig) -> tuple[list[str], str | None]:
    """(proxy member names, gold name) for the rlhf-lab layout, from the flags or the first row."""
    if not isinstance(row.get("scores"), dict) or not row["scores"]:
        raise UserError(f"{loc}: scores must be a non-empty mapping {{score name: [N numbers]}}")
    proxies = config.proxy_names()
    gold = config.gold
    if gold is None and "gold" in row["scores"] and "gold" not in (proxies or []):
        gold = "gold"  # found by name unless the user made it a proxy
    members = proxies or [name for name in row["scores"] if name != gold]
    if not members:
        raise UserError(f"{loc}: no proxy score (the only score is the gold {gold!r})")
    return members, gold


def load_scores(config: BonConfig) -> ScoreTable:
    """Read and check ``config.scores``: every row the same layout, members and N; cut to ``--big_n``."""
    proxies: list[np.ndarray] = []
    golds: list[np.ndarray | None] = []
    stats: list[np.ndarray] = []
    layout = members = gold_name = first_loc = None
    flat = sorted_file = True
    cut = False
    N = None
    for loc, row in read_json_objects(config.scores, "one prompt"):
        row_layout = _layout(row, loc)
        if layout is None:
            layout, first_loc = row_layout, loc
            if layout == "seed":
                for key in ("proxy", "gold", "normalize"):
                    if getattr(config, key):
                        raise UserError(f"--{key}: only for the rlhf-lab layout (rows with 'scores': {{name: "
                                        f"[...]}}); {loc} is in the layout of Coste et al.'s code (proxy_scores/gold_scores)")
            else:
                members, gold_name = _lab_names(row, loc, config)
        elif row_layout != layout:
            raise UserError(f"{loc}: {row_layout} layout, but {first_loc} is in the {layout} layout")
        if layout == "seed":
            proxy, gold, row_flat = _seed_row(row, loc)
            if members is None:
                flat = row_flat
                members = ["proxy"] if flat else [str(j) for j in range(proxy.shape[0])]
            if row_flat != flat or proxy.shape[0] != len(members):
                raise UserError(f"{loc}: proxy_scores has {proxy.shape[0]} member list(s)"
                                f"{' (a flat list)' if row_flat else ''}, but {first_loc} has {len(members)}"
                                f"{' (a flat list)' if flat else ''}")
            sorted_file = sorted_file and bool(np.all(np.diff(proxy[0]) >= 0))
        else:
            proxy, gold, row_stats = _lab_row(row, loc, members, gold_name, config.normalize)
            if row_stats is not None:
                stats.append(row_stats)
        if golds and (gold is None) != (golds[0] is None):
            raise UserError(f"{loc}: {'no' if gold is None else 'has'} gold scores, unlike {first_loc}")
        if config.big_n is not None:
            cut = cut or proxy.shape[1] > config.big_n
            proxy, gold = proxy[:, : config.big_n], None if gold is None else gold[: config.big_n]
        if N is None:
            N = proxy.shape[1]
        elif proxy.shape[1] != N:
            raise UserError(f"{loc}: {proxy.shape[1]} answers, but {first_loc} has {N}: every prompt needs the "
                            "same number of answers N (--big_n cuts all prompts to their first big_n)")
        proxies.append(proxy)
        golds.append(gold)
    if not proxies:
        raise UserError(f"{config.scores}: no rows")
    if layout == "seed" and sorted_file and cut:
        warn(f"{config.scores}: the answers are sorted by proxy score and --big_n keeps the first {N} of each "
             "prompt, i.e. the lowest-scored ones: cut the file before sorting it")
    proxy = np.stack(proxies, axis=1)  # (k, P, N)
    gold = None if golds[0] is None else np.stack(golds)
    if layout == "seed" and gold is not None:
        gold_name = "gold_scores"
    return ScoreTable(members=members, proxy=proxy, gold=gold, gold_name=gold_name, layout=layout,
                      stats=np.stack(stats, axis=1) if stats else None)


# ------------------------------------------------------------------------------------------------------------
# The recipe
# ------------------------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    """A score name as a directory name (``org/rm-1`` → ``org_rm-1``, as Coste et al. 2023's code does for model names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "member"


def _sample_ns(config: BonConfig, N: int) -> list[int]:
    """The n values to evaluate: the user's (each must be <= N) or Coste et al. 2023's list up to N."""
    asked = config.sample_n_list()
    if asked is None:
        return [n for n in SEED_SAMPLE_NS if n <= N]
    too_big = [n for n in asked if n > N]
    require(not too_big, "sample_ns", f"{', '.join(map(str, too_big))} > N = {N} answers per prompt "
            "(best-of-n draws without replacement; leave --sample_ns empty for 1, 2, 4, ... up to N)")
    return asked


@dataclass
class Curve:
    """One best-of-n curve: where its rows go, the rows, and the per-prompt estimates they average."""

    path: str  # results file relative to the output dir
    rows: list[dict]
    proxy: np.ndarray  # (P, len(ns)): each prompt's own best-of-n proxy estimate
    gold: np.ndarray | None  # (P, len(ns)), or None without gold


def _curve(path: str, proxy: np.ndarray, gold: np.ndarray | None, ns: list[int]) -> Curve:
    kept, proxy_pp, gold_pp = bon_per_prompt(proxy, gold, ns)
    return Curve(path, curve_from_per_prompt(kept, proxy_pp, gold_pp), proxy_pp, gold_pp)


def _curves(table: ScoreTable, config: BonConfig, ns: list[int]) -> dict[str, Curve]:
    """label -> Curve: members, then the ensemble objectives."""
    k = len(table.members)
    if config.ensembles and k < 2:
        raise UserError(f"--ensembles: needs at least 2 proxy members, {config.scores} has 1 "
                        f"({table.members[0]!r})")
    if not config.ensembles and k > 1:
        print(f"bon: {k} proxy members ({', '.join(table.members)}); --ensembles combines them", flush=True)
    curves: dict[str, Curve] = {}
    if k == 1:
        curves[table.members[0]] = _curve(RESULTS, table.proxy[0], table.gold, ns)
        return curves
    dirs = [f"member_{_safe(name)}" for name in table.members]
    if len(set(dirs)) < k:
        raise UserError(f"--proxy: the member names {table.members} give clashing directory names {dirs}")
    for name, directory, scores in zip(table.members, dirs, table.proxy, strict=True):
        curves[f"member_{name}"] = _curve(f"{directory}/{RESULTS}", scores, table.gold, ns)
    if config.ensembles:
        for objective in config.objective_list():
            for weight in config.uwo_weight_list() if objective == "UWO" else [0.0]:
                label = f"ensemble_{objective}" + (f"-{weight}" if objective == "UWO" else "")
                combined = combine_scores(table.proxy, objective, weight, config.ensemble_ddof)
                curves[label] = _curve(f"{label}/{RESULTS}", combined, table.gold, ns)
    return curves


def _describe(label: str, rows: list[dict]) -> str:
    first, last = rows[0], rows[-1]

    def trend(key: str) -> str:
        if first[key] is None:
            return f"{key.removesuffix('_score')} -"
        return f"{key.removesuffix('_score')} {first[key]:.4g} -> {last[key]:.4g}"

    return f"n={first['n']}..{last['n']}: {trend('proxy_score')}, {trend('gold_score')}"


def run(config: BonConfig) -> Path:
    table = load_scores(config)
    k, P, N = table.proxy.shape
    ns = _sample_ns(config, N)  # --sample_ns above N is known only now: fail before writing the run directory
    out = Path(config.output_dir)
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    if table.stats is not None:  # (r − μ_j)/σ_j with each row's stored statistics
        table.proxy = np.stack([normalize_scores(table.proxy[:, p], table.stats[:, p, 0], table.stats[:, p, 1])
                                for p in range(P)], axis=1)
    print(f"bon: {P} prompts x N = {N} answers, {k} proxy member(s) ({', '.join(table.members)}), gold: "
          f"{table.gold_name or 'none'}, n = {ns}", flush=True)
    curves = _curves(table, config, ns)
    for label, curve in curves.items():
        atomic_write_text(out / curve.path, json.dumps(curve.rows, indent=2) + "\n")
        print(f"bon: {label}: {_describe(label, curve.rows)} -> {out / curve.path}", flush=True)
    write_per_prompt(out / PER_PROMPT, ns, curves)
    summary = {
        "scores": config.scores, "layout": table.layout, "num_prompts": P, "N": N, "members": table.members,
        "gold": table.gold_name,
        "ddof": config.ensemble_ddof, "normalize": config.normalize, "sample_ns": ns,
        "curves": {label: {"path": curve.path, "results": curve.rows} for label, curve in curves.items()},
        "per_prompt": PER_PROMPT,
    }
    atomic_write_text(out / "bon_summary.json", json.dumps(summary, indent=2) + "\n")
    if config.plot:
        from rlhf_lab.report.plots import plot_bon_curves

        png = plot_bon_curves({label: curve.rows for label, curve in curves.items()}, out / "plots" / "bon",
                              title=f"best-of-n: {P} prompts, N = {N}")
        print(f"bon: plot -> {png}", flush=True)
    return out / "bon_summary.json"


def write_per_prompt(path: Path, ns: list[int], curves: dict[str, Curve]) -> None:
    """``per_prompt.npz``: ``ns`` and, per curve label L, ``proxy:L`` and ``gold:L`` (P, len(ns)) arrays — each
    prompt's own estimate, in the order of the scores file's rows; what paired comparisons read."""
    arrays = {"ns": np.asarray(ns, dtype=np.int64)}
    for label, curve in curves.items():
        arrays[f"proxy:{label}"] = curve.proxy
        if curve.gold is not None:
            arrays[f"gold:{label}"] = curve.gold
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
