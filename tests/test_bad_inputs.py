"""A catalogue of bad inputs, as an adversarial user would try them: unreadable files, output
folders that cannot be written, NaN and huge numbers, absurd sizes, malformed ``--set``, on
every verb. Each must exit with its status, print one line that contains its phrase (no
traceback), and leave nothing behind. Run in-process (``pipesim.cli.main``) to stay fast; the
signal tests at the end need a real process.

    python -m pytest tests/test_bad_inputs.py
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipesim
from pipesim import cli, limits

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "tiny.toml"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Files a case can ask for, made in its own empty folder (which is also the working directory,
# so a default results/ folder would land there and be seen).
SETUP = {
    "folder": lambda d: (d / "folder.toml").mkdir(),
    "loop": lambda d: os.symlink("loop.toml", d / "loop.toml"),
    "file": lambda d: (d / "file").write_text("x"),
    "latin1": lambda d: (d / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1")),
    "not-toml": lambda d: (d / "bad.toml").write_text("[model\n"),
    "digits": lambda d: (d / "bad.toml").write_text(f"[training]\nseq_len = {'9' * 5000}\n"),
    "huge-file": lambda d: (d / "big.toml").write_text("# " + "x" * (1 << 20) + "\n"),
    "foreign": lambda d: ((d / "out").mkdir(), (d / "out" / "notes.txt").write_text("mine")),
    "nan-file": lambda d: (d / "bad.toml").write_text(TINY.read_text().replace(
        "p2p_bandwidth_gbps = 25.0", "p2p_bandwidth_gbps = nan")),
    "inf-file": lambda d: (d / "bad.toml").write_text(TINY.read_text().replace(
        "p2p_latency_us = 5.0", "p2p_latency_us = inf")),
    "round-file": lambda d: (d / "bad.toml").write_text(TINY.read_text().replace(
        "allocator_rounding = 1 ", f"allocator_rounding = {2 ** 62} ")),
    "name-file": lambda d: (d / "bad.toml").write_text(TINY.read_text().replace('name = "tiny"', 'name = "../../etc"')),
}

S = "--set"
SWEEP = ("sweep", "{T}", "hardware.memory_gib", "1", "2")

# (argv with {T} = tiny.toml and {d} = the case's folder, phrase its message must contain, exit
# status, setup). Grouped by what is wrong; every verb that reads a scenario appears.
CASES = [
    # ------------------------------------------------------------------ files
    (("run", "{d}/missing.toml"), "missing.toml: no such scenario file", 2, None),
    (("validate", "{d}/missing.toml"), "missing.toml: no such scenario file", 2, None),
    (("compare", "{d}/missing.toml"), "missing.toml: no such scenario file", 2, None),
    (("sweep", "{d}/missing.toml", "training.microbatches", "4"), "missing.toml: no such scenario file", 2, None),
    (("model", "{d}/missing.toml"), "missing.toml: no such scenario file", 2, None),
    (("run", "{d}/folder.toml"), "folder.toml: is a folder, not a scenario file", 2, "folder"),
    (("model", "{d}/folder.toml"), "folder.toml: is a folder, not a scenario file", 2, "folder"),
    (("run", "{d}/loop.toml"), "loop.toml: cannot read: a symlink loop", 2, "loop"),
    (("validate", "{d}/loop.toml"), "loop.toml: cannot read: a symlink loop", 2, "loop"),
    (("run", "{d}/file/x.toml"), "file/x.toml: a part of the path is a file, not a folder", 2, "file"),
    (("run", ""), "'': an empty path", 2, None),
    (("compare", ""), "'': an empty path", 2, None),
    (("run", "{d}/latin1.toml"), "latin1.toml: not UTF-8 text (byte 11", 2, "latin1"),
    (("run", "{d}/bad.toml"), "bad.toml: not valid TOML", 2, "not-toml"),
    (("run", "{d}/bad.toml"), "bad.toml: not a usable TOML value", 2, "digits"),
    (("run", "/dev/null"), "/dev/null: not a regular file", 2, None),
    (("run", "{d}/big.toml"), "larger than a scenario file can be", 2, "huge-file"),
    (("run", "{d}/a\0b.toml"), "a path cannot contain a NUL character", 2, None),
    # ------------------------------------------------------------------ outputs
    (("run", "{T}", "-o", "{d}/file"), "file: exists and is not a folder", 2, "file"),
    (("run", "{T}", "-o", "{d}/file/sub"), "file/sub: a part of the path is a file, not a folder", 2, "file"),
    (("run", "{T}", "-o", "/proc/pipesim-out"), "cannot create folders in /proc", 2, None),
    (("run", "{T}", "-o", ""), "'': an empty output path", 2, None),
    (("run", "{T}", "-o", "{d}/out"), "out: holds files pipesim did not write (notes.txt)", 2, "foreign"),
    (("compare", "{T}", "-o", "{d}/file"), "file: exists and is not a folder", 2, "file"),
    ((*SWEEP, "-o", "{d}/file"), "file: exists and is not a folder", 2, "file"),
    (("run", "{T}", S, 'name=".."'), "name: a folder name under results/", 2, None),
    (("run", "{T}", S, 'name="."'), "name: a folder name under results/", 2, None),
    (("run", "{T}", S, 'name="a/b"'), "got 'a/b'", 2, None),
    (("run", "{T}", S, 'name="a\\\\b"'), "no '/', '\\' or control characters", 2, None),
    (("run", "{T}", S, 'name="a\\u0000b"'), "got 'a\\x00b'", 2, None),
    (("run", "{T}", S, 'name=".hidden"'), "no leading '.'", 2, None),
    (("run", "{T}", S, f'name="{"n" * 101}"'), "at most 100 bytes", 2, None),
    (("run", "{T}", S, 'name=""'), "name: expected a non-empty string", 2, None),
    (("validate", "{d}/bad.toml"), "name: a folder name under results/", 2, "name-file"),
    # ------------------------------------------------------------------ numbers: NaN, inf, huge
    (("run", "{d}/bad.toml"), "hardware.p2p_bandwidth_gbps: must be a finite number, got nan", 2, "nan-file"),
    (("run", "{d}/bad.toml"), "hardware.p2p_latency_us: must be a finite number, got inf", 2, "inf-file"),
    (("run", "{d}/bad.toml"), f"overheads.allocator_rounding: {2 ** 62} is beyond the integers", 2, "round-file"),
    (("run", "{T}", S, "hardware.memory_gib=nan"), "hardware.memory_gib: must be a finite number, got nan", 2, None),
    (("run", "{T}", S, "hardware.peak_tflops=inf"), "hardware.peak_tflops: must be a finite number, got inf", 2, None),
    (("run", "{T}", S, "hardware.efficiency=-nan"), "hardware.efficiency: must be a finite number", 2, None),
    (("run", "{T}", S, "hardware.memory_gib=1e400"), "hardware.memory_gib: must be a finite number, got inf", 2, None),
    (("run", "{T}", S, "overheads.fragmentation=nan"), "overheads.fragmentation: must be a finite number", 2, None),
    (("run", "{T}", S, "overheads.comm_buffer_gib=-inf"), "overheads.comm_buffer_gib: must be a finite number", 2, None),
    (("run", "{T}", S, "training.dropout=nan"), "training.dropout: must be a finite number", 2, None),
    (("run", "{T}", S, "training.imbalance=inf"), "training.imbalance: must be a finite number", 2, None),
    (("run", "{T}", S, "timing.forward_ms=nan"), "timing.forward_ms: must be a finite number", 2, None),
    (("run", "{T}", S, "timing.fb_ms=[1, 1, inf, 1]"), "timing.fb_ms[2]: must be a finite number", 2, None),
    (("validate", "{T}", S, "timing.weight_ms=inf"), "timing.weight_ms: must be a finite number", 2, None),
    (("model", "{T}", S, "training.dropout=nan"), "training.dropout: must be a finite number", 2, None),
    (("compare", "{T}", S, "hardware.p2p_bandwidth_gbps=nan"), "hardware.p2p_bandwidth_gbps: must be a finite", 2, None),
    ((*SWEEP, S, "hardware.p2p_latency_us=nan"), "hardware.p2p_latency_us: must be a finite number", 2, None),
    (("sweep", "{T}", "hardware.efficiency", "0.5", "nan"), "hardware.efficiency: must be a finite number", 2, None),
    (("run", "{T}", S, "model.hidden=99999999999999999"), "model.hidden: 99999999999999999 is beyond the integers", 2, None),
    (("run", "{T}", S, f"training.seq_len={2 ** 60}"), "training.seq_len: 1152921504606846976 is beyond", 2, None),
    (("run", "{T}", S, f"training.dtypes.weights={2 ** 63}"), "training.dtypes.weights: 9223372036854775808 is beyond", 2, None),
    (("run", "{T}", S, f"placement.head_stage={-2 ** 63}"), "placement.head_stage: -9223372036854775808 is beyond", 2, None),
    (("run", "{T}", S, f"training.microbatches={10 ** 18}"), "training.microbatches: 1000000000000000000 is beyond", 2, None),
    (("run", "{T}", S, f"placement.layers_per_stage=[1, 1, 1, {2 ** 64}]"), "placement.layers_per_stage[3]: 18446744073709551616", 2, None),
    (("run", "{T}", S, "training.microbatches=" + "9" * 5000), "--set training.microbatches: a number of 5000 characters", 2, None),
    # ------------------------------------------------------------------ numbers: ranges and keys
    (("run", "{T}", S, "hardware.memory_gib=0"), "hardware.memory_gib: must be in (0, 1048576] GiB", 2, None),
    (("run", "{T}", S, "hardware.memory_gib=2e6"), "hardware.memory_gib: must be in (0, 1048576] GiB", 2, None),
    (("run", "{T}", S, "hardware.efficiency=1.5"), "hardware.efficiency: must be in (0, 1]", 2, None),
    (("run", "{T}", S, "hardware.p2p_latency_us=-1"), "hardware.p2p_latency_us: must be in [0, 1000000000]", 2, None),
    (("run", "{T}", S, "overheads.fragmentation=1.0"), "overheads.fragmentation: must be in [0, 1)", 2, None),
    (("run", "{T}", S, "overheads.allocator_rounding=0"), "overheads.allocator_rounding: must be in [1, 1073741824]", 2, None),
    (("run", "{T}", S, f"overheads.allocator_rounding={2 ** 31}"), "overheads.allocator_rounding: must be in", 2, None),
    (("run", "{T}", S, "timing.forward_ms=-1"), "timing.forward_ms: must be in [0, 1000000000] ms", 2, None),
    (("run", "{T}", S, "timing.a2a_overlap=2"), "timing.a2a_overlap: must be in [0, 1]", 2, None),
    (("run", "{T}", S, "hardware.node_size=0"), "hardware.node_size: must be in [1, 1048576] devices", 2, None),
    (("run", "{T}", S, "hardware.nvlink_bandwidth_gbps=0"), "hardware.nvlink_bandwidth_gbps: must be in (0, 1000000] GB/s", 2, None),
    (("run", "{T}", S, "model.hidden=0"), ": model.hidden: must be >= 1, got 0", 2, None),
    (("run", "{T}", S, "parallel.tp=0"), ": parallel.tp: must be >= 1, got 0", 2, None),
    (("run", "{T}", S, "training.dropout=2.0"), ": training.dropout: a probability in [0, 1)", 2, None),
    (("run", "{T}", S, "training.dtypes.master=-1"), ": training.dtypes.master: bytes per value", 2, None),
    (("run", "{T}", S, "parallel.cp=3"), ": training.seq_len: must be divisible by parallel.cp (3)", 2, None),
    (("run", "{T}", S, "training.recipe=nope"), ": training.recipe: one of paper", 2, None),
    # ------------------------------------------------------------------ sizes
    (("run", "{T}", S, f"training.microbatches={10 ** 15}"), "training.microbatches: 1f1b with pp=4", 2, None),
    (("run", "{T}", S, "parallel.pp=1000000"), "parallel.pp: 1f1b with pp=1000000, 8 micro-batches", 2, None),
    (("run", "{T}", S, "schedule.name=interleaved", S, "schedule.chunks=10000000"), "schedule.chunks: interleaved", 2, None),
    (("run", "{T}", S, "model.layers=100000000"), "model.layers: 8 micro-batches through 100000000 layers", 2, None),
    (("run", "{T}", S, "training.microbatches=100000", S, "schedule.name=gpipe"), "(pipesim.limits.MAX_RECORDS)", 2, None),
    (("run", "{T}", S, f"training.seq_len={2 ** 40}"), "training: one rank's memory could reach", 2, None),
    (("run", "{T}", S, f"model.hidden={2 ** 40}"), "model: one rank's memory could reach", 2, None),
    (("run", "{T}", S, "hardware.peak_tflops=1e-30"), "hardware: one step could last", 2, None),
    (("validate", "{T}", S, "parallel.pp=1000000"), "(schedules.MAX_ATOMS)", 2, None),
    (("compare", "{T}", S, f"training.microbatches={10 ** 15}"), "(schedules.MAX_ATOMS)", 2, None),
    (("sweep", "{T}", "training.microbatches", "4", str(10 ** 15)), "(training.microbatches = 1000000000000000)", 2, None),
    (("model", "{T}", S, "model.layers=100000000"), "(pipesim.limits.MAX_RECORDS)", 2, None),
    (("schedule", "1f1b", "--pp", "1000000", "--microbatches", "8"), "(schedules.MAX_ATOMS)", 2, None),
    (("schedule", "interleaved", "--pp", "4", "--microbatches", "8", "--chunks", "10000000"), "reduce pp, microbatches or chunks", 2, None),
    (("schedule", "gpipe", "--pp", "0", "--microbatches", "8"), "pp must be an integer >= 1", 2, None),
    # ------------------------------------------------------------------ --set forms
    (("run", "{T}", S, "training.microbatches"), "expected KEY=VALUE", 2, None),
    (("run", "{T}", S, "=4"), "expected KEY=VALUE", 2, None),
    (("run", "{T}", S, "training..microbatches=4"), "not a key path", 2, None),
    (("run", "{T}", S, "training.microbatches=[1,"), "--set training.microbatches: '[1,' is not a TOML value", 2, None),
    (("run", "{T}", S, "training.microbatches="), "--set training.microbatches: '' is not a TOML value", 2, None),
    (("run", "{T}", S, "training.microbatches.x=1"), "training.microbatches: 8 is a value, not a table", 2, None),
    (("run", "{T}", S, "schedule=1"), "schedule: expected a table, got 1", 2, None),
    (("run", "{T}", S, "hardware.memory=1"), "hardware.memory: unknown key; allowed: memory_gib", 2, None),
    (("run", "{T}", S, 'training.microbatches="8"'), "training.microbatches: expected an integer, got '8'", 2, None),
    (("run", "{T}", S, "training.microbatches=true"), "training.microbatches: expected an integer, got True", 2, None),
    (("validate", "{T}", S, "training.keep=[1]"), "training.keep: expected a list of strings, got [1]", 2, None),
    # ------------------------------------------------------------------ verb arguments
    (("compare", "{T}", "--schedules", "1f1b,zigzag"), "--schedules: unknown 'zigzag'", 2, None),
    (("compare", "{T}", "--microbatches", "0"), "--microbatches: must be >= 1, got 0", 2, None),
    (("sweep", "{T}", "training.nope", "1", "2"), "training.nope: unknown key", 2, None),
    (("sweep", "{T}", "training.microbatches", "4", "[1,"), "sweep training.microbatches value: '[1,'", 2, None),
    (("schedule", "zigzag", "--pp", "4", "--microbatches", "8"), "unknown schedule 'zigzag'", 2, None),
]


def _ids():
    return [f"{i:03d}-{case[0][0]}-{(case[3] or '')}" for i, case in enumerate(CASES)]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} | {
        str(p.relative_to(folder)) for p in folder.rglob(".*")}


@pytest.mark.parametrize("argv,phrase,status,setup", CASES, ids=_ids())
def test_bad_input_is_one_line_with_its_phrase_and_leaves_nothing(tmp_path, monkeypatch, capsys,
                                                                  argv, phrase, status, setup):
    monkeypatch.chdir(tmp_path)
    if setup:
        SETUP[setup](tmp_path)
    before = _tree(tmp_path)
    args = [a.replace("{T}", str(TINY)).replace("{d}", str(tmp_path)) for a in argv]
    rc = cli.main(args)
    out, err = capsys.readouterr()
    message = err + out
    errors = [line for line in message.splitlines() if line.startswith("error") or line.startswith("skipped")]
    assert rc == status, message
    assert phrase in message, message
    assert "Traceback" not in message
    if argv[0] != "compare":          # compare lists each family it skipped, one line each
        assert len(errors) == 1, message
    assert _tree(tmp_path) == before, "a refused command must leave nothing behind"


def test_the_catalogue_covers_every_verb_and_enough_cases():
    assert len(CASES) >= 60
    assert {c[0][0] for c in CASES} >= {"run", "validate", "compare", "sweep", "model", "schedule"}


@pytest.mark.skipif(AS_ROOT, reason="root reads and writes whatever the permission bits say")
def test_unreadable_file_and_read_only_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked.toml"
    locked.write_text(TINY.read_text())
    locked.chmod(0)
    assert cli.main(["run", str(locked)]) == 2
    assert "locked.toml: cannot read: Permission denied" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli.main(["run", str(TINY), "-o", str(ro / "out")]) == 2
        assert "cannot create folders in" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------- all or nothing

def _run(out, *sets):
    return cli.main(["run", str(TINY), "-o", str(out), *(x for s in sets for x in ("--set", s))])


def test_a_failed_write_leaves_the_previous_results_complete(tmp_path, monkeypatch, capsys):
    out = tmp_path / "deep" / "out"
    assert _run(out) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    import pipesim.plots

    def full(res, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pipesim.plots, "schedule_png", full)
    assert _run(out, "training.microbatches=16") == 2
    assert "out: could not write the outputs: No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"], "no temporary folder left"
    # a new target: the failure removes the parent folders it made, too
    assert _run(tmp_path / "new" / "deeper" / "out") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


def test_an_interrupt_while_writing_leaves_the_previous_results(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _run(out) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    import pipesim.plots

    def interrupted(res, path):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipesim.plots, "peaks_png", interrupted)
    assert _run(out, "training.microbatches=16") == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_rerun_replaces_the_folder_whole_and_keeps_other_verbs_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["compare", str(TINY), "--schedules", "1f1b", "-o", str(out)]) == 0
    assert _run(out) == 0
    first = (out / "summary.json").read_bytes()
    assert _run(out, "training.microbatches=16") == 0
    assert (out / "summary.json").read_bytes() != first
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["compare.csv", "compare.png", "memory.png", "peaks.png", "schedule.png", "summary.json",
         "timeline.csv", "trace.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~_umask()


def test_an_output_folder_through_a_symlink_stays_a_symlink(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert _run(link) == 0 and _run(link) == 0
    assert link.is_symlink() and (real / "summary.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_a_scenario_name_is_one_folder_under_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(TINY), "--set", 'name="my run"']) == 0
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["my run"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------- sizes and numbers

def test_limits_are_documented_constants():
    import schedules
    assert schedules.MAX_ATOMS == 5_000_000 and limits.MAX_RECORDS == 5_000_000
    assert limits.MAX_BYTES == limits.INT_LIMIT == 2 ** 53


def test_estimates_bound_what_the_bundled_scenarios_really_do():
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        sc = pipesim.load_scenario(path)
        res = pipesim.simulate(sc)
        import schedules
        stages, atoms = schedules.size(sc.schedule.name, sc.parallel.pp, sc.microbatches, sc.schedule.chunks)
        assert stages == res.workload.schedule.num_stages
        assert len(res.spans.start) <= atoms
        assert len(res.ledger) <= limits.records_estimate(sc.model, sc.microbatches, atoms, sc.parallel.pp)
        static, dynamic = limits.bytes_estimate(sc.model, sc.parallel, sc.training, sc.overheads,
                                                sc.microbatches, len(res.ledger))
        assert max(p.bytes for p in res.peaks) <= static + dynamic
        assert res.makespan <= limits.step_estimate(sc.model, sc.parallel, sc.training, sc.hardware,
                                                    sc.timing, atoms)


def test_every_float_field_refuses_nan_and_inf():
    """Generic: every float-typed field of every table, found from the dataclasses' type hints."""
    import dataclasses
    import typing

    from pipesim.model import DTypes, ParallelConfig, TrainingConfig
    from pipesim.scenario import HardwareConfig, OverheadsConfig, TimingConfig
    tables = {"hardware": HardwareConfig, "overheads": OverheadsConfig, "timing": TimingConfig,
              "training": TrainingConfig, "parallel": ParallelConfig, "training.dtypes": DTypes}
    seen = 0
    for prefix, cls in tables.items():
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if float not in (tp, *typing.get_args(tp)):
                continue
            for bad in (float("nan"), float("inf"), -float("inf")):
                with pytest.raises(pipesim.ScenarioError, match=f"{prefix}.{f.name}: must be a finite number"):
                    pipesim.load_scenario(TINY, {f"{prefix}.{f.name}": bad})
            seen += 1
    assert seen >= 12


def test_python_overrides_with_huge_ints_are_refused_readably():
    with pytest.raises(pipesim.ScenarioError, match="an integer of about 5001 digits is beyond"):
        pipesim.load_scenario(TINY, {"model.hidden": 10 ** 5000})


# ---------------------------------------------------------------------------------- signals

def _start(out):
    return subprocess.Popen([sys.executable, "-m", "pipesim", "run", str(TINY), "--set", "training.microbatches=400",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for_writing(parent: Path, proc, timeout=60.0) -> None:
    """Until pipesim is half-way through writing: a temporary output folder holds summary.json
    (written first) but not yet trace.json (written last). Or until the run ends."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        for d in parent.glob(".pipesim-*"):
            try:
                names = set(os.listdir(d))
            except OSError:
                continue
            if "summary.json" in names and "trace.json" not in names:
                return
        time.sleep(0.002)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_writing_leaves_the_previous_results_and_no_temporary_folder(tmp_path, sig, status):
    out = tmp_path / "out"
    assert _run(out) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _start(out)
    _wait_for_writing(tmp_path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert (proc.returncode, err.strip()) == (status, "interrupted"), err
    now = {p.name: p.read_bytes() for p in out.iterdir()}
    # the previous results, whole; or, had the signal come after the last file, the new ones whole
    assert now == old or (now.keys() == old.keys() and now["summary.json"] != old["summary.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
