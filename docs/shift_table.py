"""Print the shift-test table from a docs/shift_test.sh output directory: every (split, treatment, seed) cell.

accuracy and length-balanced accuracy ± their binomial SE √(p(1−p)/n); the RM − humans longer-preferred gap ± its
paired SE; and each treatment's accuracy minus plain's on the same pairs (paired SE, shown / not shown)."""
import json
import math
import sys
from pathlib import Path


def se(p: float, n: float) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


out = Path(sys.argv[1])
print("| split | treatment | seed | pairs | accuracy | length-balanced accuracy | RM − humans longer-preferred "
      "| accuracy − plain (paired) | longer-preferred − plain (paired) |")
print("|---|---|---|---|---|---|---|---|---|")
for split in ("in-distribution", "helpful-rejection-sampled", "harmless-base"):
    for result_file in sorted((out / "eval" / split).glob("seed-*/eval_rm.json")):
        result = json.loads(result_file.read_text())
        versus = {c["a"]: c for c in result.get("comparisons", [])}
        for name, m in result["members"].items():
            treatment, seed = Path(name).parts[-3], Path(name).parts[-2]
            n, nb = result["pairs"], m["length_balanced_pairs"]
            gap = (f"{m['longer_preferred_gap']:+.3f} ± {m['longer_preferred_gap_se']:.3f}"
                   if m.get("longer_preferred_gap_se") is not None else "n/a")
            c = versus.get(name)
            diffs = [f"{d['diff']:+.3f} ± {d['se']:.3f} ({'shown' if d['shown'] else 'not shown'})" if c else "—"
                     for d in ((c or {}).get("accuracy"), (c or {}).get("longer_preferred"))]
            print(f"| {split} | {treatment} | {seed} | {n} | {m['accuracy']:.3f} ± {se(m['accuracy'], n):.3f} | "
                  f"{m['accuracy_length_balanced']:.3f} ± {se(m['accuracy_length_balanced'], nb):.3f} (n={nb:.0f}) | "
                  f"{gap} | {diffs[0]} | {diffs[1]} |")
