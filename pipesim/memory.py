"""The memory ledger: every allocation and release as ``(time, rank, category, bytes)``.

SimPy decides *when* each op runs (``pipesim.simulator``); this module decides *what memory*
each op moves, without any SimPy events: an op of a given kind on a given stage always moves
the same bytes at the same fractions of its duration, so each (stage, kind) gets one template
``(fraction of the op's duration, category, delta bytes)`` and the ledger is the templates laid
over the op spans with numpy. Inside an op, layer j occupies the share of the op's duration
equal to its share of the op's FLOPs.

Lifetimes (per layer j of a stage, per micro-batch):
- activations: ``+stored_j`` when layer j's forward starts; released when its backward ends,
  or, when the schedule splits B and W, ``stored_j - w_j`` at B's end and ``w_j`` at W's end;
  a split B also leaves the output gradients of layer j's weight matmuls (``w_grad_outputs_j``)
  from its end to W's end, and a W under recomputation re-materialises the weight inputs that
  were dropped (``w_recompute_j``, held while layer j's W runs, category recompute).
- workspace: the forward/backward transient working set, held while layer j runs.
- recompute: re-materialised activations, held while layer j's backward runs.
- a2a: EP dispatch + combine buffers while an MoE layer runs (forward and backward).
- gather: ZeRO os+g+params all-gathered weights of the running layer.
- logits: the head's FP32 logits, from the head's forward to the end of its backward (the loss
  gradient needs the softmax).
- p2p: stage-boundary tensors between ranks. The host takes and returns these buffers between
  ops, so they change only at op boundaries (a "slot" between two consecutive atoms of a rank;
  an FB's two halves are two atoms): the sender holds an atom's output from that atom's end
  until the start of the first atom it runs after the transfer has arrived (or, with nothing
  left to run, until arrival or its last end, whichever is later); the receiver posts its
  receive buffer when the op before the consuming op ends (at t = 0 if there is none; an FB is
  one op, so both its inputs are posted before it) and hands it over when the consuming atom
  starts. In a slot, allocations come before releases (they are never later in time).
- an FB (DualPipe's overlapped pair): DeepSeek-V3 interleaves the two micro-batches' forward
  and backward chunk by chunk, so their working sets coexist. Each half is laid at its own span
  (the simulator splits the FB's time F-then-B), and holds, for its whole span, the other
  half's largest transient (workspace, recompute, a2a, gather: ``overlapped``), an upper bound
  of the interleaving.
- weights, grads, optimizer, comm_buffers: static, from t = 0.
Fragmentation is not a ledger entry: it is ``fraction × allocated`` and is added by ``Result``.
Every delta is rounded up to the allocator's granularity, the same on allocation and release.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

GIB = 2 ** 30   # bytes; the paper's "GB". Bytes stay integers inside, GiB appear only at the edges.

CATEGORIES = ("weights", "grads", "optimizer", "comm_buffers", "activations", "recompute",
              "workspace", "a2a", "gather", "logits", "p2p")
STATIC = ("weights", "grads", "optimizer", "comm_buffers")
CAT = {name: i for i, name in enumerate(CATEGORIES)}

# Atom kinds as small ints for numpy: F, full B, input-grad-only B (W deferred), W.
KIND_F, KIND_B, KIND_BI, KIND_W = 0, 1, 2, 3


@dataclass(frozen=True)
class Template:
    """What one atom of a (stage, kind) does to memory, relative to its span."""

    frac: np.ndarray      # float64, fraction of the op's duration, nondecreasing
    cat: np.ndarray       # int8 category index
    delta: np.ndarray     # int64 bytes (+ allocate, - release)
    layer: np.ndarray     # int32: index into the stage's layers (-1: an FB partner's transient)


def round_up(nbytes: int, granularity: int) -> int:
    """Allocator rounding: ``ceil(n / g) * g`` (0 stays 0)."""
    return -(-nbytes // granularity) * granularity


def _shares(weights: list[float]) -> list[tuple[float, float]]:
    """Consecutive [t0, t1) fractions of 1.0 in proportion to ``weights`` (equal if all zero).

    Boundaries are prefix sums divided by the total, so they are nondecreasing by construction
    and the last is exactly 1.0: a running sum of rounded steps could pass 1.0 and put a
    zero-work layer's release before its allocation.
    """
    n = len(weights)
    prefix = list(itertools.accumulate((float(w) for w in weights), initial=0.0))
    total = prefix[-1]
    bounds = [p / total for p in prefix] if total > 0 else [k / n for k in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def build_templates(stage, recompute_flops, granularity: int) -> dict[int, Template]:
    """Templates for F, B (full), BI (input-grad only) and W of one stage.

    ``stage`` is a ``pipesim.model.StageCosts``; ``recompute_flops[j]`` is the forward work
    layer j repeats during its backward (0 without recomputation).
    """
    r = lambda n: round_up(int(n), granularity)  # noqa: E731
    layers = stage.layers
    rows: dict[int, list[tuple[float, str, int, int]]] = {k: [] for k in (KIND_F, KIND_B, KIND_BI, KIND_W)}

    def running(rows_, t0, t1, cat, nbytes, j):
        if nbytes:
            rows_.append((t0, cat, r(nbytes), j))
            rows_.append((t1, cat, -r(nbytes), j))

    gather = stage.gather_bytes
    # Forward: layers in order.
    for j, (L, (t0, t1)) in enumerate(zip(layers, _shares([L.flops_f for L in layers]))):
        fw = rows[KIND_F]
        if L.stored_bytes:
            fw.append((t0, "activations", r(L.stored_bytes), j))
        if L.logits_bytes:
            fw.append((t0, "logits", r(L.logits_bytes), j))
        running(fw, t0, t1, "workspace", L.forward_transient_bytes, j)
        running(fw, t0, t1, "a2a", L.a2a_bytes, j)
        running(fw, t0, t1, "gather", gather, j)
    # Backward: layers in reverse; full B also does the weight-gradient work.
    for kind, with_w in ((KIND_B, True), (KIND_BI, False)):
        rev = layers[::-1]
        rc = recompute_flops[::-1]
        work = [L.flops_b + (L.flops_w if with_w else 0) + f for L, f in zip(rev, rc)]
        for k, (L, (t0, t1)) in enumerate(zip(rev, _shares(work))):
            j = len(layers) - 1 - k
            bw = rows[kind]
            running(bw, t0, t1, "recompute", L.recompute_bytes, j)
            running(bw, t0, t1, "workspace", L.backward_transient_bytes, j)
            running(bw, t0, t1, "a2a", L.a2a_bytes, j)
            running(bw, t0, t1, "gather", gather, j)
            freed = r(L.stored_bytes) - (0 if with_w else r(L.w_bytes))
            if freed:
                bw.append((t1, "activations", -freed, j))
            if not with_w and L.w_grad_outputs_bytes:     # dY of every matmul, until W
                bw.append((t1, "activations", r(L.w_grad_outputs_bytes), j))
            if L.logits_bytes:
                bw.append((t1, "logits", -r(L.logits_bytes), j))
    # W: layers in reverse, releasing what only the weight gradient needed.
    rev = layers[::-1]
    for k, (L, (t0, t1)) in enumerate(zip(rev, _shares([L.flops_w for L in rev]))):
        j = len(layers) - 1 - k
        running(rows[KIND_W], t0, t1, "recompute", L.w_recompute_bytes, j)
        released = r(L.w_bytes) + (r(L.w_grad_outputs_bytes) if L.w_grad_outputs_bytes else 0)
        if released:
            rows[KIND_W].append((t1, "activations", -released, j))

    out = {}
    for kind, rs in rows.items():
        # Time order inside the op; a stable sort keeps causal order at equal times (a layer's
        # releases at its end come before the next layer's allocations at the same instant).
        rs = sorted(rs, key=lambda x: x[0])
        out[kind] = Template(np.array([x[0] for x in rs], dtype=np.float64),
                             np.array([CAT[x[1]] for x in rs], dtype=np.int8),
                             np.array([x[2] for x in rs], dtype=np.int64),
                             np.array([x[3] for x in rs], dtype=np.int32))
    return out


TRANSIENT = ("workspace", "recompute", "a2a", "gather")


def transient_peak(tpl: Template) -> int:
    """The largest level a template's transient categories reach (0 if none)."""
    sel = np.isin(tpl.cat, [CAT[c] for c in TRANSIENT])
    return int(max(0, np.cumsum(tpl.delta[sel]).max(initial=0)))


def overlapped(tpl: Template, partner: Template) -> Template:
    """``tpl`` with the partner half's largest transient held from its start to its end."""
    extra = transient_peak(partner)
    if not extra:
        return tpl
    ws = CAT["workspace"]
    return Template(np.concatenate([[0.0], tpl.frac, [1.0]]),
                    np.concatenate([[ws], tpl.cat, [ws]]).astype(np.int8),
                    np.concatenate([[extra], tpl.delta, [-extra]]).astype(np.int64),
                    np.concatenate([[-1], tpl.layer, [-1]]).astype(np.int32))


def atom_templates(spans, templates: dict) -> tuple[np.ndarray, list[Template]]:
    """Each atom's template as an index into a list of distinct templates.

    An atom uses its (stage, kind) template, or, as one half of an FB (two consecutive atoms of
    one op on a rank), that template ``overlapped`` with its partner's. Equal templates (stages
    of one shape share theirs) get one index, so callers work each out once.
    """
    n = len(spans.start)
    key = spans.stage.astype(np.int64) * 4 + spans.kind
    partner = np.full(n, -1, dtype=np.int64)
    if n > 1:
        pair = np.nonzero((spans.op_index[1:] == spans.op_index[:-1])
                          & (spans.rank[1:] == spans.rank[:-1]))[0]
        partner[pair], partner[pair + 1] = key[pair + 1], key[pair]
    width = int(key.max()) + 2 if n else 1          # partner + 1 < width: a mixed-radix code
    code = key * width + (partner + 1)
    uniq, inverse = np.unique(code, return_inverse=True)
    distinct, by_id, lut = [], {}, np.empty(len(uniq), np.int64)
    for i, c in enumerate(uniq.tolist()):
        own, other = divmod(c, width)
        t = templates[(own // 4, own % 4)]
        if other:
            u = other - 1
            t = overlapped(t, templates[(u // 4, u % 4)])
        ident = (t.frac.tobytes(), t.cat.tobytes(), t.delta.tobytes(), t.layer.tobytes())   # equal by value
        lut[i] = by_id.setdefault(ident, len(distinct))
        if lut[i] == len(distinct):
            distinct.append(t)
    return lut[inverse.reshape(-1)], distinct


@dataclass(frozen=True)
class Ledger:
    """All memory records, per rank in causal order (rank-major). Arrays of equal length."""

    time: np.ndarray      # float64 seconds
    rank: np.ndarray      # int32
    cat: np.ndarray       # int8
    delta: np.ndarray     # int64 bytes
    atom: np.ndarray      # int64: index into the span table of the atom that made it (-1 static)
    layer: np.ndarray     # int32: index into the atom's stage's layers (-1: static, p2p, an FB
                          # partner's transient)

    def __len__(self) -> int:
        return len(self.time)


@dataclass(frozen=True)
class P2PBuffers:
    """The two buffers of every cross-rank edge (lifetimes in the module docstring), by edge.

    Positions are slots between a rank's atoms: slot ``a + rank[a]`` is "just before atom a",
    where ``a`` may be one past the rank's last atom (the slot after it); the ``+ rank`` keeps one
    rank's end apart from the next rank's start. In a slot, allocations (sends, then receives)
    come before releases (sends, then receives).
    """

    send: np.ndarray           # producer atoms
    send_rank: np.ndarray
    send_bytes: np.ndarray
    sent_time: np.ndarray      # the producer's end; slot: send + 1 + rank
    release_slot: np.ndarray
    release_time: np.ndarray
    recv: np.ndarray           # consumer atoms
    recv_rank: np.ndarray
    recv_bytes: np.ndarray
    posted_slot: np.ndarray    # before the consumer's op (an FB's first half)
    posted_time: np.ndarray    # the end of the op before it (0: none)
    consumed_time: np.ndarray  # the consumer's start; slot: recv + rank

    @property
    def sent_slot(self) -> np.ndarray:
        return self.send + 1 + self.send_rank

    @property
    def recv_slot(self) -> np.ndarray:
        return self.recv + self.recv_rank

    def records(self) -> tuple[np.ndarray, ...]:
        """``(time, rank, delta, slot, atom)`` of every allocation and release, in ledger order."""
        time = np.concatenate([self.sent_time, self.posted_time, self.release_time, self.consumed_time])
        rank = np.concatenate([self.send_rank, self.recv_rank, self.send_rank, self.recv_rank])
        delta = np.concatenate([self.send_bytes, self.recv_bytes, -self.send_bytes, -self.recv_bytes])
        slot = np.concatenate([self.sent_slot, self.posted_slot, self.release_slot, self.recv_slot])
        atom = np.concatenate([self.send, self.recv, self.send, self.recv])
        release = np.repeat([0, 0, 1, 1], [len(self.send), len(self.recv)] * 2)
        order = np.argsort(slot * 2 + release, kind="stable")      # four runs, each in slot order
        return time[order], rank[order], delta[order], slot[order], atom[order]


def p2p_buffers(spans, boundary_bytes) -> P2PBuffers:
    """The p2p buffers of every cross-rank edge (see the module docstring for their lifetimes).

    Per edge producer p -> consumer c (b = the boundary bytes of p's stage), with c0 the first
    atom of c's op (c - 1 when c is the backward half of an FB, else c):
        sender:   +b at end[p], slot after p;   -b at start[q], slot before q, q the first atom
                  after p with start[q] >= arrival (none: at max(arrival, rank's last end), last slot)
        receiver: +b at end[c0 - 1], slot before c0 (t = 0 if c0 is the rank's first atom);
                  -b at start[c], slot before c
    """
    rank = spans.rank.astype(np.int64)
    n, ranks = len(rank), (int(rank.max()) + 1 if len(rank) else 0)
    bounds = np.searchsorted(rank, np.arange(ranks + 1))
    nbytes = np.asarray(boundary_bytes, dtype=np.int64)
    send = np.nonzero(spans.consumer >= 0)[0]
    recv = np.nonzero(spans.producer >= 0)[0]
    send_rank, recv_rank = rank[send], rank[recv]
    # the first atom after p that starts no earlier than the arrival (starts never decrease
    # along a rank, so a binary search per rank finds it)
    arrival = spans.arrival[send]
    q = np.empty(len(send), dtype=np.int64)
    by_rank = np.searchsorted(send_rank, np.arange(ranks + 1))
    for r in range(ranks):
        sel = slice(by_rank[r], by_rank[r + 1])
        lo, hi = bounds[r], bounds[r + 1]
        q[sel] = lo + np.searchsorted(spans.start[lo:hi], arrival[sel], "left")
    q = np.maximum(q, send + 1)
    last = bounds[send_rank + 1]                     # one past the sender rank's last atom
    release = np.where(q < last, spans.start[np.minimum(q, n - 1)],
                       np.maximum(arrival, spans.end[last - 1]))
    # an FB is one op: the input of its backward half is posted before its forward half
    prev = np.maximum(recv - 1, 0)
    in_pair = (recv > bounds[recv_rank]) & (spans.op_index[prev] == spans.op_index[recv])
    first = np.where(in_pair, recv - 1, recv)
    posted = np.where(bounds[recv_rank] == first, 0.0, spans.end[np.maximum(first - 1, 0)])
    return P2PBuffers(send, send_rank, nbytes[spans.stage[send]], spans.end[send], q + send_rank,
                      release, recv, recv_rank, nbytes[spans.stage[spans.producer[recv]]],
                      first + recv_rank, posted, spans.start[recv])


def build_ledger(spans, templates, static_bytes, p2p: P2PBuffers) -> Ledger:
    """Lay the templates over the op spans and merge in static and p2p records.

    ``spans``: ``pipesim.simulator.Spans`` (one row per atom, rank-major, in execution order);
    ``templates[(stage, kind)]``; ``static_bytes[rank][category]``; ``p2p``: ``p2p_buffers``.

    A rank runs its atoms one after another, so laying each atom's (time-sorted) template at its
    span yields a stream already in causal order: no sort is needed. The p2p records go into
    their slots between atoms.
    """
    n_atoms = len(spans.start)
    tlen = np.zeros(n_atoms, dtype=np.int64)
    groups = {}
    tid, distinct = atom_templates(spans, templates)
    for g, tpl in enumerate(distinct):
        idx = np.nonzero(tid == g)[0]
        tlen[idx] = len(tpl.delta)
        groups[g] = (idx, tpl)
    n_static = [sum(1 for v in by_cat.values() if v) for by_cat in static_bytes]
    ranks = len(static_bytes)
    # Rank r's block: its static records, then its atoms' template records in atom order.
    rank_of_atom = spans.rank.astype(np.int64)
    per_rank_tpl = np.bincount(rank_of_atom, weights=tlen, minlength=ranks).astype(np.int64)
    block = np.array(n_static, dtype=np.int64) + per_rank_tpl
    block_start = np.concatenate([[0], np.cumsum(block)[:-1]])
    total = int(block.sum())
    # Offset of each atom's first record: the template records of all earlier atoms plus the
    # static records of its own and earlier ranks (blocks and atoms are both rank-major).
    atom_off = (np.cumsum(tlen) - tlen) + np.cumsum(n_static)[rank_of_atom]
    time = np.zeros(total)
    rank = np.repeat(np.arange(ranks, dtype=np.int32), block)
    cat = np.zeros(total, dtype=np.int8)
    delta = np.zeros(total, dtype=np.int64)
    atom = np.full(total, -1, dtype=np.int64)
    layer = np.full(total, -1, dtype=np.int32)
    for r, by_cat in enumerate(static_bytes):
        at = block_start[r]
        for name, nbytes in by_cat.items():
            if nbytes:
                cat[at], delta[at] = CAT[name], nbytes
                at += 1
    for idx, tpl in groups.values():
        m = len(tpl.delta)
        if m == 0:
            continue
        where = (atom_off[idx][:, None] + np.arange(m)[None, :]).ravel()
        dur = (spans.end[idx] - spans.start[idx])[:, None]
        time[where] = (spans.start[idx][:, None] + tpl.frac[None, :] * dur).ravel()
        cat[where] = np.tile(tpl.cat, len(idx))
        delta[where] = np.tile(tpl.delta, len(idx))
        atom[where] = np.repeat(idx, m)
        layer[where] = np.tile(tpl.layer, len(idx))
    p_time, p_rank, p_delta, p_slot, p_atom = p2p.records()
    if len(p_time):
        # slot a + r (before atom a of rank r) sits at atom a's first record; the slot after a
        # rank's last atom at the end of its block
        a = p_slot - p_rank
        after_last = a == np.searchsorted(rank_of_atom, p_rank, "right")
        first_record = np.append(atom_off, 0)[np.where(after_last, n_atoms, a)]
        pos = np.where(after_last, block_start[p_rank] + block[p_rank], first_record)
        time = np.insert(time, pos, p_time)
        rank = np.insert(rank, pos, p_rank.astype(np.int32))
        cat = np.insert(cat, pos, CAT["p2p"])
        delta = np.insert(delta, pos, p_delta)
        atom = np.insert(atom, pos, p_atom)
        layer = np.insert(layer, pos, -1)
    return Ledger(time, rank, cat, delta, atom, layer)
