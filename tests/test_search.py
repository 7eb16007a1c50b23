"""``pipesim search``: the fitting configurations and their Pareto frontier of (step time,
worst-rank peak), checked on a small grid enumerated by hand and simulated point by point, the
frontier recomputed from its definition (no fitting point both faster-or-equal and lighter-or-
equal and better in one) rather than the module's skyline pass."""
from pathlib import Path

import pytest

import pipesim
import schedules
from pipesim.scenario import ScenarioError
from pipesim import cli, search

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "scenarios" / "tiny.toml")
SCHEDULES = schedules.names()
RECOMPUTE = ["none", "selective", "full"]


def by_hand(limit):
    out = []
    for s in SCHEDULES:
        for r in RECOMPUTE:
            try:    # tiny's 6 layers cannot fill the 8 stages of interleaved or zb-v on pp=4
                sc = pipesim.load_scenario(TINY, {"schedule.name": s, "training.recompute": r})
            except (ScenarioError, schedules.ScheduleError):
                continue
            res = pipesim.simulate(sc)
            peak = max(p.bytes for p in res.peaks)
            if peak <= limit:
                out.append(((s, r), res.makespan * 1e3, peak))
    return out


def dominated(a, others):
    return any(o[1] <= a[1] and o[2] <= a[2] and (o[1] < a[1] or o[2] < a[2]) for o in others)


@pytest.mark.parametrize("limit_gib", [1.0, 0.045])
def test_frontier_is_non_dominated_and_complete(limit_gib):
    limit = int(limit_gib * 2 ** 30)
    rows, fitting, front, _ = search.search(TINY, ["schedule", "recompute"], limit_bytes=limit, workers=1)
    got_fit = {(r["schedule"], r["point"]["training.recompute"]) for r in fitting}
    hand = by_hand(limit)
    assert got_fit == {h[0] for h in hand}          # every fitting point, nothing else
    expected = {h[0] for h in hand if not dominated(h, hand)}
    assert {(r["schedule"], r["point"]["training.recompute"]) for r in front} == expected
    assert 0 < len(expected) <= len(hand)


def test_memory_limit_excludes_points_above_it():
    rows, fitting, front, limit = search.search(TINY, ["recompute"], limit_bytes=int(0.045 * 2 ** 30), workers=1)
    assert all(r["max_peak_bytes"] <= limit for r in fitting)
    assert any(r["status"] == "ok" and r["max_peak_bytes"] > limit for r in rows)


def test_cli_search_writes_table_csv_and_png(tmp_path, capsys):
    out = tmp_path / "s"
    rc = cli.main(["search", TINY, "--vary", "recompute,zero", "--workers", "1", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "12 configurations" in text
    assert sorted(p.name for p in out.iterdir()) == ["frontier.png", "search.csv", "search.jsonl"]
    assert len((out / "search.jsonl").read_text().splitlines()) == 12


def test_cli_search_bad_knob_is_one_line_exit_2(tmp_path, capsys):
    rc = cli.main(["search", TINY, "--vary", "recompute,colour", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "--vary: 'colour'; allowed: a comma list of schedule, pp" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
