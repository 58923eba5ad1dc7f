"""`rlhf-lab report RUN_DIR`: one self-contained HTML file for a tree of synthetic runs; rendered in headless
Chromium, the screenshot is not blank."""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from rlhf_lab.cli import main
from rlhf_lab.config import make_config
from rlhf_lab.errors import UserError
from rlhf_lab.report import html as report
from rlhf_lab.report.plots import new_figure, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(path, colour="C0"):
    fig, axes = new_figure()
    axes[0, 0].plot([1, 2, 4, 8], [0.1, 0.4, 0.3, 0.2], color=colour)
    save_figure(fig, path)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run_tree(tmp_path):
    """A demo-like tree: train-rm, bon (curves in subdirs), ppo without plots, evaluate, an unknown run."""
    root = tmp_path / "study"
    rm = root / "rm_gold"
    rm.mkdir(parents=True)
    (rm / "config.yaml").write_text("model_name: default\ntrainable: top:2\nnote: <script>alert(1)</script>\n")
    _jsonl(rm / "metrics.jsonl", [{"step": s, "loss": 0.7 - 0.01 * s, "accuracy": 0.5 + 0.01 * s} for s in range(1, 11)]
           + [{"step": 10, "eval/accuracy": 0.6125}])
    (rm / "reward_models.json").write_text(json.dumps({"members": [{"path": "model"}], "trainable": "top:2"}))
    (rm / "model").mkdir()
    (rm / "model" / "config.json").write_text("{}")  # an exported model: listed, never read
    (rm / "checkpoints" / "step-5").mkdir(parents=True)
    (rm / "checkpoints" / "step-5" / "config.yaml").write_text("x: 1\n")  # not a run
    bon = root / "bon"
    (bon / "plots").mkdir(parents=True)
    (bon / "config.yaml").write_text("sample_ns: 1,2,4\n")
    _png(bon / "plots" / "bon.png")
    _jsonl(bon / "dummy.jsonl", [{"a": 1}])
    (bon / "member_rm1").mkdir()
    (bon / "member_rm1" / "bon_sampled_results.json").write_text(json.dumps(
        [{"n": n, "proxy_score": 0.1 * n, "gold_score": 0.77, "kl_bon": 0.0} for n in (1, 2, 4)]))
    ppo = root / "ppo_uwo"
    ppo.mkdir()
    (ppo / "config.yaml").write_text("init_kl_coef: 0.1\nppo_epochs: 4\n")
    _jsonl(ppo / "metrics.jsonl", [{"step": s, "objective/kl": 0.01 * s, "env/reward_mean": np.sin(s) + 3}
                                   for s in range(1, 21)])
    ev = root / "eval_final"
    (ev / "plots").mkdir(parents=True)
    (ev / "eval.json").write_text(json.dumps({"reward/gold/mean": 1.2345, "win_rate/gold/lc_win_rate": 0.4321,
                                              "length_bias/gold/global_corr": None, "notes": ["KL skipped"]}))
    _jsonl(ev / "generations.jsonl", [{"prompt": "p", "responses": ["r"]}])
    _png(ev / "plots" / "length_vs_reward.png", "C3")
    other = root / "aaa_custom"
    other.mkdir()
    _jsonl(other / "metrics.jsonl", [{"step": 1, "thing": 1.0}, {"step": 2, "thing": 3.0}])
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "readme.txt").write_text("hello")
    return root


def test_report_is_one_self_contained_file_in_recipe_order(run_tree):
    out = report.run(make_config(report.ReportConfig, {"run_dir": str(run_tree)}))
    assert out == run_tree / "report.html"
    page = out.read_text()
    # self-contained: no external asset of any kind
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # bon.png, length_vs_reward.png, and drawn curves for rm_gold, ppo_uwo, aaa_custom
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in images)
    assert len(re.findall(r"<img ", page)) == len(images)
    # sections: known recipes in pipeline order, then the unknown run; checkpoints/ and plain dirs are no runs
    sections = re.findall(r'<section id="run-([^"]+)"><h2>[^<]*<span class="kind">([^<]+)</span>', page)
    assert sections == [("rm-gold", "train-rm"), ("bon", "bon"), ("ppo-uwo", "ppo"), ("eval-final", "evaluate"),
                        ("aaa-custom", "run")]
    # final metrics: last value of each key of metrics.jsonl, result files, eval.json, the config (escaped)
    assert "eval/accuracy" in page and "0.6125" in page and "0.6" in page
    assert "member_rm1/bon_sampled_results.json" in page and page.count("0.77") == 3 + 1  # + the summary
    # the summary table: headline numbers of each run
    # the summary table: headline numbers of each run, named in words (the raw key in the tooltip)
    for needle in ('title="eval/accuracy">held-out accuracy</span> = <b>0.6125',
                   'title="member_rm1/bon_sampled_results[-1]/gold_score">member rm1: gold reward at the largest n'
                   '</span> = <b>0.77',
                   'title="win_rate/gold/lc_win_rate">win rate gold length-controlled win rate</span> = <b>0.4321',
                   'title="objective/kl">KL to the reference</span> = <b>0.2'):
        assert needle in page, needle
    assert 'id="findings"' not in page  # no run wrote findings: no findings section
    assert "1.234" in page and "0.4321" in page and "KL skipped" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<details><summary>resolved config.yaml</summary>" in page
    # curves were drawn (and kept as PNGs) only for runs without plots of their own
    assert sorted(p.name for p in (run_tree / "report_plots").iterdir()) == ["run-aaa-custom.png", "run-ppo-uwo.png",
                                                                    "run-rm-gold.png"]


def test_report_opens_with_the_findings(run_tree):
    """A run's findings.json comes first: one panel per finding (shown / not shown, the measurement, its plot)."""
    from rlhf_lab.eval.findings import Finding, read_findings, write_findings

    shown = Finding(claim="gold falls after its peak under best-of-n on proxy_0",
                    effect="gold at n=4 minus gold at n=16", estimate=0.1234, se=0.04, ci_low=0.045, ci_high=0.2018,
                    shown=True, n_prompts=64, plot="plots/bon.png", design="peak n chosen on the other half")
    null = Finding(claim="UWO keeps more gold than the members at n=16", effect="gold(UWO) − mean member gold",
                   estimate=-0.01, se=0.05, ci_low=-0.108, ci_high=0.088, shown=False, n_prompts=64)
    assert shown.sentence() == ("gold falls after its peak under best-of-n on proxy_0: shown — gold at n=4 minus gold "
                                "at n=16 = +0.123 (95% CI [+0.045, +0.202], 64 prompts)")
    assert null.sentence().startswith("UWO keeps more gold than the members at n=16: not shown — ")
    write_findings(run_tree / "bon", [shown, null])
    assert read_findings(run_tree / "bon" / "findings.json") == [shown, null]
    page = report.run(make_config(report.ReportConfig, {"run_dir": str(run_tree)})).read_text()
    first, summary = page.index('id="findings"'), page.index("<h2>summary</h2>")
    assert first < summary < page.index('id="run-rm-gold"')  # the answer before any per-run detail
    findings = page[first:page.index("</section>", first)]
    assert "1 of 2 shown" in findings
    assert findings.count('class="finding shown"') == 1 and findings.count('class="finding notshown"') == 1
    assert "+0.123 (95% CI [+0.045, +0.202], 64 prompts)" in findings and "[-0.108, +0.088]" in findings
    assert findings.count("<img ") == 1  # the shown finding's plot; the other has none
    assert page.count('class="finding ') == 2  # the findings file is not repeated as a table in the run's card
    # findings that share a plot embed it once
    write_findings(run_tree / "bon", [shown, null, shown])
    page = report.run(make_config(report.ReportConfig, {"run_dir": str(run_tree)})).read_text()
    findings = page[page.index('id="findings"'):page.index("</section>", page.index('id="findings"'))]
    assert findings.count("<img ") == 1 and "(its plot is the one above)" in findings


def test_recipe_kind_from_config_keys_and_names(tmp_path):
    assert report.recipe_kind(tmp_path / "x", {"num_raft_iteration": 3}, []) == "raft"
    assert report.recipe_kind(tmp_path / "x", {"loss": "ipo", "beta": 0.1}, []) == "dpo"
    assert report.recipe_kind(tmp_path / "merge_sweep", {}, []) == "merge"
    assert report.recipe_kind(tmp_path / "pareto", {}, []) == "pareto"
    assert report.recipe_kind(tmp_path / "stuff", {}, []) is None


def test_report_of_a_single_run_and_bad_input(tmp_path, capsys):
    run = tmp_path / "one"
    run.mkdir()
    _jsonl(run / "metrics.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    assert main(["report", str(run), "--output", str(tmp_path / "r.html")]) == 0  # positional RUN_DIR
    assert "report: 1 run(s)" in capsys.readouterr().out and (tmp_path / "r.html").is_file()
    with pytest.raises(UserError, match="no such directory"):
        report.run(make_config(report.ReportConfig, {"run_dir": str(tmp_path / "missing")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run directory"):
        report.run(make_config(report.ReportConfig, {"run_dir": str(tmp_path / "empty")}))


def _screenshot(html_path, png_path, tmp_path):
    """Render in headless Chromium; returns the screenshot as a (H, W) grey-level array."""
    from PIL import Image

    command = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png_path}",
               "--window-size=1200,1600", html_path.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(png_path).convert("L"), dtype=np.float64)


# Skipped only on a machine without chromium; CI installs it and sets RLHF_LAB_REQUIRE_CHROMIUM=1, so there a
# missing browser fails the test instead of hiding it.
@pytest.mark.skipif(shutil.which("chromium") is None and os.environ.get("RLHF_LAB_REQUIRE_CHROMIUM") != "1",
                    reason="chromium is not installed (Debian package `chromium`; .ci/run installs it)")
def test_report_renders_in_headless_chromium(run_tree, tmp_path):
    page = report.run(make_config(report.ReportConfig, {"run_dir": str(run_tree)}))
    pixels = _screenshot(page, tmp_path / "report.png", tmp_path)
    assert pixels.shape == (1600, 1200)
    # a blank page has one grey level; the report has a dark header, text, tables and plots
    assert pixels.std() > 20, pixels.std()
    assert (pixels < 100).mean() > 0.02  # the header bar and text are dark
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert _screenshot(blank, tmp_path / "blank.png", tmp_path).std() < 1  # the check can fail


def test_report_of_a_run_that_another_process_is_writing(run_tree):
    """A report reads a live run: the run's own lock (held here through another open file description, as a
    training process would hold it) does not block it; the report file has its own one-writer lock."""
    import fcntl

    holder = os.open(run_tree / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = report.run(make_config(report.ReportConfig, {"run_dir": str(run_tree)}))
        assert out.is_file() and ".lock" not in out.read_text()
    finally:
        os.close(holder)
