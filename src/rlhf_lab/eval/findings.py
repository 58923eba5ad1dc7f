"""Findings: the answer a study gives, as measurements — an effect, its confidence interval, shown or not shown.

A recipe that compares two things on the same prompts (two best-of-n curve points, an ensemble against its
members, a tuned policy against its base) writes ``findings.json`` in its run directory: a list of
:class:`Finding` records. ``rlhf-lab report`` opens with them, one panel each (the sentence and its plot), before
any per-run detail, and the demo prints the same sentences.

    shown  ⇔  the confidence interval of the effect excludes 0 in the direction the claim names
              (a claim "A > B" is shown when ci_low > 0; an effect inside the noise is "not shown (CI …)")

The interval is the recipe's business (paired over prompts, ``eval.paired``); this module only carries it and
says it in words.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.eval.paired import interval_words
from rlhf_lab.io import atomic_write_text

FINDINGS_FILE = "findings.json"


@dataclass
class Finding:
    """One claim and its measurement.

    ``claim``: what would be true if the effect is real, in words ("gold falls after its peak under best-of-n on
    proxy_0"). ``effect``: the quantity measured, in words ("gold at the peak n − gold at n = 64, per prompt").
    ``estimate`` ± ``se`` and the interval [``ci_low``, ``ci_high``] are in the effect's units; ``shown`` is
    whether the interval supports the claim. ``n_prompts``: the prompts (paired units) behind it. ``plot``: a PNG
    path relative to the run directory that wrote the finding (or None). ``design``: how it was measured (the
    split, the test, the fixed n), one sentence.
    """

    claim: str
    effect: str
    estimate: float
    se: float | None
    ci_low: float | None
    ci_high: float | None
    shown: bool
    n_prompts: int
    confidence: float = 0.95
    plot: str | None = None
    design: str = ""
    key: str = ""  # a stable identifier, e.g. "bon/overoptimized/proxy_0"

    def sentence(self) -> str:
        """The finding in one sentence: claim — effect, estimate, CI, prompts — shown / not shown."""
        return f"{self.claim}: {'shown' if self.shown else 'not shown'} — {self.measurement()}"

    def measurement(self) -> str:
        level = f"{round(self.confidence * 100)}% CI"
        if self.ci_low is None or self.ci_high is None or not math.isfinite(self.ci_low):
            interval = "no CI (fewer than 2 prompts)"
        else:
            interval = f"{level} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"
        return f"{self.effect} = {self.estimate:+.3f} ({interval}, {self.n_prompts} prompts)"


def write_findings(run_dir: str | Path, findings: list[Finding]) -> Path:
    """``run_dir/findings.json`` (atomically): the list of findings as JSON objects."""
    path = Path(run_dir) / FINDINGS_FILE
    atomic_write_text(path, json.dumps([dataclasses.asdict(f) for f in findings], indent=2) + "\n")
    return path


def read_findings(path: str | Path) -> list[Finding]:
    """The findings of a ``findings.json`` file; unknown keys are ignored, so older readers keep working."""
    fields = {f.name for f in dataclasses.fields(Finding)}
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Finding(**{k: v for k, v in row.items() if k in fields}) for row in rows]


def verdict_words(v: dict) -> str:
    """One verdict in words: the held-out paired fall with its CI and "shown" / "not shown (CI …)".

    A verdict without the paired fields (an old ``bon_study.json``, or a summary that copied only the old keys)
    is described from ``gold_fell`` and the unpaired ``gold_drop_se``.
    """
    if "gold_drop_paired" not in v:
        se = f", unpaired SE {v['gold_drop_se']:.3f}" if v.get("gold_drop_se") is not None else ""
        if v["overoptimized"]:
            return f"OVEROPTIMIZED (gold drop {v['gold_drop_after_peak']:.3f}{se})"
        return f"no: gold fell {v['gold_drop_after_peak']:.3f}{se}" if v["gold_fell"] else "no"
    call = "OVEROPTIMIZED" if v["overoptimized"] else "no"
    if v["gold_drop_paired"] is None:
        return f"{call}: {v['gold_drop_reason']}"
    if v["gold_peak_n_selected"] == v["max_n"]:
        return f"{call}: on the selection half gold peaks at the largest n (n={v['max_n']}): no fall to test"
    fall = {"diff": v["gold_drop_paired"], "se": v["gold_drop_paired_se"], "ci_low": v["gold_drop_ci_low"],
            "ci_high": v["gold_drop_ci_high"], "shown": v["gold_drop_shown"],
            "confidence": v["gold_drop_confidence"], "reason": v["gold_drop_reason"]}
    words = (f"{call}: held-out gold fall n={v['gold_peak_n_selected']} -> max n {interval_words(fall)} "
             f"({v['held_out_prompts']} prompts)")
    if v["proxy_rise_after_peak"] <= 0:
        words += ", proxy did not rise past the peak"
    return words
