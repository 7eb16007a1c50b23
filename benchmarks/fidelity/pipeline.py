"""A real pipeline-parallel step on CPU, measured rank by rank, beside pipesim's simulation of it.

    python benchmarks/fidelity/pipeline.py                       # every schedule; profiler timeline for 1f1b
    python benchmarks/fidelity/pipeline.py --schedules 1f1b gpipe --timeline none
    python benchmarks/fidelity/pipeline.py --timeline all        # profiler timelines of every schedule (slow)

The harness model (``fidelity.torch_model``: the tiny preset with 8 layers, s = 128, b = 1,
BF16) is cut into stages exactly as pipesim places them (``fidelity.pipeline_stages``) and run
with ``torch.distributed.pipelining`` over gloo, one process per rank (pp = 4,
``torch.multiprocessing.spawn``, MASTER_ADDR 127.0.0.1 and a free port), 8 micro-batches, under
the five schedules both have: GPipe, 1F1B, Interleaved1F1B (2 chunks), ZBV and DualPipeV. Each
rank records the bytes autograd holds for backward after every action
(``fidelity.pipeline_record``) and, for the schedules in ``--timeline``, a ``torch.profiler``
memory timeline by category (``export_memory_timeline``; about a minute per rank on 2 cores,
hence one schedule by default). pipesim simulates torch's executed op order for the same
scenario and the two are scored per rank (``fidelity.pipeline_score``).

Writes under ``benchmarks/results/`` (or ``--out``): ``pipeline_fidelity.csv`` and ``.md`` (the
table), ``pipeline_<schedule>.png`` (predicted and measured per rank),
``pipeline_<schedule>_actions.csv`` (every action of every rank: times, measured bytes before,
at its highest and after it, pipesim's after it) and ``pipeline_<schedule>_saved.csv`` (the
measured bytes over the step, every change, in ``pipesim score``'s CSV format;
``_profiler.csv`` beside it for a profiled schedule, the profiler's categories binned).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
for _p in (_HERE.parent, _HERE.parents[1]):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fidelity import pipeline_report as report  # noqa: E402
from fidelity.pipeline_score import score_schedule  # noqa: E402
from fidelity.pipeline_stages import FAMILIES, check_placement, family, scenario  # noqa: E402
from fidelity.pipeline_worker import result_path, run_rank  # noqa: E402

__all__ = ["main", "measure", "profiler_summary", "run"]

PP = 4
RESULTS = _HERE.parents[1] / "benchmarks" / "results"
PROFILER_BINS = 400            # rows per rank and category in the binned profiler CSV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(names, work_dir: Path, timelines=(), pp: int = PP) -> dict[str, list[dict]]:
    """Run every schedule of ``names`` on ``pp`` processes; the ranks' recorded results by name."""
    import torch.multiprocessing as mp

    for name in names:
        check_placement(scenario(name, pp=pp), family(name))
    mp.spawn(run_rank, args=(pp, free_port(), list(names), str(work_dir), list(timelines)), nprocs=pp, join=True)
    return {name: [json.loads(result_path(work_dir, name, r).read_text()) for r in range(pp)] for name in names}


def profiler_summary(results: list[dict], work_dir: Path) -> tuple[dict, dict, list]:
    """From the ranks' profiler timelines: per rank (ACTIVATION peak, total peak), per rank the
    ACTIVATION level at the step's start and after every action, and binned CSV series."""
    from pipesim.score import read

    peaks, curves, series = {}, {}, []
    for d in results:
        if not d.get("timeline") or not d.get("profiler_step_ns"):
            continue
        r = d["rank"]
        m = read(str(work_dir / d["timeline"])).ranks[0]
        act = m.categories["activation"]
        t0, (p0, _) = d["step_ns"][0], d["profiler_step_ns"]
        inside = (m.times_s * 1e9 >= p0)                  # the measured step, on the profiler's clock
        peaks[r] = (int(act[inside].max(initial=0)), int(m.bytes[inside].max(initial=0)))
        # an action's end on the recorder's clock, moved onto the profiler's
        ends = np.array([p0 + (a["end_ns"] - t0) for a in d["actions"]], dtype=float)
        at = np.searchsorted(m.times_s * 1e9, np.r_[p0, ends], side="right") - 1
        curves[r] = act[np.clip(at, 0, len(act) - 1)].astype(np.int64)
        t = (m.times_s[inside] * 1e9 - p0) / 1e9
        idx = _bin_max(t, m.bytes[inside], PROFILER_BINS)
        for cat, lv in m.categories.items():
            series.append((r, t[idx], lv[inside][idx], cat))
    return peaks, curves, series


def _bin_max(t: np.ndarray, y: np.ndarray, bins: int) -> np.ndarray:
    """Indices of the highest point of ``y`` in each of ``bins`` equal time bins (peaks kept)."""
    if len(t) == 0:
        return np.array([], dtype=np.int64)
    edges = np.linspace(t[0], t[-1], bins + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    out = [int(np.flatnonzero(which == b)[np.argmax(y[which == b])]) for b in np.unique(which)]
    return np.array(sorted(set(out) | {0, len(t) - 1}), dtype=np.int64)


def saved_series(results: list[dict]) -> list:
    """The measured saved bytes over the step, per rank, on one origin (the earliest rank start)."""
    origin = min(d["step_ns"][0] for d in results)
    out = []
    for d in sorted(results, key=lambda x: x["rank"]):
        log = np.array(d["saved_log"], dtype=np.int64).reshape(-1, 2)
        out.append((d["rank"], (log[:, 0] - origin) / 1e9, log[:, 1], None))
    return out


def run(names, out_dir: Path, timelines=(), pp: int = PP, quiet: bool = False):
    """Measure, score and write everything; returns (rows, comparisons)."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="pipesim-pipeline-") as tmp:
        work = Path(tmp)
        measured = measure(names, work, timelines, pp)
        rows, comparisons = [], {}
        for name in names:
            sc = scenario(name, pp=pp)
            comp = score_schedule(sc, measured[name])
            comparisons[name] = comp
            peaks, curves, series = profiler_summary(measured[name], work)
            rows += report.rows_of(comp, peaks)
            report.write_plot(out_dir / f"pipeline_{name}.png", comp, curves)
            report.write_actions_csv(out_dir / f"pipeline_{name}_actions.csv", comp, measured[name])
            report.write_timeline_csv(out_dir / f"pipeline_{name}_saved.csv", saved_series(measured[name]))
            if series:
                report.write_timeline_csv(out_dir / f"pipeline_{name}_profiler.csv", series)
    sc = scenario(names[0], pp=pp)
    preamble = _preamble(sc, comparisons, time.time() - start)
    report.write_csv(out_dir / "pipeline_fidelity.csv", rows)
    report.write_markdown(out_dir / "pipeline_fidelity.md", rows, preamble)
    if not quiet:
        print(preamble)
        print(report.table_text(rows))
    return rows, comparisons


def _preamble(sc, comparisons, seconds: float) -> str:
    m, t = sc.model, sc.training
    lines = ["# Pipeline fidelity: torch.distributed.pipelining on CPU vs pipesim",
             "",
             f"Model {m.name} with {m.layers} layers ({m.dense_layers} dense, the rest MoE), b = {t.micro_batch_size}, "
             f"s = {t.seq_len}, BF16, recipe {t.recipe}, recompute {t.recompute}; pp = {sc.parallel.pp}, "
             f"{sc.microbatches} micro-batches, gloo, one process per rank. "
             f"Command: `python benchmarks/fidelity/pipeline.py` ({seconds:.0f} s).",
             "",
             "Op order, torch's executed order against pipesim's builder (`schedules.build`) and against "
             "torch's own `pipeline_order`:"]
    for name, c in comparisons.items():
        builder = "same as pipesim's builder" if not c.builder_differences else "; ".join(c.builder_differences)
        ir = "" if not c.ir_differences else " Torch's pipeline_order differs from what it ran: " + "; ".join(c.ir_differences) + "."
        lines.append(f"- {name}: {builder}.{ir}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedules", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--timeline", nargs="+", default=["1f1b"],
                    help="schedules to record a torch.profiler memory timeline for: names, 'all' or 'none'")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    timelines = a.schedules if a.timeline == ["all"] else [] if a.timeline == ["none"] else a.timeline
    bad = [n for n in timelines if n not in a.schedules]
    if bad:
        ap.error(f"--timeline {' '.join(bad)}: not among --schedules ({' '.join(a.schedules)}), or use all / none")
    run(a.schedules, a.out, timelines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
