"""`rlhf-lab report RUN_DIR`: one self-contained HTML file for a run directory tree (``RUN_DIR/report.html``).

    runs     = RUN_DIR and every directory under it with a config.yaml, metrics.jsonl or eval.json
               (checkpoints/ and hidden directories are skipped; files in a run's plain subdirectories, such as
               bon's member_*/ curves or plots/, belong to that run)
    order    = by recipe kind when recognisable (sft, generate, train-rm, eval-rm, carto, score, bon, ppo, raft,
               dpo, merge, ama, pareto, evaluate), then the rest, each group alphabetical
    per run  = its PNG plots; curves of metrics.jsonl against the step when the run drew none (saved as PNGs
               under RUN_DIR/report_plots/); a table of its final numbers (the last value of every metric in
               metrics.jsonl, eval.json and the other result .json files); its resolved config.yaml (collapsible)

Everything is inline — CSS, and the PNGs as base64 ``data:`` URIs — so the file can be mailed or archived alone.
Nothing is recipe-specific beyond recognising the kind: a new recipe's files appear without changes here.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf_lab.config import arg, require
from rlhf_lab.errors import UserError
from rlhf_lab.eval.findings import FINDINGS_FILE, Finding, read_findings
from rlhf_lab.io import atomic_write_text, read_jsonl
from rlhf_lab.rundir import claim_run_dir

KIND_ORDER = ("sft", "generate", "train-rm", "eval-rm", "carto", "score", "bon", "ppo", "grpo", "raft", "dpo", "merge",
              "ama", "pareto", "evaluate")
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "eval.json")
SKIP_DIRS = {"checkpoints", "report_plots", "__pycache__", "node_modules"}
PLOTS_DIR = "report_plots"
MAX_JSON_BYTES = 2_000_000  # result summaries are small; bigger .json files are data, listed only


@dataclass
class ReportConfig:
    run_dir: str = arg("", "the run directory to report on (a single run or a tree of runs, e.g. a demo's)")
    output: str | None = arg(None, "HTML file to write (default RUN_DIR/report.html)")
    title: str | None = arg(None, "the report's title (default: the run directory's name)")
    plot_metrics: bool = arg(True, "draw metrics.jsonl curves for runs that made no PNG of their own")
    max_table_rows: int = arg(40, "rows shown of a list-of-records result file (e.g. bon_sampled_results.json)")
    max_depth: int = arg(6, "how deep under RUN_DIR to look for runs")

    def validate(self) -> None:
        require(bool(self.run_dir), "run_dir", "give the run directory: rlhf-lab report RUN_DIR")
        require(self.max_table_rows >= 1, "max_table_rows", "must be at least 1")
        require(self.max_depth >= 0, "max_depth", "must be >= 0")


@dataclass
class RunInfo:
    path: Path
    rel: str
    kind: str | None
    config_text: str | None = None
    config: dict = field(default_factory=dict)
    metrics_rows: list[dict] = field(default_factory=list)
    pngs: list[Path] = field(default_factory=list)
    json_files: list[Path] = field(default_factory=list)
    other_files: list[Path] = field(default_factory=list)
    model_dirs: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# Finding runs and their files
# --------------------------------------------------------------------------------------------------------------
def _skipped(path: Path) -> bool:
    return path.name in SKIP_DIRS or path.name.startswith(".")


def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_runs(root: Path, max_depth: int = 6) -> list[Path]:
    """``root`` (when it is a run) and every run directory below it, up to ``max_depth`` levels down."""
    found: list[Path] = []

    def walk(directory: Path, depth: int) -> None:
        if is_run_dir(directory):
            found.append(directory)
        if depth >= max_depth:
            return
        for child in sorted(p for p in directory.iterdir() if p.is_dir() and not _skipped(p)):
            walk(child, depth + 1)

    walk(root, 0)
    return found


def is_model_dir(path: Path) -> bool:
    """An exported model (weights, tokenizer): listed as one entry, never read into the report."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def run_files(run: Path, runs: set[Path]) -> list[Path]:
    """The files of ``run``: its own, and those of plain subdirectories that are not runs or models themselves."""
    files: list[Path] = []
    for entry in sorted(run.iterdir()):
        if entry.is_file() and not entry.name.startswith("."):  # the run's .lock and temp files are not results
            files.append(entry)
        elif entry.is_dir() and not _skipped(entry) and entry not in runs and not is_model_dir(entry):
            files.extend(run_files(entry, runs))
    return files


def recipe_kind(run: Path, config: dict, files: list[Path]) -> str | None:
    """The recipe that wrote ``run``: the ``command`` its config.yaml records; for runs written before that, from
    its result files, its config keys or its name (None = unknown)."""
    command = config.get("command")
    if command in KIND_ORDER:
        return command
    if command == "bon-study":
        return "bon"
    names = {f.name for f in files}
    if "reward_models.json" in names:
        return "train-rm"
    if "eval.json" in names and "generations.jsonl" in names:
        return "evaluate"
    if "bon_summary.json" in names or "bon_sampled_results.json" in names:
        return "bon"
    if "carto_stats.jsonl" in names or "carto_map.png" in names:
        return "carto"
    if "scored.jsonl" in names:
        return "score"
    keys = set(config)
    if keys & {"init_kl_coef", "ppo_epochs", "cliprange", "vf_coef"}:
        return "ppo"
    if keys & {"num_raft_iteration", "top_reward_percentage", "raft_batch_size"}:
        return "raft"
    if "loss" in keys and str(config.get("loss")).lower() in ("dpo", "ipo", "rrhf"):
        return "dpo"
    if keys & {"loss_on", "truncation"} and "export" in keys:
        return "sft"
    if "samples_per_prompt" in keys and "generations.jsonl" in names:
        return "generate"
    tokens = set(re.split(r"[^a-z0-9]+", run.name.lower()))
    for kind in KIND_ORDER:
        if kind in tokens or kind.replace("-", "") in tokens:
            return kind
    aliases = {"rm": "train-rm", "ipo": "dpo", "rrhf": "dpo", "eval": "evaluate", "gen": "generate"}
    for token, kind in aliases.items():
        if token in tokens:
            return kind
    return None


def collect(root: Path, max_depth: int) -> list[RunInfo]:
    paths = find_runs(root, max_depth)
    run_set = set(paths)
    infos = []
    for path in paths:
        files = run_files(path, run_set)
        config_text, config = None, {}
        if (path / "config.yaml").is_file():
            config_text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
            try:
                loaded = yaml.safe_load(config_text)
                config = loaded if isinstance(loaded, dict) else {}
            except yaml.YAMLError:
                config = {}
        rows = read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
        rel = "." if path == root else str(path.relative_to(root))
        infos.append(RunInfo(
            path=path, rel=rel, kind=recipe_kind(path, config, files), config_text=config_text, config=config,
            metrics_rows=rows,
            pngs=[f for f in files if f.suffix.lower() == ".png"],
            json_files=[f for f in files if f.suffix == ".json" and f.stat().st_size <= MAX_JSON_BYTES],
            other_files=[f for f in files if f.suffix not in (".png", ".json")],
            model_dirs=sorted(p for p in path.rglob("*") if p.is_dir() and is_model_dir(p)
                              and not any(part in SKIP_DIRS for part in p.relative_to(path).parts)),
        ))
    return sorted(infos, key=_order_key)


def _order_key(info: RunInfo) -> tuple:
    rank = KIND_ORDER.index(info.kind) if info.kind in KIND_ORDER else len(KIND_ORDER)
    return (rank, info.rel)


# --------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of a nested JSON value as ``a/b/c`` keys (lists of scalars longer than 8 are summarised)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(value, list):
        if value and all(_is_number(v) for v in value) and len(value) > 8:
            out[prefix] = f"[{len(value)} numbers, last {value[-1]:.4g}]"
        elif value and all(not isinstance(v, (dict, list)) for v in value):
            out[prefix] = ", ".join(map(str, value))
    elif value is None or isinstance(value, (str, bool, int, float)):
        out[prefix] = value
    return out


def final_metrics(rows: list[dict]) -> dict[str, Any]:
    """The last value of every key over the rows of metrics.jsonl (train and eval rows carry different keys)."""
    last: dict[str, Any] = {}
    for row in rows:
        for key, value in flatten(row).items():
            last[key] = value
    return last


def record_table(value: Any) -> list[dict] | None:
    """A list of flat records (same scalar keys), e.g. bon_sampled_results.json, or None."""
    flat = (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
            and all(not isinstance(x, (dict, list)) for v in value for x in v.values()))
    return value if flat else None


HEADLINE_PATTERNS = ("eval/accuracy", "accuracy", "reward/gold/mean", "reward/proxy/mean", "gold_score",
                     "proxy_score", "lc_win_rate", "win_rate", "gain_after_length", "kl/k3", "objective/kl", "kl", "reward_mean",
                     "reward", "loss")
HEADLINE_SKIP = ("_std", "_ci_", "baseline/", "time/", "std/", "/min", "/max")


def _matches(key: str, pattern: str) -> bool:
    return key == pattern or key.endswith("/" + pattern) or key.split("/")[-1] == pattern


def headline(info: RunInfo, max_items: int = 5) -> dict[str, Any]:
    """A few numbers of a run for the overview table: accuracy, rewards, win rates, KL, loss — when present.

    Candidates: the final metrics, the scalars of its result .json files and the last row of a records file
    (e.g. the largest n of a best-of-n curve).
    """
    values: dict[str, Any] = dict(final_metrics(info.metrics_rows))
    for path in info.json_files:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        records = record_table(value)
        if records is not None:
            stem = str(path.relative_to(info.path).with_suffix(""))
            values.update({f"{stem}[-1]/{k}": v for k, v in records[-1].items()})
        elif isinstance(value, dict):
            values.update(flatten(value))
    numbers = {k: v for k, v in values.items() if _is_number(v) and not any(s in k for s in HEADLINE_SKIP)}
    chosen: dict[str, Any] = {}
    for pattern in HEADLINE_PATTERNS:
        for key, value in numbers.items():
            if len(chosen) < max_items and key not in chosen and _matches(key, pattern):
                chosen[key] = value
    for key, value in numbers.items():  # nothing recognised: the first few numbers
        if len(chosen) >= min(3, max_items):
            break
        if key not in ("step", "epoch"):
            chosen.setdefault(key, value)
    return chosen


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# Plots of metrics.jsonl
# --------------------------------------------------------------------------------------------------------------
def numeric_series(rows: list[dict]) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """(x name, {metric: (xs, ys)}) for every numeric metric, x = ``step`` when the rows have it, else the row."""
    x_key = "step" if any("step" in r for r in rows) else "row"
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, row in enumerate(rows):
        x = row.get("step", index) if x_key == "step" else index
        if not _is_number(x):
            continue
        for key, value in flatten(row).items():
            if key in ("step", "epoch") or key.startswith("time") or not _is_number(value):
                continue
            if not math.isfinite(float(value)):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(float(x))
            ys.append(float(value))
    return x_key, {k: v for k, v in series.items() if len(v[0]) >= 2}


def plot_metrics(rows: list[dict], out_png: Path, title: str, max_panels: int = 12) -> Path | None:
    """One panel per numeric metric (at most ``max_panels``, in first-seen order) against the step."""
    x_key, series = numeric_series(rows)
    if not series:
        return None
    from rlhf_lab.report.plots import new_figure, save_figure

    names = list(series)[:max_panels]
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = new_figure(nrows, cols, size=(4.2 * cols, 3.0 * nrows))
    for index, ax in enumerate(axes.flat):
        if index >= len(names):
            ax.set_visible(False)
            continue
        xs, ys = series[names[index]]
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.4)
        ax.set_title(names[index], fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:24px}
header p{margin:0;opacity:.85;font-size:13px}main{padding:8px 28px 40px;max-width:1400px}
nav{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:10px 16px;margin:16px 0}
nav a{margin-right:14px;text-decoration:none;color:#1f5fa8;font-size:14px;line-height:1.8}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:14px 20px;margin:18px 0}
h2{margin:4px 0 10px;font-size:19px}.kind{display:inline-block;background:#e3edf9;color:#1f3a5f;border-radius:4px;
padding:1px 8px;font-size:12px;margin-left:8px;vertical-align:middle}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}td,th{border:1px solid #e1e6ec;padding:3px 9px;
text-align:left}th{background:#f2f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}figure{margin:0}figure img{max-width:min(100%,1100px);border:1px solid #e1e6ec}
figcaption{font-size:12px;color:#5a6473}pre{background:#f5f7f9;padding:10px;font-size:12px;overflow-x:auto}
details summary{cursor:pointer;color:#1f5fa8;font-size:14px}.muted{color:#6b7480;font-size:12px}
.cols{columns:2;column-gap:24px}
.finding{border-left:5px solid #9aa4b1;padding:6px 14px;margin:12px 0;background:#fcfdfe}
.finding.shown{border-left-color:#2e8540}.finding.notshown{border-left-color:#b7791f}
.finding p{margin:4px 0}.badge{display:inline-block;border-radius:4px;padding:1px 8px;font-size:12px;color:#fff;
margin-right:8px;background:#b7791f}.shown .badge{background:#2e8540}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(rel: str) -> str:
    return "run-" + (re.sub(r"[^A-Za-z0-9]+", "-", rel).strip("-") or "root")


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _kv_table(values: dict[str, Any], per_column: int = 24) -> str:
    """metric | value rows; a long table is cut into side-by-side columns of ``per_column`` rows."""
    items = list(values.items())
    tables = []
    for start in range(0, len(items), per_column):
        rows = "".join(f"<tr><td>{_e(k)}</td><td class=\"num\">{_e(_fmt(v))}</td></tr>"
                       for k, v in items[start:start + per_column])
        tables.append(f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
    return tables[0] if len(tables) == 1 else "<div class=\"grid\">" + "".join(tables) + "</div>"


def _records_table(records: list[dict], max_rows: int) -> str:
    keys = list(dict.fromkeys(k for r in records for k in r))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{_e(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>"
                   for r in records[:max_rows])
    more = (f"<p class=\"muted\">{len(records) - max_rows} more rows in the file</p>"
            if len(records) > max_rows else "")
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def run_findings(infos: list[RunInfo]) -> list[tuple[RunInfo, Finding]]:
    """Every run's findings (its findings.json), in the runs' order; an unreadable file is named, not fatal."""
    found = []
    for info in infos:
        path = info.path / FINDINGS_FILE
        if path.is_file():
            try:
                found.extend((info, f) for f in read_findings(path))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
                print(f"report: {path}: not a findings file ({type(e).__name__}); skipped", flush=True)
    return found


def render_findings(found: list[tuple[RunInfo, Finding]]) -> str:
    """The report's first section: one panel per finding — shown / not shown, the measurement, its plot."""
    if not found:
        return ""
    panels, drawn = [], set()
    for info, finding in found:
        status = "shown" if finding.shown else "not shown"
        figure = ""
        plot = info.path / finding.plot if finding.plot else None
        if plot is not None and plot in drawn:  # findings that share a plot show it once
            figure = "<p class=\"muted\">(its plot is the one above)</p>"
        elif plot is not None and plot.is_file():
            drawn.add(plot)
            figure = (f"<figure><img src=\"{png_data_uri(info.path / finding.plot)}\" alt=\"{_e(finding.plot)}\" "
                      f"style=\"max-width:720px\"></figure>")
        design = f"<p class=\"muted\">{_e(finding.design)}</p>" if finding.design else ""
        panels.append(
            f"<div class=\"finding {'shown' if finding.shown else 'notshown'}\"><p><span class=\"badge\">{status}"
            f"</span><b>{_e(finding.claim)}</b></p><p>{_e(finding.measurement())}</p>{design}"
            f"<p class=\"muted\">from <a href=\"#{_anchor(info.rel)}\">{_e(info.rel)}</a></p>{figure}</div>")
    shown = sum(f.shown for _, f in found)
    return (f"<section id=\"findings\"><h2>findings <span class=\"muted\">({shown} of {len(found)} shown: "
            f"the 95% confidence interval of the paired effect excludes zero)</span></h2>{''.join(panels)}</section>")


# Words for the summary table: a metric key's parts, read left to right.
METRIC_WORDS = {
    "gold_score": "gold reward", "proxy_score": "proxy reward", "gold_se": "gold reward SE", "kl_bon": "KL (best-of-n)",
    "bon_sampled_results[-1]": "at the largest n", "accuracy": "accuracy", "eval": "held-out",
    "reward/gold/mean": "gold reward", "reward/proxy/mean": "proxy reward", "lc_win_rate": "length-controlled win rate",
    "win_rate": "win rate", "gain_after_length": "reward gain not explained by length", "kl/k3": "KL (k3 estimator)",
    "objective/kl": "KL to the reference", "loss": "loss", "reward_mean": "mean reward",
}


def describe_metric(key: str) -> str:
    """A metric key in words: ``ensemble_UWO-0.5/bon_sampled_results[-1]/gold_score`` → "UWO-0.5 ensemble: gold
    reward at the largest n"; unknown parts are kept as they are."""
    for known, words in METRIC_WORDS.items():  # whole multi-part keys first
        if "/" in known and key.endswith(known):
            head = key[: -len(known)].strip("/")
            return f"{describe_metric(head)}: {words}" if head else words
    parts = key.split("/")
    subject, rest = [], []
    for index, part in enumerate(parts):
        if part == "members":  # eval/members/NAME/accuracy: NAME is the subject
            continue
        if index and parts[index - 1] == "members":
            subject.append(f"member {part}")
        elif part.startswith("ensemble_"):
            subject.append(f"{part.removeprefix('ensemble_')} ensemble")
        elif part.startswith("member_") or part.startswith("seed-"):
            subject.append(part.replace("_", " "))
        else:
            rest.append(METRIC_WORDS.get(part, part.replace("_", " ")))
    if len(rest) >= 2 and rest[0] == "at the largest n":
        rest = rest[1:] + rest[:1]
    text = " ".join(rest)
    return f"{', '.join(subject)}: {text}" if subject else text


def render_run(info: RunInfo, root: Path, config: ReportConfig, extra_pngs: list[Path]) -> str:
    parts = [f"<section id=\"{_anchor(info.rel)}\"><h2>{_e(info.rel if info.rel != '.' else root.name)}"
             f"<span class=\"kind\">{_e(info.kind or 'run')}</span></h2>"]
    # Plots first: they are what a reader looks for.
    figures = []
    for png in [*info.pngs, *extra_pngs]:
        caption = png.relative_to(root) if png.is_relative_to(root) else png.name
        figures.append(f"<figure><img src=\"{png_data_uri(png)}\" alt=\"{_e(caption)}\">"
                       f"<figcaption>{_e(caption)}</figcaption></figure>")
    if figures:
        parts.append("<div class=\"grid\">" + "".join(figures) + "</div>")
    # Final numbers.
    if info.metrics_rows:
        last = final_metrics(info.metrics_rows)
        parts.append(f"<h3>final metrics <span class=\"muted\">(last value of each key in metrics.jsonl, "
                     f"{len(info.metrics_rows)} rows)</span></h3>" + _kv_table(last))
    for path in info.json_files:
        if path == info.path / FINDINGS_FILE:  # shown at the top of the report
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        name = path.relative_to(info.path)
        records = record_table(value)
        if records is not None:
            parts.append(f"<h3>{_e(name)}</h3>" + _records_table(records, config.max_table_rows))
        elif isinstance(value, dict):
            flat = flatten(value)
            notes = flat.pop("notes", None)
            if flat:
                parts.append(f"<h3>{_e(name)}</h3>" + _kv_table(flat))
            if notes:
                parts.append(f"<p class=\"muted\">notes: {_e(notes)}</p>")
    if info.other_files:
        listing = "".join(f"<li>{_e(f.relative_to(info.path))} <span class=\"muted\">({f.stat().st_size:,} bytes)"
                          f"</span></li>" for f in info.other_files[:60])
        parts.append(f"<details><summary>files ({len(info.other_files)})</summary><ul>{listing}</ul></details>")
    if info.model_dirs:
        listing = ", ".join(_e(p.relative_to(info.path)) for p in info.model_dirs[:20])
        parts.append(f"<p class=\"muted\">models: {listing}</p>")
    if info.config_text is not None:
        parts.append(f"<details><summary>resolved config.yaml</summary><pre>{_e(info.config_text)}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def run(config: ReportConfig) -> Path:
    root = Path(config.run_dir)
    if not root.is_dir():
        raise UserError(f"{config.run_dir}: no such directory")
    out = Path(config.output) if config.output else root / "report.html"
    # One writer per report file, but no lock on the run directory itself: a report of a run that is still
    # training is a normal way to watch it.
    claim_run_dir(out.parent, lock_file=out.parent / f".{out.name}.lock")
    infos = collect(root, config.max_depth)
    if not infos:
        raise UserError(f"{config.run_dir}: no run directory (a directory with {', '.join(RUN_MARKERS)}) found")
    sections = []
    for info in infos:
        extra: list[Path] = []
        if config.plot_metrics and not info.pngs and info.metrics_rows:
            png = plot_metrics(info.metrics_rows, root / PLOTS_DIR / f"{_anchor(info.rel)}.png",
                               f"{info.rel} — metrics.jsonl")
            extra = [png] if png else []
        sections.append(render_run(info, root, config, extra))
    title = config.title or f"rlhf-lab report: {root.resolve().name}"
    overview = "".join(
        f"<tr><td><a href=\"#{_anchor(i.rel)}\">{_e(i.rel)}</a></td><td>{_e(i.kind or '')}</td><td>"
        + "<br>".join(f"<span title=\"{_e(k)}\">{_e(describe_metric(k))}</span> = <b>{_e(_fmt(v))}</b>"
                      for k, v in headline(i).items()) + "</td></tr>"
        for i in infos)
    overview = f"<table><tr><th>run</th><th>kind</th><th>headline numbers</th></tr>{overview}</table>"
    nav = "".join(f"<a href=\"#{_anchor(i.rel)}\">{_e(i.rel)} <span class=\"muted\">{_e(i.kind or '')}</span></a>"
                  for i in infos)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{_e(title)}</h1><p>{_e(root.resolve())} · "
            f"{len(infos)} run(s) · generated {stamp}</p></header><main>{render_findings(run_findings(infos))}<nav>{nav}</nav>"
            f"<section><h2>summary</h2>{overview}</section>{''.join(sections)}"
            f"</main></body></html>\n")
    atomic_write_text(out, page)
    out.chmod(0o644)  # a page to share: readable like any web page (the atomic temp file was 0600)
    print(f"report: {len(infos)} run(s) -> {out}", flush=True)
    return out
