"""Command line: ``python -m pipesim {run,validate,compare,sweep,model,schedule} ...``.

    python -m pipesim run scenarios/v3_pp16.toml [-o DIR] [--set KEY=VALUE ...]
    python -m pipesim validate scenarios/*.toml
    python -m pipesim compare scenarios/v3_pp16.toml [--schedules 1f1b,zb-h1] [--microbatches 32] [-o DIR]
    python -m pipesim sweep scenarios/tiny.toml training.microbatches 4 8 16 [-o DIR]
    python -m pipesim sweep scenarios/v3_pp16.toml -k schedule.name=1f1b,zb-v -k parallel.pp=8,16
                            [--global-batch N] [--workers N | --dask ADDRESS] [--quiet] [-o DIR]
    python -m pipesim model scenarios/v3_pp16.toml [--json]
    python -m pipesim schedule 1f1b --pp 4 --microbatches 8 [--chunks 2]
    python -m pipesim score scenarios/tiny.toml MEASURED... [--max-error PCT] [--json] [-o DIR]

``--set KEY=VALUE`` (repeatable; every verb that reads a scenario) overrides one value of the
file before it is validated: KEY is a dotted path (``training.microbatches``, ``schedule.name``,
``hardware.memory_gib``), VALUE a TOML value (``16``, ``"zb-h1"`` or bare ``zb-h1``,
``[4, 4, 1]``, ``true``). Sweep values are written the same way.

``run`` writes to ``results/<scenario>/``, ``compare`` to ``results/<scenario>-compare/``,
``sweep`` to ``results/<scenario>-sweep-<key>/`` (a grid: ``results/<scenario>-sweep/``; or ``-o DIR``); ``validate`` writes nothing.
Bad input (a scenario, an override or a schedule that cannot run) prints one line per problem
naming the file, the key and what is allowed, and exits with status 2 without writing anything.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tomllib
from pathlib import Path

import schedules
from pipesim.export import OutputError, check_output
from pipesim.scenario import ScenarioError, load_scenario
from pipesim.score.measured import ScoreError


class UsageError(ValueError):
    """A malformed command-line argument (``--set``, a sweep value, a schedule list)."""


# A bare word taken as a string when it is not a TOML value: zb-h1, 1f1b, os+g, auto.
_BARE = re.compile(r"[^\s\"'\[\]{},=#]+")


def parse_value(text: str, what: str):
    """``text`` as a TOML value (``16``, ``2.5``, ``true``, ``"x"``, ``[4, 4, 1]``), or as a
    string if it is one bare word; ``UsageError`` naming ``what`` otherwise."""
    if "\n" not in text and "\r" not in text:
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            if _BARE.fullmatch(text):
                return text
        except ValueError:      # an integer of more than 4300 digits
            raise UsageError(f"{what}: a number of {len(text)} characters is far too large; "
                             f"write e.g. 16 or 2.5") from None
    raise UsageError(f"{what}: {text!r} is not a TOML value; write e.g. 16, 2.5, true, zb-h1, "
                     f"\"a b\" or [4, 4, 1]")


def parse_sets(items: list[str]) -> dict:
    """``--set KEY=VALUE`` arguments as an overrides dict (later ones win)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.microbatches=16")
        out[key] = parse_value(value.strip(), f"--set {key}")
    return out


def _output(args, default: str) -> Path:
    """``-o`` or ``results/<default>``, checked writable (``OutputError``) before any work."""
    out = Path(args.output) if args.output is not None else Path("results") / default
    check_output(args.output if args.output is not None else out)
    return out


def _write(args, default: str, writers: dict) -> int:
    """Write ``writers`` (name -> callable(path)) atomically into ``-o`` or ``results/<default>``."""
    from pipesim.export import write_outputs

    out = _output(args, default)
    print("wrote " + ", ".join(str(f) for f in write_outputs(out, writers)))
    return 0


PLOTS = ("memory", "peaks", "schedule")


def _plots(text: str) -> tuple[str, ...]:
    """``--plots``: all, none, or a comma list of memory, peaks, schedule."""
    if text == "all":
        return PLOTS
    if text == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in PLOTS]
    if bad or not names:
        raise UsageError(f"--plots: {', '.join(map(repr, bad)) or 'empty'} unknown; allowed: all, none, "
                         f"or a comma list of {', '.join(PLOTS)}")
    return names


def _run(args) -> int:
    """Exit status by the convention of diff and grep: 0 fits (OK or TIGHT), 1 any rank OOM."""
    from pipesim.api import simulate
    from pipesim.export import compressed, summary_json, text_writer, timeline_csv, trace_json
    from pipesim.plots import memory_png, peaks_png, schedule_png
    from pipesim.report import peak_table

    plots = _plots(args.plots)
    sc = load_scenario(args.scenario, parse_sets(args.set))
    _output(args, sc.name)      # an unwritable output folder fails now, not after the run
    res = simulate(sc)
    if args.json:
        print(summary_json(res), end="")
    elif not args.quiet:
        print(peak_table(res))
    if args.json or args.quiet:
        # stdout stays the JSON alone (or empty): the imbalance warning goes to stderr
        from pipesim.balance import warning_lines

        for line in warning_lines(res.imbalance):
            print(line, file=sys.stderr)
    if args.suggest or res.verdict() != "OK":
        from pipesim import suggest

        advice = suggest.table(res, suggest.suggest(args.scenario, parse_sets(args.set), res))
        print(advice, file=sys.stderr if (args.json or args.quiet) else sys.stdout)
    drawers = {"memory": ("memory.png", memory_png), "peaks": ("peaks.png", peaks_png),
               "schedule": ("schedule.png", schedule_png)}
    writers = {"summary.json": text_writer(summary_json(res)),
               compressed("timeline.csv", args.gzip): text_writer(timeline_csv(res))}
    for name in plots:
        file, draw = drawers[name]
        writers[file] = (lambda d: lambda p: d(res, p))(draw)
    writers[compressed("trace.json", args.gzip)] = text_writer(trace_json(res))
    # with --json or --quiet, stdout carries the summary alone (or nothing): "wrote" goes to stderr
    with contextlib.redirect_stdout(sys.stderr if (args.json or args.quiet) else sys.stdout):
        _write(args, sc.name, writers)
    return 1 if res.verdict() == "OOM" else 0


def _validate(args) -> int:
    from pipesim.model.params import model_params
    from pipesim.placement import split_text
    from schedules.graph import validate

    overrides = parse_sets(args.set)
    bad = 0
    for path in args.scenarios:
        try:
            sc = load_scenario(path, overrides)
            s = sc.build_schedule()
            validate(s)
        except (ScenarioError, schedules.ScheduleError) as exc:
            text = str(exc)
            print(f"error {text if text.startswith(str(Path(path))) else f'{path}: {text}'}")
            bad += 1
            continue
        m, p = sc.model, sc.parallel
        print(f"ok    {path}: {sc.name}, model {m.name} ({_count(model_params(m, mtp=True))} params, "
              f"{m.layers} layers), pp={p.pp} tp={p.tp} ep={p.ep}, {sc.schedule.name}, "
              f"{sc.microbatches} micro-batches, {s.num_stages} stages, layers per stage "
              f"{split_text(sc.layers_per_stage)}")
    return 2 if bad else 0


def _count(n: int) -> str:
    """A parameter count as people say it: 671.0B, 6.1M."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _compare(args) -> int:
    from pipesim import compare
    from pipesim.export import text_writer

    names = None
    if args.schedules is not None:
        names = [n.strip() for n in args.schedules.split(",") if n.strip()]
        unknown = [n for n in names if n not in schedules.names()]
        if unknown or not names:
            raise UsageError(f"--schedules: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                             f"allowed: {', '.join(schedules.names())}")
    if args.microbatches is not None and args.microbatches < 1:
        raise UsageError(f"--microbatches: must be >= 1, got {args.microbatches}")
    _output(args, f"{load_scenario(args.scenario, parse_sets(args.set)).name}-compare")   # before the runs
    cmp = compare.compare(args.scenario, names, args.microbatches, parse_sets(args.set))
    print(compare.table(cmp))
    if not cmp.runs:
        return 2
    return _write(args, f"{cmp.scenario.name}-compare", {"compare.csv": text_writer(compare.csv_text(cmp)),
                                                         "compare.png": lambda p: compare.png(cmp, p)})


def _sweep(args) -> int:
    from pipesim import sweep
    from pipesim.export import text_writer

    overrides = parse_sets(args.set)
    if args.grid or args.global_batch is not None or args.workers is not None or args.dask is not None:
        return _grid(args, overrides)
    if args.key is None or not args.values:
        raise UsageError("sweep: give KEY VALUE... or one or more -k KEY=A,B")
    values = [parse_value(v, f"sweep {args.key} value") for v in args.values]
    first = sweep.scenarios(args.scenario, args.key, values, overrides)[0]    # every value checked
    _output(args, f"{first.name}-sweep-{args.key}")                           # before the runs
    sw = sweep.sweep(args.scenario, args.key, values, overrides)
    print(sweep.table(sw))
    return _write(args, f"{sw.name}-sweep-{args.key}", {"sweep.csv": text_writer(sweep.csv_text(sw)),
                                                        "sweep.png": lambda p: sweep.png(sw, p)})


_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def grid_axes(items: list[str], positional=None, sets=None) -> dict:
    """``-k KEY=A,B`` arguments (and the single-key form's KEY VALUE... beside them) as key ->
    values; a malformed axis is a ``UsageError`` naming it and what is allowed."""
    from pipesim import grid
    from pipesim.sweep import value_text

    axes = {}
    if positional is not None and positional[0] is not None:
        key, values = positional
        axes[key] = [parse_value(v, f"sweep {key} value") for v in values]
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise UsageError(f"-k {item!r}: expected KEY=A,B,..., e.g. -k training.micro_batch_size=1,2,4")
        if not _KEY.fullmatch(key):
            raise UsageError(f"-k {key!r}: not a key path; expected dotted names such as training.microbatches")
        if key in axes:
            raise UsageError(f"-k {key}: given twice; list every value once, e.g. -k {key}=A,B")
        if key in (sets or {}):
            raise UsageError(f"-k {key}: also given by --set; give the key one way")
        values = [parse_value(v, f"-k {key} value") for v in grid.split_values(text)]
        seen = []
        for v in values:
            if v in seen:
                raise UsageError(f"-k {key}: value {value_text(v)} given twice; list every value once")
            seen.append(v)
        axes[key] = values
    return axes


def _grid(args, overrides: dict) -> int:
    """``sweep -k KEY=A,B ...``: the cartesian grid, on processes or dask; sweep.csv, sweep.jsonl."""
    from pipesim import grid
    from pipesim.export import text_writer

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    if args.global_batch is not None and args.global_batch < 1:
        raise UsageError(f"--global-batch: must be >= 1, got {args.global_batch}")
    if args.dask is not None and args.workers is not None:
        raise UsageError("--workers: the dask cluster decides its workers; give --workers or --dask, not both")
    if args.dask is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UsageError("--dask: needs dask.distributed: pip install 'pipesim[dask]'") from None
    base = load_scenario(args.scenario, overrides)          # the file itself must be valid
    axes = grid_axes(args.grid, (args.key, args.values), overrides)
    if not axes:
        raise UsageError("sweep: give KEY VALUE... or one or more -k KEY=A,B")
    if args.global_batch is not None and "training.microbatches" in {**overrides, **axes}:
        raise UsageError("--global-batch: sets training.microbatches for every point; do not also "
                         "give training.microbatches with -k or --set")
    grid.check_axes(args.scenario, axes, overrides, args.global_batch)    # every value, before any run
    default = f"{base.name}-sweep"
    _output(args, default)                                   # before the runs
    pts = grid.points(axes)
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(pts), unit="pt", file=sys.stderr, desc="sweep")
    client = _dask_client(args.dask)
    try:
        rows = grid.run(args.scenario, pts, overrides, args.global_batch, args.workers, client,
                        progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    with contextlib.redirect_stdout(sys.stderr if args.quiet else sys.stdout):
        if not args.quiet:
            print(grid.table(base.name, axes, rows))
        if not any(r["status"] == "ok" for r in rows):
            print("error: no point of the grid can run (reasons above)", file=sys.stderr)
            return 2
        return _write(args, default, {"sweep.csv": text_writer(grid.csv_text(rows, list(axes))),
                                      "sweep.jsonl": text_writer(grid.jsonl_text(rows))})


def _dask_client(address):
    """A ``distributed.Client`` connected to ``address`` (None: none), or ``UsageError``."""
    if address is None:
        return None
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"--dask {address}: cannot connect to a dask scheduler there: {exc}") from None


def _search(args) -> int:
    """``search SCENARIO --vary ...``: what fits, the frontier; search.csv, search.jsonl, frontier.png."""
    from pipesim import grid, search
    from pipesim.export import text_writer
    from pipesim.memory import GIB

    knobs = [k.strip() for k in args.vary.split(",") if k.strip()]
    bad = [k for k in knobs if k not in search.KNOBS]
    if bad or not knobs or len(set(knobs)) != len(knobs):
        raise UsageError(f"--vary: {', '.join(map(repr, bad)) or 'empty or repeated'}; allowed: a comma "
                         f"list of {', '.join(search.KNOBS)}")
    if args.memory_limit is not None and not 0 < args.memory_limit < 2 ** 20:
        raise UsageError(f"--memory-limit: GiB in (0, {2 ** 20}), got {args.memory_limit}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    sets = parse_sets(args.set)
    sc = load_scenario(args.scenario, sets)
    default = f"{sc.name}-search"
    _output(args, default)                                   # before the runs
    limit = None if args.memory_limit is None else int(args.memory_limit * GIB)
    rows, fitting, front, limit = search.search(args.scenario, knobs, sets, limit, args.workers)
    print(search.table(sc.name, rows, fitting, front, limit))
    keys = ["point"]
    return _write(args, default, {"search.csv": text_writer(grid.csv_text(rows, keys)),
                                  "search.jsonl": text_writer(grid.jsonl_text(rows)),
                                  "frontier.png": lambda p: search.png(sc.name, rows, front, limit, p)})


def _sensitivity(args) -> int:
    """``sensitivity SCENARIO``: each knob one step down and up; sensitivity.csv, sensitivity.png."""
    from pipesim import sensitivity
    from pipesim.export import text_writer

    sets = parse_sets(args.set)
    sc = load_scenario(args.scenario, sets)
    default = f"{sc.name}-sensitivity"
    _output(args, default)                                   # before the runs
    base, moves = sensitivity.sensitivity(args.scenario, sets)
    print(sensitivity.table(sc.name, base, moves))
    return _write(args, default, {"sensitivity.csv": text_writer(sensitivity.csv_text(base, moves)),
                                  "sensitivity.png": lambda p: sensitivity.png(sc.name, base, moves, p)})


def _model(args) -> int:
    from pipesim.model import ModelError, ParallelConfig, TrainingConfig
    from pipesim.model.hf_config import read_hf_config
    from pipesim.model.report import format_tables, tables, tensor_tables

    if (args.scenario is None) == (args.hf is None):
        raise UsageError("model: give a scenario file or --hf CONFIG.json (one of them)")
    if args.hf is not None:
        # a model alone: one device, one stage, the default recipe
        try:
            m = read_hf_config(args.hf)
            m.validate()
        except ModelError as exc:
            raise UsageError(str(exc)) from None
        model, parallel, training, layers, placement = m, ParallelConfig(), TrainingConfig(), (m.layers,), None
    else:
        sc = load_scenario(args.scenario, parse_sets(args.set))
        model, parallel, training = sc.model, sc.parallel, sc.training
        layers, placement = sc.layers_per_stage, sc.placement
    if args.tensors:
        t = tensor_tables(model, parallel, training)
    else:
        t = tables(model, parallel, training, layers, placement)
    print(json.dumps(t, indent=2, sort_keys=True) if args.json else format_tables(t))
    return 0


def _schedule(args) -> int:
    from pipesim.schedule_grid import render

    print(render(schedules.build(args.name, args.pp, args.microbatches, args.chunks)))
    return 0


def _score(args) -> int:
    """``score SCENARIO MEASURED...``: the prediction beside a real run's memory (``pipesim.score``)."""
    import contextlib

    from pipesim.api import simulate
    from pipesim.export import text_writer
    from pipesim.score import read, report, score

    if args.max_error is not None and not args.max_error >= 0:
        raise UsageError(f"--max-error: must be a percentage >= 0, got {args.max_error}")
    sc = load_scenario(args.scenario, parse_sets(args.set))
    measured = [read(path) for path in args.measured]
    cats = tuple(c.strip() for c in args.category.split(",") if c.strip()) if args.category else None
    s = score(simulate(sc), measured, cats)
    if args.json:
        print(report.json_text(s), end="")
    else:
        print(report.table(s))
    # with --json, stdout is the JSON alone: "wrote ..." goes to stderr
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        _write(args, f"{sc.name}-score", {"score.json": text_writer(report.json_text(s)),
                                          "score.png": lambda p: report.png(s, p)})
    worst = s.worst_error_pct()
    if args.max_error is not None and worst is not None and worst > args.max_error:
        print(f"FAIL: largest |error| {worst:.1f}% exceeds --max-error {args.max_error:g}%",
              file=sys.stderr if args.json else sys.stdout)
        return 1
    return 0


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario value, e.g. --set training.microbatches=16 (repeatable)")


def parser() -> argparse.ArgumentParser:
    from pipesim import __version__

    p = argparse.ArgumentParser(
        prog="pipesim", description=__doc__.split("\n")[0],
        epilog="exit status: 0 the scenario fits (verdict OK or TIGHT) or the command succeeded; "
               "1 some rank does not fit (OOM; run) or a score exceeds --max-error (score); "
               "2 bad input; 130 / 143 interrupted (Ctrl-C / SIGTERM)")
    p.add_argument("--version", action="version", version=f"pipesim {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate a scenario: per-rank peak table + summary.json, timeline.csv, "
                                   "memory.png, peaks.png, schedule.png, trace.json")
    r.add_argument("scenario", help="scenario TOML file")
    r.add_argument("-o", "--output", help="output folder (default results/<scenario name>)")
    r.add_argument("--json", action="store_true", help="print summary.json to stdout instead of the table")
    r.add_argument("--quiet", action="store_true", help="print nothing to stdout (the exit status is the verdict)")
    r.add_argument("--plots", default="all", metavar="WHICH",
                   help="pictures to draw: all (default), none, or a comma list of memory, peaks, schedule")
    r.add_argument("--gzip", action="store_true",
                   help="write timeline.csv.gz and trace.json.gz instead of the plain files (at V3 1F1B "
                        "pp16 x 1024, timeline.csv is 48 MiB plain and under 8 MiB compressed)")
    r.add_argument("--suggest", action="store_true",
                   help="list simulated one- and two-knob changes that gain headroom (printed anyway "
                        "when the verdict is OOM or TIGHT)")
    _add_set(r)
    r.set_defaults(func=_run)
    v = sub.add_parser("validate", help="check scenario files and their schedules without simulating; writes nothing")
    v.add_argument("scenarios", nargs="+", metavar="scenario")
    _add_set(v)
    v.set_defaults(func=_validate)
    c = sub.add_parser("compare", help="run a scenario under every schedule family: compare.csv, compare.png")
    c.add_argument("scenario")
    c.add_argument("--schedules", help=f"comma-separated families (default all: {','.join(schedules.names())})")
    c.add_argument("--microbatches", type=int, help="micro-batches per step (default the scenario's)")
    c.add_argument("-o", "--output", help="output folder (default results/<scenario name>-compare)")
    _add_set(c)
    c.set_defaults(func=_compare)
    w = sub.add_parser("sweep", help="run a scenario once per value of one key (sweep.csv, sweep.png), or over "
                                     "a grid of keys with -k (sweep.csv, sweep.jsonl)")
    w.add_argument("scenario")
    w.add_argument("key", nargs="?", help="dotted scenario key, e.g. training.microbatches")
    w.add_argument("values", nargs="*", metavar="value", help="TOML values, e.g. 4 8 16 or gpipe 1f1b")
    w.add_argument("-k", dest="grid", action="append", default=[], metavar="KEY=A,B",
                   help="one axis of a cartesian grid, e.g. -k schedule.name=1f1b,zb-v (repeatable)")
    w.add_argument("--global-batch", type=int, metavar="N",
                   help="keep micro_batch_size x microbatches x dp = N (microbatches follows)")
    w.add_argument("--workers", type=int, metavar="N", help="local processes (default all cores)")
    w.add_argument("--dask", metavar="ADDRESS", help="run on the dask.distributed scheduler at ADDRESS "
                   "(pip install 'pipesim[dask]')")
    w.add_argument("--quiet", action="store_true", help="no table and no progress bar")
    w.add_argument("-o", "--output", help="output folder (default results/<scenario name>-sweep-<key>; "
                                          "with -k results/<scenario name>-sweep)")
    _add_set(w)
    w.set_defaults(func=_sweep)
    q = sub.add_parser("search", help="which configurations fit, the (step time, peak) frontier: "
                                      "search.csv, search.jsonl, frontier.png")
    q.add_argument("scenario")
    q.add_argument("--vary", default="schedule,pp,recompute,micro_batch_size,layers_per_stage,zero",
                   metavar="KNOBS", help="comma list of knobs, each over its default range (default all)")
    q.add_argument("--memory-limit", type=float, metavar="GiB",
                   help="worst-rank peak allowed (default the device's usable memory)")
    q.add_argument("--workers", type=int, metavar="N", help="local processes (default all cores)")
    q.add_argument("-o", "--output", help="output folder (default results/<scenario name>-search)")
    _add_set(q)
    q.set_defaults(func=_search)
    y = sub.add_parser("sensitivity", help="each knob one step down and up: every rank's peak and the step "
                                           "time, sensitivity.csv, sensitivity.png (tornado chart)")
    y.add_argument("scenario")
    y.add_argument("-o", "--output", help="output folder (default results/<scenario name>-sensitivity)")
    _add_set(y)
    y.set_defaults(func=_sensitivity)
    m = sub.add_parser("model", help="print the paper-style parameter / state / activation tables")
    m.add_argument("scenario", nargs="?", help="scenario TOML file (or give --hf)")
    m.add_argument("--hf", metavar="CONFIG.json",
                   help="a Hugging Face config.json instead of a scenario: one device, one stage, the default recipe")
    m.add_argument("--json", action="store_true", help="print JSON instead of tables")
    m.add_argument("--tensors", action="store_true",
                   help="list every activation tensor of each layer kind: shape, dtype, bytes, "
                        "stored / recomputed / absent under the scenario's recipe, and why")
    _add_set(m)
    m.set_defaults(func=_model)
    s = sub.add_parser("schedule", help="print a schedule's per-rank ops as a time-aligned grid")
    s.add_argument("name", help=f"one of: {', '.join(schedules.names())}")
    s.add_argument("--pp", type=int, required=True, help="pipeline ranks")
    s.add_argument("--microbatches", type=int, required=True)
    s.add_argument("--chunks", type=int, default=None, help="chunks per rank (interleaved)")
    s.set_defaults(func=_schedule)
    k = sub.add_parser("score", help="compare a scenario's prediction with a real run's memory: score.json, score.png")
    k.add_argument("scenario")
    k.add_argument("measured", nargs="+", help="torch memory snapshot pickles, torch.profiler memory timeline "
                   "JSON, Megatron-LM logs or time_s,rank,bytes CSV (format read from the content; rank from "
                   "the content, a rankN in the file name, or the argument position)")
    k.add_argument("--max-error", type=float, metavar="PCT", help="exit 1 if any rank's |peak error| exceeds PCT percent")
    k.add_argument("--json", action="store_true", help="print score.json instead of the table")
    k.add_argument("--category", metavar="CATS",
                   help="compare only these predicted categories (comma list, e.g. activations,logits) "
                        "with a measurement of that memory alone")
    k.add_argument("-o", "--output", help="output folder (default results/<scenario name>-score)")
    _add_set(k)
    k.set_defaults(func=_score)
    return p


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that cleanup runs."""


_signalled: list[int] = []     # the signal that interrupted this command, if one did


def _on_signal(signum, frame):
    # a second signal must not interrupt the cleanup of the first: ignore the rest
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signalled.append(signum)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


def _trap_signals() -> dict | None:
    """Route SIGINT and SIGTERM to ``_on_signal``; the handlers it replaced (None off the main thread)."""
    _signalled.clear()
    try:
        return {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        return None


def console() -> None:
    """The ``pipesim`` console script."""
    sys.exit(main())


def main(argv=None) -> int:
    """Run one command; exit status 0, 1 (run: some rank OOM; score: over --max-error), 2 (bad
    input), 130 / 143 (interrupted by Ctrl-C / SIGTERM: one line, no partial outputs left)."""
    args = parser().parse_args(argv)
    previous = _trap_signals()
    try:
        status = _dispatch(args)
    except BaseException:
        # a library may turn the signal's exception into its own (a C extension's import turns
        # it into "ImportError: initialization failed"): the signal decides what is reported
        if not _signalled and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            raise
        status = None
    finally:
        for s, handler in (previous or {}).items():
            signal.signal(s, handler)
    if status is not None and not _signalled:
        return status
    print("interrupted", file=sys.stderr)
    return 128 + (_signalled[0] if _signalled else signal.SIGINT)


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except (ScenarioError, schedules.ScheduleError, UsageError, ScoreError, OutputError) as exc:
        for line in str(exc).splitlines():     # a sweep reports every invalid value, one line each
            print(f"error: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``... | head``): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
