import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from rlhf_lab.config import make_config
from rlhf_lab.errors import UserError
from rlhf_lab.eval.bon import (
    SEED_SAMPLE_NS,
    bon_coefficients,
    bon_estimate,
    kl_bon,
    read_per_prompt,
    sort_by_proxy,
)
from rlhf_lab.recipes.bon import BonConfig, run


# ---------------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------------
def brute_force_bon(proxy: np.ndarray, gold: np.ndarray, n: int) -> tuple[float, float]:
    """Average over prompts and over every n-subset of the (proxy, gold) of the subset's best-by-proxy answer.

    Ties go to the answer that comes later in the row: max by (proxy, position), the estimator's convention.
    """
    proxy_total = gold_total = 0.0
    for p_row, g_row in zip(proxy, gold, strict=True):
        subsets = list(itertools.combinations(range(len(p_row)), n))
        winners = [max(subset, key=lambda a: (p_row[a], a)) for subset in subsets]
        proxy_total += sum(p_row[w] for w in winners) / len(subsets)
        gold_total += sum(g_row[w] for w in winners) / len(subsets)
    return proxy_total / len(proxy), gold_total / len(proxy)


def exact_coefficients(N: int, n: int) -> list[float]:
    """C(i−1, n−1) / C(N, n) for i = 1..N with big integers, one correctly rounded division each (the seed)."""
    total, c, out = math.comb(N, n), 1, [0.0] * N
    for i in range(n, N + 1):  # c = C(i−1, n−1)
        out[i - 1] = c / total
        c = c * i // (i - n + 1)
    return out


def test_coefficients_match_exact_fractions_up_to_N_12600():
    N = 12600
    for n in (1, 2, 3, 17, 1000, 4096, 6300, 8192, 12500, 12599, 12600):
        got, exact = bon_coefficients(N, n), np.array(exact_coefficients(N, n))
        normal = exact > 1e-300  # below that the exact value itself rounds to a subnormal or 0
        assert np.all(got[: n - 1] == 0)
        assert np.max(np.abs(got[normal] - exact[normal]) / exact[normal]) <= 1e-12, n
        assert np.max(np.abs(got[~normal] - exact[~normal]), initial=0.0) <= 1e-300
        assert math.isclose(got.sum(), 1.0, rel_tol=1e-12)


def test_coefficients_small_N_by_hand():
    assert list(bon_coefficients(3, 1)) == pytest.approx([1 / 3] * 3)
    assert list(bon_coefficients(3, 2)) == pytest.approx([0, 1 / 3, 2 / 3])  # C(1,1)/3, C(2,1)/3
    assert list(bon_coefficients(3, 3)) == [0, 0, 1]
    N, n = 9, 4
    want = [float(Fraction(math.comb(i - 1, n - 1), math.comb(N, n))) for i in range(1, N + 1)]
    assert list(bon_coefficients(N, n)) == pytest.approx(want, rel=1e-15)
    with pytest.raises(ValueError):
        bon_coefficients(3, 4)


@pytest.mark.parametrize("seed", range(6))
def test_estimator_equals_brute_force_enumeration_with_ties(seed):
    rng = np.random.default_rng(seed)
    P, N = 3, int(rng.integers(1, 10))
    proxy = rng.integers(0, 4, size=(P, N)).astype(float)  # few values: many ties
    gold = rng.normal(size=(P, N))
    rows = bon_estimate(proxy, gold, range(1, N + 1))
    assert [r["n"] for r in rows] == list(range(1, N + 1))
    for row in rows:
        want_proxy, want_gold = brute_force_bon(proxy, gold, row["n"])
        assert row["proxy_score"] == pytest.approx(want_proxy, rel=1e-12, abs=1e-12)
        assert row["gold_score"] == pytest.approx(want_gold, rel=1e-12, abs=1e-12)


def test_n_1_is_the_mean_and_n_N_the_gold_of_the_top_proxy_answer():
    rng = np.random.default_rng(1)
    proxy, gold = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
    proxy[0, 7] = proxy[0, 30] = proxy[0].max() + 1  # a tie at the top: the later answer (30) wins
    first, last = bon_estimate(proxy, gold, [1, 50])
    assert first["proxy_score"] == pytest.approx(proxy.mean()) and first["gold_score"] == pytest.approx(gold.mean())
    top = [30] + [int(np.argmax(row)) for row in proxy[1:]]
    assert last["proxy_score"] == pytest.approx(np.mean([proxy[p, a] for p, a in enumerate(top)]))
    assert last["gold_score"] == pytest.approx(np.mean([gold[p, a] for p, a in enumerate(top)]))


def test_gold_is_permuted_with_the_proxy_order_unlike_the_seeds_ensembles():
    proxy = np.array([[0.9, 0.1, 0.5]])  # ascending order: answers 1, 2, 0
    gold = np.array([[10.0, 0.0, 5.0]])
    (row,) = bon_estimate(proxy, gold, [2])
    w = bon_coefficients(3, 2)  # (0, 1/3, 2/3)
    assert row["gold_score"] == pytest.approx(1 / 3 * 5.0 + 2 / 3 * 10.0)
    seed_bug = float(w @ gold[0])  # gold left in file order, as the seed's ensemble code does
    assert seed_bug == pytest.approx(1 / 3 * 0.0 + 2 / 3 * 5.0) and seed_bug != pytest.approx(row["gold_score"])


def test_stable_sort_keeps_file_order_of_ties_and_sorted_files_unchanged():
    rng = np.random.default_rng(2)
    proxy = rng.integers(0, 3, size=(5, 40)).astype(float)
    proxy[0] = rng.normal(size=40)  # one row without ties takes the fast path
    gold = rng.normal(size=(5, 40))
    order = np.argsort(proxy, axis=1, kind="stable")
    got_proxy, got_gold = sort_by_proxy(proxy, gold)
    assert np.array_equal(got_proxy, np.take_along_axis(proxy, order, 1))
    assert np.array_equal(got_gold, np.take_along_axis(gold, order, 1))
    ascending = np.sort(proxy, axis=1)  # an already sorted file (the seed's) keeps its order exactly
    assert np.array_equal(sort_by_proxy(ascending, gold)[1], gold)


def test_ns_kl_and_no_gold():
    rows = bon_estimate(np.arange(10.0), None, [1, 2, 10, 11, 100])  # one prompt as a 1-D array
    assert [r["n"] for r in rows] == [1, 2, 10]  # n > N dropped
    assert all(r["gold_score"] is None for r in rows)
    assert rows[0]["kl_bon"] == 0.0 and rows[1]["kl_bon"] == pytest.approx(math.log(2) - 0.5)
    assert kl_bon(12500) == pytest.approx(math.log(12500) - 12499 / 12500)
    with pytest.raises(ValueError, match=">= 1"):
        bon_estimate(np.arange(3.0), None, [0])
    with pytest.raises(ValueError, match="integer"):
        bon_estimate(np.arange(3.0), None, [1.5])
    with pytest.raises(ValueError, match="finite"):
        bon_estimate(np.array([1.0, np.nan]), None, [1])
    assert SEED_SAMPLE_NS[-1] == 12500 and len(SEED_SAMPLE_NS) == 16


# ---------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------
SEED_ROWS = [  # prompt 2 has a proxy tie between answers 0 and 1: answer 1 (later) ranks higher
    {"instruction": "q1", "input": "", "answers": ["a", "b", "c"], "proxy_scores": [0.1, 0.3, 0.2],
     "gold_scores": [1, 2, 3]},
    {"instruction": "q2", "answers": ["a", "b", "c"], "proxy_scores": [0.5, 0.5, 0.4], "gold_scores": [4, 5, 6]},
]
# by hand, n = 2 has weights (0, 1/3, 2/3) on the ascending ranks:
#   q1 ranks gold (1, 3, 2), proxy (.1, .2, .3) -> gold 3/3 + 4/3 = 7/3, proxy .2/3 + .6/3
#   q2 ranks gold (6, 4, 5), proxy (.4, .5, .5) -> gold 4/3 + 10/3 = 14/3, proxy .5
SEED_N2_GOLD, SEED_N2_PROXY = (7 / 3 + 14 / 3) / 2, (0.8 / 3 + 0.5) / 2


def lab_row(prompt, rm1, rm2, gold, stats=True):
    row = {"prompt": prompt, "responses": ["a", "b", "c"], "scores": {"rm1": rm1, "rm2": rm2, "gold": gold}}
    if stats:
        row["score_stats"] = {"rm1": {"mean": 1.0, "std": 2.0}, "rm2": {"mean": 0.0, "std": 1.0}}
    return row


LAB_ROWS = [lab_row("q1", [1, 2, 3], [3, 1, 2], [0, 1, 5]), lab_row("q2", [0, 0, 1], [2, 2, 2], [1, 2, 3])]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def bon(tmp_path, **values):
    values.setdefault("output_dir", str(tmp_path / "out"))
    values.setdefault("plot", False)
    run(make_config(BonConfig, values))
    return tmp_path / "out"


def results(path):
    return {r["n"]: r for r in json.loads(path.read_text())}


def test_recipe_seed_layout_json_list(tmp_path, capsys):
    scores = tmp_path / "proxy_labelled_sorted.json"
    scores.write_text(json.dumps(SEED_ROWS, indent=4))  # a JSON list over many lines, as the seed writes
    with pytest.raises(UserError, match=r"--sample_ns: 4 > N = 3"):
        bon(tmp_path, scores=str(scores), sample_ns="3,2,1,2,4", plot=True)
    out = bon(tmp_path, scores=str(scores), sample_ns="3,2,1,2", plot=True)
    rows = results(out / "bon_sampled_results.json")
    assert sorted(rows) == [1, 2, 3]  # sorted, repeats dropped
    assert rows[1]["gold_score"] == pytest.approx(3.5) and rows[1]["kl_bon"] == 0.0
    assert rows[2]["gold_score"] == pytest.approx(SEED_N2_GOLD)
    assert rows[2]["proxy_score"] == pytest.approx(SEED_N2_PROXY)
    assert rows[3]["gold_score"] == pytest.approx((2 + 5) / 2)  # top-proxy answers: q1 "b", q2 "b" (tie)
    summary = json.loads((out / "bon_summary.json").read_text())
    assert summary["N"] == 3 and summary["num_prompts"] == 2 and list(summary["curves"]) == ["proxy"]
    assert (out / "config.yaml").is_file() and (out / "plots" / "bon.png").stat().st_size > 0


def test_recipe_default_ns_and_big_n(tmp_path, capsys):
    rows = [{"proxy_scores": list(range(10)), "gold_scores": list(range(10))}]
    out = bon(tmp_path, scores=write_jsonl(tmp_path / "s.jsonl", rows), big_n=5)
    assert sorted(results(out / "bon_sampled_results.json")) == [1, 2, 4]  # the seed's list cut to N = 5
    assert "sorted by proxy" in capsys.readouterr().err  # big_n on a sorted file keeps the lowest answers


def test_recipe_seed_layout_members_and_ensembles(tmp_path):
    rows = [{"answers": ["a", "b", "c"], "proxy_scores": [[1, 2, 3], [3, 1, 2]], "gold_scores": [0, 1, 5]}]
    out = bon(tmp_path, scores=write_jsonl(tmp_path / "s.jsonl", rows), ensembles=True, uwo_weights="0,1",
              sample_ns="3")
    dirs = sorted(p.parent.name for p in out.glob("*/bon_sampled_results.json"))
    assert dirs == ["ensemble_UWO-0.0", "ensemble_UWO-1.0", "ensemble_WCO", "ensemble_mean", "member_0",
                    "member_1"]
    # n = N: the gold of the top answer. mean (2, 1.5, 2.5) -> answer 2 (gold 5); WCO (1, 1, 2) -> answer 2;
    # member 1 -> answer 0 (gold 0); UWO λ=1, variances (1, .25, .25): (1, 1.25, 2.25) -> answer 2
    assert results(out / "member_1/bon_sampled_results.json")[3]["gold_score"] == 0
    for name in ("ensemble_mean", "ensemble_WCO", "ensemble_UWO-1.0"):
        assert results(out / name / "bon_sampled_results.json")[3]["gold_score"] == 5
    assert results(out / "ensemble_UWO-1.0/bon_sampled_results.json")[3]["proxy_score"] == pytest.approx(2.25)
    # λ = 0 is the mean (the seed made it 1)
    assert results(out / "ensemble_UWO-0.0/bon_sampled_results.json") == \
        results(out / "ensemble_mean/bon_sampled_results.json")


def test_recipe_lab_layout_normalized_ensembles(tmp_path):
    out = bon(tmp_path, scores=write_jsonl(tmp_path / "s.jsonl", LAB_ROWS), ensembles=True, normalize=True,
              objectives="mean,wco", sample_ns="1,2")
    summary = json.loads((out / "bon_summary.json").read_text())
    assert summary["members"] == ["rm1", "rm2"] and summary["gold"] == "gold"  # 'gold' found by name
    assert list(summary["curves"]) == ["member_rm1", "member_rm2", "ensemble_mean", "ensemble_WCO"]
    # rm1 normalised: (r − 1)/2 -> q1 (0, .5, 1), q2 (−.5, −.5, 0); gold q1 (0, 1, 5), q2 (1, 2, 3)
    # n=1: proxy (.5 − 1/3)/2, gold 2; n=2: q1 proxy .5/3 + 2/3, gold 1/3 + 10/3; q2 −.5/3, 2/3 + 6/3
    rm1 = results(out / "member_rm1/bon_sampled_results.json")
    assert rm1[1]["proxy_score"] == pytest.approx(1 / 12) and rm1[1]["gold_score"] == pytest.approx(2)
    assert rm1[2]["proxy_score"] == pytest.approx(1 / 3) and rm1[2]["gold_score"] == pytest.approx(19 / 6)
    assert summary["curves"]["member_rm1"]["results"] == json.loads(
        (out / "member_rm1/bon_sampled_results.json").read_text())
    # per_prompt.npz: each prompt's own estimate; rm1 at n = 2 by hand (above): q1 proxy .5/3 + 2/3 = 5/6,
    # gold 11/3; q2 proxy −1/6, gold 8/3 — and every curve is the mean of its per-prompt rows
    ns, proxy, gold = read_per_prompt(out / summary["per_prompt"])
    assert ns == [1, 2] and set(proxy) == set(gold) == set(summary["curves"])
    assert proxy["member_rm1"][:, 1].tolist() == pytest.approx([5 / 6, -1 / 6])
    assert gold["member_rm1"][:, 1].tolist() == pytest.approx([11 / 3, 8 / 3])
    for label, curve in summary["curves"].items():
        assert [r["gold_score"] for r in curve["results"]] == pytest.approx(gold[label].mean(axis=0).tolist())
        assert [r["proxy_score"] for r in curve["results"]] == pytest.approx(proxy[label].mean(axis=0).tolist())


def test_recipe_lab_layout_single_proxy_by_name(tmp_path):
    out = bon(tmp_path, scores=write_jsonl(tmp_path / "s.jsonl", LAB_ROWS), proxy="rm2", gold="rm1",
              sample_ns="3")
    # rm2 top answers: q1 answer 0 (rm1 = 1), q2 all tied at 2 -> the last, answer 2 (rm1 = 1)
    assert results(out / "bon_sampled_results.json")[3]["gold_score"] == pytest.approx(1.0)


def test_recipe_without_gold_and_gold_as_a_proxy(tmp_path):
    out = bon(tmp_path, scores=write_jsonl(tmp_path / "s.jsonl", LAB_ROWS), proxy="gold", sample_ns="1,3",
              plot=True)  # naming 'gold' as the proxy: no gold curve
    rows = results(out / "bon_sampled_results.json")
    assert rows[3]["proxy_score"] == pytest.approx((5 + 3) / 2) and rows[3]["gold_score"] is None
    assert json.loads((out / "bon_summary.json").read_text())["gold"] is None
    assert (out / "plots" / "bon.png").stat().st_size > 0


@pytest.mark.parametrize(("rows", "values", "message"), [
    ([{"proxy_scores": [[1, 2, 3], [1, 2]], "gold_scores": [1, 2, 3]}], {}, r"s.jsonl:1: proxy_scores: ragged"),
    ([SEED_ROWS[0], {"proxy_scores": [1, 2], "gold_scores": [1, 2]}], {}, r"s.jsonl:2: 2 answers, but s.jsonl:1"),
    ([{"answers": ["a"], "proxy_scores": [1, 2], "gold_scores": [1, 2]}], {}, r"s.jsonl:1: 1 answers but 2"),
    ([{"proxy_scores": [1, 2], "gold_scores": [1]}], {}, r"s.jsonl:1: 1 gold_scores but 2"),
    ([{"proxy_scores": [1, "x"], "gold_scores": [1, 2]}], {}, r"s.jsonl:1: proxy_scores must be a list of"),
    ([{"answers": []}], {}, r"s.jsonl:1: a row needs 'proxy_scores'"),
    ([SEED_ROWS[0]], {"proxy": "rm1"}, r"--proxy: only for the rlhf-lab layout"),
    ([SEED_ROWS[0]], {"ensembles": True}, r"--ensembles: needs at least 2"),
    ([LAB_ROWS[0], lab_row("q2", [0, 0, 1], [2, 2, 2], [1, 2, 3], stats=False)], {"normalize": True},
     r"s.jsonl:2: --normalize needs score_stats\['rm1'\]"),
    ([LAB_ROWS[0]], {"proxy": "rm3"}, r"s.jsonl:1: no score named 'rm3'"),
    ([LAB_ROWS[0], SEED_ROWS[0]], {}, r"s.jsonl:2: seed layout, but s.jsonl:1 is in the rlhf-lab layout"),
])
def test_recipe_bad_rows_name_file_and_line(tmp_path, monkeypatch, rows, values, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(UserError, match=message):
        bon(tmp_path, scores="s.jsonl", **values)


def test_recipe_non_finite_and_malformed_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.jsonl").write_text('{"proxy_scores": [1, 2], "gold_scores": [1, 2]}\n\n'
                                      '{"proxy_scores": [1, NaN], "gold_scores": [1, 2]}\n')
    with pytest.raises(UserError, match=r"s.jsonl:3: proxy_scores\[1\] is not a finite number"):
        bon(tmp_path, scores="s.jsonl")
    (tmp_path / "s.jsonl").write_text('{"proxy_scores": [1, 2], "gold_scores": [1, 2]}\n{"proxy_scores": [\n')
    with pytest.raises(UserError, match=r"s.jsonl:2: malformed_json"):
        bon(tmp_path, scores="s.jsonl")


@pytest.mark.parametrize(("values", "message"), [
    ({"sample_ns": "1,0"}, r"--sample_ns: '0' is not a positive integer"),
    ({"sample_ns": "1,2.5"}, r"--sample_ns: '2.5'"),
    ({"uwo_weights": "0.5,-1"}, r"--uwo_weights: -1 must be a number >= 0"),
    ({"uwo_weights": "abc"}, r"--uwo_weights: 'abc' is not a number"),
    ({"ensembles": True, "objectives": "mean,median"}, r"--objectives: 'median' is not one of"),
    ({"scores": None}, r"--scores: give the scored generations file"),
    ({"scores": "missing.jsonl"}, r"missing.jsonl: no such file"),
])
def test_config_errors(tmp_path, monkeypatch, values, message):
    monkeypatch.chdir(tmp_path)
    values = {"scores": "s.jsonl", **values}
    with pytest.raises(UserError, match=message):
        bon(tmp_path, **values)


def test_seeds_ensemble_gold_curve_is_its_first_members_gold_curve():
    """docs/bon.md: the seed's ensemble (gold left in seed[0]'s sorted order) reproduces member 0's gold curve."""
    rng = np.random.default_rng(3)
    members, gold = rng.normal(size=(3, 4, 12)), rng.normal(size=(4, 12))
    ns = [1, 2, 5, 12]
    first_order = np.argsort(members[0], axis=1)  # the seed's proxy_labelled_sorted.json of seed[0]
    gold_in_first_order = np.take_along_axis(gold, first_order, 1)
    combined = np.take_along_axis(members.mean(axis=0), first_order, 1)
    ensemble_sorted = np.take_along_axis(combined, np.argsort(combined, axis=1), 1)
    weights = np.stack([bon_coefficients(12, n) for n in ns])
    seed_proxy = weights @ ensemble_sorted.mean(axis=0)
    seed_gold = weights @ gold_in_first_order.mean(axis=0)  # gold not re-permuted
    ours = bon_estimate(members.mean(axis=0), gold, ns)
    member0 = bon_estimate(members[0], gold, ns)
    assert [r["proxy_score"] for r in ours] == pytest.approx(list(seed_proxy))
    assert [r["gold_score"] for r in member0] == pytest.approx(list(seed_gold))
    assert [r["gold_score"] for r in ours] != pytest.approx(list(seed_gold))
