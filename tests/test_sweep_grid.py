"""Grid sweeps (``pipesim.grid``, ``pipesim sweep -k``): every row equals a separate
``pipesim.simulate`` of the same overrides; 1 worker, 2 processes and a dask LocalCluster give
equal rows; invalid points are rows with their reason; a value wrong in itself exits 2 before
anything runs; ``--global-batch`` holds the product; points that differ in memory alone share
one SimPy run.

    python -m pytest tests/test_sweep_grid.py"""
import json
import os
import sys
from pathlib import Path

import pytest

import pipesim
from pipesim import cli, grid
from pipesim.placement import auto_split
from pipesim.report import mean_bubble

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


def test_rows_equal_for_one_worker_two_processes_and_dask(tmp_path):
    pts = grid.points(AXES) * 3          # several chunks, so the order of completion can differ
    one = grid.run(TINY, pts, workers=1)
    two = grid.run(TINY, pts, workers=2)
    assert json.dumps(one) == json.dumps(two)
    distributed = pytest.importorskip("distributed")
    # worker processes, as on a real cluster: the points and rows cross a process boundary
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        on_dask = grid.run(TINY, pts, dask=client)
        # and from the command line, given the scheduler's address
        rc = cli.main(["sweep", TINY, *(f"-k{k}={','.join(map(str, v))}" for k, v in AXES.items()),
                       "--dask", lc.scheduler_address, "--quiet", "-o", str(tmp_path / "d")])
    assert json.dumps(one) == json.dumps(on_dask)
    assert rc == 0
    assert [json.loads(x) for x in (tmp_path / "d" / "sweep.jsonl").read_text().splitlines()] == one[:12]


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
    (["-k", "training.nope=1,2"], "training.nope: unknown key; allowed: micro_batch_size"),
    (["-k", "bogus.x=1"], "bogus: unknown section; allowed:"),
    (["-k", "training.microbatches"], "expected KEY=A,B"),
    (["-k", "training.microbatches=[1,"], "-k training.microbatches value"),
    (["-k", "training.microbatches=4,x"], "training.microbatches: expected an integer, got 'x' (-k training.microbatches=x)"),
    (["-k", "training.microbatches=0,4"], "training.microbatches: must be >= 1, got 0"),
    (["-k", "schedule.name=1f1b,zigzag"], "unknown schedule 'zigzag'; allowed: gpipe"),
    (["-k", "hardware.efficiency=0.5,nan"], "hardware.efficiency: must be a finite number"),
    (["-k", "training.recompute=full,bogus", "-k", "schedule.name=1f1b,gpipe"], "training.recompute: one of none"),
    (["-k", "training.microbatches=4,8", "-k", "training.microbatches=16"], "given twice"),
    (["-k", "training.microbatches=4,4"], "value 4 given twice"),
    (["-k", "training.microbatches=4,8", "--set", "training.microbatches=2"], "also given by --set"),
    (["-k", "training.microbatches=4,8", "--global-batch", "8"], "--global-batch: sets training.microbatches"),
    (["-k", "training.micro_batch_size=1", "--global-batch", "0"], "--global-batch: must be >= 1"),
    (["-k", "training.micro_batch_size=1", "--workers", "0"], "--workers: must be >= 1"),
    (["-k", "x y=1"], "not a key path"),
])
def test_bad_axis_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)          # the default output folder would be ./results/...
    rc = cli.main(["sweep", TINY, *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_values_wrong_in_themselves_are_listed_one_line_each(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["sweep", TINY, "-k", "training.microbatches=0,4,x", "-k", "schedule.name=zigzag,1f1b"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and list(tmp_path.iterdir()) == []
    assert len(err) == 3 and all(line.startswith(f"error: {TINY}: ") for line in err)
    assert [line.rsplit("(-k ", 1)[1] for line in err] == [
        "training.microbatches=0)", "training.microbatches=x)", "schedule.name=zigzag)"]


def test_a_value_refused_only_with_some_other_values_is_a_point_not_an_error():
    # pp=3 cannot run DualPipe (it mirrors rank r on pp-1-r) but runs 1F1B: (3, dualpipe) is an
    # invalid row, the other five points run; the grid itself is accepted
    axes = {"parallel.pp": [2, 3, 4], "schedule.name": ["1f1b", "dualpipe"]}
    grid.check_axes(TINY, axes)
    rows = grid.run(TINY, grid.points(axes), workers=1)
    bad = [(r["parallel.pp"], r["schedule.name"]) for r in rows if r["status"] == "invalid"]
    assert bad == [(3, "dualpipe")]
    assert next(r for r in rows if r["status"] == "invalid")["reason"].startswith("parallel.pp: dualpipe needs an even pp")
    # with DualPipe as the only schedule, pp=3 can never run: refused before anything runs
    with pytest.raises(pipesim.ScenarioError, match=r"parallel.pp: dualpipe needs an even pp.*\(-k parallel.pp=3\)"):
        grid.check_axes(TINY, {"parallel.pp": [2, 3]}, {"schedule.name": "dualpipe"})


def test_chunks_stay_with_the_scenarios_own_family():
    # base: interleaved with 3 chunks on pp=2 (6 stages, one layer each). 1F1B has no chunks: as
    # in compare, it takes its default instead of failing on the base's 3
    base = {"parallel.pp": 2, "schedule.name": "interleaved", "schedule.chunks": 3, "training.microbatches": 4}
    rows = grid.run(TINY, grid.points({"schedule.name": ["interleaved", "1f1b"]}), base=base, workers=1)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["reason"] for r in rows]
    assert [r["stages"] for r in rows] == [6, 2]
    one = pipesim.simulate(pipesim.load_scenario(TINY, {**base, "schedule.name": "1f1b", "schedule.chunks": None}))
    assert rows[1]["peaks_bytes"] == [p.bytes for p in one.peaks]


def test_auto_split_on_the_paper_layout_equals_compare():
    # v3_pp16's explicit [4]*15 + [1] is 16 stages: 1F1B on pp=8 (8 stages) and ZB-V on pp=16
    # (32) take the automatic split, as compare does; ZB-V on pp=8 is 16 stages and keeps the list
    v3 = str(ROOT / "scenarios" / "v3_pp16.toml")
    rows = grid.run(v3, grid.points({"parallel.pp": [8, 16], "schedule.name": ["1f1b", "zb-v"]}), workers=1)
    by = {(r["parallel.pp"], r["schedule.name"]): r for r in rows}
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    for key in ((16, "1f1b"), (8, "zb-v")):
        assert by[key]["auto_split"] is False and by[key]["layers_per_stage"] == [4] * 15 + [1]
    for key, stages in (((8, "1f1b"), 8), ((16, "zb-v"), 32)):
        assert by[key]["auto_split"] is True and by[key]["layers_per_stage"] == list(auto_split(61, stages))
    from pipesim import compare
    cmp = compare.compare(v3, ["zb-v"])
    assert [p.bytes for p in cmp.runs[0].result.peaks] == by[16, "zb-v"]["peaks_bytes"]
    assert cmp.runs[0].result.makespan * 1e3 == by[16, "zb-v"]["step_ms"]


def test_global_batch_rows_equal_simulations_with_the_derived_microbatches():
    g = 16
    axes = {"training.micro_batch_size": [1, 2, 4], "parallel.dp": [1, 2]}
    rows = grid.run(TINY, grid.points(axes), global_batch=g, workers=1)
    for r in rows:
        mbs, dp = r["training.micro_batch_size"], r["parallel.dp"]
        assert r["status"] == "ok", r["reason"]
        assert r["microbatches"] * mbs * dp == g
        res = pipesim.simulate(pipesim.load_scenario(TINY, {"training.micro_batch_size": mbs, "parallel.dp": dp,
                                                            "training.microbatches": g // (mbs * dp)}))
        assert r["peaks_bytes"] == [p.bytes for p in res.peaks] and r["step_ms"] == res.makespan * 1e3


def test_points_differing_in_memory_alone_share_one_simpy_run():
    # ZeRO and the device size change no op time: 4 x 2 x 2 x 3 = 48 points, but only the
    # 2 micro-batch counts x 3 schedules = 6 distinct steps to simulate. Each row still equals
    # its own pipesim.simulate (the shared spans are those a fresh run gives)
    axes = {"training.microbatches": [4, 8], "schedule.name": ["gpipe", "1f1b", "zb-h1"],
            "training.zero": ["none", "os", "os+g", "os+g+params"], "hardware.memory_gib": [0.05, 1.0]}
    grid._runs.clear()
    rows = grid.run(TINY, grid.points(axes), workers=1)
    assert len(grid._runs) == 6
    peaks = set()
    for r in rows:
        res = pipesim.simulate(pipesim.load_scenario(TINY, {k: r[k] for k in axes}))
        assert r["peaks_bytes"] == [p.bytes for p in res.peaks]
        assert r["step_ms"] == res.makespan * 1e3 and r["verdict"] == res.verdict()
        assert r["bubbles"] == [res.bubble_fraction(i) for i in range(res.ranks)]
        assert r["mean_bubble"] == mean_bubble(res)
        peaks.add(r["max_peak_bytes"])
    assert len(peaks) > 6           # the memory differs although the runs are shared


def test_a_grid_with_no_valid_point_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # tiny has 6 layers: ZB-V on pp=4 and pp=8 needs 8 and 16 stages
    rc = cli.main(["sweep", TINY, "-k", "parallel.pp=4,8", "-k", "schedule.name=zb-v", "--workers", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and "0 fit, 0 OOM, 2 invalid" in out and "no point of the grid can run" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_rows_equal_the_library_and_csv_matches_jsonl(tmp_path, capsys):
    out = tmp_path / "g"
    rc = cli.main(["sweep", TINY, "-k", "training.micro_batch_size=1,2", "-k", "schedule.name=1f1b,gpipe",
                   "--global-batch", "8", "--workers", "1", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "= 4 points: 4 fit" in text
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    pts = grid.points({"training.micro_batch_size": [1, 2], "schedule.name": ["1f1b", "gpipe"]})
    assert rows == grid.run(TINY, pts, global_batch=8, workers=1)
    import csv
    with open(out / "sweep.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    for r, c in zip(rows, table):
        assert int(c["max_peak_bytes"]) == r["max_peak_bytes"] and float(c["step_ms"]) == r["step_ms"]
        assert [int(c[f"peak_bytes_rank{i}"]) for i in range(len(r["peaks_bytes"]))] == r["peaks_bytes"]


def test_progress_bar_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    # the bar counts points: 2 x 3 = 6 of 6 at the end; off when stderr is not a terminal
    args = ["sweep", TINY, "-k", "training.microbatches=4,8", "-k", "schedule.name=gpipe,1f1b,zb-h1", "--workers", "1"]
    assert cli.main([*args, "-o", str(tmp_path / "a")]) == 0
    assert "6/6" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main([*args, "-o", str(tmp_path / "b")]) == 0
    assert "6/6" in capsys.readouterr().err
    assert cli.main([*args, "--quiet", "-o", str(tmp_path / "c")]) == 0
    assert "6/6" not in capsys.readouterr().err


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from /proc")
def test_ctrl_c_on_a_pool_is_one_line_status_130_and_writes_nothing(tmp_path):
    # Ctrl-C reaches the whole process group, workers included: the sweep stops (the chunks not
    # started are cancelled), says so once, exits 130 and leaves no output or temporary folder
    import signal
    import subprocess
    import time

    out = tmp_path / "g"
    eff = ",".join(f"{0.2 + 0.001 * i:.3f}" for i in range(500))
    proc = subprocess.Popen([sys.executable, "-m", "pipesim", "sweep", TINY, "-k", f"hardware.efficiency={eff}",
                             "-k", "training.microbatches=4,8,16,32", "--workers", "2", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the grid ended before it could be interrupted"
    time.sleep(0.5)                              # the workers are simulating
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "interrupted\n", err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pipesim-")]
