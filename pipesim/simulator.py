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

Before the run the schedule is flattened into numpy arrays, one row per atom (F, B, W; an FB op
gives two), and each atom's inputs become atom indices: ``schedules.graph.inputs`` is asked once
per (kind, stage, direction) and its answer applied to every micro-batch at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from schedules import ScheduleError
from schedules.graph import inputs
from pipesim.memory import KIND_B, KIND_BI, KIND_F, KIND_W

_FAMILY = {"F": 0, "B": 1, "W": 2}   # B and BI are one family: both are "the B" of a key


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
    consumer: np.ndarray   # int64: the cross-rank atom that receives this atom's output (-1: none)
    arrival: np.ndarray    # float64: when that output arrives there (nan: none)


@dataclass(frozen=True)
class Timing:
    """Durations in seconds: ``f[s]``, ``b[s]`` (full backward), ``w[s]``, optionally ``fb[s]``
    (an overlapped pair whose forward is on stage s; default F + B), and ``hop[s]``: the p2p delay
    of the boundary tensor leaving stage s."""

    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    hop: tuple[float, ...]
    fb: tuple[float, ...] | None = None


@dataclass(frozen=True)
class _Flat:
    rank: np.ndarray
    seq: np.ndarray
    op_index: np.ndarray
    kind: np.ndarray
    stage: np.ndarray
    chunk: np.ndarray
    direction: np.ndarray
    mb: np.ndarray
    paired: np.ndarray     # bool: first atom (the F) of an FB op


def _flatten(schedule) -> _Flat:
    ranks = schedule.ranks
    if any(op.kind == "FB" for ops in ranks for op in ops):
        # expand FB ops into their two atoms (rare enough to do per op)
        atoms = [[a for op in ops for a in op.atoms()] for ops in ranks]
        op_of = [[i for i, op in enumerate(ops) for _ in op.atoms()] for ops in ranks]
        paired = [[op.kind == "FB" and a is op.forward for op in ops for a in op.atoms()] for ops in ranks]
    else:
        atoms = ranks
        op_of = [range(len(ops)) for ops in ranks]
        paired = None
    flat = [a for ops in atoms for a in ops]
    n = len(flat)
    code = {"F": KIND_F, "B": KIND_B, "W": KIND_W}
    kind = np.fromiter((code[a.kind] for a in flat), dtype=np.int8, count=n)
    deferred = np.fromiter((a.w_deferred for a in flat), dtype=bool, count=n)
    kind[deferred] = KIND_BI
    chunk = np.fromiter((a.chunk for a in flat), dtype=np.int64, count=n)
    mb = np.fromiter((a.mb for a in flat), dtype=np.int32, count=n)
    lengths = [len(ops) for ops in atoms]
    rank = np.repeat(np.arange(len(ranks), dtype=np.int32), lengths)
    seq = np.concatenate([np.arange(k, dtype=np.int64) for k in lengths]) if n else np.zeros(0, np.int64)
    op_index = np.fromiter((i for o in op_of for i in o), dtype=np.int64, count=n)
    pair = (np.fromiter((p for ps in paired for p in ps), dtype=bool, count=n) if paired
            else np.zeros(n, dtype=bool))
    place = np.array(schedule.placement, dtype=np.int64)
    dirs = np.array(schedule.directions, dtype=np.int64)
    return _Flat(rank, seq, op_index, kind, place[rank, chunk].astype(np.int32),
                 chunk.astype(np.int32), dirs[rank, chunk].astype(np.int8), mb, pair)


def _dependencies(schedule, flat: _Flat) -> list[tuple[np.ndarray, np.ndarray]]:
    """(consumer atoms, producer atoms) pairs, one per dependency slot, from ``graph.inputs``."""
    fam = np.array([0, 1, 1, 2], dtype=np.int64)[flat.kind]
    S, D = schedule.num_stages, 2
    M = int(flat.mb.max()) + 1 if len(flat.mb) else 1
    code = ((fam * S + flat.stage) * D + flat.direction) * M + flat.mb
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    if len(sorted_code) > 1 and np.any(sorted_code[1:] == sorted_code[:-1]):
        raise ScheduleError(f"{schedule.name}: an atom appears twice; run schedules.graph.validate")
    pattern = (fam * S + flat.stage) * D + flat.direction
    pairs = []
    names = {0: "F", 1: "B", 2: "W"}
    for p in np.unique(pattern):
        sel = np.nonzero(pattern == p)[0]
        f, rest = divmod(int(p), S * D)
        s, d = divmod(rest, D)
        for slot in inputs(schedule, (names[f], s, d, 0)):
            kind, ds, dd, dm = slot
            if dm != 0:
                raise ScheduleError("dependency rules that change the micro-batch are not supported")
            want = ((_FAMILY[kind] * S + ds) * D + dd) * M + flat.mb[sel]
            pos = np.searchsorted(sorted_code, want)
            ok = (pos < len(sorted_code)) & (sorted_code[np.minimum(pos, len(sorted_code) - 1)] == want)
            if not ok.all():
                i = sel[np.nonzero(~ok)[0][0]]
                raise ScheduleError(f"{schedule.name}: rank {flat.rank[i]} op {flat.op_index[i]} needs "
                                    f"{kind}(stage {ds}, mb {flat.mb[i]}), which no rank runs")
            pairs.append((sel, order[pos]))
    return pairs


def run(schedule, timing: Timing) -> Spans:
    """Simulate the step; return the spans of every atom. Raises ScheduleError on deadlock."""
    flat = _flatten(schedule)
    n = len(flat.kind)
    hop = np.asarray(timing.hop, dtype=np.float64)
    # An input produced earlier on the same rank is done before the rank reaches the consumer
    # (the rank runs its atoms in order), so only cross-rank inputs can delay a start; under the
    # rules of schedules.graph each atom has at most one (the boundary tensor). A same-rank input
    # produced *later* can never arrive: that order deadlocks.
    dep = np.full(n, -1, dtype=np.int64)
    delay = np.zeros(n)
    consumer = np.full(n, -1, dtype=np.int64)
    for cons, prod in _dependencies(schedule, flat):
        cross = flat.rank[prod] != flat.rank[cons]
        late = ~cross & (flat.seq[prod] >= flat.seq[cons])
        if late.any():
            i = cons[np.nonzero(late)[0][0]]
            r, k = int(flat.rank[i]), int(flat.op_index[i])
            raise ScheduleError(f"{schedule.name}: deadlock: rank {r} op {k} ({schedule.ranks[r][k]}) "
                                f"needs an op that rank {r} runs after it")
        cons, prod = cons[cross], prod[cross]
        if (dep[cons] >= 0).any():
            raise ScheduleError(f"{schedule.name}: an atom with two cross-rank inputs is not supported")
        dep[cons] = prod
        delay[cons] = hop[flat.stage[prod]]
        consumer[prod] = cons
    f, b, w = (np.asarray(x, dtype=np.float64) for x in (timing.f, timing.b, timing.w))
    st = flat.stage
    dur = np.select([flat.kind == KIND_F, flat.kind == KIND_B, flat.kind == KIND_BI],
                    [f[st], b[st], b[st] - w[st]], w[st])
    if timing.fb is not None:
        # An overlapped pair takes fb[stage of its forward], split F-then-B in proportion.
        for i in np.nonzero(flat.paired)[0].tolist():
            df, db = dur[i], dur[i + 1]
            scale = timing.fb[st[i]] / (df + db) if df + db > 0 else 0.0
            dur[i], dur[i + 1] = df * scale, db * scale
    end = [None] * n
    bounds = np.searchsorted(flat.rank, np.arange(len(schedule.ranks) + 1)).tolist()
    paired = flat.paired.tolist()
    depl, delayl = dep.tolist(), delay.tolist()
    durl = dur.tolist()
    env = simpy.Environment()
    waiting: dict[int, simpy.Event] = {}
    progress = list(bounds[:-1])
    starts = [0.0] * n

    def rank_process(r):
        clock = 0.0
        i, stop = bounds[r], bounds[r + 1]
        while i < stop:
            group = 2 if paired[i] else 1           # an FB's two atoms start together
            t = clock
            for j in range(i, i + group):
                p = depl[j]
                if p >= 0:
                    e = end[p]
                    while e is None:
                        ev = waiting.get(p)
                        if ev is None:
                            ev = waiting[p] = env.event()
                        yield ev
                        e = end[p]
                    e += delayl[j]
                    if e > t:
                        t = e
            for j in range(i, i + group):
                starts[j] = t
                t += durl[j]
                end[j] = t
                ev = waiting.pop(j, None)
                if ev is not None:
                    ev.succeed()
            clock = t
            i += group
            progress[r] = i

    for r in range(len(schedule.ranks)):
        env.process(rank_process(r))
    env.run()
    stuck = [r for r in range(len(schedule.ranks)) if progress[r] < bounds[r + 1]]
    if stuck:
        detail = ", ".join(f"rank {r} at op {flat.op_index[progress[r]]} "
                           f"({schedule.ranks[r][flat.op_index[progress[r]]]})" for r in stuck)
        raise ScheduleError(f"{schedule.name}: deadlock, no rank can proceed: {detail}")
    start = np.array(starts)
    endv = np.array(end, dtype=np.float64)
    arrival = np.full(n, np.nan)
    has = consumer >= 0
    arrival[has] = endv[has] + hop[flat.stage[has]]
    return Spans(flat.rank, flat.seq, flat.op_index, flat.kind, flat.stage, flat.chunk,
                 flat.direction, flat.mb, start, endv, consumer, arrival)
