"""`rlhf-lab evaluate`: win-rate math by hand, the length-controlled win rate on synthetic data, the recipe on
tiny-random (rewards, KL, length metrics, baseline, generations file), and the LLM judge against a local server."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import numpy as np
import pytest
import torch

from rlhf_lab.cli import main
from rlhf_lab.config import make_config
from rlhf_lab.errors import UserError
from rlhf_lab.eval.judge import JudgeClient, judge_pairs, parse_verdict
from rlhf_lab.eval.winrate import (
    all_pairs,
    bootstrap_lc_interval,
    fit_logistic,
    length_controlled_win_rate,
    normalised_length_difference,
    preference_from_scores,
    win_rate,
    win_rate_standard_error,
)
from rlhf_lab.io import read_jsonl
from rlhf_lab.recipes import evaluate

SIGMOID = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
LOGIT = lambda p: math.log(p / (1 - p))  # noqa: E731


# ------------------------------------------------------------------------------------------------------------
# Win-rate math
# ------------------------------------------------------------------------------------------------------------
def test_win_rate_of_all_pairs_by_hand():
    # prompt 0: model [3, 1] vs baseline [2]  -> pairs 3>2 win, 1<2 loss           -> prompt mean 0.5
    # prompt 1: model [5] vs baseline [5, 4, 9] -> tie ½, win 1, loss 0              -> prompt mean 0.5
    # prompt 2: model [7] vs baseline [1]       -> win                               -> prompt mean 1
    comp = all_pairs([[3, 1], [5], [7]], [[2], [5, 4, 9], [1]], [[10, 20], [5], [8]], [[12], [5, 6, 7], [2]])
    assert comp.preference.tolist() == [1.0, 0.0, 0.5, 1.0, 0.0, 1.0]
    assert comp.length_diff.tolist() == [-2.0, 8.0, 0.0, -1.0, -2.0, 6.0]
    assert comp.weight.tolist() == pytest.approx([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 1.0])
    assert win_rate(comp.preference, comp.weight) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert win_rate(comp.preference) == pytest.approx(3.5 / 6)  # unweighted: prompt 1 would count 3 times
    # standard error over prompts: stdev([0.5, 0.5, 1], ddof=1) / √3
    expected_se = np.std([0.5, 0.5, 1.0], ddof=1) / math.sqrt(3)
    assert win_rate_standard_error(comp.preference, comp.prompt, comp.weight) == pytest.approx(expected_se)
    assert preference_from_scores([1, 2, 3], [1, 3, 2]).tolist() == [0.5, 0.0, 1.0]


def test_normalised_length_difference():
    z, scale = normalised_length_difference([10, -10, 10, -10])
    assert scale == pytest.approx(10.0) and z.tolist() == pytest.approx([math.tanh(1), -math.tanh(1)] * 2)
    z, scale = normalised_length_difference([0, 0, 0])
    assert z.tolist() == [0, 0, 0]
    z, scale = normalised_length_difference([7, 7])  # no spread: the scale falls back to |Δ|
    assert scale == 7 and z.tolist() == pytest.approx([math.tanh(1)] * 2)


def test_lc_win_rate_closed_form_with_two_length_groups():
    # z takes two values ±a: the ML fit goes through both group means, logit p± = β0 ± β1·a, so
    # β0 = (logit p+ + logit p−) / 2 and the LC win rate = σ(β0).
    prefs = [0.9] * 10 + [0.3] * 10
    diffs = [5.0] * 10 + [-5.0] * 10
    lc = length_controlled_win_rate(prefs, diffs, l2=0.0)
    beta0 = (LOGIT(0.9) + LOGIT(0.3)) / 2
    assert lc.win_rate == pytest.approx(0.6)
    assert lc.intercept == pytest.approx(beta0, abs=1e-7)
    assert lc.lc_win_rate == pytest.approx(SIGMOID(beta0), abs=1e-7)  # 0.6626
    assert lc.length_slope == pytest.approx((LOGIT(0.9) - LOGIT(0.3)) / (2 * math.tanh(1)), abs=1e-6)
    assert lc.length_support == 0.0 and lc.mean_length_diff == 0.0 and lc.num_pairs == 20


def test_logistic_fit_matches_a_generic_optimizer():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    z = np.tanh(rng.normal(size=50))
    p = rng.uniform(size=50)
    w = rng.uniform(0.2, 1.0, size=50)
    l2 = 0.05

    def loss(beta):
        eta = beta[0] + beta[1] * z
        nll = np.sum(w * (p * np.logaddexp(0, -eta) + (1 - p) * np.logaddexp(0, eta))) / w.sum()
        return nll + 0.5 * l2 * np.dot(beta, beta)

    reference = minimize(loss, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}).x
    assert fit_logistic(p, z, w, l2=l2) == pytest.approx(tuple(reference), abs=1e-5)


def test_a_model_that_only_got_longer_does_not_win_the_lc_rate():
    rng = np.random.default_rng(0)
    diffs = rng.normal(40, 60, size=4000)  # the model's answers are mostly longer
    scale = diffs.std()
    # The judge prefers the longer answer and nothing else: P(model wins) = σ(3·tanh(Δ/σ)).
    length_only = (rng.uniform(size=diffs.size) < 1 / (1 + np.exp(-3 * np.tanh(diffs / scale)))).astype(float)
    lc = length_controlled_win_rate(length_only, diffs)
    assert lc.win_rate > 0.65  # the raw rate rewards the length
    assert abs(lc.lc_win_rate - 0.5) < 0.04  # the LC rate does not
    assert lc.length_slope == pytest.approx(3.0, abs=0.4)
    # Deterministic "longer always wins" (separable data): the L2 term keeps the fit finite, LC stays ≈ ½.
    longer_wins = (diffs > 0).astype(float)
    lc = length_controlled_win_rate(longer_wins, diffs)
    assert lc.win_rate > 0.7 and abs(lc.lc_win_rate - 0.5) < 0.06
    # A model that is better at equal length keeps its advantage: σ(1 + 3 z) → LC ≈ σ(1) = 0.731.
    better = (rng.uniform(size=diffs.size) < 1 / (1 + np.exp(-(1 + 3 * np.tanh(diffs / scale))))).astype(float)
    assert length_controlled_win_rate(better, diffs).lc_win_rate == pytest.approx(SIGMOID(1.0), abs=0.04)


def test_bootstrap_interval_of_the_lc_win_rate():
    rng = np.random.default_rng(3)
    diffs = rng.normal(40, 60, size=400)
    prefs = (rng.uniform(size=400) < 1 / (1 + np.exp(-3 * np.tanh(diffs / diffs.std())))).astype(float)
    prompts = np.arange(400) // 2  # two pairs per prompt
    low, high = bootstrap_lc_interval(prefs, diffs, prompts, num_samples=100)
    point = length_controlled_win_rate(prefs, diffs).lc_win_rate
    assert low < point < high and low < 0.5 < high and high - low < 0.2
    assert bootstrap_lc_interval(prefs, diffs, prompts, num_samples=100) == (low, high)  # seeded
    # Every answer longer by about the same amount: z ≈ 1 for all pairs, the same column as the intercept, so the
    # data cannot tell length from quality; the L2 term splits the logit evenly, β₀ = β₁ = logit(p̄)/2, and the
    # LC rate sits halfway to ½ on the logit scale. length_support = 0 is what flags it (evaluate adds a note).
    narrow = rng.normal(25, 3, size=400)
    prefs = (rng.uniform(size=400) < 0.8).astype(float)
    lc = length_controlled_win_rate(prefs, narrow)
    assert lc.length_support == 0.0
    assert lc.lc_win_rate == pytest.approx(SIGMOID(LOGIT(prefs.mean()) / 2), abs=0.01)


# ------------------------------------------------------------------------------------------------------------
# The recipe on tiny-random
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two proxy RMs and a gold RM (random heads on tiny-random), and a policy = tiny-random plus noise."""
    from transformers import AutoModelForCausalLM

    from rlhf_lab.models import load_tokenizer, resolve_model_path
    from rlhf_lab.rewards.model import load_reward_backbone

    root = tmp_path_factory.mktemp("models")
    tok = load_tokenizer("tiny-random")
    paths = {}
    for name, seed in (("rm_a", 1), ("rm_b", 2), ("gold", 3)):
        torch.manual_seed(seed)
        model = load_reward_backbone("tiny-random", tok)
        torch.nn.init.normal_(model.score.weight, std=1.0)
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    policy = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.save_pretrained(root / "policy", safe_serialization=True)
    tok.save_pretrained(root / "policy")
    paths["policy"] = str(root / "policy")
    return paths


def _config(out, **over):
    args = dict(output_dir=str(out), ref_model_name="tiny-random", limit=3, samples_per_prompt=2,
                max_new_tokens=8, generation_batch_size=8, reward_batch_size=8, progress=False, seed=0)
    args.update(over)
    return make_config(evaluate.EvaluateConfig, args)


def test_evaluate_generates_scores_and_measures(models, tmp_path):
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.rewards.scorer import RewardScorer

    result = evaluate.run(_config(tmp_path / "ev", model_name="tiny-random", objective="UWO", uwo_weight=0.5,
                                  reward_models=f"{models['rm_a']},{models['rm_b']}",
                                  gold_model_name=models["gold"]))
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["num_prompts"] == 3 and saved["num_responses"] == 6
    # the policy is its own reference: every KL estimate is exactly 0
    assert saved["kl/k1"] == 0.0 and saved["kl/k2"] == 0.0 and saved["kl/k3"] == 0.0
    rows = read_jsonl(tmp_path / "ev" / "generations.jsonl")
    assert len(rows) == 3 and all(len(r["responses"]) == 2 for r in rows)
    # UWO of the two members: mean − ½·unbiased variance (--ensemble_ddof 1, the default), per response
    for row in rows:
        a = np.array(row["scores"][f"proxy_member/{models['rm_a']}"])
        b = np.array(row["scores"][f"proxy_member/{models['rm_b']}"])
        expected = (a + b) / 2 - 0.5 * np.var(np.stack([a, b]), axis=0, ddof=1)
        assert row["scores"]["proxy"] == pytest.approx(expected.tolist(), abs=1e-5)
    # gold scores equal a direct scoring
    gold = RewardScorer([models["gold"]]).score([r["messages"] for r in rows for _ in r["responses"]],
                                                [t for r in rows for t in r["responses"]])[0]
    flat_gold = [s for r in rows for s in r["scores"]["gold"]]
    assert flat_gold == pytest.approx(gold.tolist(), abs=1e-5)
    assert saved["reward/gold/mean"] == pytest.approx(float(gold.mean()), abs=1e-5)
    # lengths are the responses' token counts; the length statistics and correlations follow from them
    tok = load_tokenizer("tiny-random")
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for r in rows for t in r["responses"]]
    assert [v for r in rows for v in r["lengths"]] == lengths
    assert saved["length/mean"] == pytest.approx(np.mean(lengths))
    assert saved["length/p90"] == pytest.approx(np.percentile(lengths, 90))
    from rlhf_lab.eval.length import global_length_reward_corr

    expected_corr = global_length_reward_corr([r["lengths"] for r in rows], [r["scores"]["gold"] for r in rows])
    got = saved["length_bias/gold/global_corr"]
    assert (got is None and math.isnan(expected_corr)) or got == pytest.approx(expected_corr)
    flags = [f for r in rows for f in r["finished"]]
    assert saved["eos_rate"] == pytest.approx(sum(flags) / len(flags))
    assert 0 < saved["distinct_1"] <= 1 and (tmp_path / "ev" / "plots" / "length_vs_reward.png").is_file()
    assert result["reward/proxy/mean"] == saved["reward/proxy/mean"]


def _write_generations(path, prompts, responses, finished=None):
    rows = [{"prompt": p, "messages": [{"role": "user", "content": p}], "responses": rs,
             **({"finished": finished[i]} if finished else {})}
            for i, (p, rs) in enumerate(zip(prompts, responses, strict=True))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PROMPTS = ["How do I boil an egg?", "Name a colour.", "What is 2 + 2?", "Tell me a fact about bees."]


def test_generations_file_kl_by_hand_and_baseline_win_rates(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_lab.data.templates import render_prompt
    from rlhf_lab.models import load_tokenizer, resolve_model_path

    ours = _write_generations(tmp_path / "ours.jsonl", PROMPTS,
                              [["Put it in boiling water for nine minutes, then cool it.", "Boil it."],
                               ["Blue.", "Green, like grass in spring."], ["Four.", "2 + 2 = 4"],
                               ["Bees dance to tell each other where flowers are.", "They buzz."]],
                              finished=[[True, False]] * 4)
    result = evaluate.run(_config(tmp_path / "ev", generations=ours, model_name=models["policy"],
                                  gold_model_name=models["gold"], baseline_generations=ours))
    # KL by hand for one response: one unbatched forward of each model over prompt + response (+ EOS: finished)
    tok = load_tokenizer("tiny-random")
    prompt_ids = tok(render_prompt([{"role": "user", "content": PROMPTS[0]}], "chat", tok),
                     add_special_tokens=False)["input_ids"]
    response_ids = tok("Put it in boiling water for nine minutes, then cool it.",
                       add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])

    def logps(model):
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1:-1].log_softmax(-1)
        return logits.gather(1, torch.tensor(response_ids)[:, None])[:, 0]

    pol = logps(AutoModelForCausalLM.from_pretrained(models["policy"]))
    ref = logps(AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random")))
    r = ref - pol
    rows = read_jsonl(tmp_path / "ev" / "generations.jsonl")
    assert rows[0]["kl"]["k1"][0] == pytest.approx(float((-r).sum()), abs=1e-4)
    assert rows[0]["kl"]["k2"][0] == pytest.approx(float((0.5 * r**2).sum()), abs=1e-4)
    assert rows[0]["kl"]["k3"][0] == pytest.approx(float((torch.expm1(r) - r).sum()), abs=1e-4)
    assert result["kl/k3"] > 0 and result["eos_rate"] == 0.5
    # the baseline is the same file: every comparison is mirrored, so the win rates are exactly ½
    assert result["win_rate/judge_rm"] == "gold"
    assert result["win_rate/gold/win_rate"] == pytest.approx(0.5)
    assert result["win_rate/gold/lc_win_rate"] == pytest.approx(0.5, abs=1e-6)
    assert result["length_bias/gold/vs_baseline/gain"] == pytest.approx(0.0, abs=1e-6)
    # paired against itself: every per-prompt difference is 0, the interval is the point 0, nothing is shown
    assert result["paired/gold/diff"] == 0.0 and result["paired/gold/se"] == 0.0
    assert result["paired/gold/shown"] is False and result["paired/length/shown"] is False
    assert result["win_rate/gold/ci_low"] == result["win_rate/gold/ci_high"] == pytest.approx(0.5)
    assert result["win_rate/gold/shown"] is False

    # Against a baseline of one short answer per prompt: the win rate is the hand count of gold wins.
    base = _write_generations(tmp_path / "base.jsonl", PROMPTS[::-1], [["No."], ["Hm."], ["Ok."], ["Yes."]])
    result = evaluate.run(_config(tmp_path / "ev2", generations=ours, gold_model_name=models["gold"],
                                  baseline_generations=base))
    ours_rows = read_jsonl(tmp_path / "ev2" / "generations.jsonl")
    from rlhf_lab.rewards.scorer import RewardScorer

    base_by_prompt = {p: r for p, r in zip(PROMPTS[::-1], ["No.", "Hm.", "Ok.", "Yes."], strict=True)}
    scorer = RewardScorer([models["gold"]])
    wins, gains = [], []
    for row in ours_rows:
        b = float(scorer.score([row["messages"]], [base_by_prompt[row["prompt"]]])[0, 0])
        wins.append(np.mean([1.0 if s > b else 0.5 if s == b else 0.0 for s in row["scores"]["gold"]]))
        gains.append(np.mean(row["scores"]["gold"]) - b)
    assert result["win_rate/gold/win_rate"] == pytest.approx(np.mean(wins))
    # paired by hand: per prompt (mean gold of our 2 answers) − (the baseline's gold); SE = std (ddof 1) / √P,
    # P = 3 prompts (--limit 3)
    assert len(gains) == 3
    se = np.std(gains, ddof=1) / math.sqrt(3)
    assert result["paired/gold/diff"] == pytest.approx(np.mean(gains), abs=1e-5)
    assert result["paired/gold/se"] == pytest.approx(se, abs=1e-5)
    assert result["paired/gold/ci_low"] == pytest.approx(np.mean(gains) - 4.302653 * se, abs=1e-5)  # t, 2 dof
    assert result["paired/gold/num_prompts"] == 3
    assert result["paired/gold/diff"] == pytest.approx(result["length_bias/gold/vs_baseline/gain"], abs=1e-6)
    win_se = np.std(wins, ddof=1) / math.sqrt(3)
    assert result["win_rate/gold/ci_high"] == pytest.approx(np.mean(wins) + 4.302653 * win_se, abs=1e-6)
    lengths = [np.mean(r["lengths"]) - len(tok(base_by_prompt[r["prompt"]], add_special_tokens=False)["input_ids"])
               for r in ours_rows]
    assert result["paired/length/diff"] == pytest.approx(np.mean(lengths))
    # the same comparisons as findings (the report opens with them): directional claims, shown only when the CI
    # is on the claimed side of 0
    from rlhf_lab.eval.findings import read_findings

    findings = {f.key: f for f in read_findings(tmp_path / "ev2" / "findings.json")}
    assert set(findings) == {"evaluate/gold", "evaluate/length", "evaluate/length_share/gold"}  # no proxy RM
    # length's share of the gold gain: the within-set slope by hand (each set centred on its own means)
    from rlhf_lab.eval.length import reward_after_length_regression

    ours_l = [x for r in ours_rows for x in r["lengths"]]
    base_l = [len(tok(base_by_prompt[r["prompt"]], add_special_tokens=False)["input_ids"]) for r in ours_rows]
    base_g = [float(scorer.score([r["messages"]], [base_by_prompt[r["prompt"]]])[0, 0]) for r in ours_rows]
    ours_g = [x for r in ours_rows for x in r["scores"]["gold"]]
    x = np.r_[np.subtract(ours_l, np.mean(ours_l)), np.subtract(base_l, np.mean(base_l))]
    y = np.r_[np.subtract(ours_g, np.mean(ours_g)), np.subtract(base_g, np.mean(base_g))]
    slope = reward_after_length_regression(x, y).slope
    explained = slope * (np.mean(ours_l) - np.mean(base_l))
    assert result["length_bias/gold/vs_baseline/within_slope"] == pytest.approx(slope, abs=1e-5)
    assert findings["evaluate/length_share/gold"].estimate == pytest.approx(explained, abs=1e-5)
    assert result["length_bias/gold/vs_baseline/gain_after_length"] == pytest.approx(np.mean(gains) - explained,
                                                                                      abs=1e-5)
    low, high = (result[f"length_bias/gold/vs_baseline/gain_explained_by_length_ci_{s}"] for s in ("low", "high"))
    assert low <= explained <= high
    assert findings["evaluate/gold"].estimate == pytest.approx(np.mean(gains), abs=1e-5)
    assert findings["evaluate/gold"].ci_low == result["paired/gold/ci_low"]
    assert findings["evaluate/length"].shown == (result["paired/length/ci_low"] > 0)
    assert findings["evaluate/length"].n_prompts == 3
    assert result["win_rate/gold/mean_length_diff"] > 0  # ours are longer
    assert any("KL skipped" in n for n in result["notes"])  # no --model_name: no policy log-probs
    assert "kl/k1" not in result and "win_rate/gold/lc_win_rate" in result


def test_user_errors(tmp_path, capsys):
    assert main(["evaluate", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--model_name" in capsys.readouterr().err
    ours = _write_generations(tmp_path / "g.jsonl", PROMPTS[:1], [["a"]])
    other = _write_generations(tmp_path / "o.jsonl", ["unrelated"], [["b"]])
    with pytest.raises(UserError, match="no prompt in common"):
        evaluate.run(_config(tmp_path / "e", generations=ours, baseline_generations=other))
    with pytest.raises(UserError, match="--judge_model"):
        _config(tmp_path / "e", generations=ours, baseline_generations=ours, judge_base_url="http://127.0.0.1:1")


# ------------------------------------------------------------------------------------------------------------
# The LLM judge, against a local OpenAI-compatible server
# ------------------------------------------------------------------------------------------------------------
class _Judge(BaseHTTPRequestHandler):
    """Picks the output that contains 'GOOD'; remembers every request; 401 (echoing the header) if asked."""

    requests: ClassVar[list] = []
    fail: ClassVar[bool] = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail:
            payload = f"bad key {self.headers.get('Authorization')}".encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        user = body["messages"][-1]["content"]
        a = user.split("## Output (A)")[1].split("## Output (B)")[0]
        reply = {"choices": [{"message": {"role": "assistant", "content": "A" if "GOOD" in a else "B"}}]}
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    _Judge.requests, _Judge.fail = [], False
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_parse_verdict():
    assert [parse_verdict(t) for t in ("A", " b.", "Output (B)", "A or B", "neither", "Apple")] == \
        ["A", "B", "B", None, None, None]


def test_judge_request_win_rate_and_the_key_never_leaks(judge_server, models, tmp_path, monkeypatch, capsys):
    secret = "sk-test-very-secret-4242"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    ours = _write_generations(tmp_path / "ours.jsonl", PROMPTS, [["GOOD answer, long and careful."]] * 4)
    base = _write_generations(tmp_path / "base.jsonl", PROMPTS, [["meh"]] * 4)
    result = evaluate.run(_config(tmp_path / "ev", generations=ours, baseline_generations=base,
                                  judge_base_url=judge_server, judge_model="judge-1",
                                  judge_api_key_env="MY_JUDGE_KEY"))
    assert len(_Judge.requests) == 3  # --limit 3 prompts, one pair each
    first = _Judge.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {secret}"
    assert first["body"]["model"] == "judge-1" and first["body"]["temperature"] == 0
    assert PROMPTS[0] in first["body"]["messages"][-1]["content"]
    # both positions were used (position bias averages out), and the model's output won every time
    positions = {"GOOD" in r["body"]["messages"][-1]["content"].split("## Output (B)")[0] for r in _Judge.requests}
    assert positions == {True, False}
    assert result["win_rate/llm_judge/win_rate"] == 1.0 and result["win_rate/llm_judge/unparsed"] == 0
    # the key is in no output file and in nothing printed
    captured = capsys.readouterr()
    for path in (tmp_path / "ev").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes().decode("utf-8", "replace"), path
    assert secret not in captured.out + captured.err and "MY_JUDGE_KEY" in (tmp_path / "ev" / "config.yaml").read_text()
    # a rejected key: one line naming the endpoint, the echoed key scrubbed, no retry on a 4xx
    _Judge.fail, _Judge.requests = True, []
    client = JudgeClient(judge_server, "judge-1", secret, timeout=5)
    with pytest.raises(UserError) as error:
        judge_pairs(client, ["q"], ["a"], ["b"])
    assert "HTTP 401" in str(error.value) and secret not in str(error.value) and len(_Judge.requests) == 1
    assert secret not in repr(client)


def test_ref_base_of_a_peft_adapter_equals_a_separate_reference(models, tmp_path):
    """--ref_model_name base (the adapter switched off, no second copy) gives the KL a loaded base model gives."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf_lab.models import load_tokenizer, resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random"))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # B = 0 at init would make the adapter a no-op
    peft_model.save_pretrained(tmp_path / "adapter")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "adapter")
    ours = _write_generations(tmp_path / "ours.jsonl", PROMPTS[:2], [["Boil it well.", "No idea."], ["Red."]],
                              finished=[[True, False], [True]])
    via_base = evaluate.run(_config(tmp_path / "a", generations=ours, model_name=str(tmp_path / "adapter"),
                                    ref_model_name="base"))
    separate = evaluate.run(_config(tmp_path / "b", generations=ours, model_name=str(tmp_path / "adapter"),
                                    ref_model_name="tiny-random"))
    assert via_base["kl/k3"] > 1e-4
    for k in ("kl/k1", "kl/k2", "kl/k3"):
        assert via_base[k] == pytest.approx(separate[k], abs=1e-5)
