"""Dataset cartography: statistics by hand, the cut, the keep file, the recipe and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhf_lab.config import make_config, parse_config
from rlhf_lab.data.transforms import read_index_file
from rlhf_lab.errors import UserError
from rlhf_lab.eval.carto import (
    SEED_THRESHOLDS,
    CartoConfig,
    carto_keep,
    carto_stats,
    carto_stats_per_member,
    margin_stats,
    plot_carto_map,
    run,
    run_carto,
    write_index_file,
)


def row(uid: int, epoch: int, r_chosen: float, r_rejected: float, **extra) -> dict:
    return {"uid": uid, "epoch": epoch, "r_chosen": r_chosen, "r_rejected": r_rejected, **extra}


# uid 0: margins by epoch 1.0, -0.5, 1.5 (logged out of order) -> later passes -0.5, 1.5:
#        confidence 0.5, variability stdev(-0.5, 1.5) = sqrt((1 + 1) / 1) = sqrt 2, correctness 2/3
# uid 1: one pass, margin -0.25 -> confidence -0.25 (falls back to the only margin), variability 0, correctness 0
# uid 2: margins 3.0, 0.5 -> confidence 0.5 (first dropped), variability 0 (one value), correctness 1
LOG = [
    row(0, 2, 2.0, 0.5),
    row(1, 0, 0.0, 0.25),
    row(0, 0, 1.0, 0.0),
    row(2, 0, 3.0, 0.0),
    row(0, 1, 0.5, 1.0),
    row(2, 1, 1.0, 0.5),
]


def test_carto_stats_by_hand():
    stats = carto_stats(LOG)
    assert list(stats) == [0, 1, 2]
    assert stats[0]["confidence"] == pytest.approx(0.5)
    assert stats[0]["variability"] == pytest.approx(math.sqrt(2))
    assert stats[0]["correctness"] == pytest.approx(2 / 3)
    assert stats[0]["passes"] == 3
    assert stats[1] == {"confidence": -0.25, "variability": 0.0, "correctness": 0.0, "passes": 1}
    assert stats[2] == {"confidence": 0.5, "variability": 0.0, "correctness": 1.0, "passes": 2}
    assert "members" not in stats[0]


def test_margin_stats_matches_statistics_module():
    import statistics

    diffs = [0.3, -1.2, 2.5, 0.0, 0.7]
    s = margin_stats(diffs)
    assert s["confidence"] == pytest.approx(statistics.mean(diffs[1:]))
    assert s["variability"] == pytest.approx(statistics.stdev(diffs[1:]))
    assert s["correctness"] == pytest.approx(3 / 5)  # 0.0 is not > 0
    with pytest.raises(ValueError):
        margin_stats([])


def test_carto_stats_ensemble_averages_members():
    # member 0 logs uid 0 as in LOG (conf 0.5, var sqrt 2, corr 2/3);
    # member 1: margins 0, 1, 1 -> conf 1.0, var 0.0, corr 2/3.  Map: conf 0.75, var sqrt(2)/2, corr 2/3.
    rows = [dict(r, member=0) for r in LOG if r["uid"] == 0]
    rows += [row(0, 0, 0.0, 0.0, member=1), row(0, 1, 1.0, 0.0, member=1), row(0, 2, 2.0, 1.0, member=1)]
    per_member = carto_stats_per_member(rows)
    assert per_member[1][0]["confidence"] == pytest.approx(1.0)
    stats = carto_stats(rows)
    assert stats[0]["confidence"] == pytest.approx(0.75)
    assert stats[0]["variability"] == pytest.approx(math.sqrt(2) / 2)
    assert stats[0]["correctness"] == pytest.approx(2 / 3)
    assert stats[0]["passes"] == 3 and stats[0]["members"] == 2


def test_carto_keep_thresholds():
    stats = {u: {"confidence": c} for u, c in enumerate([-1.0, -0.2, 0.0, 0.39, 0.4, 2.0])}
    upper, lower = SEED_THRESHOLDS["webgpt"]
    assert (upper, lower) == (0.4, -0.2)
    assert carto_keep(stats, upper) == [0, 1, 2, 3]  # strict: 0.4 is cut
    assert carto_keep(stats, upper, lower) == [2, 3]  # strict: -0.2 is cut
    assert carto_keep(stats, 10.0, -10.0) == [0, 1, 2, 3, 4, 5]
    assert SEED_THRESHOLDS["apf"] == (0.3, -0.3)
    assert SEED_THRESHOLDS["rlcd"] == (2.0, -1.0)
    assert SEED_THRESHOLDS["stack"] == (1.0, -1.0)


def write_log(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_run_carto_end_to_end(tmp_path: Path, capsys):
    write_log(tmp_path / "carto.jsonl", LOG)
    write_log(tmp_path / "carto_lengths.jsonl", [
        {"uid": 0, "len_chosen": 30, "len_rejected": 10},
        {"uid": 1, "len_chosen": 5, "len_rejected": 9},
        {"uid": 2, "len_chosen": 7, "len_rejected": 7},
    ])
    config = parse_config(CartoConfig, ["--run_dir", str(tmp_path), "--upper", "0.4", "--lower", "-1"], "carto")
    result = run(config)
    assert result.kept == [0, 1, 2][1:2]  # confidences 0.5, -0.25, 0.5
    assert read_index_file(tmp_path / "carto_keep.txt") == [1]
    stats_rows = [json.loads(line) for line in (tmp_path / "carto_stats.jsonl").read_text().splitlines()]
    assert [r["uid"] for r in stats_rows] == [0, 1, 2]
    assert stats_rows[1]["confidence"] == -0.25
    png = tmp_path / "plots" / "carto_map.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    assert "3 examples" in out and "kept 1" in out and "mean confidence 0.25" in out
    assert "longer-is-chosen share: all 0.500, kept 0.000" in out
    assert not list(tmp_path.glob("**/.*tmp")) and not list((tmp_path / "plots").glob(".*"))


def test_run_carto_without_cut_and_custom_output(tmp_path: Path, capsys):
    write_log(tmp_path / "carto.jsonl", LOG)
    result = run_carto(tmp_path, None, plot=False)
    assert result.kept is None and result.keep_path is None
    assert not (tmp_path / "carto_keep.txt").exists() and not (tmp_path / "plots").exists()
    assert "no cut" in capsys.readouterr().out
    result = run_carto(tmp_path, 1.0, output=tmp_path / "sub" / "keep.txt", plot=False)
    assert read_index_file(tmp_path / "sub" / "keep.txt") == [0, 1, 2]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"uid": 1, "epoch": 0, "r_chosen": 1.0}', "missing key 'r_rejected'"),
        ('{"uid": "a", "epoch": 0, "r_chosen": 1.0, "r_rejected": 0}', "'uid' must be an integer"),
        ('{"uid": 1, "epoch": 0, "r_chosen": true, "r_rejected": 0}', "'r_chosen' must be a number"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_run_carto_bad_line(tmp_path: Path, line: str, message: str):
    log = tmp_path / "carto.jsonl"
    log.write_text(json.dumps(LOG[0]) + "\n" + line + "\n" + json.dumps(LOG[1]) + "\n")
    with pytest.raises(UserError) as e:
        run_carto(tmp_path, 0.4)
    assert str(e.value).startswith(f"{log}:2: ") and message in str(e.value)


def test_run_carto_torn_last_line_and_missing(tmp_path: Path, capsys):
    with pytest.raises(UserError, match="no such run directory"):
        run_carto(tmp_path / "nope", 0.4)
    with pytest.raises(UserError, match=r"carto\.jsonl: no such file"):
        run_carto(tmp_path, 0.4)
    (tmp_path / "carto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOG) + '{"uid": 3, "ep')
    result = run_carto(tmp_path, 0.4, plot=False)
    assert sorted(result.stats) == [0, 1, 2]
    assert "torn last line" in capsys.readouterr().err


def test_carto_config_validation():
    with pytest.raises(UserError, match="--run_dir"):
        make_config(CartoConfig, {})
    with pytest.raises(UserError, match="--lower: must be below --upper"):
        make_config(CartoConfig, {"run_dir": "x", "upper": 0.1, "lower": 0.2})
    with pytest.raises(UserError, match="--lower: needs --upper"):
        make_config(CartoConfig, {"run_dir": "x", "lower": 0.2})
    with pytest.raises(UserError, match="--output: needs --upper"):
        make_config(CartoConfig, {"run_dir": "x", "output": "k.txt"})
    assert make_config(CartoConfig, {"run_dir": "x", "upper": "none"}).upper is None


def test_write_index_file_atomic_round_trip(tmp_path: Path):
    path = tmp_path / "k" / "keep.txt"
    write_index_file(path, [10, 3])
    write_index_file(path, range(5))
    assert read_index_file(path) == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in path.parent.iterdir()) == ["keep.txt"]


def test_plot_carto_map_single_panel(tmp_path: Path):
    stats = carto_stats(LOG)
    out = plot_carto_map(stats, None, tmp_path / "map.png", upper=0.4)
    assert out.read_bytes()[:4] == b"\x89PNG"
    out = plot_carto_map(stats, {}, tmp_path / "map2.png")  # length panel with nothing to show
    assert out.is_file()
