"""Grid sweeps: the cartesian product of several scenario keys, each point simulated, on local
processes or a dask cluster, with the same rows whatever runs them.

    python -m pipesim sweep scenarios/v3_pp16.toml -k training.micro_batch_size=1,2 -k schedule.name=1f1b,zb-v

Each point is a set of overrides applied to the scenario file, so it is checked exactly as the
same values written in the file. A point is completed as ``pipesim compare`` completes a family:

- ``schedule.chunks`` stays with the scenario's own family; another family takes its default;
- a schedule whose stage count differs from the scenario's explicit ``layers_per_stage`` gets
  the automatic split (``placement.layers_per_stage = "auto"``, ``placement.auto_split``) unless
  the point sets the split itself; the row says ``auto_split``;
- with a global batch G, ``training.microbatches = G / (micro_batch_size · dp)``, so the samples
  per step stay fixed (invalid when that is not an integer).

A point the scenario cannot run (a schedule's micro-batch constraint, too few layers for the
stages) becomes a row with ``status = "invalid"`` and the reason; it never stops the sweep. A
value that is wrong in itself (an unknown key, a wrong type, a number out of range) is refused
before anything runs (``check_axes``).

What points share is computed once: the file is parsed once and travels with the points (a dask
worker needs no copy of it, and never a stale one), and a worker keeps the SimPy runs it has
made: the spans of a step depend only on the schedule and the op times (``simulator.run``), so
points that differ in memory alone (ZeRO, device size, dtypes, overheads) share one run. Rows
are plain dicts in grid order, so 1 worker, N workers and a dask cluster give equal rows.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import threading
from collections import OrderedDict
from pathlib import Path

import schedules
from pipesim.scenario import ScenarioError, _build, apply_overrides, read_toml

#: points sent to a worker at once: large enough that pickling and scheduling cost little
#: beside a few ms of simulation per point, small enough that the progress bar moves
CHUNK = 25
#: the most points of one grid: each is milliseconds and a row, so a million is an hour on one
#: core; a larger product is almost surely a typo
MAX_POINTS = 1_000_000
#: SimPy runs a worker keeps (least recently used dropped); steps above RUN_CACHE_ATOMS atoms
#: are not kept: they are rare in a grid and large in memory
RUN_CACHE, RUN_CACHE_ATOMS = 64, 200_000


def split_values(text: str) -> list[str]:
    """``a,b,[4, 4],c`` → ``["a", "b", "[4, 4]", "c"]``: commas inside brackets or quotes stay."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def points(axes: dict[str, list]) -> list[dict]:
    """The cartesian grid of ``axes`` (key → values), the first key varying slowest."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def size(axes: dict[str, list]) -> int:
    return math.prod(len(v) for v in axes.values())


class _Base:
    """The parsed file, the ``--set`` overrides and what the completion rules read of the
    scenario they give; built once per chunk of points."""

    def __init__(self, path: str, raw: dict, sets: dict):
        self.path, self.raw, self.sets = path, raw, dict(sets)
        sc = _build(apply_overrides(raw, self.sets), Path(path))
        self.schedule, self.explicit = sc.schedule.name, sc.placement.layers_per_stage != "auto"
        self.stages, self.mbs, self.dp = len(sc.layers_per_stage), sc.training.micro_batch_size, sc.parallel.dp
        self.pp, self.microbatches, self.chunks = sc.parallel.pp, sc.microbatches, sc.schedule.chunks


def point_overrides(base: _Base, point: dict, global_batch: int | None) -> tuple[dict, bool]:
    """``(overrides, auto_split)`` that run ``point`` on ``base`` (the module docstring's rules).

    Raises ``ScenarioError`` when the global batch does not divide; a value of the wrong type is
    passed through for validation to refuse."""
    ov = {**base.sets, **point}
    name = ov.get("schedule.name", base.schedule)
    if "schedule.chunks" not in point and name != base.schedule:
        ov["schedule.chunks"] = None
    if global_batch is not None:
        mbs, dp = ov.get("training.micro_batch_size", base.mbs), ov.get("parallel.dp", base.dp)
        if _count(mbs) and _count(dp):
            if global_batch % (mbs * dp):
                raise ScenarioError(f"--global-batch {global_batch}: not divisible by micro_batch_size {mbs} "
                                    f"x dp {dp} = {mbs * dp}")
            ov["training.microbatches"] = global_batch // (mbs * dp)
    if not base.explicit or "placement.layers_per_stage" in point:
        return ov, False
    try:
        stages, _ = schedules.size(name, ov.get("parallel.pp", base.pp),
                                   ov.get("training.microbatches", base.microbatches),
                                   ov.get("schedule.chunks", base.chunks))
    except (schedules.ScheduleError, TypeError):
        return ov, False                   # validation says what is wrong
    if stages == base.stages:
        return ov, False
    return {**ov, "placement.layers_per_stage": "auto"}, True


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _scenario(base: _Base, point: dict, global_batch: int | None):
    """``(scenario, overrides, auto_split)`` of ``point``, or ``ScenarioError`` without the path."""
    ov, auto = point_overrides(base, point, global_batch)
    return _build(apply_overrides(base.raw, ov), Path(base.path)), ov, auto


def _blames(message: str, key: str) -> bool:
    """Whether a scenario message is about ``key`` itself: it starts with the key, a table above
    it (``bogus: unknown section``) or a part of it (``placement.layers_per_stage[2]``)."""
    lead = message.split(": ", 1)[0]
    return lead == key or key.startswith(lead + ".") or lead.startswith((key + "[", key + "."))


def _load_error(base: _Base, point: dict, global_batch) -> str | None:
    try:
        _scenario(base, point, global_batch)
    except ScenarioError as exc:
        return str(exc)
    return None


def check_axes(path, axes: dict[str, list], sets: dict | None = None, global_batch: int | None = None) -> None:
    """``ScenarioError`` with one line per problem of values that are wrong in themselves,
    before anything runs.

    A value is wrong in itself when the scenario with it alone is refused at its own key, and no
    one value of another axis lifts that: none gives a scenario that loads, or one refused for
    another reason by a value that is not wrong alone itself. So an unknown key, a wrong type, a
    number out of range or a schedule constraint no other value lifts is refused; a value refused
    only in some combinations is left to its points, which report it as their reason.
    """
    path = str(path)
    if size(axes) > MAX_POINTS:
        raise ScenarioError(f"-k: {' x '.join(str(len(v)) for v in axes.values())} = {size(axes):,} points, "
                            f"more than a grid may have ({MAX_POINTS:,}, pipesim.grid.MAX_POINTS)")
    base = _Base(path, read_toml(path), sets or {})
    alone = {}                               # (key, index) -> the message blaming key, for candidates
    for key, values in axes.items():
        for i, v in enumerate(values):
            err = _load_error(base, {key: v}, global_batch)
            if err is not None and _blames(err, key):
                alone[key, i] = err

    def lifts(key, v, other, j) -> bool:
        err = _load_error(base, {key: v, other: axes[other][j]}, global_batch)
        return err is None or (not _blames(err, key) and (other, j) not in alone)

    faults: dict = {}                        # (key, message) -> the values that give it
    for (key, i), err in alone.items():
        v = axes[key][i]
        if not any(lifts(key, v, other, j) for other in axes if other != key for j in range(len(axes[other]))):
            faults.setdefault((key, err), []).append(v)
    if faults:
        raise ScenarioError("\n".join(f"{Path(path)}: {msg} (-k {key}={','.join(map(_text, vals))})"
                                      for (key, msg), vals in faults.items()))


def _text(value) -> str:
    from pipesim.sweep import value_text
    return value_text(value)


# ----------------------------------------------------------------------------- evaluation

_runs: OrderedDict = OrderedDict()       # (schedule name, pp, microbatches, chunks, Timing) -> Spans
_runs_lock = threading.Lock()


def _spans(sc, wl):
    """``simulator.run(wl.schedule, wl.timing)``, kept for the next point with the same inputs."""
    from pipesim.simulator import run

    key = (sc.schedule.name, sc.parallel.pp, sc.microbatches, sc.schedule.chunks, wl.timing)
    with _runs_lock:                     # a dask worker may run points on several threads
        spans = _runs.get(key)
        if spans is not None:
            _runs.move_to_end(key)
            return spans
    spans = run(wl.schedule, wl.timing)
    if len(spans.start) <= RUN_CACHE_ATOMS:
        with _runs_lock:
            _runs[key] = spans
            while len(_runs) > RUN_CACHE:
                _runs.popitem(last=False)
    return spans


def simulate(sc):
    """``pipesim.simulate(sc)`` with the SimPy run shared between points (``_spans``)."""
    from pipesim.memory import p2p_buffers
    from pipesim.results import Result
    from pipesim.workload import build_workload

    wl = build_workload(sc)
    spans = _spans(sc, wl)
    return Result(sc, wl, spans, p2p_buffers(spans, wl.boundary_bytes))


def _row(point: dict, base: _Base, global_batch) -> dict:
    """One row: the point's keys, then its results (or ``status = "invalid"`` and the reason)."""
    row = dict(point)
    try:
        sc, ov, auto = _scenario(base, point, global_batch)
        res = simulate(sc)
    except (ScenarioError, schedules.ScheduleError) as exc:
        return {**row, "status": "invalid", "reason": str(exc)}
    peaks = [p.bytes for p in res.peaks]
    worst = res.peak_rank
    bubbles = [res.bubble_fraction(r) for r in range(res.ranks)]
    return {**row, "status": "ok", "reason": "",
            "schedule": sc.schedule.name, "pp": sc.parallel.pp, "microbatches": sc.microbatches,
            "micro_batch_size": sc.training.micro_batch_size, "stages": res.workload.schedule.num_stages,
            "layers_per_stage": list(sc.layers_per_stage), "auto_split": auto,
            "verdict": res.verdict(), "peak_rank": worst, "max_peak_bytes": peaks[worst],
            "peak_activations_bytes": res.peaks[worst].breakdown["activations"],
            "capacity_bytes": res.capacity_bytes, "headroom_bytes": res.capacity_bytes - peaks[worst],
            "step_ms": res.makespan * 1e3, "mean_bubble": sum(bubbles) / res.ranks,    # report.mean_bubble
            "peaks_bytes": peaks, "verdicts": [res.verdict(r) for r in range(res.ranks)], "bubbles": bubbles}


def evaluate(path: str, point: dict, base: dict | None = None, global_batch: int | None = None) -> dict:
    """The row of one point (``base``: the ``--set`` overrides)."""
    return _chunk(str(path), read_toml(path), base or {}, global_batch, [point])[0]


def _chunk(path: str, raw: dict, sets: dict, global_batch, chunk: list[dict]) -> list[dict]:
    base = _Base(path, raw, sets)
    return [_row(pt, base, global_batch) for pt in chunk]


def cores() -> int:
    """The cores this process may run on (the default number of workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _quiet_worker() -> None:
    """A pool worker leaves Ctrl-C to the parent, which cancels the rest and reports once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(path, pts: list[dict], base: dict | None = None, global_batch: int | None = None,
        workers: int | None = None, dask=None, progress=None) -> list[dict]:
    """Every point's row, in grid order, on ``workers`` local processes (default all cores; 1 =
    this process) or on the dask scheduler at ``dask`` (an address, or a ``distributed.Client``).
    ``progress(n)`` is called as each chunk of n points finishes."""
    path = str(path)
    raw = read_toml(path)
    sets = dict(base or {})
    chunks = [pts[i:i + CHUNK] for i in range(0, len(pts), CHUNK)]
    tick = progress or (lambda n: None)
    args = (path, raw, sets, global_batch)
    if dask is not None:
        return _run_dask(args, chunks, dask, tick)
    workers = workers or cores()
    out: list = [None] * len(chunks)
    if workers == 1 or len(chunks) <= 1:
        for i, c in enumerate(chunks):
            out[i] = _chunk(*args, c)
            tick(len(c))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ex = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), initializer=_quiet_worker)
        try:
            futs = {ex.submit(_chunk, *args, c): i for i, c in enumerate(chunks)}
            for f in as_completed(futs):
                out[futs[f]] = f.result()
                tick(len(chunks[futs[f]]))
        finally:
            ex.shutdown(wait=True, cancel_futures=True)    # on Ctrl-C: the running chunks end, no more start
    return [row for c in out for row in c]


def _run_dask(args, chunks, address, tick) -> list[dict]:
    """The chunks on a ``dask.distributed`` cluster; results put back into grid order."""
    from distributed import Client, as_completed

    client = address if isinstance(address, Client) else Client(address, timeout="10s")
    try:
        futs = [client.submit(_chunk, *args, c, pure=False) for c in chunks]
        index = {f.key: i for i, f in enumerate(futs)}
        out: list = [None] * len(chunks)
        for f in as_completed(futs):
            out[index[f.key]] = f.result()
            tick(len(chunks[index[f.key]]))
    finally:
        if client is not address:
            client.close()
    return [row for c in out for row in c]


# ----------------------------------------------------------------------------- outputs

_FIELDS = ("status", "reason", "schedule", "pp", "microbatches", "micro_batch_size", "stages", "layers_per_stage",
           "auto_split", "verdict", "peak_rank", "max_peak_bytes", "peak_activations_bytes", "capacity_bytes",
           "headroom_bytes", "step_ms", "mean_bubble")


def columns(rows: list[dict], keys: list[str]) -> list[str]:
    """The CSV header: the swept keys, every result field, then each rank's peak and bubble."""
    ranks = max((len(r.get("peaks_bytes", ())) for r in rows), default=0)
    return [*keys, *[f for f in _FIELDS if f not in keys], *[f"peak_bytes_rank{i}" for i in range(ranks)],
            *[f"bubble_rank{i}" for i in range(ranks)]]


def _cell(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v)


def csv_text(rows: list[dict], keys: list[str]) -> str:
    """``sweep.csv``: one row a point (numbers exact); lists in JSON form, an invalid point's
    results empty."""
    import csv
    import io

    head = columns(rows, keys)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        flat = {**r, **{f"peak_bytes_rank{i}": b for i, b in enumerate(r.get("peaks_bytes", ()))},
                **{f"bubble_rank{i}": b for i, b in enumerate(r.get("bubbles", ()))}}
        w.writerow(["" if flat.get(h) is None else _cell(flat[h]) for h in head])
    return buf.getvalue()


def jsonl_text(rows: list[dict]) -> str:
    """``sweep.jsonl``: one JSON object a point, every input key and every result."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def table(name: str, axes: dict, rows: list[dict], limit: int = 40) -> str:
    """The grid as text: a line of counts, the valid points (fitting first, fastest first, up to
    ``limit``), then the invalid ones with their reason."""
    from pipesim.memory import GIB
    from pipesim.report import aligned

    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    fits = [r for r in ok if r["verdict"] != "OOM"]
    keys = list(axes)
    lines = [f"{name}: grid of {' x '.join(f'{k} ({len(v)})' for k, v in axes.items())} = "
             f"{len(rows)} points: {len(fits)} fit, {len(ok) - len(fits)} OOM, {len(bad)} invalid"]
    shown = sorted(ok, key=lambda r: (r["verdict"] == "OOM", r["step_ms"]))[:limit]
    if shown:
        head = [*keys, "max peak GiB", "peak rank", "verdict", "headroom GiB", "step ms", "bubble"]
        lines += aligned(head, [[*(_text(r[k]) for k in keys), f"{r['max_peak_bytes'] / GIB:.3f}",
                                 str(r["peak_rank"]), r["verdict"], f"{r['headroom_bytes'] / GIB:+.3f}",
                                 f"{r['step_ms']:.2f}", f"{r['mean_bubble']:.1%}"] for r in shown], left=len(keys))
        if len(ok) > limit:
            lines.append(f"({len(ok) - limit} more valid points in sweep.csv; fitting points first, fastest first)")
    for r in bad[:limit]:
        lines.append("invalid " + ", ".join(f"{k}={_text(r[k])}" for k in keys) + f": {r['reason']}")
    if len(bad) > limit:
        lines.append(f"({len(bad) - limit} more invalid points in sweep.csv)")
    return "\n".join(lines)
