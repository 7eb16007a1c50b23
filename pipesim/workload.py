"""The workload of one step: what every stage costs (bytes, FLOPs) and how long every op takes.

Joins the three inputs of the simulation — the model's per-layer costs, the schedule, and the
placement of layers on stages — into the plain numbers the simulator and the ledger consume.

Durations (seconds), per stage s, from the model's per-device FLOPs:
    F[s] = Σ_j flops_f[j] / R,   W[s] = Σ_j flops_w[j] / R,
    B[s] = Σ_j (flops_b[j] + flops_w[j] + recompute_j) / R,   R = peak_tflops·1e12·efficiency
where recompute_j is the forward work layer j repeats in its backward: flops_f[j] under full
recomputation; under selective recomputation, flops_f[j] scaled by the share of layer j's
activation bytes that are recomputed rather than kept (an estimate: the DeepSeek-V3 choice
recomputes cheap ops, and this keeps their cost proportional to what they rebuild). A deferred
(input-gradient) backward takes B[s] - W[s]; a deferred W under recomputation also repeats the
forward work that rebuilds the weight inputs it needs, Σ_j recompute_j · w_recompute_j /
recompute_bytes_j (its share of what B re-materialised). ``[timing]`` overrides any of these.
A boundary tensor crosses ranks as ``boundary_bytes`` over the p2p link at
``p2p_bandwidth_gbps`` (shared by the link's transfers in flight), then ``p2p_latency_us``.

Communication inside the layers (``pipesim.comm``) adds to F and B: each MoE layer's
expert-parallel all-to-all, recorded apart in ``Timing.comm_f`` / ``comm_b`` with the MoE
layers' phases (``Timing.phases``: attention part, routed experts, the four all-to-alls) so the
simulator can overlap it inside an FB op; and each TP-split sublayer's collectives
(``Timing.tp_f`` / ``tp_b``), serialised with compute. An explicit ``[timing]`` time is the
whole op, communication included: none is added to it, and its stage has no phases.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipesim.comm import moe_layer_a2a_phases, moe_layer_a2a_seconds, tp_layer_seconds
from pipesim.memory import GIB, build_templates, round_up
from pipesim.model import StageCosts, stage_costs
from pipesim.model.costs import relabel
from pipesim.model.flops import routed_expert_flops
from pipesim.model.params import rank_matrix_adjustment
from pipesim.model.states import states_bytes, wgrad_placeholder_bytes
from pipesim.placement import StagePlan, stage_plans
from pipesim.simulator import Phases, Timing


@dataclass(frozen=True)
class Workload:
    """Everything the simulation needs, derived once from a scenario."""

    schedule: object                     # schedules.Schedule
    plans: tuple[StagePlan, ...]         # per stage
    costs: tuple[StageCosts, ...]        # per stage, per device
    timing: Timing
    templates: dict                      # (stage, kind) -> memory.Template
    static: tuple[dict, ...]             # per rank: category -> bytes
    boundary_bytes: tuple[int, ...]      # per stage, rounded


def _recompute_flops(sc, costs: StageCosts) -> tuple[float, ...]:
    policy = sc.training.recompute
    out = []
    for L in costs.layers:
        if policy == "none" or not L.recompute_bytes:
            out.append(0.0)
        elif policy == "full":
            out.append(float(L.flops_f))
        else:
            share = L.recompute_bytes / (L.recompute_bytes + L.stored_bytes)
            out.append(float(L.flops_f) * share)
    return tuple(out)


def _rank_extras(sc, plans) -> dict[str, int]:
    """Static bytes a rank adds to (or shares from) the sum of its stages' states: the embedding
    and head matrices that several stages use (``params.rank_matrix_adjustment``), and Transformer
    Engine's placeholder weight gradients, counted once per distinct weight shape on the rank
    (``states.wgrad_placeholder_bytes``; part of ``grads``)."""
    m, p, t = sc.model, sc.parallel, sc.training
    adjust = rank_matrix_adjustment(m, p, plans)
    grow = {k: v for k, v in adjust.items() if v > 0}
    share = {k: -v for k, v in adjust.items() if v < 0}
    plus = states_bytes(grow, p, t.dtypes, t.zero, t.shared_placement)
    minus = states_bytes(share, p, t.dtypes, t.zero, t.shared_placement)
    out = {"weights": plus.weights - minus.weights, "grads": plus.grads - minus.grads,
           "optimizer": plus.optimizer - minus.optimizer}
    if t.te_wgrad_placeholders:
        kinds = {"moe" if m.is_moe(i) else "dense" for x in plans for i in x.layers}
        kinds |= {"mtp"} if any(x.mtp for x in plans) else set()
        out["grads"] += wgrad_placeholder_bytes(m, p, kinds, t.dtypes.weights, t.shared_placement)
    return out


def _seconds(override_ms, s: int, default: float) -> float:
    """A ``[timing]`` override (ms; one number, or one per stage) for stage s, else ``default``."""
    if override_ms is None:
        return default
    return (override_ms[s] if isinstance(override_ms, tuple) else override_ms) / 1e3


def build_workload(sc, schedule=None) -> Workload:
    """Derive the workload of scenario ``sc`` (its schedule is built unless given)."""
    schedule = schedule or sc.build_schedule()
    plans = stage_plans(sc.model, sc.placement, sc.layers_per_stage)
    # stages holding the same kinds of layers (and embedding, head, MTP) cost the same
    shapes = [(tuple(sc.model.is_moe(i) for i in p.layers), p.embedding, p.head, p.mtp) for p in plans]
    costs, first_of_shape = [], {}
    for p, shape in zip(plans, shapes):
        if shape in first_of_shape:
            costs.append(relabel(first_of_shape[shape], p.layers))
        else:
            c = stage_costs(sc.model, sc.parallel, sc.training, p.layers,
                            embedding=p.embedding, head=p.head, mtp=p.mtp)
            first_of_shape[shape] = c
            costs.append(c)
    costs = tuple(costs)
    rate = sc.hardware.peak_tflops * 1e12 * sc.hardware.efficiency
    gran = sc.overheads.allocator_rounding
    hw, tm = sc.hardware, sc.timing
    f, b, w, w_rc, hop, templates = [], [], [], [], [], {}
    a2a = moe_layer_a2a_phases(sc)
    a2a_f, a2a_b = moe_layer_a2a_seconds(sc)
    tp_dense, tp_moe = tp_layer_seconds(sc, moe=False), tp_layer_seconds(sc, moe=True)
    expert = routed_expert_flops(sc.model, sc.parallel, sc.training) / rate
    comm_f, comm_b, tp_f, tp_b, phases = [], [], [], [], []
    by_shape = {}   # and share their templates
    for s, (c, shape) in enumerate(zip(costs, shapes)):
        rc = _recompute_flops(sc, c)
        if shape not in by_shape:
            by_shape[shape] = build_templates(c, rc, gran)
        for kind, tpl in by_shape[shape].items():
            templates[(s, kind)] = tpl
        moe = sum(sc.model.is_moe(i) for i in plans[s].layers)
        dense = len(plans[s].layers) - moe
        given_f, given_b = tm.forward_ms is not None, tm.backward_ms is not None
        cf = 0.0 if given_f else moe * a2a_f
        cb = 0.0 if given_b else moe * a2a_b
        pf = 0.0 if given_f else moe * tp_moe[0] + dense * tp_dense[0]
        pb = 0.0 if given_b else moe * tp_moe[1] + dense * tp_dense[1]
        comm_f.append(cf)
        comm_b.append(cb)
        tp_f.append(pf)
        tp_b.append(pb)
        moe_layers = [L for L in c.layers if L.name.endswith("(moe)")]
        if moe and cf + cb > 0 and not given_f and not given_b:
            phases.append(Phases(
                layers=moe,
                attention=(sum(L.flops_f for L in moe_layers) / rate - moe * expert,
                           sum(L.flops_b for L in moe_layers) / rate - moe * expert,
                           sum(L.flops_w for L in moe_layers) / rate - moe * expert),
                experts=(moe * expert,) * 3,
                a2a=a2a))
        else:
            phases.append(None)
        fs = _seconds(tm.forward_ms, s, sum(L.flops_f for L in c.layers) / rate + cf + pf)
        bs = _seconds(tm.backward_ms, s, (sum(L.flops_b + L.flops_w for L in c.layers) + sum(rc)) / rate + cb + pb)
        ws = _seconds(tm.weight_ms, s, sum(L.flops_w for L in c.layers) / rate)
        f.append(fs)
        b.append(bs)
        w.append(min(ws, bs))
        w_rc.append(sum(f_j * L.w_recompute_bytes / L.recompute_bytes
                        for L, f_j in zip(c.layers, rc) if L.recompute_bytes) / rate)
        hop.append(hw.p2p_latency_us * 1e-6)
    fb = None if tm.fb_ms is None else tuple(_seconds(tm.fb_ms, s, 0.0) for s in range(len(costs)))

    def some(values):
        return tuple(values) if any(values) else None

    timing = Timing(tuple(f), tuple(b), tuple(w), tuple(hop), fb, some(w_rc),
                    some(comm_f), some(comm_b), some(tp_f), some(tp_b),
                    tuple(phases) if any(x is not None for x in phases) else None,
                    tm.a2a_overlap, tuple(float(c.boundary_bytes) for c in costs),
                    hw.p2p_bandwidth_gbps * 1e9)
    comm = round_up(int(sc.overheads.comm_buffer_gib * GIB), gran)
    static = []
    for r in range(schedule.pp):
        by_cat = {"weights": 0, "grads": 0, "optimizer": 0, "comm_buffers": comm}
        stages = [schedule.stage(r, chunk) for chunk in range(len(schedule.placement[r]))]
        for s in stages:
            c = costs[s]
            by_cat["weights"] += round_up(c.weights_bytes, gran)
            by_cat["grads"] += round_up(c.grads_bytes, gran)
            by_cat["optimizer"] += round_up(c.optimizer_bytes, gran)
        for cat, delta in _rank_extras(sc, [plans[s] for s in stages]).items():
            by_cat[cat] += (1 if delta > 0 else -1) * round_up(abs(delta), gran)
        static.append(by_cat)
    return Workload(schedule, plans, costs, timing, templates, tuple(static),
                    tuple(round_up(c.boundary_bytes, gran) for c in costs))
