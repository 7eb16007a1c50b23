"""A schedule as a text grid people can eyeball: one row per rank, one column per time unit.

    python -m pipesim schedule 1f1b --pp 4 --microbatches 8

Times come from ``pipesim.simulator.unit_times`` (default F=1, B=2 full backward, W=1, so a
deferred B takes 1 and an FB 3). An op that lasts k units spans k cells: its token, then ``-``
to the end of its span; ``.`` is an idle unit. Tokens: kind and micro-batch (``F3``), with the
chunk as a letter when a rank holds several (``F3a`` chunk 0, ``F3b`` chunk 1, ...); ``b`` is a
B that defers its W; an FB shows both halves, ``F3a&B1b``.
"""
from __future__ import annotations

import math

from pipesim.simulator import unit_times
from schedules.ops import Op, Schedule

__all__ = ["render", "token"]

TICK = 5  # a time label every TICK columns


def token(op: Op, chunked: bool) -> str:
    """Short text of one op for a grid cell."""
    if op.kind == "FB":
        return f"{token(op.forward, chunked)}&{token(op.backward, chunked)}"  # type: ignore[arg-type]
    kind = "b" if op.kind == "B" and op.w_deferred else op.kind
    return f"{kind}{op.mb}{_chunk_letter(op.chunk)}" if chunked else f"{kind}{op.mb}"


def _chunk_letter(chunk: int) -> str:
    return chr(ord("a") + chunk) if chunk < 26 else f"[{chunk}]"


def render(schedule: Schedule, F: float = 1.0, B: float = 2.0, W: float = 1.0, FB: float | None = None) -> str:
    """Each rank's ops on a shared time axis, one cell per time unit (fractions round up)."""
    spans, makespan = unit_times(schedule, F, B, W, FB)
    chunked = max((len(p) for p in schedule.placement), default=1) > 1
    atoms = [op for ops in schedule.ranks for op in ops if op.kind != "FB"]
    width = max([len(token(op, chunked)) for op in atoms] + [len(str(int(makespan)))]) + 1
    ncols = math.ceil(makespan)
    head = f"{schedule.name}: pp={schedule.pp}, microbatches={schedule.microbatches}, chunks={schedule.chunks}, " \
           f"makespan={makespan:g} (F={F:g}, B={B:g}, W={W:g}, FB={F + B if FB is None else FB:g})"
    ticks = "".join((str(t) if t % TICK == 0 else "").ljust(width) for t in range(ncols))
    label_w = len(f"r{len(schedule.ranks) - 1}") + 1
    lines = [head, " " * label_w + ticks.rstrip()]
    for r, ops in enumerate(schedule.ranks):
        row = ["."] * ncols
        cells: list[str] = []
        for op, (start, end) in zip(ops, spans[r]):
            first, last = math.floor(start), max(math.ceil(end), math.floor(start) + 1)
            row[first] = (op, last - first)  # type: ignore[call-overload]
            for t in range(first + 1, last):
                row[t] = None  # type: ignore[call-overload]
        for cell in row:
            if cell is None:
                continue
            if cell == ".":
                cells.append(".".ljust(width))
            else:
                op, k = cell
                span = k * width - 1
                text = token(op, chunked)[:span]
                cells.append(text + "-" * (span - len(text)) + " ")
        lines.append(f"r{r}".ljust(label_w) + "".join(cells).rstrip())
    chunks = ", chunk a, b, ... = 0, 1, ..." if chunked else ""
    lines.append(f"legend: F forward, B backward, b backward deferring its W, W weight-gradient{chunks}, . idle")
    return "\n".join(lines)
