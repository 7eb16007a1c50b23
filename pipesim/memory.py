"""The memory ledger: every allocation and release as ``(time, rank, category, bytes)``.

SimPy decides *when* each op runs (``pipesim.simulator``); this module decides *what memory*
each op moves, without any SimPy events: an op of a given kind on a given stage always moves
the same bytes at the same fractions of its duration, so each (stage, kind) gets one template
``(fraction of the op's duration, category, delta bytes)`` and the ledger is the templates laid
over the op spans with numpy. Inside an op, layer j occupies the share of the op's duration
equal to its share of the op's FLOPs.

Lifetimes (per layer j of a stage, per micro-batch):
- activations: ``+stored_j`` when layer j's forward starts; released when its backward ends,
  or, when the schedule splits B and W, ``stored_j - w_j`` at B's end and ``w_j`` at W's end.
- workspace: the forward/backward transient working set, held while layer j runs.
- recompute: re-materialised activations, held while layer j's backward runs.
- a2a: EP dispatch + combine buffers while an MoE layer runs (forward and backward).
- gather: ZeRO os+g+params all-gathered weights of the running layer.
- logits: the head's FP32 logits, from the head's forward to the end of its backward (the loss
  gradient needs the softmax).
- p2p: a stage-boundary tensor in transit: on the sender from its op's end to arrival, on the
  receiver from arrival until the consuming op starts (it then becomes that op's input).
- weights, grads, optimizer, comm_buffers: static, from t = 0.
Fragmentation is not a ledger entry: it is ``fraction × allocated`` and is added by ``Result``.
Every delta is rounded up to the allocator's granularity, the same on allocation and release.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def round_up(nbytes: int, granularity: int) -> int:
    """Allocator rounding: ``ceil(n / g) * g`` (0 stays 0)."""
    return -(-nbytes // granularity) * granularity


def _shares(weights: list[float]) -> list[tuple[float, float]]:
    """Consecutive [t0, t1) fractions of 1.0 in proportion to ``weights`` (equal if all zero)."""
    total = float(sum(weights))
    n = len(weights)
    out, acc = [], 0.0
    for w in weights:
        step = (w / total) if total > 0 else 1.0 / n
        out.append((acc, min(1.0, acc + step)))
        acc += step
    if out:
        out[-1] = (out[-1][0], 1.0)
    return out


def build_templates(stage, recompute_flops, granularity: int) -> dict[int, Template]:
    """Templates for F, B (full), BI (input-grad only) and W of one stage.

    ``stage`` is a ``pipesim.model.StageCosts``; ``recompute_flops[j]`` is the forward work
    layer j repeats during its backward (0 without recomputation).
    """
    r = lambda n: round_up(int(n), granularity)  # noqa: E731
    layers = stage.layers
    rows: dict[int, list[tuple[float, str, int]]] = {k: [] for k in (KIND_F, KIND_B, KIND_BI, KIND_W)}

    def running(rows_, t0, t1, cat, nbytes):
        if nbytes:
            rows_.append((t0, cat, r(nbytes)))
            rows_.append((t1, cat, -r(nbytes)))

    gather = stage.gather_bytes
    # Forward: layers in order.
    for L, (t0, t1) in zip(layers, _shares([L.flops_f for L in layers])):
        fw = rows[KIND_F]
        if L.stored_bytes:
            fw.append((t0, "activations", r(L.stored_bytes)))
        if L.name == "head" and stage.logits_bytes:
            fw.append((t0, "logits", r(stage.logits_bytes)))
        running(fw, t0, t1, "workspace", L.forward_transient_bytes)
        running(fw, t0, t1, "a2a", L.a2a_bytes)
        running(fw, t0, t1, "gather", gather)
    # Backward: layers in reverse; full B also does the weight-gradient work.
    for kind, with_w in ((KIND_B, True), (KIND_BI, False)):
        rev = layers[::-1]
        rc = recompute_flops[::-1]
        work = [L.flops_b + (L.flops_w if with_w else 0) + f for L, f in zip(rev, rc)]
        for L, (t0, t1) in zip(rev, _shares(work)):
            bw = rows[kind]
            running(bw, t0, t1, "recompute", L.recompute_bytes)
            running(bw, t0, t1, "workspace", L.backward_transient_bytes)
            running(bw, t0, t1, "a2a", L.a2a_bytes)
            running(bw, t0, t1, "gather", gather)
            freed = r(L.stored_bytes) - (0 if with_w else r(L.w_bytes))
            if freed:
                bw.append((t1, "activations", -freed))
            if L.name == "head" and stage.logits_bytes:
                bw.append((t1, "logits", -r(stage.logits_bytes)))
    # W: layers in reverse, releasing what only the weight gradient needed.
    rev = layers[::-1]
    for L, (t0, t1) in zip(rev, _shares([L.flops_w for L in rev])):
        if L.w_bytes:
            rows[KIND_W].append((t1, "activations", -r(L.w_bytes)))

    out = {}
    for kind, rs in rows.items():
        out[kind] = Template(np.array([x[0] for x in rs], dtype=np.float64),
                             np.array([CAT[x[1]] for x in rs], dtype=np.int8),
                             np.array([x[2] for x in rs], dtype=np.int64))
    return out


@dataclass(frozen=True)
class Ledger:
    """All memory records, sorted per rank in causal order. Arrays of equal length."""

    time: np.ndarray      # float64 seconds
    rank: np.ndarray      # int32
    cat: np.ndarray       # int8
    delta: np.ndarray     # int64 bytes
    atom: np.ndarray      # int64: index into the span table of the atom that made it (-1 static)

    def __len__(self) -> int:
        return len(self.time)


def build_ledger(spans, templates, static_bytes, p2p_records) -> Ledger:
    """Lay the templates over the op spans and add static and p2p records.

    ``spans``: ``pipesim.simulator.Spans`` (one row per atom, in each rank's execution order);
    ``templates[(stage, kind)]``; ``static_bytes[rank][category]``; ``p2p_records``: tuple of
    arrays ``(time, rank, delta, atom, order)`` where ``order`` places the record before (-1)
    or after (+1) its atom's own template records at equal times.
    """
    times, ranks, cats, deltas, atoms, seqs, poss = [], [], [], [], [], [], []
    n_atoms = len(spans.start)
    group = spans.stage.astype(np.int64) * 4 + spans.kind
    for g in np.unique(group):
        idx = np.nonzero(group == g)[0]
        tpl = templates[(int(g) // 4, int(g) % 4)]
        m = len(tpl.delta)
        if m == 0:
            continue
        dur = (spans.end[idx] - spans.start[idx])[:, None]
        times.append((spans.start[idx][:, None] + tpl.frac[None, :] * dur).ravel())
        ranks.append(np.repeat(spans.rank[idx], m))
        cats.append(np.tile(tpl.cat, len(idx)))
        deltas.append(np.tile(tpl.delta, len(idx)))
        atoms.append(np.repeat(idx, m))
        seqs.append(np.repeat(spans.seq[idx], m))
        poss.append(np.tile(np.arange(m), len(idx)))
    # Static categories at t = 0, before anything else.
    for rank, by_cat in enumerate(static_bytes):
        for name, nbytes in by_cat.items():
            if nbytes:
                times.append(np.zeros(1)); ranks.append(np.array([rank])); cats.append(np.array([CAT[name]]))
                deltas.append(np.array([nbytes])); atoms.append(np.array([-1])); seqs.append(np.array([-1]))
                poss.append(np.array([0]))
    p_time, p_rank, p_delta, p_atom, p_order = p2p_records
    if len(p_time):
        times.append(p_time); ranks.append(p_rank); cats.append(np.full(len(p_time), CAT["p2p"]))
        deltas.append(p_delta); atoms.append(p_atom); seqs.append(spans.seq[p_atom])
        poss.append(np.where(p_order < 0, -1, 1 << 30))
    time = np.concatenate(times)
    rank = np.concatenate(ranks).astype(np.int32)
    order = np.lexsort((np.concatenate(poss), np.concatenate(seqs), time, rank))
    atom = np.concatenate(atoms).astype(np.int64)
    assert n_atoms == 0 or atom.max() < n_atoms
    return Ledger(time[order], rank[order], np.concatenate(cats).astype(np.int8)[order],
                  np.concatenate(deltas).astype(np.int64)[order], atom[order])
