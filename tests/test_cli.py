"""The command line as a user meets it: files written, bad input refused with status 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipesim
import pipesim.export

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "tiny.toml"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipesim", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT)


def test_run_writes_outputs_and_summary_is_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        p = cli("run", TINY, "-o", out)
        assert p.returncode == 0, p.stderr
        assert sorted(f.name for f in out.iterdir()) == ["memory.png", "peaks.png", "schedule.png", "summary.json",
                                                        "timeline.csv", "trace.json"]
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    summary = json.loads((a / "summary.json").read_text())
    assert len(summary["ranks"]) == 4
    assert p.stdout.splitlines()[-2].split(":")[0] in ("OK", "TIGHT", "OOM")   # the verdict line
    assert (a / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # timeline.csv's running totals end where the static memory is (every dynamic byte released)
    rows = (a / "timeline.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["time_ms", "rank", "category", "delta_bytes", "rank_total_bytes"]
    assert rows[0] == pipesim.export.TIMELINE_HEADER
    # each rank's running total ends at its static bytes: weights + grads + optimizer + buffers
    last = {}
    for row in rows[1:]:
        t, r, c, d, tot = row.split(",")[:5]
        last[int(r)] = int(tot)
    for rank in summary["ranks"]:
        assert last[rank["rank"]] == rank["static_bytes"]
    # the trace holds one slice per op and a memory counter per rank
    trace = json.loads((a / "trace.json").read_text())["traceEvents"]
    slices = [e for e in trace if e["ph"] == "X"]
    assert len(slices) == 2 * 8 * 4   # 1F1B: an F and a B per micro-batch on each of 4 ranks


def _broken(tmp_path, text):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "out"
    p = cli("run", bad, "-o", out)
    assert p.returncode == 2
    assert not out.exists(), "a failed run must not write outputs"
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert str(bad) in p.stderr
    return p.stderr


@pytest.mark.parametrize("text,key,allowed", [
    ('[model]\npreset = "tiny"\n[training]\nmicrobatchs = 4\n', "training.microbatchs", "microbatches"),
    ('[model]\npreset = "tiny"\n[parallel]\npp = "four"\n', "parallel.pp", "integer"),
    ('[model]\npreset = "nope"\n', "model.preset", "deepseek-v3"),
    ('[model]\npreset = "tiny"\n[schedule]\nname = "zigzag"\n', "schedule.name", "1f1b"),
    ('[model]\npreset = "tiny"\n[parallel]\npp = 4\n[training]\nmicrobatches = 4\n[schedule]\nname = "dualpipe"\n',
     "microbatches", ">= 2*pp"),
    ('[model]\npreset = "tiny"\n[parallel]\npp = 16\n', "layers_per_stage", "fewer"),
    ('[model]\npreset = "tiny"\n[parallel]\npp = 4\n[placement]\nlayers_per_stage = [1, 1, 1]\n',
     "layers_per_stage", "4 stages"),
    ('[model]\npreset = "tiny"\n[hardware]\nefficiency = 1.5\n', "hardware.efficiency", "(0, 1]"),
    ('[model]\npreset = "tiny"\n[bogus]\nx = 1\n', "bogus", "allowed"),
    ('[model\n', "not valid TOML", ""),
])
def test_broken_scenarios_exit_2_with_one_clear_line(tmp_path, text, key, allowed):
    msg = _broken(tmp_path, text)
    assert key in msg and allowed in msg, msg


def test_model_layout_errors_name_the_key(tmp_path):
    # tp must divide the heads, ep the routed experts (tiny: see its preset)
    m = pipesim.load_scenario(TINY).model
    msg = _broken(tmp_path, f'[model]\npreset = "tiny"\n[parallel]\ntp = {m.heads + 1}\n')
    assert "tp" in msg
    msg = _broken(tmp_path, f'[model]\npreset = "tiny"\n[parallel]\nep = {m.routed_experts + 1}\n')
    assert "ep" in msg


def test_schedule_grid_and_model_tables():
    p = cli("schedule", "1f1b", "--pp", 4, "--microbatches", 8)
    assert p.returncode == 0 and p.stdout.count("\n") >= 4
    p = cli("schedule", "interleaved", "--pp", 4, "--microbatches", 6, "--chunks", 2)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = cli("model", TINY)
    assert p.returncode == 0 and p.stdout.strip()
    p = cli("model", TINY, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)


def test_public_api_matches_readme():
    readme = (ROOT / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("`pipesim.__all__`"))
    listed = sorted(x.strip("`., ") for x in line.split(":", 1)[1].split(","))
    assert listed == sorted(pipesim.__all__)
