"""The SimPy simulation of one training step: when does every op of every rank run, and how
long does its communication keep it waiting?

SimPy's clock is the step's clock. Each pipeline rank is a process that runs its op list from
``schedules`` in order: its compute stream. An op starts when the stream is free and each of
its inputs has arrived, ``max(rank free, inputs arrived)``; this module is the only place that
rule is written (``unit_times`` gives the same run with fixed op times and no communication, for
the text grid and the closed-form tests). The stream is held for the op's duration as one SimPy
timeout: nothing else ever asks for a rank's compute stream while it runs an op, so holding a
``simpy.Resource`` would add two events per op and change no time.

Communication runs on resources of its own:

- **p2p links** (``Link``): one per ordered pair of ranks that exchange boundary tensors. A
  transfer's bytes flow at the link's bandwidth, shared equally by the transfers in flight on
  it (two at once: each at half the bandwidth), then the message latency; the consumer's input
  has arrived at that moment. Memory keeps the boundary buffer from the send to the receipt
  (``pipesim.memory.p2p_buffers`` reads ``Spans.arrival``).
- **expert-parallel all-to-all** (``pipesim.comm``) inside every MoE layer's forward and
  backward, and the TP / SP collectives of each sublayer. Alone, an op runs its phases in
  sequence (attention compute, dispatch, expert compute, combine, ...): its duration is compute
  plus communication, less what ``a2a_overlap`` says the framework hides. In an FB op
  (DualPipe) the two micro-batches' phases run as two chains on the rank's two streams, compute
  and communication (``overlap``): one chain's dispatch runs while the other computes, as the
  DeepSeek-V3 report arranges them (section 3.2.1, figure 4).

Merged events, where they give the same times: an FB's phase chains depend only on the two
stages' phase durations (the rank's streams serve nothing else during the op, and all-to-all
traffic of an EP group never crosses a pipeline link), so ``overlap`` runs them once per
distinct (forward stage, backward stage, backward kind) in its own small SimPy environment and
the step's run holds the compute stream for the result. Likewise a lone op's phases run back to
back on one stream, so their sum is one timeout. TP collectives are kernels on the compute
stream (Megatron without Transformer Engine's communication overlap), so they count as compute
that is also reported as exposed communication.

Before the run the schedule is flattened into numpy arrays, one row per atom (F, B, W; an FB op
gives two), and each atom's inputs become atom indices: ``schedules.graph.inputs`` is asked once
per (kind, stage, direction) and its answer applied to every micro-batch at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import simpy

from schedules import ScheduleError
from schedules.graph import inputs, label
from pipesim.memory import KIND_B, KIND_BI, KIND_F, KIND_W

_FAMILY = {"F": 0, "B": 1, "W": 2}   # B and BI are one family: both are "the B" of a key
_FAMILY_OF_KIND = np.array([0, 1, 1, 2], dtype=np.int64)   # indexed by KIND_F, KIND_B, KIND_BI, KIND_W
COMPUTE, NETWORK = 0, 1              # the two streams an FB's phase chains run on


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
    exposed_comm: np.ndarray  # float64: seconds of the atom's own communication its compute
                              # stream waits on (all-to-all, TP)


@dataclass(frozen=True)
class Phases:
    """One stage's MoE layers as phases (seconds per micro-batch; the stage's totals unless said).

    ``attention`` / ``experts``: (F, B, W) compute of the MoE layers' non-expert part (attention,
    router, shared experts, norms) and of their routed experts; ``a2a``: one layer's dispatch and
    combine in the forward, and the backward's two all-to-alls (the combine's gradient first,
    then the dispatch's). Whatever else the stage computes (dense layers, embedding, head,
    recomputation) runs as one phase before the MoE layers in F and after them in B.
    """

    layers: int
    attention: tuple[float, float, float]
    experts: tuple[float, float, float]
    a2a: tuple[float, float, float, float]   # dispatch F, combine F, B's first and second
                                             # (``pipesim.comm.moe_layer_a2a_phases``)


@dataclass(frozen=True)
class Timing:
    """Durations in seconds, per stage s. ``f[s]``, ``b[s]`` (full backward), ``w[s]``: each op's
    whole time when it runs alone (compute, plus its communication serialised);
    ``w_recompute[s]``: what a deferred W adds when it must re-materialise weight inputs that
    recomputation dropped (a full B does that work in its own recompute already).

    ``comm_f[s]`` / ``comm_b[s]``: the all-to-all inside ``f[s]`` / ``b[s]``; ``tp_f[s]`` /
    ``tp_b[s]``: the TP collectives inside them (serialised everywhere); ``phases[s]``: how the
    stage's MoE layers split into phases (``None``: one compute phase then one all-to-all).
    ``a2a_overlap``: the share of a lone op's all-to-all its framework hides behind its own
    compute (0: none, Megatron's default). An FB op without ``fb`` takes what ``overlap`` finds
    for its two chains; ``fb[s]`` (the pair whose forward is on stage s) overrides it.

    p2p: a boundary tensor leaving stage s has ``p2p_bytes[s]`` bytes, sent over its link at
    ``p2p_bandwidth`` bytes/s (shared by the link's transfers in flight), then ``hop[s]`` of
    latency. Without ``p2p_bandwidth`` the whole hop is the fixed ``hop[s]``.
    """

    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    hop: tuple[float, ...]
    fb: tuple[float, ...] | None = None
    w_recompute: tuple[float, ...] | None = None
    comm_f: tuple[float, ...] | None = None
    comm_b: tuple[float, ...] | None = None
    tp_f: tuple[float, ...] | None = None
    tp_b: tuple[float, ...] | None = None
    phases: tuple[Phases | None, ...] | None = None
    a2a_overlap: float = 0.0
    p2p_bytes: tuple[float, ...] | None = None
    p2p_bandwidth: float | None = None


def _chain(timing: Timing, s: int, kind: int) -> tuple[tuple[int, float], ...]:
    """The (stream, seconds) phases of one atom of stage s (module docstring): F runs the rest
    of its compute, then per MoE layer attention, dispatch, experts, combine; B the reverse."""
    whole = timing.f[s] if kind == KIND_F else timing.b[s] - (timing.w[s] if kind == KIND_BI else 0.0)
    comm = _at(timing.comm_f if kind == KIND_F else timing.comm_b, s)
    compute = whole - comm
    ph = timing.phases[s] if timing.phases is not None else None
    if ph is None or ph.layers == 0:
        if kind == KIND_F:
            return ((COMPUTE, compute), (NETWORK, comm))
        return ((NETWORK, comm), (COMPUTE, compute))
    n = ph.layers
    if kind == KIND_F:
        att, exp = ph.attention[0], ph.experts[0]
    elif kind == KIND_B:
        att, exp = ph.attention[1] + ph.attention[2], ph.experts[1] + ph.experts[2]
    else:
        att, exp = ph.attention[1], ph.experts[1]
    rest = max(compute - att - exp, 0.0)
    if kind == KIND_F:
        d, c = ph.a2a[0], ph.a2a[1]
        layer = ((COMPUTE, att / n), (NETWORK, d), (COMPUTE, exp / n), (NETWORK, c))
        return ((COMPUTE, rest),) + layer * n
    cg, dg = ph.a2a[2], ph.a2a[3]
    layer = ((NETWORK, cg), (COMPUTE, exp / n), (NETWORK, dg), (COMPUTE, att / n))
    return layer * n + ((COMPUTE, rest),)


def _at(values, s: int) -> float:
    return 0.0 if values is None else float(values[s])


@lru_cache(maxsize=4096)
def overlap(forward: tuple[tuple[int, float], ...], backward: tuple[tuple[int, float], ...]
            ) -> tuple[float, float]:
    """An FB op's two phase chains on the rank's compute and communication streams, simulated:
    ``(forward chain done, pair done)``, seconds from the op's start.

    Each stream serves one phase at a time, first come first served; a chain's next phase waits
    for its previous one. With one compute and one communication phase each this is

        max(F_compute, B_comm) + max(B_compute, F_comm)

    (each chain's communication hidden under the other's compute, the excess exposed)."""
    env = simpy.Environment()
    streams = (simpy.Resource(env, 1), simpy.Resource(env, 1))
    done = [0.0, 0.0]

    def run_chain(which, phases):
        for stream, seconds in phases:
            if seconds <= 0:
                continue
            with streams[stream].request() as turn:
                yield turn
                yield env.timeout(seconds)
        done[which] = env.now

    env.process(run_chain(0, forward))
    env.process(run_chain(1, backward))
    env.run()
    return done[0], max(done)


class Link:
    """A directed p2p link whose transfers in flight share its bandwidth equally.

    Each transfer's bytes drain at ``bandwidth / n`` while n are in flight (processor sharing,
    as NCCL's channels split one NVLink or InfiniBand path); a timer wakes the link when the
    first of them would finish, and every arrival or departure re-arms it."""

    __slots__ = ("env", "bandwidth", "flows", "clock", "timer")

    def __init__(self, env: simpy.Environment, bandwidth: float):
        self.env, self.bandwidth = env, bandwidth
        self.flows: dict[simpy.Event, float] = {}   # done event -> bytes still to send
        self.clock = 0.0                            # when ``flows`` were last brought up to date
        self.timer = None

    def send(self, nbytes: float) -> simpy.Event:
        """Start a transfer now; the event fires when its last byte has left."""
        done = self.env.event()
        self._settle()
        self.flows[done] = float(nbytes)
        self._arm()
        return done

    def _settle(self) -> None:
        now = self.env.now
        if self.flows and now > self.clock:
            sent = (now - self.clock) * self.bandwidth / len(self.flows)
            for k in self.flows:
                self.flows[k] -= sent
        self.clock = now

    def _arm(self) -> None:
        least = max(min(self.flows.values()), 0.0)
        self.timer = timer = self.env.timeout(least * len(self.flows) / self.bandwidth)
        timer.callbacks.append(self._expire)

    def _expire(self, timer) -> None:
        if timer is not self.timer:
            return                       # re-armed since: a later timer speaks for the link
        self._settle()
        least = min(self.flows.values())
        finished = [k for k, left in self.flows.items() if left <= least + 1e-6]
        for k in finished:
            del self.flows[k]
            k.succeed()
        if self.flows:
            self._arm()
        else:
            self.timer = None


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
    """One row per atom, rank-major in execution order (an FB op gives two rows)."""
    code = {"F": KIND_F, "B": KIND_B, "W": KIND_W}
    rank, seq, op_index, kind, chunk, mb, paired = [], [], [], [], [], [], []
    for r, ops in enumerate(schedule.ranks):
        n = 0
        for k, op in enumerate(ops):
            atoms = op.atoms()
            for half, a in enumerate(atoms):
                rank.append(r)
                seq.append(n)
                op_index.append(k)
                kind.append(KIND_BI if a.w_deferred else code[a.kind])
                chunk.append(a.chunk)
                mb.append(a.mb)
                paired.append(len(atoms) == 2 and half == 0)
                n += 1
    rank = np.array(rank, dtype=np.int32)
    chunk = np.array(chunk, dtype=np.int64)
    place = np.array(schedule.placement, dtype=np.int64)
    dirs = np.array(schedule.directions, dtype=np.int64)
    return _Flat(rank, np.array(seq, dtype=np.int64), np.array(op_index, dtype=np.int64),
                 np.array(kind, dtype=np.int8), place[rank, chunk].astype(np.int32),
                 chunk.astype(np.int32), dirs[rank, chunk].astype(np.int8),
                 np.array(mb, dtype=np.int32), np.array(paired, dtype=bool))


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


def _edges(schedule, flat: _Flat) -> tuple[np.ndarray, np.ndarray]:
    """``(dep, consumer)`` per atom: the cross-rank atom it receives its input from, and the one
    its output goes to (-1: none).

    An input produced earlier on the same rank is done before the rank reaches the consumer
    (the rank runs its atoms in order), so only cross-rank inputs can delay a start; under the
    rules of schedules.graph each atom has at most one (the boundary tensor). A same-rank input
    produced *later*, or by the other half of the same FB, can never arrive: that order
    deadlocks."""
    n = len(flat.kind)
    pairs = _dependencies(schedule, flat)
    cons = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros(0, np.int64)
    prod = np.concatenate([p for _, p in pairs]) if pairs else np.zeros(0, np.int64)
    cross = flat.rank[prod] != flat.rank[cons]
    # later on the rank, or the other half of the same FB (its two atoms start together)
    late = ~cross & ((flat.seq[prod] >= flat.seq[cons]) | (flat.op_index[prod] == flat.op_index[cons]))
    if late.any():
        i = cons[np.nonzero(late)[0][0]]
        r, k = int(flat.rank[i]), int(flat.op_index[i])
        raise ScheduleError(f"schedule {schedule.name!r} deadlocks: rank {r} op #{k} {schedule.ranks[r][k]} "
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
    return dep, consumer


def _durations(flat: _Flat, timing: Timing) -> tuple[np.ndarray, np.ndarray]:
    """Each atom's duration on its rank's compute stream, and the communication in it the
    stream waits on (``Timing``; FB pairs from ``overlap``)."""
    S = len(timing.f)
    zero = np.zeros(S)

    def per_stage(values):
        return zero if values is None else np.asarray(values, dtype=np.float64)

    f, b, w = (np.asarray(x, dtype=np.float64) for x in (timing.f, timing.b, timing.w))
    cf, cb, tf, tb = (per_stage(v) for v in (timing.comm_f, timing.comm_b, timing.tp_f, timing.tp_b))
    w_extra = per_stage(timing.w_recompute)
    whole = np.stack([f, b, b - w, w + w_extra], axis=1)        # (stage, kind)
    comm = np.stack([cf, cb, cb, zero], axis=1)                 # all-to-all; W has none
    tp = np.stack([tf, tb, tb, zero], axis=1)                   # TP collectives, on the stream
    st, kind = flat.stage, flat.kind
    hidden = timing.a2a_overlap * np.minimum(comm, whole - comm)
    dur = (whole - hidden)[st, kind]
    exposed = (comm - hidden + tp)[st, kind]
    pair_at = np.nonzero(flat.paired)[0]
    if timing.fb is not None:
        # an overlapped pair takes fb[stage of its forward], split F-then-B in proportion
        for i in pair_at.tolist():
            df, db = dur[i], dur[i + 1]
            scale = timing.fb[st[i]] / (df + db) if df + db > 0 else 0.0
            dur[i], dur[i + 1] = df * scale, db * scale
        exposed[pair_at] = exposed[pair_at + 1] = 0.0
        return dur, exposed
    for i in pair_at.tolist():
        sf, sb, kb = int(st[i]), int(st[i + 1]), int(kind[i + 1])
        f_done, total = overlap(_chain(timing, sf, KIND_F), _chain(timing, sb, kb))
        dur[i], dur[i + 1] = f_done, total - f_done
        busy = whole[sf, KIND_F] - comm[sf, KIND_F] + whole[sb, kb] - comm[sb, kb]
        exposed[i] = 0.0
        exposed[i + 1] = total - busy + tp[sf, KIND_F] + tp[sb, kb]
    return dur, exposed


def run(schedule, timing: Timing) -> Spans:
    """Simulate the step; return the spans of every atom. Raises ScheduleError on deadlock."""
    flat = _flatten(schedule)
    n = len(flat.kind)
    dep, consumer = _edges(schedule, flat)
    dur, exposed = _durations(flat, timing)
    env = simpy.Environment()
    starts: list = [None] * n
    arrived: list = [None] * n         # when atom i's output reaches its consumer
    waiter: list = [None] * n          # the event a consumer waits on for atom i's output
    latency = np.asarray(timing.hop, dtype=np.float64)[flat.stage].tolist()
    bandwidth = timing.p2p_bandwidth
    sizes = (np.zeros(n) if timing.p2p_bytes is None or bandwidth is None
             else np.asarray(timing.p2p_bytes, dtype=np.float64)[flat.stage]).tolist()
    rank_of, depl, consl, durl = flat.rank.tolist(), dep.tolist(), consumer.tolist(), dur.tolist()
    links: dict[tuple[int, int], Link] = {}

    def arrive(i: int, at: float) -> None:
        arrived[i] = at
        ev = waiter[i]
        if ev is not None:
            waiter[i] = None
            ev.succeed()

    def send(i: int) -> None:
        """Atom i's output leaves for its consumer: over the link, then the latency."""
        if sizes[i] <= 0:
            arrive(i, env.now + latency[i])
            return
        key = (rank_of[i], rank_of[consl[i]])
        link = links.get(key)
        if link is None:
            link = links[key] = Link(env, bandwidth)
        link.send(sizes[i]).callbacks.append(lambda _ev: arrive(i, env.now + latency[i]))

    def wait_for(p: int):
        """Until atom p's output has arrived."""
        at = arrived[p]
        if at is None:
            ev = waiter[p] = env.event()
            yield ev
            at = arrived[p]
        if at > env.now:
            yield env.timeout(at - env.now)

    def rank(lo: int, hi: int, paired: list):
        i = lo
        while i < hi:
            last = i + 1 if paired[i - lo] else i      # an FB's two atoms start together
            for a in range(i, last + 1):
                if depl[a] >= 0:
                    yield from wait_for(depl[a])
            for a in range(i, last + 1):
                starts[a] = env.now
                yield env.timeout(durl[a])
                if consl[a] >= 0:
                    send(a)
            i = last + 1

    bounds = np.searchsorted(flat.rank, np.arange(len(schedule.ranks) + 1)).tolist()
    procs = [env.process(rank(bounds[r], bounds[r + 1], flat.paired[bounds[r]:bounds[r + 1]].tolist()))
             for r in range(len(schedule.ranks))]
    env.run()
    stuck = [r for r, proc in enumerate(procs) if proc.is_alive]
    if stuck:
        lines = []
        for r in stuck:
            i = next(i for i in range(bounds[r], bounds[r + 1]) if starts[i] is None)
            k = int(flat.op_index[i])
            both = (i, i + 1) if flat.paired[i] else (i,)
            waits = [_label(schedule, flat, int(dep[a])) for a in both if dep[a] >= 0 and arrived[dep[a]] is None]
            lines.append(f"rank {r} op #{k} {schedule.ranks[r][k]} waits for {', '.join(waits)}")
        raise ScheduleError(f"schedule {schedule.name!r} deadlocks; no rank can go on:\n  " + "\n  ".join(lines))
    start = np.array(starts, dtype=np.float64)
    arrival = np.array([np.nan if a is None else a for a in arrived], dtype=np.float64)
    return Spans(flat.rank, flat.op_index, flat.kind, flat.stage, flat.chunk,
                 flat.direction, flat.mb, start, start + dur, consumer, dep, arrival, exposed)


def _label(schedule, flat: _Flat, i: int) -> str:
    """Atom i as people read it, e.g. ``F(stage 0, mb 1) on rank 0 chunk 0``."""
    family = "FBW"[_FAMILY_OF_KIND[flat.kind[i]]]
    return label((family, int(flat.stage[i]), int(flat.direction[i]), int(flat.mb[i])), schedule)


def exposed_comm(spans: Spans, ranks: int) -> np.ndarray:
    """Seconds per rank its compute stream waits on its own communication (all-to-all run
    serialised or sticking out of an FB's other half, TP collectives)."""
    return np.bincount(spans.rank, weights=spans.exposed_comm, minlength=ranks)


def unit_times(schedule, F: float = 1.0, B: float = 2.0, W: float = 1.0, FB: float | None = None
               ) -> tuple[list[list[tuple[float, float]]], float]:
    """The run with fixed op times and no communication, per op: ``spans[r][i]`` is the
    (start, end) of ``schedule.ranks[r][i]``, and the makespan. ``B`` is a full backward (a B
    deferring its W takes ``B - W``), ``FB`` an overlapped pair (default ``F + B``). This is
    what the papers' bubble formulas assume: the closed-form tests and the text grid use it."""
    if B - W < 0:
        raise ScheduleError(f"durations need B (full backward) >= W, got B={B}, W={W}")
    S = schedule.num_stages
    timing = Timing(f=(float(F),) * S, b=(float(B),) * S, w=(float(W),) * S, hop=(0.0,) * S,
                    fb=None if FB is None else (float(FB),) * S)
    sp = run(schedule, timing)
    spans: list[list[tuple[float, float]]] = [[] for _ in schedule.ranks]
    for r, k, s, e in zip(sp.rank.tolist(), sp.op_index.tolist(), sp.start.tolist(), sp.end.tolist()):
        row = spans[r]
        if len(row) == k + 1:                      # an FB's second atom extends its op
            row[k] = (row[k][0], e)
        else:
            row.append((s, e))
    makespan = float(sp.end.max()) if len(sp.end) else 0.0
    return spans, makespan


def bubbles(spans: list[list[tuple[float, float]]], makespan: float) -> list[float]:
    """Idle time per rank of a ``unit_times`` run: ``makespan - busy``."""
    return [makespan - sum(e - s for s, e in rank) for rank in spans]


def critical_path(spans: Spans) -> list[int]:
    """The atoms (indices into ``spans``) of the longest chain, first to last: from the atom
    that ends last, back through whatever each one waited for — its rank's previous atom, or
    the cross-rank input that arrived last (ties go to the input: the chain across ranks)."""
    n = len(spans.start)
    if n == 0:
        return []
    eps = 1e-12 * max(1.0, float(spans.end.max()))
    i = int(np.argmax(spans.end))
    path = [i]
    while True:
        s = spans.start[i]
        preds = [i]
        if i + 1 < n and spans.rank[i + 1] == spans.rank[i] and spans.op_index[i + 1] == spans.op_index[i]:
            preds.append(i + 1)                    # an FB's forward half waits for both inputs
        inputs_ = [p for q in preds for p in (int(spans.producer[q]),) if p >= 0
                   and abs(spans.arrival[p] - s) <= eps]
        if inputs_:
            i = inputs_[0]
        elif i > 0 and spans.rank[i - 1] == spans.rank[i] and abs(spans.end[i - 1] - s) <= eps:
            i -= 1
        else:
            break
        path.append(i)
    return path[::-1]
