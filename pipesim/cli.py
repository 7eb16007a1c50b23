"""Command line: ``python -m pipesim {run,model,schedule} ...``.

    python -m pipesim run scenarios/v3_pp16.toml [-o DIR]
    python -m pipesim model scenarios/v3_pp16.toml [--json]
    python -m pipesim schedule 1f1b --pp 4 --microbatches 8 [--chunks 2]

Bad input (a scenario or schedule that cannot run) prints one line naming the file, the key
and what is allowed, and exits with status 2 without writing anything.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import schedules
from pipesim.scenario import ScenarioError, load_scenario


def _run(args) -> int:
    from pipesim.api import simulate
    from pipesim.export import summary_json, text_writer, timeline_csv, trace_json, write_outputs
    from pipesim.plots import memory_png, peaks_png, schedule_png
    from pipesim.report import peak_table

    sc = load_scenario(args.scenario)
    res = simulate(sc)
    print(peak_table(res))
    out = Path(args.output) if args.output else Path("results") / sc.name
    files = write_outputs(out, {
        "summary.json": text_writer(summary_json(res)),
        "timeline.csv": text_writer(timeline_csv(res)),
        "memory.png": lambda p: memory_png(res, p),
        "peaks.png": lambda p: peaks_png(res, p),
        "schedule.png": lambda p: schedule_png(res, p),
        "trace.json": text_writer(trace_json(res)),
    })
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _model(args) -> int:
    from pipesim.model.report import format_tables, tables

    sc = load_scenario(args.scenario)
    t = tables(sc.model, sc.parallel, sc.training, sc.layers_per_stage)
    print(json.dumps(t, indent=2, sort_keys=True) if args.json else format_tables(t))
    return 0


def _schedule(args) -> int:
    from schedules.grid import render

    print(render(schedules.build(args.name, args.pp, args.microbatches, args.chunks)))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipesim", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate a scenario: per-rank peak table + summary.json, timeline.csv, memory.png, peaks.png, schedule.png, trace.json")
    r.add_argument("scenario", help="scenario TOML file")
    r.add_argument("-o", "--output", help="output folder (default results/<scenario name>)")
    r.set_defaults(func=_run)
    m = sub.add_parser("model", help="print the paper-style parameter / state / activation tables")
    m.add_argument("scenario")
    m.add_argument("--json", action="store_true", help="print JSON instead of tables")
    m.set_defaults(func=_model)
    s = sub.add_parser("schedule", help="print a schedule's per-rank ops as a time-aligned grid")
    s.add_argument("name", help=f"one of: {', '.join(schedules.names())}")
    s.add_argument("--pp", type=int, required=True, help="pipeline ranks")
    s.add_argument("--microbatches", type=int, required=True)
    s.add_argument("--chunks", type=int, default=None, help="chunks per rank (interleaved)")
    s.set_defaults(func=_schedule)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ScenarioError, schedules.ScheduleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
