"""Dataset cartography for reward models (Swayamdipta et al. 2020, as "A Long Way to Go" uses it).

The reward-model training loop logs, every time it sees an example (once per pass over the data),
a row ``{"uid": row_index, "epoch": e, "r_chosen": r_c, "r_rejected": r_r}`` (plus ``"member": m`` for an
ensemble) to ``RUN_DIR/carto.jsonl``. Per example, with the margins d_e = r_c − r_r in pass order:

    confidence  = mean(d_2 … d_E)        (the first pass is dropped: the RM has barely trained yet)
    variability = stdev(d_2 … d_E)       (sample stdev, n − 1)
    correctness = #{e : d_e > 0} / E     (over all passes)

These are raw reward margins, as in Singhal et al. 2023's code, not probabilities. It then keeps the examples with
confidence < upper (and > lower): the "easy" high-confidence examples, which the paper finds are mostly the
ones where the longer reply wins, are cut.

``rlhf-lab carto RUN_DIR --upper U [--lower L]`` (``run``) writes ``carto_stats.jsonl``, the keep file
(``carto_keep.txt``, one row index per line, for ``train-rm --carto_file``) and ``plots/carto_map.png``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rlhf_lab.config import arg, require, warn
from rlhf_lab.errors import UserError
from rlhf_lab.io import atomic_write_text, write_jsonl
from rlhf_lab.rundir import claim_run_dir

Stats = dict[str, float]


class Thresholds(NamedTuple):
    upper: float
    lower: float


# Singhal et al. 2023's confidence cuts (``truncvals/{ds}good.json``; the "both" variants also use ``lower``).
SEED_THRESHOLDS: dict[str, Thresholds] = {
    "webgpt": Thresholds(0.4, -0.2),
    "apf": Thresholds(0.3, -0.3),
    "rlcd": Thresholds(2.0, -1.0),
    "stack": Thresholds(1.0, -1.0),
}


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------
def margin_stats(diffs: Sequence[float]) -> Stats:
    """Cartography statistics of one example from its margins d_1 … d_E in pass order.

    confidence = mean(d[1:]), variability = stdev(d[1:]) (``statistics.stdev``), correctness = fraction of all
    d > 0. Edge cases (their formulas are undefined there): with one pass, confidence = d_1; with fewer
    than two margins after the first, variability = 0.0.
    """
    if not diffs:
        raise ValueError("an example needs at least one pass")
    later = list(diffs[1:]) or [diffs[0]]
    return {
        "confidence": statistics.fmean(later),
        "variability": statistics.stdev(later) if len(later) >= 2 else 0.0,
        "correctness": sum(d > 0 for d in diffs) / len(diffs),
        "passes": len(diffs),
    }


def _group(rows: Iterable[dict[str, Any]]) -> dict[int, dict[int, list[dict[str, Any]]]]:
    """member -> uid -> rows (in log order)."""
    groups: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[int(row.get("member", 0))][int(row["uid"])].append(row)
    return groups


def carto_stats_per_member(rows: Iterable[dict[str, Any]]) -> dict[int, dict[int, Stats]]:
    """member -> uid -> ``margin_stats`` (rows without ``member`` are member 0).

    A uid's rows are put in pass order by ``epoch`` (a stable sort: rows of the same epoch keep log order).
    """
    result: dict[int, dict[int, Stats]] = {}
    for member, by_uid in sorted(_group(rows).items()):
        result[member] = {}
        for uid, obs in sorted(by_uid.items()):
            obs = sorted(obs, key=lambda r: r["epoch"])
            result[member][uid] = margin_stats([float(r["r_chosen"]) - float(r["r_rejected"]) for r in obs])
    return result


def carto_stats(rows: Iterable[dict[str, Any]]) -> dict[int, Stats]:
    """uid -> {"confidence", "variability", "correctness", "passes"} from ``carto.jsonl`` rows.

    For one model (no ``member`` key) these are ``margin_stats`` of the uid's margins. For an ensemble each
    member's statistics are computed on its own margins and then averaged over the members that logged the
    uid (the map of the ensemble); ``passes`` is then the fewest passes of any member and ``members`` the count.
    """
    per_member = carto_stats_per_member(rows)
    collected: dict[int, list[Stats]] = defaultdict(list)
    for by_uid in per_member.values():
        for uid, stats in by_uid.items():
            collected[uid].append(stats)
    result: dict[int, Stats] = {}
    for uid in sorted(collected):
        group = collected[uid]
        merged: Stats = {k: statistics.fmean(s[k] for s in group) for k in ("confidence", "variability", "correctness")}
        merged["passes"] = min(s["passes"] for s in group)
        if len(per_member) > 1:
            merged["members"] = len(group)
        result[uid] = merged
    return result


def carto_keep(stats: dict[int, Stats], upper: float, lower: float | None = None) -> list[int]:
    """The uids (increasing) with lower < confidence < upper (no lower bound when ``lower`` is None)."""
    return sorted(
        uid for uid, s in stats.items() if s["confidence"] < upper and (lower is None or s["confidence"] > lower)
    )


def write_index_file(path: str | Path, indices: Iterable[int]) -> None:
    """One integer per line, atomically: what ``train-rm --carto_file`` (``read_index_file``) reads."""
    atomic_write_text(path, "".join(f"{int(i)}\n" for i in indices))


# --------------------------------------------------------------------------------------------------------------
# Reading the logs
# --------------------------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_row(row: Any, fields: dict[str, str], where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    for key, kind in fields.items():
        if key not in row:
            if kind.endswith("?"):
                continue
            raise UserError(f"{where}: missing key {key!r}")
        ok = _is_int(row[key]) if kind.startswith("int") else _is_number(row[key])
        if not ok:
            raise UserError(f"{where}: {key!r} must be {'an integer' if kind.startswith('int') else 'a number'}, "
                            f"got {json.dumps(row[key])[:40]}")
    return row


def read_log(path: str | Path, fields: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines log, each checked to have ``fields`` (name -> "int" | "number", "?" = optional).

    A bad line is a ``UserError`` naming ``file:line``, except a last line without a newline that is not valid
    JSON: that is the torn write of a killed run, skipped with a warning.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    text = p.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it
                warn(f"{path}:{number}: ignoring a torn last line (the run was killed while writing it)")
                continue
            raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        rows.append(_check_row(row, fields, f"{path}:{number}"))
    return rows


CARTO_FIELDS = {"uid": "int", "epoch": "number", "r_chosen": "number", "r_rejected": "number", "member": "int?"}
LENGTH_FIELDS = {"uid": "int", "len_chosen": "number", "len_rejected": "number"}


def longer_preferred_by_uid(length_rows: Iterable[dict[str, Any]]) -> dict[int, bool]:
    """uid -> "the chosen reply is the longer one", for pairs of different lengths (ties are left out)."""
    return {
        int(r["uid"]): r["len_chosen"] > r["len_rejected"]
        for r in length_rows
        if r["len_chosen"] != r["len_rejected"]
    }


# --------------------------------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------------------------------
def _confidence_bins(stats: dict[int, Stats], longer_preferred: dict[int, bool], n_bins: int = 10):
    """(mean confidence, share longer-preferred, count) per quantile bin of confidence (equal-count bins)."""
    import numpy as np

    uids = sorted((u for u in longer_preferred if u in stats), key=lambda u: stats[u]["confidence"])
    result = []
    for chunk in np.array_split(np.array(uids, dtype=int), min(n_bins, len(uids))) if uids else []:
        conf = [stats[int(u)]["confidence"] for u in chunk]
        share = sum(longer_preferred[int(u)] for u in chunk) / len(chunk)
        result.append((statistics.fmean(conf), share, len(chunk)))
    return result


def _scatter_panel(ax, stats: dict[int, Stats], upper: float | None, lower: float | None) -> None:
    x = [s["variability"] for s in stats.values()]
    y = [s["confidence"] for s in stats.values()]
    c = [s["correctness"] for s in stats.values()]
    points = ax.scatter(x, y, c=c, cmap="coolwarm_r", vmin=0, vmax=1, s=8, alpha=0.7, linewidths=0)
    ax.figure.colorbar(points, ax=ax, label="correctness (share of passes with margin > 0)")
    for cut, label in ((upper, "upper"), (lower, "lower")):
        if cut is not None:
            ax.axhline(cut, color="black", linestyle="--", linewidth=1)
            ax.annotate(f"{label} = {cut:g}", (0.99, cut), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=8)
    ax.set_xlabel("variability (stdev of margin, passes 2…)")
    ax.set_ylabel("confidence (mean margin r_chosen − r_rejected, passes 2…)")
    ax.set_title(f"data map ({len(stats)} examples)")


def _length_panel(ax, stats: dict[int, Stats], longer_preferred: dict[int, bool]) -> None:
    bins = _confidence_bins(stats, longer_preferred)
    if not bins:
        ax.text(0.5, 0.5, "no pairs with lengths", ha="center", va="center", transform=ax.transAxes)
        return
    positions = range(len(bins))
    ax.bar(positions, [b[1] for b in bins], color="tab:orange")
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_xticks(list(positions), [f"{b[0]:.2g}" for b in bins], rotation=45, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence decile (mean confidence of the bin)")
    ax.set_ylabel("share of pairs whose chosen reply is longer")
    ax.set_title("length heuristic by confidence")


def plot_carto_map(
    stats: dict[int, Stats],
    longer_preferred: dict[int, bool] | None,
    out_png: str | Path,
    upper: float | None = None,
    lower: float | None = None,
) -> Path:
    """Draw the data map (variability vs confidence, coloured by correctness) and, when ``longer_preferred``
    is given, the share of "longer is preferred" pairs per confidence decile; save the PNG atomically."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot global state

    panels = 2 if longer_preferred is not None else 1
    fig = Figure(figsize=(6.5 * panels, 5), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _scatter_panel(axes[0], stats, upper, lower)
    if longer_preferred is not None:
        _length_panel(axes[1], stats, longer_preferred)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# --------------------------------------------------------------------------------------------------------------
# Recipe: rlhf-lab carto RUN_DIR --upper U [--lower L]
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CartoConfig:
    run_dir: str = arg("", "a train-rm run directory holding carto.jsonl (and optionally carto_lengths.jsonl)")
    upper: float | None = arg(None, "keep examples with confidence < upper (none: keep all, only draw the map); "
                              "Singhal et al. 2023's: webgpt 0.4, apf 0.3, rlcd 2, stack 1")
    lower: float | None = arg(None, "also require confidence > lower; Singhal et al. 2023's: webgpt -0.2, apf -0.3, "
                              "rlcd -1, stack -1")
    output: str | None = arg(None, "the keep file (one row index per line) [none: RUN_DIR/carto_keep.txt]")
    plot: bool = arg(True, "draw RUN_DIR/plots/carto_map.png")

    def validate(self) -> None:
        require(bool(self.run_dir), "run_dir", "give the train-rm run directory")
        require(self.upper is None or math.isfinite(self.upper), "upper", "must be a finite number")
        require(self.lower is None or math.isfinite(self.lower), "lower", "must be a finite number")
        require(self.lower is None or self.upper is not None, "lower", "needs --upper too")
        require(self.lower is None or self.upper is None or self.lower < self.upper, "lower", "must be below --upper")
        require(self.output is None or self.upper is not None, "output", "needs --upper (no cut, no keep file)")


@dataclass
class CartoResult:
    stats: dict[int, Stats]
    kept: list[int] | None
    stats_path: Path
    keep_path: Path | None
    plot_path: Path | None


def _longer_share(longer: dict[int, bool], uids: Iterable[int]) -> str:
    values = [longer[u] for u in uids if u in longer]
    return f"{sum(values) / len(values):.3f}" if values else "n/a"


def _summary(stats: dict[int, Stats], kept: list[int] | None, upper: float | None, lower: float | None,
             keep_path: Path | None, longer: dict[int, bool] | None) -> str:
    """One line: examples, mean confidence, the cut and the kept count (and the length heuristic's share)."""
    mean_conf = statistics.fmean(s["confidence"] for s in stats.values())
    line = f"carto: {len(stats)} examples, mean confidence {mean_conf:.4g}"
    if kept is None:
        line += ", no cut (--upper not given)"
    else:
        cut = f"confidence < {upper:g}" + (f" and > {lower:g}" if lower is not None else "")
        line += f", kept {len(kept)} ({cut}) -> {keep_path}"
    if longer is not None:
        line += f"; longer-is-chosen share: all {_longer_share(longer, stats)}"
        if kept is not None:
            line += f", kept {_longer_share(longer, kept)}"
    return line


def run_carto(
    run_dir: str | Path,
    upper: float | None,
    lower: float | None = None,
    output: str | Path | None = None,
    plot: bool = True,
) -> CartoResult:
    """Read ``RUN_DIR/carto.jsonl``, write ``carto_stats.jsonl``, the keep file and ``plots/carto_map.png``."""
    run_path = Path(run_dir)
    if not run_path.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    claim_run_dir(run_path)
    rows = read_log(run_path / "carto.jsonl", CARTO_FIELDS)
    if not rows:
        raise UserError(f"{run_path / 'carto.jsonl'}: no rows (was the RM trained with cartography logging?)")
    stats = carto_stats(rows)
    stats_path = run_path / "carto_stats.jsonl"
    write_jsonl(stats_path, ({"uid": uid, **s} for uid, s in stats.items()))
    kept, keep_path = None, None
    if upper is not None:
        kept = carto_keep(stats, upper, lower)
        keep_path = Path(output) if output else run_path / "carto_keep.txt"
        write_index_file(keep_path, kept)
    lengths_file = run_path / "carto_lengths.jsonl"
    longer = longer_preferred_by_uid(read_log(lengths_file, LENGTH_FIELDS)) if lengths_file.is_file() else None
    plot_path = None
    if plot:
        plot_path = plot_carto_map(stats, longer, run_path / "plots" / "carto_map.png", upper, lower)
    print(_summary(stats, kept, upper, lower, keep_path, longer), flush=True)
    return CartoResult(stats, kept, stats_path, keep_path, plot_path)


def run(config: CartoConfig) -> CartoResult:
    return run_carto(config.run_dir, config.upper, config.lower, config.output, config.plot)
