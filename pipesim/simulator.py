"""The SimPy simulation of one training step: when does every op of every rank run?

One SimPy process per pipeline rank walks that rank's op list from ``schedules``. An op starts
when its rank is free and each of its inputs has arrived: producer end, plus, across ranks,
p2p latency + bytes / bandwidth. The dependency rules themselves live in ``schedules.graph``.

Durations are known when an op starts, so its end is known then too. A rank process therefore
advances its own clock through every op whose inputs are already scheduled, and yields to SimPy
only to wait for an input whose producer has not started yet (one event per such op, never per
layer or byte). Each such wait resumes exactly when the producer is scheduled, so every start
time is ``max(rank free, inputs arrived)`` — the same rule, evaluated with fewer context
switches. Memory is not touched here: ``pipesim.memory`` lays it over the recorded spans.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from schedules import ScheduleError
from schedules.graph import inputs, key
from pipesim.memory import KIND_B, KIND_BI, KIND_F, KIND_W


@dataclass(frozen=True)
class Spans:
    """One row per executed atom (F, B, BI, W), grouped by rank in execution order."""

    rank: np.ndarray       # int32
    seq: np.ndarray        # int64: position of the atom in its rank's atom sequence
    op_index: np.ndarray   # int64: position of the enclosing op in schedule.ranks[rank]
    kind: np.ndarray       # int8: KIND_F, KIND_B, KIND_BI, KIND_W
    stage: np.ndarray      # int32 model stage
    chunk: np.ndarray      # int32
    direction: np.ndarray  # int8
    mb: np.ndarray         # int32
    start: np.ndarray      # float64 seconds
    end: np.ndarray        # float64 seconds
    arrival: np.ndarray    # float64: when this atom's output reaches its cross-rank consumer (nan if none)
    consumer_rank: np.ndarray  # int32: rank of that consumer (-1 if none / same rank)


@dataclass(frozen=True)
class Timing:
    """Durations in seconds: ``f[s]``, ``b[s]`` (full backward), ``w[s]``, ``fb[(sf, sb)]``,
    and the p2p delay of a boundary tensor leaving stage s: ``hop[s]``."""

    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    hop: tuple[float, ...]
    fb: dict | None = None    # optional explicit overlapped-pair durations by stage pair


def _atom_kind(atom) -> int:
    if atom.kind == "F":
        return KIND_F
    if atom.kind == "W":
        return KIND_W
    return KIND_BI if atom.w_deferred else KIND_B


def run(schedule, timing: Timing) -> Spans:
    """Simulate the step; return the spans of every atom. Raises ScheduleError on deadlock."""
    env = simpy.Environment()
    done: dict[tuple, tuple[float, int]] = {}     # atom key -> (end time, rank)
    waiting: dict[tuple, simpy.Event] = {}
    rows: list[list] = [[] for _ in schedule.ranks]
    progress = [0] * len(schedule.ranks)
    f, b, w, hop, fb = timing.f, timing.b, timing.w, timing.hop, timing.fb or {}

    def ready_time(r, k, t):
        """Latest arrival over the data inputs of atom ``k`` on rank ``r``, at least ``t``."""
        for dep in inputs(schedule, k):
            got = done.get(dep)
            if got is None:
                return dep
            end, prank = got
            if prank != r:
                end += hop[dep[1]]
            if end > t:
                t = end
        return t

    def rank_process(r):
        clock = 0.0
        seq = 0
        for idx, op in enumerate(schedule.ranks[r]):
            atoms = op.atoms()
            keys = [key(schedule, r, a) for a in atoms]
            start = clock
            for k in keys:
                while True:
                    got = ready_time(r, k, start)
                    if not isinstance(got, tuple):
                        start = got
                        break
                    ev = waiting.get(got)
                    if ev is None:
                        ev = waiting[got] = env.event()
                    yield ev
            if len(atoms) == 2:   # FB: forward then backward inside one op span
                sf, sb = keys[0][1], keys[1][1]
                df, db = f[sf], b[sb]
                total = fb.get((sf, sb), df + db)
                split = start + (total * df / (df + db) if df + db > 0 else 0.0)
                segs = ((start, split), (split, start + total))
            else:
                a = atoms[0]
                s = keys[0][1]
                d = f[s] if a.kind == "F" else w[s] if a.kind == "W" else (
                    b[s] - w[s] if a.w_deferred else b[s])
                segs = ((start, start + d),)
            for a, k, (t0, t1) in zip(atoms, keys, segs):
                done[k] = (t1, r)
                rows[r].append((seq, idx, _atom_kind(a), k[1], a.chunk, k[2], k[3], t0, t1))
                seq += 1
                ev = waiting.pop(k, None)
                if ev is not None:
                    ev.succeed()
            clock = segs[-1][1]
            progress[r] = idx + 1

    for r in range(len(schedule.ranks)):
        env.process(rank_process(r))
    env.run()
    stuck = [r for r, ops in enumerate(schedule.ranks) if progress[r] < len(ops)]
    if stuck:
        detail = ", ".join(f"rank {r} at op {progress[r]} ({schedule.ranks[r][progress[r]]})" for r in stuck)
        raise ScheduleError(f"{schedule.name}: deadlock, no rank can proceed: {detail}")
    return _spans(schedule, rows, done, hop)


def _spans(schedule, rows, done, hop) -> Spans:
    flat = [(r,) + row for r, rs in enumerate(rows) for row in rs]
    n = len(flat)
    cols = list(zip(*flat)) if n else [[]] * 10
    rank = np.array(cols[0], dtype=np.int32)
    kind = np.array(cols[3], dtype=np.int8)
    stage = np.array(cols[4], dtype=np.int32)
    direction = np.array(cols[6], dtype=np.int8)
    mb = np.array(cols[7], dtype=np.int32)
    end = np.array(cols[9], dtype=np.float64)
    # Where does each F / B output go? F(s) feeds F(s+1); B(s) (or BI) feeds B(s-1).
    arrival = np.full(n, np.nan)
    consumer = np.full(n, -1, dtype=np.int32)
    last = schedule.num_stages - 1
    for i in range(n):
        k = kind[i]
        s = int(stage[i])
        if k == KIND_F and s < last:
            nxt = s + 1
        elif k in (KIND_B, KIND_BI) and s > 0:
            nxt = s - 1
        else:
            continue
        crank, _ = schedule.locate(nxt, int(direction[i]))
        if crank != rank[i]:
            consumer[i] = crank
            arrival[i] = end[i] + hop[s]
    return Spans(rank, np.array(cols[1], dtype=np.int64), np.array(cols[2], dtype=np.int64), kind,
                 stage, np.array(cols[5], dtype=np.int32), direction, mb,
                 np.array(cols[8], dtype=np.float64), end, arrival, consumer)
