"""Online-RL runs compared on their eval prompts (rlhf_lab.eval.runs): synthetic eval files, hand computations."""

import json
import math

import numpy as np
import pytest

from rlhf_lab.errors import UserError
from rlhf_lab.eval.paired import split_halves, t_quantile
from rlhf_lab.eval.runs import at_kl, matched_kl, read_eval_table, rl_fall


def _write_run(root, steps, gold, proxy, kl, samples=2, prompts=None):
    """eval/eval-{step}.jsonl with ``samples`` answers per prompt: answer j of prompt p at step t has
    gold[t][p] + (j − (samples−1)/2)·0.1 (so the per-prompt mean is gold[t][p])."""
    (root / "eval").mkdir(parents=True)
    P = len(gold[0])
    prompts = prompts or [f"prompt {p}" for p in range(P)]
    for t, step in enumerate(steps):
        rows = []
        for p in range(P):
            for j in range(samples):
                offset = (j - (samples - 1) / 2) * 0.1
                rows.append({"step": step, "prompt_index": p, "sample": j, "prompt": prompts[p],
                             "gold_score": gold[t][p] + offset, "proxy_score": proxy[t][p] - offset,
                             "kl_k1": kl[t][p], "length": 10 + t})
        (root / "eval" / f"eval-{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_read_eval_table_averages_each_prompts_answers_and_interpolates_at_a_kl(tmp_path):
    gold = [[0.0, 1.0], [1.0, 3.0], [0.0, 1.0]]
    run = _write_run(tmp_path / "a", [0, 10, 20], gold, [[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 3], [4, 4]])
    table = read_eval_table(run)
    assert table.steps == [0, 10, 20] and table.prompts == ["prompt 0", "prompt 1"]
    assert np.allclose(table.values["gold_score"], gold) and np.allclose(table.mean_kl(), [0, 2, 4])
    # mean KL 3 lies halfway between step 10 (KL 2) and step 20 (KL 4): w = ½ for every prompt
    assert np.allclose(at_kl(table, 3.0), [0.5, 2.0])
    assert np.allclose(at_kl(table, 0.0), gold[0]) and at_kl(table, 4.5) is None


def test_rl_fall_by_hand_and_a_null_is_not_shown(tmp_path):
    rng = np.random.default_rng(0)
    P, steps = 40, [0, 10, 20, 30]
    tables, nulls = [], []
    for s in range(3):
        base = rng.normal(0, 1, P)
        rise_fall = [base, base + 0.5, base + 0.8, base + 0.1]  # gold peaks at step 20, falls by 0.7
        noisy = [g + rng.normal(0, 0.2, P) for g in rise_fall]
        proxy = [base + k for k in range(4)]
        kl = [np.full(P, k * 1.0) for k in range(4)]
        tables.append(read_eval_table(_write_run(tmp_path / f"fall{s}", steps, noisy, proxy, kl)))
        flat = [base + rng.normal(0, 0.2, P) for _ in range(4)]
        nulls.append(read_eval_table(_write_run(tmp_path / f"null{s}", steps, flat, proxy, kl)))
    result = rl_fall(tables, seed=5, bootstrap=200)
    select, test = split_halves(P, 5)
    falls = []
    for table in tables:
        gold = table.values["gold_score"]
        peak = int(np.argmax(gold[:, select].mean(axis=1)))
        falls.append(float((gold[peak, test] - gold[-1, test]).mean()))
    assert result["peak_steps"] == [20, 20, 20]
    assert result["across_seeds"]["diff"] == pytest.approx(np.mean(falls))
    se = np.std(falls, ddof=1) / math.sqrt(3)
    assert result["across_seeds"]["se"] == pytest.approx(se)
    assert result["across_seeds"]["ci_low"] == pytest.approx(np.mean(falls) - t_quantile(0.95, 2) * se)
    assert result["shown"] and result["shown_by"] == "across_seeds" and result["proxy_rise"] > 0
    null = rl_fall(nulls, seed=5, bootstrap=200)
    assert not null["shown"]
    one = rl_fall(tables[:1], seed=5, bootstrap=200)  # one seed: only the prompt-paired interval exists
    assert one["shown_by"] == "prompt_paired" and one["across_seeds"]["se"] is None


def test_matched_kl_pairs_runs_by_seed_at_the_highest_common_kl(tmp_path):
    P = 6
    a, b = [], []
    for s in range(2):
        gold_a = [np.zeros(P), np.full(P, 1.0 + s), np.full(P, 2.0)]
        gold_b = [np.zeros(P), np.arange(P) * 0.1, np.arange(P) * 0.2]
        a.append(read_eval_table(_write_run(tmp_path / f"a{s}", [0, 5, 10], gold_a, gold_a,
                                            [np.zeros(P), np.full(P, 1.0), np.full(P, 2.0)])))
        b.append(read_eval_table(_write_run(tmp_path / f"b{s}", [0, 5, 10], gold_b, gold_b,
                                            [np.zeros(P), np.full(P, 2.0), np.full(P, 3.0)])))
    result = matched_kl(a, b, bootstrap=0)
    assert result["target_kl"] == pytest.approx(2.0)  # A reaches KL 2 at its last step; B at its middle one
    per_seed = [np.full(P, 2.0) - np.arange(P) * 0.1 for _ in range(2)]
    assert result["per_seed"][0]["diff"] == pytest.approx(per_seed[0].mean())
    assert result["across_seeds"]["diff"] == pytest.approx(per_seed[0].mean())
    # at KL 1: A halfway to step 5 is its step-5 value (KL 1), B halfway between steps 0 and 5
    low = matched_kl(a, b, target=1.0, bootstrap=0)
    assert low["per_seed"][1]["diff"] == pytest.approx(np.mean(np.full(P, 2.0) - np.arange(P) * 0.05))
    with pytest.raises(UserError, match="not reached"):
        matched_kl(a, b, target=2.5)


def test_runs_with_different_prompts_are_refused(tmp_path):
    one = read_eval_table(_write_run(tmp_path / "x", [0, 1], [[0, 0], [1, 1]], [[0, 0], [1, 1]], [[0, 0], [1, 1]]))
    other = read_eval_table(_write_run(tmp_path / "y", [0, 1], [[0, 0], [1, 1]], [[0, 0], [1, 1]], [[0, 0], [1, 1]],
                                       prompts=["q", "r"]))
    with pytest.raises(UserError, match="same eval prompts"):
        rl_fall([one, other])
    with pytest.raises(UserError, match="no eval"):
        read_eval_table(tmp_path)
