"""``pipesim sensitivity``: each step, simulated on its own as the same override through
``pipesim.simulate``, gives the per-rank peaks and step time the module reports; the steps are
the neighbouring choices / a factor of two, and none past the end of a range."""
import csv
from pathlib import Path

import pytest

import pipesim
from pipesim import cli, sensitivity

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "scenarios" / "tiny.toml")


def test_steps_are_neighbours_or_factors_of_two():
    sc = pipesim.load_scenario(TINY, {"training.recompute": "full", "training.zero": "none",
                                      "training.micro_batch_size": 1})
    assert sensitivity.steps(sc, "recompute") == ("selective", None)     # full is the end of the range
    assert sensitivity.steps(sc, "zero") == (None, "os")
    assert sensitivity.steps(sc, "micro_batch_size") == (None, 2)        # 1 cannot halve
    assert sensitivity.steps(sc, "microbatches") == (sc.microbatches // 2, sc.microbatches * 2)


def test_every_step_equals_its_own_simulation():
    base, moves = sensitivity.sensitivity(TINY)
    res0 = pipesim.simulate(pipesim.load_scenario(TINY))
    assert base["peaks_bytes"] == [p.bytes for p in res0.peaks]
    checked = 0
    for m in moves:
        if not m.ok:
            continue
        key = sensitivity.KNOBS[m.knob][0]
        try:
            sc = pipesim.load_scenario(TINY, {key: m.value})
        except pipesim.ScenarioError:     # another stage count: the automatic split, as the grid does
            sc = pipesim.load_scenario(TINY, {key: m.value, "placement.layers_per_stage": "auto"})
        res = pipesim.simulate(sc)
        assert m.row["peaks_bytes"] == [p.bytes for p in res.peaks], (m.knob, m.direction)
        assert m.row["step_ms"] == pytest.approx(res.makespan * 1e3, rel=1e-12)
        checked += 1
    assert checked >= 8


def test_cli_writes_table_csv_and_tornado(tmp_path, capsys):
    out = tmp_path / "s"
    rc = cli.main(["sensitivity", TINY, "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "one step down and up per knob" in text
    assert sorted(p.name for p in out.iterdir()) == ["sensitivity.csv", "sensitivity.png"]
    with open(out / "sensitivity.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["direction"] == "base"
    assert {r["knob"] for r in rows[1:]} <= set(sensitivity.KNOBS)
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
