"""Machine-readable outputs, written atomically: ``summary.json``, ``timeline.csv``.

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
        lo = result._bounds[r]
        cats = result.ledger.cat[lo:lo + len(times)]
        deltas = result.ledger.delta[lo:lo + len(times)]
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
