"""A plain CSV timeline, for whatever recorder a user has (``nvidia-smi`` loops, custom hooks).

Header ``time_s,rank,bytes`` with an optional ``category`` column, in any column order:

- without ``category``, a row says the rank's total allocated bytes from ``time_s`` on;
- with it, a row says one category's bytes from ``time_s`` on, and the rank's total at a time is
  the sum of every category's latest value (a category not yet seen counts 0).

``rank`` is the pipeline rank. Times are seconds on any origin; rows need not be sorted (they
are ordered by time, stably, per rank). The file's first and last time over all its ranks are
the measured step's window. This is pipesim's own format, documented here.
"""
from __future__ import annotations

import csv
import io

import numpy as np

from pipesim.score.measured import Measured, RankMeasure, ScoreError, unrecognised

REQUIRED = ("time_s", "rank", "bytes")
OPTIONAL = ("category",)


def header_of(text: str) -> list[str] | None:
    """The first non-empty line's fields if it is this format's header, else ``None``."""
    for line in text.splitlines():
        if line.strip():
            names = [n.strip() for n in next(csv.reader([line]))]
            ok = set(REQUIRED) <= set(names) <= set(REQUIRED + OPTIONAL) and len(set(names)) == len(names)
            return names if ok else None
    return None


def parse(text: str, source: str) -> Measured:
    """The ``Measured`` of a CSV's text: one rank per distinct ``rank`` value."""
    names = header_of(text)
    if names is None:
        raise unrecognised(source, "a text file whose first line is not the CSV header time_s,rank,bytes[,category]")
    rows: dict[int, list[tuple[float, str, int]]] = {}
    seen_header = False
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not any(c.strip() for c in row):
            continue
        if not seen_header:             # header_of checked it: the first non-empty line
            seen_header = True
            continue
        if len(row) != len(names):
            raise ScoreError(f"{source}: line {line_no}: {len(row)} fields, the header has {len(names)} "
                             f"({','.join(names)})")
        rec = dict(zip(names, (c.strip() for c in row)))
        try:
            t, rank, value = float(rec["time_s"]), int(rec["rank"]), int(float(rec["bytes"]))
        except ValueError:
            raise ScoreError(f"{source}: line {line_no}: time_s must be a number, rank an integer and "
                             f"bytes a number, got {','.join(row)}") from None
        if rank < 0 or value < 0 or not np.isfinite(t):
            raise ScoreError(f"{source}: line {line_no}: rank and bytes must be >= 0 and time_s finite, "
                             f"got {','.join(row)}")
        rows.setdefault(rank, []).append((t, rec.get("category", ""), value))
    if not rows:
        raise ScoreError(f"{source}: a CSV header but no rows")
    every = [t for rs in rows.values() for t, _, _ in rs]
    window = (min(every), max(every))       # one step, shared by every rank of the file
    ranks = {r: _rank(rows[r], "category" in names, window) for r in sorted(rows)}
    return Measured(source, "csv", ranks, "content")


def _rank(rows: list[tuple[float, str, int]], by_category: bool, window) -> RankMeasure:
    rows = sorted(rows, key=lambda r: r[0])
    times = np.array([r[0] for r in rows])
    if not by_category:
        total = np.array([r[2] for r in rows], dtype=np.int64)
        cats = None
    else:
        names = sorted({r[1] for r in rows})
        col = {n: i for i, n in enumerate(names)}
        level = np.zeros(len(names), dtype=np.int64)
        levels = np.zeros((len(rows), len(names)), dtype=np.int64)
        for i, (_, name, value) in enumerate(rows):
            level[col[name]] = value
            levels[i] = level
        total = levels.sum(axis=1)
        cats = {n: levels[:, col[n]] for n in names}
    last = np.append(times[1:] != times[:-1], True)     # the level after a time's last row
    return RankMeasure(peak_allocated=int(total[last].max()), peak_reserved=None, times_s=times[last],
                       bytes=total[last],
                       categories={n: v[last] for n, v in cats.items()} if cats is not None else None,
                       window_s=window)
