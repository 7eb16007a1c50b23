"""Scenario overrides (``--set``) and the verbs ``validate``, ``compare`` and ``sweep``, as a user
meets them: what they print, what they write, and that their numbers are ``pipesim.simulate``'s
on the same modified scenario. Run in-process (``cli.main``) to stay fast."""
import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import pipesim
import schedules
from pipesim import cli
from pipesim.scenario import ScenarioError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "tiny.toml"


def main(capsys, *args):
    """Run the CLI in-process: (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def max_peak(res):
    return max(p.bytes for p in res.peaks)


# ------------------------------------------------------------------------------ overrides

def test_override_changes_exactly_that_field():
    base = pipesim.load_scenario(TINY)
    assert base.microbatches == 8 and base.schedule.name == "1f1b" and base.hardware.memory_gib == 1.0
    assert pipesim.load_scenario(TINY, {"training.microbatches": 16}) == dataclasses.replace(base, microbatches=16)
    assert (pipesim.load_scenario(TINY, {"schedule.name": "gpipe"})
            == dataclasses.replace(base, schedule=dataclasses.replace(base.schedule, name="gpipe")))
    assert (pipesim.load_scenario(TINY, {"hardware.memory_gib": 2})
            == dataclasses.replace(base, hardware=dataclasses.replace(base.hardware, memory_gib=2.0)))
    split = pipesim.load_scenario(TINY, {"placement.layers_per_stage": [3, 1, 1, 1]})
    assert split.layers_per_stage == (3, 1, 1, 1)
    assert split == dataclasses.replace(base, layers_per_stage=(3, 1, 1, 1),
                                        placement=dataclasses.replace(base.placement, layers_per_stage=(3, 1, 1, 1)))
    # None removes the key: the documented default (80 GiB) applies instead of the file's 1 GiB
    assert pipesim.load_scenario(TINY, {"hardware.memory_gib": None}).hardware.memory_gib == 80.0


def test_run_with_set_equals_a_hand_edited_file(tmp_path, capsys):
    text = TINY.read_text()
    assert text.count("microbatches = 8 ") == 1 and text.count('name = "1f1b"') == 1
    edited = tmp_path / "edited.toml"
    edited.write_text(text.replace("microbatches = 8 ", "microbatches = 16 ").replace('name = "1f1b"', 'name = "zb-h1"'))
    rc, out, err = main(capsys, "run", TINY, "--set", "training.microbatches=16", "--set", "schedule.name=zb-h1",
                        "-o", tmp_path / "a")
    assert rc == 0, err
    assert "zb-h1, pp=4, 16 micro-batches" in out
    assert main(capsys, "run", edited, "-o", tmp_path / "b")[0] == 0
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()


@pytest.mark.parametrize("text,value", [
    ("16", 16), ("2.5", 2.5), ("true", True), ("zb-h1", "zb-h1"), ('"zb-h1"', "zb-h1"), ("1f1b", "1f1b"),
    ("os+g", "os+g"), ("[4, 4, 1]", [4, 4, 1]), ("auto", "auto"),
])
def test_set_values_are_toml_or_one_bare_word(text, value):
    assert cli.parse_sets([f"k.x={text}"]) == {"k.x": value}


@pytest.mark.parametrize("verb", ["run", "validate", "compare", "sweep"])
@pytest.mark.parametrize("item,needles", [
    ("training.microbatches=0", ("training.microbatches", ">= 1")),
    ("training.microbatchs=4", ("training.microbatchs", "unknown key", "allowed: ")),
    ("schedule.name=zigzag", ("schedule.name", "allowed: gpipe")),
    ("parallel.pp=16", ("layers_per_stage", "16 stages")),
    ("bogus.x=1", ("bogus", "unknown section")),
    ("placement.layers_per_stage=[1,2", ("placement.layers_per_stage", "not a TOML value")),
    ("training.microbatches", ("KEY=VALUE",)),
])
def test_bad_override_names_the_key_and_writes_nothing(tmp_path, monkeypatch, capsys, verb, item, needles):
    monkeypatch.chdir(tmp_path)     # the default output folder would be ./results/...
    extra = {"sweep": ["hardware.memory_gib", "1", "2"]}.get(verb, [])
    rc, out, err = main(capsys, verb, TINY, *extra, "--set", item)
    assert rc == 2
    message = err + out         # validate reports in its per-file lines
    lines = [l for l in message.splitlines() if "error" in l]
    assert len(lines) == 1, message
    assert all(n in lines[0] for n in needles), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_malformed_set_in_a_real_process_is_one_line_and_status_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pipesim", "run", str(TINY), "--set", "training.microbatches=[1,",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "training.microbatches" in p.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ validate

def test_validate_every_bundled_scenario(tmp_path, monkeypatch, capsys):
    files = sorted((ROOT / "scenarios").glob("*.toml"))
    monkeypatch.chdir(tmp_path)
    rc, out, err = main(capsys, "validate", *files)
    assert rc == 0, out + err
    lines = out.splitlines()
    assert len(lines) == len(files)
    for f, line in zip(files, lines):
        sc = pipesim.load_scenario(f)
        assert line.startswith("ok") and str(f) in line
        assert f"pp={sc.parallel.pp}" in line and sc.schedule.name in line and f"{sc.microbatches} micro-batches" in line
    assert list(tmp_path.iterdir()) == []


def test_validate_reports_a_broken_scenario_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npreset = "tiny"\n[training]\nmicrobatches = 0\n')
    rc, out, err = main(capsys, "validate", TINY, bad)
    assert rc == 2
    ok, broken = out.splitlines()
    assert ok.startswith("ok") and str(TINY) in ok
    assert broken.startswith("error") and str(bad) in broken and "training.microbatches" in broken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


# ------------------------------------------------------------------------------ compare

def test_compare_tiny_rows_equal_simulate_on_the_modified_scenario(tmp_path, capsys):
    rc, out, err = main(capsys, "compare", TINY, "-o", tmp_path)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.csv", "compare.png"]
    got = {r["schedule"]: r for r in rows(tmp_path / "compare.csv")}
    # tiny has 6 layers and pp=4: the families with 2 chunks per rank over 2*pp = 8 stages cannot run
    assert list(got) == ["gpipe", "1f1b", "zb-h1", "dualpipe"]
    for name in ("interleaved", "zb-v", "dualpipev"):
        assert f"skipped {name}:" in out
    for name in schedules.names():
        try:
            sc = pipesim.load_scenario(TINY, {"schedule.name": name})
        except ScenarioError:
            assert name not in got
            continue
        res, row = pipesim.simulate(sc), got[name]
        assert int(row["max_peak_bytes"]) == max_peak(res)
        assert int(row["min_peak_bytes"]) == min(p.bytes for p in res.peaks)
        assert int(row["peak_rank"]) == res.peak_rank
        assert int(row["stages"]) == res.workload.schedule.num_stages == 4
        assert row["step_ms"] == f"{res.makespan * 1e3:.3f}"
        assert row["fits"] == str(all(res.fits(r) for r in range(res.ranks)))
        assert row["auto_split"] == "False" and row["layers_per_stage"] == " ".join(map(str, sc.layers_per_stage))


def test_compare_splits_layers_when_the_stage_count_differs(tmp_path, capsys):
    sets = {"parallel.pp": 2, "placement.layers_per_stage": [2, 4]}
    rc, out, err = main(capsys, "compare", TINY, "--schedules", "1f1b,zb-v", "--set", "parallel.pp=2",
                        "--set", "placement.layers_per_stage=[2, 4]", "-o", tmp_path)
    assert rc == 0, err
    one, zbv = rows(tmp_path / "compare.csv")
    assert (one["schedule"], one["layers_per_stage"], one["auto_split"]) == ("1f1b", "2 4", "False")
    # zb-v runs 2 chunks on each of 2 ranks = 4 stages: 6 layers split evenly, the 2 extra to the middle
    assert (zbv["schedule"], zbv["stages"], zbv["layers_per_stage"], zbv["auto_split"]) == ("zb-v", "4", "1 2 2 1", "True")
    assert "(auto)" in out
    expected = pipesim.simulate(pipesim.load_scenario(
        TINY, {**sets, "schedule.name": "zb-v", "placement.layers_per_stage": "auto"}))
    assert int(zbv["max_peak_bytes"]) == max_peak(expected)
    assert int(one["max_peak_bytes"]) == max_peak(pipesim.simulate(pipesim.load_scenario(TINY, sets)))


def test_compare_unknown_schedule_exits_2(tmp_path, capsys):
    rc, out, err = main(capsys, "compare", TINY, "--schedules", "1f1b,zigzag", "-o", tmp_path / "out")
    assert rc == 2 and "zigzag" in err and "allowed" in err and not (tmp_path / "out").exists()


def test_benchmark_script_still_runs(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), str(TINY), "--microbatches", "8",
                        "-o", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert [r["schedule"] for r in rows(tmp_path / "compare.csv")] == ["gpipe", "1f1b", "zb-h1", "dualpipe"]


# ------------------------------------------------------------------------------ sweep

def _sweep(capsys, out, *sets):
    rc, stdout, err = main(capsys, "sweep", TINY, "training.microbatches", 4, 8, 16, *sets, "-o", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.png"]
    return {int(r["value"]): r for r in rows(out / "sweep.csv")}


def test_sweep_microbatches_rows_equal_separate_simulations(tmp_path, capsys):
    pp = pipesim.load_scenario(TINY).parallel.pp
    one = _sweep(capsys, tmp_path / "1f1b")
    gpipe = _sweep(capsys, tmp_path / "gpipe", "--set", "schedule.name=gpipe")
    for sched, got in (("1f1b", one), ("gpipe", gpipe)):
        assert list(got) == [4, 8, 16]
        for m, row in got.items():
            res = pipesim.simulate(pipesim.load_scenario(TINY, {"training.microbatches": m, "schedule.name": sched}))
            assert int(row["max_peak_bytes"]) == max_peak(res)
            assert int(row["peak_rank"]) == res.peak_rank
            assert int(row["peak_activations_bytes"]) == res.peaks[res.peak_rank].breakdown["activations"]
            assert row["step_ms"] == f"{res.makespan * 1e3:.3f}"
    act = lambda got, m: int(got[m]["peak_activations_bytes"])  # noqa: E731
    rank = {int(r["peak_rank"]) for r in (*one.values(), *gpipe.values())}
    assert len(rank) == 1
    (r,) = rank
    # GPipe holds all M micro-batches' activations at its peak: proportional to M
    assert act(gpipe, 8) == 2 * act(gpipe, 4) and act(gpipe, 16) == 4 * act(gpipe, 4)
    # 1F1B rank r holds at most pp - r of them, so nothing changes once M >= pp
    assert act(one, 4) == act(one, 8) == act(one, 16)
    assert act(one, 4) * pp == act(gpipe, 4) * (pp - r)
    assert int(one[4]["max_peak_bytes"]) == int(one[16]["max_peak_bytes"])


@pytest.mark.parametrize("values,needle", [(["4", "0", "8"], "got 0"), (["4", "x", "8"], "'x'"),
                                           (["4", "[1,", "8"], "not a TOML value")])
def test_sweep_with_an_invalid_value_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, values, needle):
    monkeypatch.chdir(tmp_path)
    rc, out, err = main(capsys, "sweep", TINY, "training.microbatches", *values)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "training.microbatches" in err and needle in err, err
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides,key", [
    ({"schedule.name": "interleaved", "training.microbatches": 6}, "training.microbatches"),
    ({"schedule.name": "interleaved", "schedule.chunks": 1}, "schedule.chunks"),
    ({"schedule.name": "dualpipe", "parallel.pp": 3}, "parallel.pp"),
    ({"schedule.name": "dualpipe", "training.microbatches": 7}, "training.microbatches"),
])
def test_a_schedule_constraint_is_reported_at_its_scenario_key(overrides, key):
    with pytest.raises(pipesim.ScenarioError) as err:
        pipesim.load_scenario(TINY, overrides)
    assert str(err.value).startswith(f"{TINY}: {key}: ")
