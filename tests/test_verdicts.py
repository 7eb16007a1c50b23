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


@pytest.mark.parametrize("name, expect", [
    ("1f1b", lambda pp, r, m: pp - r),        # Narayanan et al. 2021: rank r warms up pp - r
    ("gpipe", lambda pp, r, m: m),            # all forwards before any backward
    ("dualpipe", lambda pp, r, m: pp + 1),    # the DualPipe README: PP + 1 at the overlapped step
])
def test_live_set_at_the_peak_matches_the_closed_form(name, expect):
    res = result(**{"schedule.name": name})
    pp, m = res.ranks, res.scenario.microbatches
    for r in range(pp):
        live = res.live_at_peak(r)
        awaiting = [e for e in live if e["waits_for"] in ("F", "B")]
        assert len(awaiting) == expect(pp, r, m), (name, r, live)
        assert all(e["bytes"] > 0 for e in live)
    assert res.summary()["ranks"][0]["live_at_peak"] == res.live_at_peak(0)


def test_zb_h1_peak_holds_weight_gradient_inputs_for_deferred_ws():
    res = result(**{"schedule.name": "zb-h1"})
    live = res.live_at_peak(res.ranks - 1)
    w = [e for e in live if e["waits_for"] == "W"]
    assert w and all(e["bytes"] < res.workload.costs[e["stage"]].layers[0].stored_bytes * 10 for e in w)
    # a W-waiter keeps only the weight inputs and output gradients of its stage's layers
    stage = w[0]["stage"]
    assert w[0]["bytes"] == sum(L.w_bytes + L.w_grad_outputs_bytes for L in res.workload.costs[stage].layers)


def test_activations_by_module_at_the_peak_add_up_to_the_live_set():
    for name in ("1f1b", "zb-h1"):
        res = result(**{"schedule.name": name})
        for r in range(res.ranks):
            live, mods = res.live_at_peak(r), res.activations_by_module(r)
            assert sum(mods.values()) == sum(e["bytes"] for e in live)
            assert set(mods) <= {"mla", "mlp", "moe", "router", "experts", "shared", "embedding",
                                 "head", "awaiting W"}
