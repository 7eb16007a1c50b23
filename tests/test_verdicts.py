"""Verdicts and exit status: OK / TIGHT / OOM per rank and for the step, exit 0 fits and 1 does
not (as diff and grep do), --json carries the summary alone on stdout, --quiet nothing, --plots
chooses the pictures, --version the one version."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipesim
from pipesim.cli import main

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml"
GIB = 2 ** 30


def result(**sets):
    return pipesim.simulate(pipesim.load_scenario(TINY, sets))


def test_verdict_thresholds_from_the_peak_and_the_margin():
    res = result()
    peak = max(p.bytes for p in res.peaks)
    # a device just above the peak: fits with under 10% headroom -> TIGHT; far above -> OK;
    # below -> OOM
    for gib, word in ((peak * 1.05 / GIB, "TIGHT"), (peak * 2 / GIB, "OK"), (peak * 0.9 / GIB, "OOM")):
        r = result(**{"hardware.memory_gib": gib})
        assert r.verdict() == word
        assert r.summary()["verdict"] == word
    r = result(**{"hardware.memory_gib": peak * 1.05 / GIB, "overheads.tight_fraction": 0.01})
    assert r.verdict() == "OK"


def test_exit_status_json_quiet_and_plots(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(TINY), "-o", str(out), "--json", "--plots", "none"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)              # stdout is the summary and nothing else
    assert summary["verdict"] in ("OK", "TIGHT") and "wrote" in captured.err
    assert sorted(f.name for f in out.iterdir()) == ["summary.json", "timeline.csv", "trace.json"]
    assert main(["run", str(TINY), "-o", str(tmp_path / "q"), "--quiet", "--plots", "peaks",
                 "--set", "hardware.memory_gib=0.001"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and (tmp_path / "q" / "peaks.png").exists()
    assert not (tmp_path / "q" / "memory.png").exists()


def test_bad_plots_value_is_refused(tmp_path, capsys):
    assert main(["run", str(TINY), "-o", str(tmp_path / "x"), "--plots", "gantt"]) == 2
    assert "--plots: 'gantt' unknown; allowed: all, none" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_version_is_one_source():
    p = subprocess.run([sys.executable, "-m", "pipesim", "--version"], capture_output=True, text=True)
    assert p.stdout.strip() == f"pipesim {pipesim.__version__}"
    from importlib.metadata import version
    assert version("pipesim") == pipesim.__version__


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help_documents_the_exit_status(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    if argv == ["--help"]:
        assert "1 some rank does not fit" in capsys.readouterr().out
