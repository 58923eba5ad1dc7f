"""Print the shift-test tables from a docs/shift_test.sh output directory.

Per (split, treatment), over the seeds: accuracy and the RM's longer-preferred rate averaged over seeds pair by
pair, their paired differences from plain (a_i = mean over seeds of the treatment's value on pair i, b_i = the
same for plain), and the RM − humans longer-preferred gap (paired over the pairs of different lengths). Then
every (split, treatment, seed) cell: accuracy and length-balanced accuracy ± binomial SE √(p(1−p)/n), the gap
± its paired SE, and the paired differences from plain of the same seed. Last, issue #20's goals per treatment.

usage: python docs/shift_table.py OUT
"""
import json
import math
import sys
from pathlib import Path

from rlhf_lab.eval.length import prefers_longer
from rlhf_lab.eval.paired import paired_difference
from rlhf_lab.io import read_jsonl

SPLITS = ("in-distribution", "helpful-rejection-sampled", "harmless-base")
SHIFTED = SPLITS[1:]


def se(p: float, n: float) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def words(d: dict) -> str:
    verdict = "shown" if d["shown"] else "not shown"
    return f"{d['diff']:+.3f} ± {d['se']:.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {verdict}"


def correct(rows: list[dict], name: str) -> list[float]:
    return [1.0 if r["r_chosen"][name] > r["r_rejected"][name] else 0.5 if r["r_chosen"][name] ==
            r["r_rejected"][name] else 0.0 for r in rows]


def longer(rows: list[dict], name: str) -> list[float]:
    return prefers_longer([r["len_chosen"] for r in rows], [r["len_rejected"] for r in rows],
                          [r["r_chosen"][name] for r in rows], [r["r_rejected"][name] for r in rows])


def mean_over(columns: list[list[float]]) -> list[float]:
    return [sum(values) / len(values) for values in zip(*columns, strict=True)]


out = Path(sys.argv[1])
tables = {}  # split -> (eval_rm.json, pair rows, {treatment: {seed: model name}})
for split in SPLITS:
    result = json.loads((out / "eval" / split / "eval_rm.json").read_text())
    rows = read_jsonl(out / "eval" / split / "pair_scores.jsonl")
    models: dict[str, dict[str, str]] = {}
    for name in result["members"]:
        treatment, seed = Path(name).parts[-3], Path(name).parts[-2]
        models.setdefault(treatment, {})[seed] = name
    tables[split] = (result, rows, models)

humans = {split: [1.0 if r["len_chosen"] > r["len_rejected"] else 0.0 for r in rows if r["len_chosen"] !=
                  r["len_rejected"]] for split, (_, rows, _) in tables.items()}
summary: dict[tuple[str, str], dict] = {}
print("### Over the seeds (pair by pair: each pair's value averaged over the seeds)\n")
print("| split | treatment | seeds | accuracy | accuracy − plain (paired) | RM − humans longer-preferred (paired) "
      "| longer-preferred − plain (paired) |")
print("|---|---|---|---|---|---|---|")
for split, (_, rows, models) in tables.items():
    plain = models["plain"]
    for treatment, seeds in models.items():
        acc = mean_over([correct(rows, seeds[s]) for s in sorted(seeds)])
        pref = mean_over([longer(rows, seeds[s]) for s in sorted(seeds)])
        plain_acc = mean_over([correct(rows, plain[s]) for s in sorted(seeds)])
        plain_pref = mean_over([longer(rows, plain[s]) for s in sorted(seeds)])
        gap = paired_difference(pref, humans[split])
        d_acc = paired_difference(acc, plain_acc) if treatment != "plain" else None
        d_pref = paired_difference(pref, plain_pref) if treatment != "plain" else None
        accuracy = sum(acc) / len(acc)
        summary[split, treatment] = {"accuracy": accuracy, "n": len(acc), "gap": gap, "d_acc": d_acc}
        print(f"| {split} | {treatment} | {len(seeds)} | {accuracy:.3f} ± {se(accuracy, len(acc)):.3f} | "
              f"{words(d_acc) if d_acc else '—'} | {words(gap)} | {words(d_pref) if d_pref else '—'} |")

print("\n### Every cell\n")
print("| split | treatment | seed | pairs | accuracy | length-balanced accuracy | RM − humans longer-preferred "
      "| accuracy − plain, same seed (paired) | longer-preferred − plain, same seed (paired) |")
print("|---|---|---|---|---|---|---|---|---|")
for split, (result, rows, models) in tables.items():
    for treatment, seeds in models.items():
        for seed, name in sorted(seeds.items()):
            m, n = result["members"][name], result["pairs"]
            nb = m["length_balanced_pairs"]
            gap = (f"{m['longer_preferred_gap']:+.3f} ± {m['longer_preferred_gap_se']:.3f}"
                   if m.get("longer_preferred_gap_se") is not None else "n/a")
            if treatment == "plain":
                diffs = ["—", "—"]
            else:
                base = models["plain"][seed]
                diffs = [words(paired_difference(correct(rows, name), correct(rows, base))),
                         words(paired_difference(longer(rows, name), longer(rows, base)))]
            print(f"| {split} | {treatment} | {seed} | {n} | {m['accuracy']:.3f} ± {se(m['accuracy'], n):.3f} | "
                  f"{m['accuracy_length_balanced']:.3f} ± {se(m['accuracy_length_balanced'], nb):.3f} "
                  f"(n={nb:.0f}) | {gap} | {diffs[0]} | {diffs[1]} |")

print("\n### Issue #20's goals (seed-averaged): shifted accuracy ≥ 0.60; RM − humans longer-preferred CI inside "
      "±0.05 on the shifted splits; in-distribution accuracy within 0.02 of plain's (the paired CI inside ±0.02)\n")
for treatment in tables[SPLITS[0]][2]:
    shifted_acc = all(summary[s, treatment]["accuracy"] >= 0.60 for s in SHIFTED)
    gap_ok = all(max(abs(summary[s, treatment]["gap"]["ci_low"]), abs(summary[s, treatment]["gap"]["ci_high"]))
                 < 0.05 for s in SHIFTED)
    d = summary[SPLITS[0], treatment]["d_acc"]
    in_dist = "—" if d is None else ("met" if max(abs(d["ci_low"]), abs(d["ci_high"])) < 0.02 else
                                     f"not met (CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])")
    print(f"- {treatment}: shifted accuracy ≥ 0.60: {'met' if shifted_acc else 'not met'} ("
          + ", ".join(f"{s} {summary[s, treatment]['accuracy']:.3f}" for s in SHIFTED)
          + f"); longer-preferred within 0.05 of humans: {'met' if gap_ok else 'not met'}; in-distribution "
          f"accuracy within 0.02 of plain: {in_dist}")
