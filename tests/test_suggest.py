"""Suggestions (``pipesim.suggest``, ``pipesim run``): each change, applied to the scenario file
as overrides and simulated on its own, gives the headroom and step it promised; the layer move
takes one layer off the peak rank; ``run`` prints them when a scenario does not fit."""
import json
from pathlib import Path

import pytest

import pipesim
from pipesim import cli, suggest

ROOT = Path(__file__).resolve().parent.parent
V3 = str(ROOT / "scenarios" / "v3_pp16.toml")
TINY = str(ROOT / "scenarios" / "tiny.toml")
# ZeRO none: a middle stage's model states alone exceed the 80 GiB device (the file's comment)
OOM = {"training.zero": "none"}


@pytest.fixture(scope="module")
def oom():
    res = pipesim.simulate(pipesim.load_scenario(V3, OOM))
    return res, suggest.suggest(V3, OOM, res)


def headroom(res):
    return res.capacity_bytes - max(p.bytes for p in res.peaks)


def test_scenario_is_oom_and_some_change_fits(oom):
    res, found = oom
    assert res.verdict() == "OOM"
    assert found and found[0].verdict != "OOM"
    assert all(s.headroom_gain_bytes > 0 for s in found)


def test_each_suggestion_applied_gives_the_headroom_it_promised(oom):
    res, found = oom
    base = headroom(res)
    picked = found[:4] + [s for s in found if s.change.get("placement.layers_per_stage") == "auto"][:1] \
        + [s for s in found if len(s.knobs) == 2][:1]
    for s in picked:
        applied = pipesim.simulate(pipesim.load_scenario(V3, {**OOM, **s.change}))
        assert headroom(applied) == s.headroom_bytes, s.text()
        assert headroom(applied) - base == s.headroom_gain_bytes
        assert applied.verdict() == s.verdict
        assert applied.makespan * 1e3 == pytest.approx(s.step_ms, rel=1e-12)


def test_higher_zero_level_is_suggested_with_the_optimizer_shard_it_saves(oom):
    # ZeRO-1 shards the optimizer state over dp: the saving is visible as a gain, and the
    # step time does not change (the step models no optimizer communication)
    _, found = oom
    z = [s for s in found if s.change == {"training.zero": "os"}]
    assert len(z) == 1 and z[0].verdict != "OOM" and z[0].step_change_ms == pytest.approx(0, abs=1e-9)


def test_layer_move_takes_one_layer_off_the_peak_rank():
    sc = pipesim.load_scenario(V3, OOM)
    res = pipesim.simulate(sc)
    moved = suggest._move_layer(sc, res)
    before = list(sc.layers_per_stage)
    diff = [(i, m - b) for i, (b, m) in enumerate(zip(before, moved)) if m != b]
    assert sum(moved) == sum(before) and sorted(d for _, d in diff) == [-1, 1]
    (lost,) = [i for i, d in diff if d == -1]
    assert lost in res.peaks[res.peak_rank].stages


def test_ranking_puts_better_verdicts_first(oom):
    _, found = oom
    order = [suggest.VERDICT_ORDER[s.verdict] for s in found]
    assert order == sorted(order)


def test_run_prints_suggestions_when_oom_and_on_request_only_otherwise(tmp_path, capsys):
    rc = cli.main(["run", V3, "--set", "training.zero=none", "--plots", "none", "-o", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert rc == 1 and "what to change (OOM now" in out
    rc = cli.main(["run", TINY, "--plots", "none", "-o", str(tmp_path / "b")])
    assert rc == 0 and "what to change" not in capsys.readouterr().out
    rc = cli.main(["run", TINY, "--suggest", "--plots", "none", "-o", str(tmp_path / "c")])
    assert rc == 0 and "what to change (OK now" in capsys.readouterr().out


def test_run_json_keeps_stdout_pure_json_with_the_warning_on_stderr(tmp_path, capsys):
    # tiny's stage 2 is the busiest by more than 1.10x the mean: the run table would warn
    res = pipesim.simulate(pipesim.load_scenario(TINY))
    assert res.imbalance is not None
    rc = cli.main(["run", TINY, "--json", "--plots", "none", "-o", str(tmp_path / "j")])
    cap = capsys.readouterr()
    assert rc == 0
    assert json.loads(cap.out)["peak_rank"] == res.peak_rank
    assert "WARNING stage imbalance" not in cap.out and "WARNING stage imbalance" in cap.err
    rc = cli.main(["run", TINY, "--quiet", "--plots", "none", "-o", str(tmp_path / "q")])
    cap = capsys.readouterr()
    assert rc == 0 and cap.out == "" and "WARNING stage imbalance" in cap.err
