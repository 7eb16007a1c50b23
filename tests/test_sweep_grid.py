"""Grid sweeps (``pipesim.grid``, ``pipesim sweep -k``): every row equals a separate
``pipesim.simulate`` of the same overrides; 1 worker, 2 processes and a dask LocalCluster give
equal rows; invalid points are rows with their reason; ``--global-batch`` holds the product."""
import json
from pathlib import Path

import pytest

import pipesim
from pipesim import cli, grid
from pipesim.placement import auto_split

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "scenarios" / "tiny.toml")
AXES = {"training.microbatches": [4, 8], "schedule.name": ["gpipe", "1f1b", "zb-h1"],
        "hardware.memory_gib": [0.04, 1.0]}


def test_split_values_keeps_lists_and_quotes_whole():
    assert grid.split_values('1f1b,"a,b",[4, 4, 1],x') == ["1f1b", '"a,b"', "[4, 4, 1]", "x"]


def test_points_are_the_cartesian_product_first_key_slowest():
    pts = grid.points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(pts) == 6
    assert pts[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]


def test_every_row_equals_a_separate_simulation():
    rows = grid.run(TINY, grid.points(AXES), workers=1)
    assert len(rows) == 12
    for row in rows:
        point = {k: row[k] for k in AXES}
        res = pipesim.simulate(pipesim.load_scenario(TINY, point))
        peaks = [p.bytes for p in res.peaks]
        assert row["status"] == "ok"
        assert row["peaks_bytes"] == peaks
        assert row["max_peak_bytes"] == max(peaks)
        assert row["step_ms"] == pytest.approx(res.makespan * 1e3, rel=1e-12)
        assert row["verdict"] == res.verdict()
        assert row["headroom_bytes"] == res.capacity_bytes - max(peaks)
    # the 0.04 GiB device is smaller than tiny's peak: those points are OOM, the 1 GiB ones are not
    assert {r["verdict"] == "OOM" for r in rows if r["hardware.memory_gib"] == 0.04} == {True}


def test_rows_equal_for_one_worker_two_processes_and_dask():
    pts = grid.points(AXES) * 3          # several chunks, so the order of completion can differ
    one = grid.run(TINY, pts, workers=1)
    two = grid.run(TINY, pts, workers=2)
    assert json.dumps(one) == json.dumps(two)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as lc, distributed.Client(lc) as client:
        on_dask = grid.run(TINY, pts, dask=client)
    assert json.dumps(one) == json.dumps(on_dask)


def test_invalid_point_is_a_row_with_its_reason_not_fatal():
    # tiny has 6 layers; zb-v on pp=4 needs 8 stages: the point is invalid, the others run
    rows = grid.run(TINY, grid.points({"schedule.name": ["1f1b", "zb-v"]}), workers=1)
    assert [r["status"] for r in rows] == ["ok", "invalid"]
    assert "6 layers, fewer than the schedule's 8 stages" in rows[1]["reason"]


def test_other_stage_count_gets_the_automatic_split():
    # base: pp=2 with the explicit split [3, 3]; interleaved with 2 chunks runs 4 stages, so the
    # explicit list no longer fits and the point takes auto_split(6, 4) (as compare does)
    base = {"parallel.pp": 2, "placement.layers_per_stage": [3, 3], "training.microbatches": 4}
    assert pipesim.load_scenario(TINY, base).layers_per_stage == (3, 3)
    rows = grid.run(TINY, [{"schedule.name": "1f1b"}, {"schedule.name": "interleaved", "schedule.chunks": 2}],
                    base=base, workers=1)
    assert rows[0]["layers_per_stage"] == [3, 3] and rows[0]["auto_split"] is False
    assert rows[1]["status"] == "ok", rows[1]["reason"]
    assert rows[1]["layers_per_stage"] == list(auto_split(6, 4)) and rows[1]["auto_split"] is True


def test_global_batch_keeps_the_product(tmp_path):
    dp = pipesim.load_scenario(TINY).parallel.dp
    rows = grid.run(TINY, grid.points({"training.micro_batch_size": [1, 2, 3]}), global_batch=8 * dp, workers=1)
    assert [r.get("microbatches") for r in rows[:2]] == [8, 4]
    assert rows[2]["status"] == "invalid" and "not divisible" in rows[2]["reason"]


def test_cli_grid_writes_csv_and_jsonl_with_every_row(tmp_path, capsys):
    out = tmp_path / "g"
    rc = cli.main(["sweep", TINY, "-k", "training.microbatches=4,8", "-k", "schedule.name=1f1b,zb-v",
                   "--workers", "1", "--quiet", "-o", str(out)])
    assert rc == 0
    assert capsys.readouterr().out == ""
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 4
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("training.microbatches,schedule.name,status")


@pytest.mark.parametrize("args, needle", [
    (["-k", "training.nope=1,2"], "-k training.nope: training.nope: unknown key; allowed:"),
    (["-k", "training.microbatches"], "expected KEY=A,B"),
    (["-k", "training.microbatches=[1,"], "-k training.microbatches value"),
])
def test_bad_axis_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    out = tmp_path / "g"
    rc = cli.main(["sweep", TINY, *args, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
