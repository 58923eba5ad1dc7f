"""Print the reward-model table from an rm_table.sh output directory."""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
times = dict(re.findall(r"rm-table: (\S+) (\d+) s", (out / "log.txt").read_text())) if (out / "log.txt").exists() else {}
print("| mode | data | train pairs | eval acc (219) | test acc (300) | test acc, length-balanced | humans / RM prefer longer (test) | length–reward corr (test) | minutes |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ("top2", "head"):
    for data in ("plain", "balance_len", "rand_ratio", "carto", "carto_both"):
        run = out / f"{mode}-{data}"
        if not (run / "held_out_metrics.json").exists():
            continue
        m = json.loads((run / "held_out_metrics.json").read_text())
        ev = next(iter(m["eval"]["members"].values()))
        te = next(iter(m["test"]["members"].values()))
        cl = [json.loads(line) for line in (run / "carto_lengths.jsonl").read_text().splitlines()]
        minutes = f"{int(times[run.name]) / 60:.1f}" if run.name in times else "?"
        print(f"| {mode.replace('top2', 'top:2')} | {data} | {len(cl)} | {ev['accuracy']:.3f} | {te['accuracy']:.3f} | "
              f"{te['accuracy_length_balanced']:.3f} | {te['longer_preferred_rate']:.2f} / {te['rm_longer_preferred_rate']:.2f} | "
              f"{te['length_reward_corr']:.2f} | {minutes} |")
