"""A measured pipeline step beside pipesim's simulation of the same step, rank by rank.

Op order. Every rank's executed actions (what the ``Recorder`` saw) become pipesim ops: torch's
F → ``F``, B (full backward) → ``B``, I (input-gradient backward) → ``B`` with ``w_deferred``,
W → ``W``; the chunk is the stage's position on its rank (``Schedule.stage``). A pair torch lists
as one OVERLAP_F_B in its ``pipeline_order`` (DualPipeV) becomes one ``FB`` op; torch runs its
two halves one after the other, F first, as pipesim lays them. That order is compared with
``schedules.build``'s, and pipesim simulates torch's order (``pipesim.simulate(sc, schedule=...)``),
so what is scored is the memory model, not a difference of order. Torch's own ``pipeline_order``
is compared with what ran as well: for the single-stage schedules it is only a description.

Activation levels on one axis. Both sides are read after every atom of a rank, in the rank's
order (an FB gives two atoms): measured, the saved bytes (and, between an I and its W, the
output gradients kept for W; ``fidelity.pipeline_record``) after each action; predicted, the
running sum of the atom templates' ``activations`` and ``logits`` deltas (pipesim keeps the
head's FP32 softmax, which autograd saves for the loss, in ``logits``), checked against
``Result.timeline``. A rank's peak is the highest level inside any atom; the action at the peak
is the first atom that reaches it (as ``Result.peaks`` takes the first record). Curve error:
mean over atoms of |predicted − measured| after each atom, divided by the measured peak.

    from fidelity.pipeline_score import score_schedule
    rows, detail = score_schedule(name, results)      # results: the ranks' JSON dicts
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import pipesim
from schedules.ops import B, F, FB, W, Op, Schedule
from pipesim.memory import CAT, KIND_B, KIND_BI, KIND_F, KIND_W

__all__ = ["Comparison", "RankScore", "order_differences", "predicted_levels", "score_schedule", "torch_schedule"]

KIND_NAMES = {KIND_F: "F", KIND_B: "B", KIND_BI: "I", KIND_W: "W"}
SAVED_CATEGORIES = ("activations", "logits")


@dataclass(frozen=True)
class RankScore:
    schedule: str
    rank: int
    stages: tuple[int, ...]
    measured: int              # peak saved bytes
    predicted: int             # peak of pipesim's activations + logits
    measured_at: str           # first action reaching the peak, e.g. "F mb 3 stage 0"
    predicted_at: str
    measured_index: int        # its index on the rank's action axis
    predicted_index: int
    curve_error: float         # mean |pred - meas| after each action / measured peak
    per_mb_stage: dict         # stage -> measured bytes one micro-batch's F leaves on it
    per_mb_predicted: int      # pipesim's bytes of one micro-batch's F, summed over the rank's stages

    @property
    def per_mb_measured(self) -> int:
        return sum(self.per_mb_stage.values())

    @property
    def per_mb_error_pct(self) -> float:
        return 100.0 * (self.per_mb_predicted - self.per_mb_measured) / self.per_mb_measured

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted - self.measured) / self.measured


@dataclass(frozen=True)
class Comparison:
    """A whole schedule: its rank scores, the per-rank curves and the order comparison."""

    name: str
    ranks: tuple[RankScore, ...]
    measured_curves: tuple[np.ndarray, ...]     # per rank: level after each action
    predicted_curves: tuple[np.ndarray, ...]
    tokens: tuple[tuple[str, ...], ...]         # per rank: torch's action tokens in order
    builder_differences: tuple[str, ...]        # pipesim builder vs torch's executed order
    ir_differences: tuple[str, ...]             # torch's pipeline_order vs what it executed
    measured_peak_rank: int
    predicted_peak_rank: int

    @property
    def same_peak_rank(self) -> bool:
        return self.measured_peak_rank == self.predicted_peak_rank


def _op(kind: str, mb: int, chunk: int) -> Op:
    if kind == "F":
        return F(mb, chunk)
    if kind in ("B", "I"):
        return B(mb, chunk, kind == "I")
    if kind == "W":
        return W(mb, chunk)
    raise ValueError(f"torch action kind {kind!r}: expected F, B, I or W")


def _parse(token: str) -> tuple[int, str, int]:
    """``"7I2"`` → (7, "I", 2)."""
    for i, ch in enumerate(token):
        if ch.isalpha():
            return int(token[:i]), ch, int(token[i + 1:])
    raise ValueError(f"torch action token {token!r}: expected stage, kind, micro-batch (e.g. 7I2)")


def torch_schedule(sc, results: list[dict]) -> tuple[Schedule, tuple[str, ...]]:
    """pipesim's ``Schedule`` of the order torch executed, and where torch's ``pipeline_order``
    (its IR) differs from that order (one line per rank that differs)."""
    ref = sc.build_schedule()
    ranks, ir_diffs = [], []
    for res in sorted(results, key=lambda d: d["rank"]):
        r = res["rank"]
        chunk_of = {ref.stage(r, c): c for c in range(len(ref.placement[r]))}
        executed = [f"{a['stage']}{a['kind']}{a['mb']}" for a in res["actions"]]
        ir = res["torch_order"]
        flat = [t for tok in ir for t in (tok[1:-1].split("&") if tok.startswith("[") else [tok])]
        if flat != executed:
            ir_diffs.append(_first_difference(f"rank {r}: pipeline_order", flat, "executed", executed))
            groups = [[t] for t in executed]
        else:
            groups = [tok[1:-1].split("&") if tok.startswith("[") else [tok] for tok in ir]
        ops = []
        for g in groups:
            atoms = [_op(k, m, chunk_of[s]) for s, k, m in map(_parse, g)]
            ops.append(FB(*atoms) if len(atoms) == 2 else atoms[0])
        ranks.append(tuple(ops))
    splits = any(op.kind == "W" or (op.kind == "B" and op.w_deferred) for ops in ranks for op in ops)
    sched = Schedule(f"torch-{ref.name}", ref.pp, ref.microbatches, ref.chunks, ref.num_stages, tuple(ranks),
                     ref.placement, ref.directions, ref.stream_microbatches, splits)
    return sched, tuple(ir_diffs)


def _first_difference(label_a: str, a: list[str], label_b: str, b: list[str]) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"{label_a} and {label_b} first differ at position {n}: "
            f"{' '.join(a[n:n + 4]) or '(end)'} vs {' '.join(b[n:n + 4]) or '(end)'} "
            f"({len(a)} and {len(b)} actions)")


def order_differences(built: Schedule, torch_sched: Schedule) -> tuple[str, ...]:
    """Where pipesim's builder and torch's order differ: one line per rank that differs."""
    out = []
    for r, (mine, theirs) in enumerate(zip(built.ranks, torch_sched.ranks)):
        a, b = [str(o) for o in mine], [str(o) for o in theirs]
        if a != b:
            out.append(_first_difference(f"rank {r}: pipesim", a, "torch", b))
    return tuple(out)


def predicted_levels(res, rank: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(level after each atom, highest level inside it, labels) of pipesim's saved bytes
    (activations + logits) on ``rank``, from the atom templates in the rank's order."""
    sp, templates = res.spans, res.workload.templates
    cats = [CAT[c] for c in SAVED_CATEGORIES]
    idx = np.nonzero(sp.rank == rank)[0]
    after, high, labels, level = [], [], [], 0
    for a in idx.tolist():
        stage, kind = int(sp.stage[a]), int(sp.kind[a])
        tpl = templates[(stage, kind)]
        d = tpl.delta[np.isin(tpl.cat, cats)]
        run = level + np.cumsum(d) if len(d) else np.array([level])
        high.append(max(level, int(run.max())))
        level = int(run[-1])
        after.append(level)
        labels.append(f"{KIND_NAMES[kind]} mb {int(sp.mb[a])} stage {stage}")
    return np.array(after, dtype=np.int64), np.array(high, dtype=np.int64), labels


def _forward_bytes(res, stage: int) -> int:
    """pipesim's saved bytes (activations + logits) one forward leaves on ``stage``."""
    tpl = res.workload.templates[(stage, KIND_F)]
    return int(tpl.delta[np.isin(tpl.cat, [CAT[c] for c in SAVED_CATEGORIES])].sum())


def _timeline_peak(res, rank: int) -> int:
    _, levels = res.timeline(rank)
    return int(levels[:, [CAT[c] for c in SAVED_CATEGORIES]].sum(axis=1).max(initial=0))


def _label(a: dict) -> str:
    return f"{a['kind']} mb {a['mb']} stage {a['stage']}"


def score_schedule(sc, results: list[dict]) -> Comparison:
    """Score the measured ranks of one schedule against pipesim's simulation of torch's order."""
    results = sorted(results, key=lambda d: d["rank"])
    sched, ir_diffs = torch_schedule(sc, results)
    diffs = order_differences(sc.build_schedule(), sched)
    res = pipesim.simulate(sc, schedule=sched)
    scores, meas_curves, pred_curves, tokens = [], [], [], []
    for d in results:
        r, acts = d["rank"], d["actions"]
        m_after = np.array([a["after"] for a in acts], dtype=np.int64)
        m_high = np.array([a["high"] for a in acts], dtype=np.int64)
        p_after, p_high, p_labels = predicted_levels(res, r)
        if len(p_after) != len(acts):
            raise RuntimeError(f"{sc.schedule.name} rank {r}: {len(acts)} measured actions, {len(p_after)} simulated atoms")
        if int(p_high.max()) != _timeline_peak(res, r):
            raise RuntimeError(f"{sc.schedule.name} rank {r}: atom levels disagree with Result.timeline")
        mi, pi = int(np.argmax(m_high)), int(np.argmax(p_high))
        peak = int(m_high[mi])
        per_mb = {}
        for a in acts:
            if a["kind"] == "F" and a["mb"] == 0:
                per_mb[a["stage"]] = a["after"] - a["before"]
        scores.append(RankScore(sc.schedule.name, r, tuple(d["stages"]), peak, int(p_high[pi]),
                                _label(acts[mi]), p_labels[pi], mi, pi,
                                float(np.abs(p_after - m_after).mean() / peak), per_mb,
                                sum(_forward_bytes(res, s) for s in d["stages"])))
        meas_curves.append(m_after)
        pred_curves.append(p_after)
        tokens.append(tuple(f"{a['stage']}{a['kind']}{a['mb']}" for a in acts))
    m_rank = max(scores, key=lambda s: s.measured).rank
    p_rank = max(scores, key=lambda s: s.predicted).rank
    return Comparison(sc.schedule.name, tuple(scores), tuple(meas_curves), tuple(pred_curves), tuple(tokens),
                      diffs, ir_diffs, m_rank, p_rank)
