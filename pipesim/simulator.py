"""The SimPy simulation of one training step: when does every op of every rank run?

One SimPy process per pipeline rank walks that rank's op list from ``schedules``. An op starts
when its rank is free and each of its inputs has arrived: producer end, plus, across ranks,
p2p latency + bytes / bandwidth. The dependency rules themselves live in ``schedules.graph``.

Durations are known when an op starts, so its end is known then too. A rank process therefore
advances its own clock through every op whose inputs are already scheduled, and yields to SimPy
only to wait for an input whose producer has not started yet (one event per such op, never per
layer or byte; in 1F1B about one per F/B pair, as neighbouring ranks feed each other). Each
such wait resumes exactly when the producer is scheduled, so every start time is
``max(rank free, inputs arrived)`` — the same rule, evaluated with fewer context switches. An
output arrives at ``start + (duration + hop)``. Memory is not touched here: ``pipesim.memory``
lays it over the recorded spans.

Before the run the schedule is flattened into numpy arrays, one row per atom (F, B, W; an FB op
gives two), and each atom's inputs become atom indices: ``schedules.graph.inputs`` is asked once
per (kind, stage, direction) and its answer applied to every micro-batch at once.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain

import numpy as np
import simpy

from schedules import ScheduleError
from schedules.graph import inputs
from pipesim.memory import KIND_B, KIND_BI, KIND_F, KIND_W

_FAMILY = {"F": 0, "B": 1, "W": 2}   # B and BI are one family: both are "the B" of a key
_FAMILY_OF_KIND = np.array([0, 1, 1, 2], dtype=np.int64)   # indexed by KIND_F, KIND_B, KIND_BI, KIND_W


@dataclass(frozen=True)
class Spans:
    """One row per executed atom (F, B, BI, W), grouped by rank in execution order."""

    rank: np.ndarray       # int32
    op_index: np.ndarray   # int64: position of the enclosing op in schedule.ranks[rank]
    kind: np.ndarray       # int8: KIND_F, KIND_B, KIND_BI, KIND_W
    stage: np.ndarray      # int32 model stage
    chunk: np.ndarray      # int32
    direction: np.ndarray  # int8
    mb: np.ndarray         # int32
    start: np.ndarray      # float64 seconds
    end: np.ndarray        # float64 seconds
    consumer: np.ndarray   # int64: the cross-rank atom that receives this atom's output (-1: none)
    producer: np.ndarray   # int64: the cross-rank atom whose output this atom receives (-1: none)
    arrival: np.ndarray    # float64: when this atom's output reaches its consumer (nan: none)
    exposed_comm: np.ndarray | None = None   # float64 seconds of all-to-all the atom's rank waits on


@dataclass(frozen=True)
class Timing:
    """Durations in seconds: ``f[s]``, ``b[s]`` (full backward), ``w[s]``, optionally ``fb[s]``
    (an overlapped pair whose forward is on stage s; default F + B), and ``hop[s]``: the p2p delay
    of the boundary tensor leaving stage s. ``w_recompute[s]``: what a deferred W adds when it
    must re-materialise weight inputs that recomputation dropped (a full B does that work in its
    own recompute already).

    ``comm_f[s]`` / ``comm_b[s]``: the expert-parallel all-to-all inside ``f[s]`` / ``b[s]``
    (``pipesim.comm``); a lone op runs it serialised with its compute, so it counts in full. In
    an FB op (DualPipe's overlap, DeepSeek-V3 report section 3.2.1) each half's all-to-all runs
    while the other half computes, so the pair takes

        max(F_compute, B_comm) + max(B_compute, F_comm)

    (hidden completely while each comm fits under the other's compute; the excess shows). This
    is the per-op merge of the per-layer phases: it assumes the two halves' layers interleave
    phase by phase with equal shares, as DualPipe's chunk pairing arranges. ``fb`` overrides it.
    """

    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    hop: tuple[float, ...]
    fb: tuple[float, ...] | None = None
    w_recompute: tuple[float, ...] | None = None
    comm_f: tuple[float, ...] | None = None
    comm_b: tuple[float, ...] | None = None


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
    """One row per atom, rank-major in execution order (an FB op gives two rows).

    Ops are shared immutable objects (a 1F1B schedule of pp ranks holds 2M distinct ops for
    2M·pp slots), so their fields are read once per distinct op and spread by index.
    """
    ranks = schedule.ranks
    ops = list(chain.from_iterable(ranks))
    ids = np.fromiter(map(id, ops), dtype=np.int64, count=len(ops))
    _, first, which = np.unique(ids, return_index=True, return_inverse=True)
    distinct = [ops[i] for i in first.tolist()]
    # per distinct op, its atoms' fields; an op has one atom, an FB two (forward first)
    code = {"F": KIND_F, "B": KIND_B, "W": KIND_W}
    width = 2 if any(op.kind == "FB" for op in distinct) else 1
    if width == 1:
        cells = distinct
    else:                                                       # (distinct op, half), raveled
        cells = [a for op in distinct for a in (op.atoms() if op.kind == "FB" else (op, None))]
    kinds = np.array([-1 if a is None else KIND_BI if a.w_deferred else code[a.kind] for a in cells])
    chunks = np.array([0 if a is None else a.chunk for a in cells])
    mbs = np.array([0 if a is None else a.mb for a in cells])
    count = (kinds.reshape(-1, width) >= 0).sum(axis=1)
    per_op = count[which]                       # atoms of each op slot
    op_lengths = [len(r) for r in ranks]
    op_seq = np.arange(len(ops), dtype=np.int64) - np.repeat(np.cumsum([0] + op_lengths[:-1]), op_lengths)
    if width == 1:
        cell = which
        op_index, pair = op_seq, np.zeros(len(ops), dtype=bool)
        lengths = op_lengths
    else:
        slot = np.repeat(np.arange(len(ops)), per_op)
        half = np.arange(len(slot)) - np.repeat(np.cumsum(per_op) - per_op, per_op)
        cell = which[slot] * 2 + half
        op_index = op_seq[slot]
        pair = (per_op[slot] == 2) & (half == 0)
        op_rank = np.repeat(np.arange(len(ranks)), op_lengths)
        lengths = np.bincount(op_rank, weights=per_op, minlength=len(ranks)).astype(np.int64).tolist()
    kind, chunk, mb = kinds[cell], chunks[cell], mbs[cell]
    n = len(cell)
    rank = np.repeat(np.arange(len(ranks), dtype=np.int32), lengths)
    seq = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum([0] + lengths[:-1]), lengths)
    place = np.array(schedule.placement, dtype=np.int64)
    dirs = np.array(schedule.directions, dtype=np.int64)
    return _Flat(rank, seq, op_index, kind.astype(np.int8), place[rank, chunk].astype(np.int32),
                 chunk.astype(np.int32), dirs[rank, chunk].astype(np.int8), mb.astype(np.int32), pair)


def _dependencies(schedule, flat: _Flat) -> list[tuple[np.ndarray, np.ndarray]]:
    """(consumer atoms, producer atoms) pairs, one per dependency slot, from ``graph.inputs``.

    Every atom has a key (family, stage, direction, mb); a dense table maps keys to atoms, and
    the rule ``graph.inputs`` gives for one (family, stage, direction) is applied to all its
    micro-batches at once.
    """
    fam = _FAMILY_OF_KIND[flat.kind]
    S, D = schedule.num_stages, 2
    M = int(flat.mb.max()) + 1 if len(flat.mb) else 1
    pattern = (fam * S + flat.stage) * D + flat.direction
    code = pattern * M + flat.mb
    table = np.full(3 * S * D * M, -1, dtype=np.int64)
    table[code] = np.arange(len(code))
    if len(code) and np.count_nonzero(table >= 0) != len(code):
        raise ScheduleError(f"{schedule.name}: an atom appears twice; run schedules.graph.validate")
    # each present (family, stage, direction) asks graph.inputs once; its rule becomes a shift
    # of the key (the micro-batch stays), applied to every atom of that pattern at once
    present = np.zeros(3 * S * D, dtype=bool)
    present[pattern] = True
    names = {0: "F", 1: "B", 2: "W"}
    width = 2
    shift = np.zeros((width, 3 * S * D), dtype=np.int64)
    has = np.zeros((width, 3 * S * D), dtype=bool)
    wanted = {}
    for p in np.nonzero(present)[0].tolist():
        f, rest = divmod(p, S * D)
        s, d = divmod(rest, D)
        rule = inputs(schedule, (names[f], s, d, 0))
        if len(rule) > width:
            raise ScheduleError("dependency rules with more than two inputs are not supported")
        for j, (kind, ds, dd, dm) in enumerate(rule):
            if dm != 0:
                raise ScheduleError("dependency rules that change the micro-batch are not supported")
            shift[j, p] = ((_FAMILY[kind] * S + ds) * D + dd - p) * M
            has[j, p] = True
            wanted[(j, p)] = (kind, ds)
    pairs = []
    for j in range(width):
        sel = np.nonzero(has[j][pattern])[0]
        want = code[sel] + shift[j][pattern[sel]]
        ok = (want >= 0) & (want < len(table))
        prod = np.where(ok, table[np.where(ok, want, 0)], -1)
        if (prod < 0).any():
            i = sel[np.nonzero(prod < 0)[0][0]]
            kind, ds = wanted[(j, int(pattern[i]))]
            raise ScheduleError(f"{schedule.name}: rank {flat.rank[i]} op {flat.op_index[i]} needs "
                                f"{kind}(stage {ds}, mb {flat.mb[i]}), which no rank runs")
        pairs.append((sel, prod))
    return pairs


@contextmanager
def collector_paused():
    """Pause Python's cyclic garbage collector (while the rank processes run, and around all of
    ``pipesim.simulate``).

    A step creates tens of thousands of short-lived objects (SimPy events, ops, arrays), and
    the collector would walk every live object again and again (~5-10% of a run); nothing here
    relies on it, and whatever cycles are left are collected once it is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run(schedule, timing: Timing) -> Spans:
    """Simulate the step; return the spans of every atom. Raises ScheduleError on deadlock."""
    flat = _flatten(schedule)
    n = len(flat.kind)
    hop = np.asarray(timing.hop, dtype=np.float64)
    # An input produced earlier on the same rank is done before the rank reaches the consumer
    # (the rank runs its atoms in order), so only cross-rank inputs can delay a start; under the
    # rules of schedules.graph each atom has at most one (the boundary tensor). A same-rank input
    # produced *later* can never arrive: that order deadlocks.
    pairs = _dependencies(schedule, flat)
    cons = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros(0, np.int64)
    prod = np.concatenate([p for _, p in pairs]) if pairs else np.zeros(0, np.int64)
    cross = flat.rank[prod] != flat.rank[cons]
    late = ~cross & (flat.seq[prod] >= flat.seq[cons])
    if late.any():
        i = cons[np.nonzero(late)[0][0]]
        r, k = int(flat.rank[i]), int(flat.op_index[i])
        raise ScheduleError(f"{schedule.name}: deadlock: rank {r} op {k} ({schedule.ranks[r][k]}) "
                            f"needs an op that rank {r} runs after it")
    cons, prod = cons[cross], prod[cross]
    if len(cons) and np.bincount(cons).max() > 1:
        raise ScheduleError(f"{schedule.name}: an atom with two cross-rank inputs is not supported")
    if len(prod) and np.bincount(prod).max() > 1:
        raise ScheduleError(f"{schedule.name}: an output consumed on two other ranks is not supported")
    dep = np.full(n, -1, dtype=np.int64)
    consumer = np.full(n, -1, dtype=np.int64)
    dep[cons] = prod
    consumer[prod] = cons
    f, b, w = (np.asarray(x, dtype=np.float64) for x in (timing.f, timing.b, timing.w))
    st = flat.stage
    per_kind = np.empty((len(f), 4))                # duration of (stage, kind)
    w_extra = np.zeros_like(w) if timing.w_recompute is None else np.asarray(timing.w_recompute, dtype=np.float64)
    per_kind[:, KIND_F], per_kind[:, KIND_B], per_kind[:, KIND_BI], per_kind[:, KIND_W] = f, b, b - w, w + w_extra
    dur = per_kind[st, flat.kind]
    zero = np.zeros(len(f))
    cf = zero if timing.comm_f is None else np.asarray(timing.comm_f, dtype=np.float64)
    cb = zero if timing.comm_b is None else np.asarray(timing.comm_b, dtype=np.float64)
    per_comm = np.stack([cf, cb, cb, zero], axis=1)  # all-to-all inside (stage, kind); W has none
    comm = per_comm[st, flat.kind]
    exposed = comm.copy()
    pair_at = np.nonzero(flat.paired)[0]
    if timing.fb is not None:
        # An overlapped pair takes fb[stage of its forward], split F-then-B in proportion.
        for i in pair_at.tolist():
            df, db = dur[i], dur[i + 1]
            scale = timing.fb[st[i]] / (df + db) if df + db > 0 else 0.0
            dur[i], dur[i + 1] = df * scale, db * scale
        exposed[pair_at] = exposed[pair_at + 1] = 0.0
    elif len(pair_at):
        # DualPipe's overlap (class docstring): the forward part max(F_compute, B_comm), the
        # backward part max(B_compute, F_comm); what sticks out of a compute is exposed.
        j = pair_at + 1
        f_comp, b_comp = dur[pair_at] - comm[pair_at], dur[j] - comm[j]
        f_comm, b_comm = comm[pair_at], comm[j]
        dur[pair_at], dur[j] = np.maximum(f_comp, b_comm), np.maximum(b_comp, f_comm)
        exposed[pair_at] = np.maximum(b_comm - f_comp, 0.0)
        exposed[j] = np.maximum(f_comm - b_comp, 0.0)
    bounds = np.searchsorted(flat.rank, np.arange(len(schedule.ranks) + 1)).tolist()
    env = simpy.Environment()
    # Only starts are kept: an atom's end is start + duration and its output's arrival
    # start + lag, sums numpy takes again afterwards with the same operands, so the same floats.
    starts: list = [None] * n
    waiter: list = [None] * n          # the event a rank process waits on for atom i's start
    # an output reaches its consumer at start + (duration + hop): its lag, one number per atom
    lag = dur + hop[flat.stage]
    depl, lagl, durl = dep.tolist(), lag.tolist(), dur.tolist()
    new_event = partial(simpy.Event, env)

    # The hot loops take their lists as default arguments: local names are CPython's fastest.
    def walk(lo, hi, depl=depl, lagl=lagl, durl=durl, starts=starts, waiter=waiter,
             new_event=new_event):
        """A rank's atoms lo..hi-1, none of them half of an FB: the hot loop, kept minimal."""
        t = 0.0
        for i in range(lo, hi):
            p = depl[i]
            if p >= 0:
                s = starts[p]
                if s is None:
                    ev = waiter[p] = new_event()
                    yield ev
                    s = starts[p]
                s += lagl[p]                         # the input's arrival
                if s > t:
                    t = s
            starts[i] = t
            ev = waiter[i]
            if ev is not None:
                waiter[i] = None       # let the event go as soon as it has fired
                ev.succeed()
            t += durl[i]

    # An FB's two atoms start together: its forward half waits for both halves' inputs (the
    # backward half's input moves to dep2 of the forward half), the backward half then follows
    # the forward half directly.
    pair = np.nonzero(flat.paired)[0]
    first_dep = dep.copy()
    first_dep[pair + 1] = -1
    dep2 = np.full(n, -1, dtype=np.int64)
    dep2[pair] = dep[pair + 1]
    pair_lists = (first_dep.tolist(), dep2.tolist()) if len(pair) else (None, None)

    def walk_pairs(lo, hi, depl=pair_lists[0], dep2l=pair_lists[1], lagl=lagl, durl=durl,
                   starts=starts, waiter=waiter, new_event=new_event):
        """Like ``walk``, for a rank with FB ops (see above): ``depl`` here is the forward half's
        own input, ``dep2l`` its backward half's. The second check repeats the first's lines on
        purpose: a loop over both would cost a tuple per atom in the hot loop."""
        t = 0.0
        for i in range(lo, hi):
            p = depl[i]
            if p >= 0:
                s = starts[p]
                if s is None:
                    ev = waiter[p] = new_event()
                    yield ev
                    s = starts[p]
                s += lagl[p]
                if s > t:
                    t = s
            p = dep2l[i]
            if p >= 0:
                s = starts[p]
                if s is None:
                    ev = waiter[p] = new_event()
                    yield ev
                    s = starts[p]
                s += lagl[p]
                if s > t:
                    t = s
            starts[i] = t
            ev = waiter[i]
            if ev is not None:
                waiter[i] = None
                ev.succeed()
            t += durl[i]

    procs = []
    for r in range(len(schedule.ranks)):
        lo, hi = bounds[r], bounds[r + 1]
        with_pairs = len(pair) and flat.paired[lo:hi].any()
        procs.append(env.process((walk_pairs if with_pairs else walk)(lo, hi)))
    with collector_paused():
        env.run()
    stuck = [r for r, proc in enumerate(procs) if proc.is_alive]
    if stuck:
        detail = []
        for r in stuck:
            i = next(i for i in range(bounds[r], bounds[r + 1]) if starts[i] is None)
            k = int(flat.op_index[i])
            detail.append(f"rank {r} at op {k} ({schedule.ranks[r][k]})")
        raise ScheduleError(f"{schedule.name}: deadlock, no rank can proceed: {', '.join(detail)}")
    start = np.array(starts, dtype=np.float64)
    endv = start + dur
    arrival = np.full(n, np.nan)
    has = consumer >= 0
    arrival[has] = start[has] + lag[has]
    return Spans(flat.rank, flat.op_index, flat.kind, flat.stage, flat.chunk,
                 flat.direction, flat.mb, start, endv, consumer, dep, arrival, exposed)


def exposed_comm(spans: Spans, ranks: int) -> np.ndarray:
    """Seconds per rank its compute stream waits on all-to-all (serialised, or the part of an FB
    half's communication the other half's compute does not cover)."""
    if spans.exposed_comm is None:
        return np.zeros(ranks)
    return np.bincount(spans.rank, weights=spans.exposed_comm, minlength=ranks)
