"""Machine-readable outputs, written atomically: ``summary.json``, ``timeline.csv``, ``trace.json``.

Every file of a run is first written into a temporary folder beside the destination; only when
all of them exist are they moved into place (``os.replace``), so a failed run leaves no partial
output behind.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipesim.memory import CATEGORIES


def summary_json(result) -> str:
    """Deterministic JSON text: sorted keys, fixed rounding (see ``Result.summary``)."""
    return json.dumps(result.summary(), indent=2, sort_keys=True) + "\n"


def timeline_csv(result) -> str:
    """One row per ledger record: time, rank, category, delta, the rank's total after it."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_ms", "rank", "category", "delta_bytes", "rank_total_bytes"])
    names = CATEGORIES
    for r in range(result.ranks):
        times, tot = result.total(r)
        cats = result.ledger.cat[result.records(r)]
        deltas = result.ledger.delta[result.records(r)]
        for t, c, d, s in zip(times.tolist(), cats.tolist(), deltas.tolist(), tot.tolist()):
            w.writerow([f"{t * 1e3:.6f}", r, names[c], d, s])
    return buf.getvalue()


def write_outputs(out_dir: Path, writers: dict) -> list[Path]:
    """Create every file of ``writers`` (name -> callable(path)) in a temp dir, then move all in."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pipesim-", dir=out_dir.parent))
    try:
        for name, write in writers.items():
            write(tmp / name)
        out_dir.mkdir(parents=True, exist_ok=True)
        done = []
        for name in writers:
            os.replace(tmp / name, out_dir / name)
            done.append(out_dir / name)
        return done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def text_writer(text: str):
    def write(path: Path) -> None:
        path.write_text(text)
    return write


def trace_json(result) -> str:
    """Chrome / Perfetto trace: one slice per op, one memory counter (GiB) per rank.

    Open in ui.perfetto.dev or chrome://tracing. Times are microseconds; each rank is a thread.
    """
    sp = result.spans
    names = ("F", "B", "B (input grad)", "W")
    events = []
    for i in range(len(sp.start)):
        events.append({"name": f"{names[sp.kind[i]]} mb {int(sp.mb[i])}", "ph": "X", "pid": 0,
                       "tid": int(sp.rank[i]), "ts": round(float(sp.start[i]) * 1e6, 3),
                       "dur": round(float(sp.end[i] - sp.start[i]) * 1e6, 3),
                       "args": {"stage": int(sp.stage[i]), "chunk": int(sp.chunk[i]),
                                "direction": int(sp.direction[i])}})
    for r in range(result.ranks):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}})
        times, tot = result.total(r)
        # one counter sample per distinct time: the level after the last record at that time
        last = np.append(times[1:] != times[:-1], True)
        for t, v in zip(times[last].tolist(), tot[last].tolist()):
            events.append({"name": f"memory rank {r} (GiB)", "ph": "C", "pid": 0, "ts": round(t * 1e6, 3),
                           "args": {"GiB": round(v / 2 ** 30, 4)}})
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}) + "\n"
