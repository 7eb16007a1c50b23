"""When each op would run under fixed op durations and zero communication: a list-scheduling pass.

Each rank runs its ops in order; an op starts when its rank is free and the data inputs of all
its atoms (``schedules.graph.inputs``) have ended. This is what the bubble formulas of the
papers assume, so it is how the tests check them.

    from schedules.timing import unit_times
    spans, makespan = unit_times(s)                # F=1, B=2 (full backward), W=1, FB=F+B
    spans[r][i]                                    # (start, end) of s.ranks[r][i]
"""
from __future__ import annotations

from schedules.graph import duration_fn, inputs, key, label
from schedules.ops import Schedule, ScheduleError

__all__ = ["bubbles", "unit_times"]


def unit_times(
    schedule: Schedule, F: float = 1.0, B: float = 2.0, W: float = 1.0, FB: float | None = None
) -> tuple[list[list[tuple[float, float]]], float]:
    """Per rank, the (start, end) of each op aligned with ``schedule.ranks[r]``, and the makespan.

    Durations: ``F`` a forward, ``B`` a full backward, ``B - W`` a backward that defers its
    weight-gradient, ``W`` a weight-gradient, ``FB`` an overlapped pair (default ``F + B``).
    Raises ``ScheduleError`` naming the stuck ops when the orders deadlock.
    """
    of = duration_fn({"F": F, "B": B, "W": W, "FB": FB})
    nranks = len(schedule.ranks)
    keys = [[tuple(key(schedule, r, a) for a in op.atoms()) for op in ops] for r, ops in enumerate(schedule.ranks)]
    spans: list[list[tuple[float, float]]] = [[] for _ in range(nranks)]
    free = [0.0] * nranks
    end: dict = {}
    progress = True
    while progress:
        progress = False
        for r in range(nranks):
            ops = schedule.ranks[r]
            while len(spans[r]) < len(ops):
                i = len(spans[r])
                start = free[r]
                for k in keys[r][i]:
                    for dep in inputs(schedule, k):
                        t = end.get(dep)
                        if t is None:
                            break
                        start = max(start, t)
                    else:
                        continue
                    break
                else:
                    finish = start + of(ops[i])
                    spans[r].append((start, finish))
                    free[r] = finish
                    for k in keys[r][i]:
                        end[k] = finish
                    progress = True
                    continue
                break
    stuck = [r for r in range(nranks) if len(spans[r]) < len(schedule.ranks[r])]
    if stuck:
        lines = []
        for r in stuck:
            i = len(spans[r])
            waits = [label(dep, schedule) for k in keys[r][i] for dep in inputs(schedule, k) if dep not in end]
            lines.append(f"rank {r} op #{i} {schedule.ranks[r][i]} waits for {', '.join(waits)}")
        raise ScheduleError(f"schedule {schedule.name!r} deadlocks; no rank can go on:\n  " + "\n  ".join(lines))
    makespan = max((free[r] for r in range(nranks)), default=0.0)
    return spans, makespan


def bubbles(spans: list[list[tuple[float, float]]], makespan: float) -> list[float]:
    """Idle time per rank: ``makespan - busy``."""
    return [makespan - sum(e - s for s, e in rank) for rank in spans]
