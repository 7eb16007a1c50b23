"""Grid sweeps: the cartesian product of several scenario keys, each point simulated, on local
processes or a dask cluster, with the same rows whatever runs them.

    python -m pipesim sweep scenarios/v3_pp16.toml -k training.micro_batch_size=1,2 -k schedule.name=1f1b,zb-v

Each point is a set of overrides applied to the scenario file (``load_scenario``), so it is
checked exactly as the same values written in the file. A point that the scenario cannot run
(a bad value, a schedule's micro-batch constraint) becomes a row with ``status = "invalid"`` and
the reason; it never stops the sweep. ``global_batch`` keeps micro-batch size × micro-batches ×
dp fixed: ``microbatches = global_batch / (micro_batch_size · dp)``, invalid when not an integer.
A schedule whose stage count differs from the file's explicit ``layers_per_stage`` gets the
automatic split (``placement.layers_per_stage = "auto"``), as ``pipesim compare`` does.

What points share is read once per process: the parsed TOML (``_raw``). Rows are plain dicts in
grid order (``executor.map`` and ``client.gather`` keep the order), so 1 worker, N workers and a
dask cluster give equal rows.
"""
from __future__ import annotations

import itertools
import json
import os
from functools import lru_cache
from pathlib import Path

from pipesim.scenario import ScenarioError, _build, apply_overrides, read_toml

#: points sent to a worker at once: large enough that pickling and scheduling cost little
#: beside ~10 ms of simulation per point, small enough that the progress bar moves
CHUNK = 25


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


@lru_cache(maxsize=8)
def _raw(path: str) -> dict:
    """The scenario file parsed once per process (every point of a grid shares it)."""
    return read_toml(path)


def _lookup(raw: dict, dotted: str):
    table = raw
    for part in dotted.split("."):
        if not isinstance(table, dict) or part not in table:
            return None
        table = table[part]
    return table


def point_overrides(path: str, point: dict, base: dict, global_batch: int | None) -> dict:
    """The overrides that run ``point``: the base ``--set`` ones, the point's, the micro-batches
    that keep ``global_batch`` and the automatic split when the stage count changes.

    Raises ``ScenarioError`` (the reason the point is invalid)."""
    ov = {**base, **point}
    if global_batch is not None:
        merged = apply_overrides(_raw(path), ov)
        mbs = _lookup(merged, "training.micro_batch_size") or 1
        dp = _lookup(merged, "parallel.dp") or 1
        if not all(isinstance(v, int) and v >= 1 for v in (mbs, dp)):
            raise ScenarioError(f"--global-batch: needs integer micro_batch_size and dp, got {mbs!r}, {dp!r}")
        if global_batch % (mbs * dp):
            raise ScenarioError(f"--global-batch {global_batch}: not divisible by micro_batch_size {mbs} "
                                f"x dp {dp}")
        ov["training.microbatches"] = global_batch // (mbs * dp)
    return ov


def scenario_of(path: str, ov: dict, point_keys=()):
    """``(scenario, auto_split)`` for overrides ``ov``; the layer split goes automatic when the
    explicit ``layers_per_stage`` (the file's or a ``--set``) does not fit the schedule's stage
    count and the point (``point_keys``) does not set it itself."""
    p = Path(path)
    raw = _raw(path)
    try:
        return _build(apply_overrides(raw, ov), p), False
    except ScenarioError as exc:
        if "placement.layers_per_stage" in point_keys or "stages, the list has" not in str(exc):
            raise ScenarioError(f"{p}: {exc}") from None
    try:
        return _build(apply_overrides(raw, {**ov, "placement.layers_per_stage": "auto"}), p), True
    except ScenarioError as exc:
        raise ScenarioError(f"{p}: {exc}") from None


def evaluate(path: str, point: dict, base: dict | None = None, global_batch: int | None = None) -> dict:
    """One row: the point's keys, then its results (or ``status = "invalid"`` and the reason)."""
    from pipesim.api import simulate
    from pipesim.report import mean_bubble

    import schedules

    row = {k: v for k, v in point.items()}
    try:
        ov = point_overrides(path, point, base or {}, global_batch)
        sc, auto = scenario_of(path, ov, tuple(point))
        res = simulate(sc)
    except (ScenarioError, schedules.ScheduleError) as exc:
        reason = str(exc).removeprefix(f"{Path(path)}: ")
        return {**row, "status": "invalid", "reason": reason}
    peaks = [p.bytes for p in res.peaks]
    worst = res.peak_rank
    return {**row, "status": "ok", "reason": "",
            "schedule": sc.schedule.name, "pp": sc.parallel.pp, "microbatches": sc.microbatches,
            "micro_batch_size": sc.training.micro_batch_size,
            "layers_per_stage": list(sc.layers_per_stage), "auto_split": auto,
            "verdict": res.verdict(), "peak_rank": worst, "max_peak_bytes": peaks[worst],
            "capacity_bytes": res.capacity_bytes, "headroom_bytes": res.capacity_bytes - peaks[worst],
            "step_ms": res.makespan * 1e3, "mean_bubble": mean_bubble(res),
            "peaks_bytes": peaks, "verdicts": [res.verdict(r) for r in range(res.ranks)]}


def _chunk(path, chunk, base, global_batch):
    return [evaluate(path, pt, base, global_batch) for pt in chunk]


def _chunks(pts, size=CHUNK):
    return [pts[i:i + size] for i in range(0, len(pts), size)]


def run(path, pts: list[dict], base: dict | None = None, global_batch: int | None = None,
        workers: int | None = None, dask: str | None = None, progress=None) -> list[dict]:
    """Every point's row, in grid order, on ``workers`` local processes (default all cores; 1 =
    this process) or on the dask scheduler at ``dask`` (an address, or a ``distributed.Client``).
    ``progress(n)`` is called as each chunk of n points finishes."""
    path = str(path)
    base = dict(base or {})
    chunks = _chunks(pts)
    tick = progress or (lambda n: None)
    out: list[list[dict] | None] = [None] * len(chunks)
    if dask is not None:
        return _run_dask(path, chunks, base, global_batch, dask, tick)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(chunks) == 1:
        for i, c in enumerate(chunks):
            out[i] = _chunk(path, c, base, global_batch)
            tick(len(c))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = {ex.submit(_chunk, path, c, base, global_batch): i for i, c in enumerate(chunks)}
            for f in as_completed(futs):
                out[futs[f]] = f.result()
                tick(len(chunks[futs[f]]))
    return [row for c in out for row in c]


def _run_dask(path, chunks, base, global_batch, address, tick) -> list[dict]:
    """The chunks on a ``dask.distributed`` cluster; results gathered back into grid order."""
    from distributed import Client, as_completed

    client = address if isinstance(address, Client) else Client(address)
    try:
        futs = client.map(_chunk, [path] * len(chunks), chunks, [base] * len(chunks),
                          [global_batch] * len(chunks), pure=False)
        index = {f.key: i for i, f in enumerate(futs)}
        out = [None] * len(chunks)
        for f in as_completed(futs):
            out[index[f.key]] = f.result()
            tick(len(chunks[index[f.key]]))
    finally:
        if client is not address:
            client.close()
    return [row for c in out for row in c]


def columns(rows: list[dict], keys: list[str]) -> list[str]:
    """The CSV header: the swept keys, then every result field, in a fixed order."""
    fields = ["status", "reason", "schedule", "pp", "microbatches", "micro_batch_size", "layers_per_stage",
              "auto_split", "verdict", "peak_rank", "max_peak_bytes", "capacity_bytes", "headroom_bytes",
              "step_ms", "mean_bubble"]
    ranks = max((len(r.get("peaks_bytes", ())) for r in rows), default=0)
    return [*keys, *[f for f in fields if f not in keys], *[f"peak_bytes_rank{i}" for i in range(ranks)]]


def _cell(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v)


def csv_text(rows: list[dict], keys: list[str]) -> str:
    """``sweep.csv``: one row a point; lists in JSON form, an invalid point's results empty."""
    import csv
    import io

    head = columns(rows, keys)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        flat = {**r, **{f"peak_bytes_rank{i}": b for i, b in enumerate(r.get("peaks_bytes", ()))}}
        w.writerow(["" if flat.get(h) is None else _cell(flat[h]) for h in head])
    return buf.getvalue()


def jsonl_text(rows: list[dict]) -> str:
    """``sweep.jsonl``: one JSON object a point, every input key and every result."""
    return "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
