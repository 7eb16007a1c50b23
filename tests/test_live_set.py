"""The live set (pipesim.live): which (micro-batch, stage, direction) a rank holds and what each
waits for, derived by hand from each schedule's order for pp = 4, M = 8, and at the peak checked
two ways: its count against the schedule's closed form, its members against a walk of the rank's
op list up to the op in flight (the schedule's order, not the simulated times).

Fixed op times (``[timing]``: F 1 ms, B 2 ms, W 1 ms; no p2p latency) so that what is derived
does not depend on the FLOP-based timing model; 8 MoE layers so every stage of a rank is alike.
"""
from pathlib import Path

import pytest

import pipesim
import schedules
from pipesim.live import CLOSED_FORMS, live_set
from pipesim.memory import KIND_B, KIND_BI, KIND_F, KIND_W

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml"
PP, M = 4, 8
FIXED = {"model.layers": 8, "model.dense_layers": 0, "timing.forward_ms": 1.0,
         "timing.backward_ms": 2.0, "timing.weight_ms": 1.0, "hardware.p2p_latency_us": 0.0,
         "hardware.p2p_bandwidth_gbps": 1e6}


def run(name):
    return pipesim.simulate(pipesim.load_scenario(TINY, {**FIXED, "schedule.name": name}))


def as_set(entries):
    return {(e["stage"], e["direction"], e["mb"], e["waits_for"]) for e in entries}


def during_first_backward(res, rank):
    """The live set half-way through the rank's first backward (B, or B's input-grad half)."""
    sp = res.spans
    i = next(i for i in range(len(sp.rank)) if sp.rank[i] == rank and sp.kind[i] in (KIND_B, KIND_BI))
    return as_set(live_set(res, rank, (sp.start[i] + sp.end[i]) / 2))


def c(stage, mbs, waits="B", direction=0):
    return {(stage, direction, mb, waits) for mb in mbs}


def test_1f1b_first_backward_holds_the_warm_up():
    """1F1B rank r runs pp - r - 1 warm-up forwards, one steady forward, then B of mb 0: during
    that B it holds mbs 0 .. pp - r - 1 (stage r), all awaiting their B (mb 0's is running)."""
    res = run("1f1b")
    for r in range(PP):
        assert during_first_backward(res, r) == c(r, range(PP - r))


def test_interleaved_first_backward_holds_the_warm_up():
    """Interleaved 1F1B, V = 2: rank r holds stages r (chunk 0) and r + pp (chunk 1); its forwards
    go in groups of pp micro-batches per chunk (c0 mb 0-3, c1 mb 0-3, c0 mb 4-7, c1 mb 4-7).
    Warm-up is 2(pp - r - 1) + (V - 1)pp forwards, plus one steady forward before the first B,
    which is chunk 1's mb 0: n_r = 2(3 - r) + 5 = 11, 9, 7, 5 forwards held. Taking the first n_r
    of the order:
        r 0: c0 {0..6} + c1 {0..3}     r 1: c0 {0..4} + c1 {0..3}
        r 2: c0 {0..3} + c1 {0..2}     r 3: c0 {0..3} + c1 {0}
    all awaiting B."""
    res = run("interleaved")
    hand = {0: (range(7), range(4)), 1: (range(5), range(4)), 2: (range(4), range(3)),
            3: (range(4), range(1))}
    for r, (c0, c1) in hand.items():
        assert during_first_backward(res, r) == c(r, c0) | c(r + PP, c1)
        assert len(c0) + len(c1) == CLOSED_FORMS["interleaved"][1](PP, r, M, 2)


def test_zb_v_first_backward_holds_2pp_chunks_on_every_rank():
    """ZB-V: rank r holds stages r (chunk 0, going down the V) and 2pp - 1 - r (chunk 1, coming
    back). Rank r starts with 2(pp - r) - 1 chunk-0 forwards, then alternates chunk 1 and chunk 0
    until the first B, chunk 1's mb 0, which needs all 2pp - 1 stages' forwards before it; by
    then it has issued 2pp forwards: a = 2pp - r - 1 of chunk 0, b = r + 1 of chunk 1 (a - b =
    2(pp - r - 1), the head start of the first run). So
        r 0: c0 {0..6} + c1 {0}     r 1: c0 {0..5} + c1 {0, 1}
        r 2: c0 {0..4} + c1 {0..2}  r 3: c0 {0..3} + c1 {0..3}
    all awaiting their B (input grad): 2pp = 8 on every rank."""
    res = run("zb-v")
    for r in range(PP):
        a, b = 2 * PP - r - 1, r + 1
        assert during_first_backward(res, r) == c(r, range(a)) | c(2 * PP - 1 - r, range(b))
        assert a + b == CLOSED_FORMS["zb-v"][1](PP, r, M, 2)


def test_zb_v_weight_gradient_waiter_after_its_b():
    """Right after B (input grad) of chunk 1's mb 0, before its W: that entry waits for W only."""
    res = run("zb-v")
    sp = res.spans
    i = next(i for i in range(len(sp.rank)) if sp.rank[i] == 0 and sp.kind[i] == KIND_W)
    live = as_set(live_set(res, 0, (sp.start[i] + sp.end[i]) / 2))
    assert live == c(0, range(7)) | c(2 * PP - 1, [0], "W")


def _atoms(schedule, rank):
    """The rank's atoms in execution order from the schedule alone: (kind, stage, direction, mb)."""
    out = []
    for op in schedule.ranks[rank]:
        for half in ((op.forward, op.backward) if op.kind == "FB" else (op,)):
            kind = {"F": KIND_F, "W": KIND_W}.get(half.kind, KIND_BI if half.kind == "B" and half.w_deferred
                                                  else KIND_B)
            out.append((kind, schedule.stage(rank, half.chunk), schedule.direction(rank, half.chunk), half.mb))
    return out


def _walk(schedule, rank, upto):
    """What is resident while atom ``upto`` runs, from the op order: every forward issued so far,
    less the entries whose backward (or, split, whose W) has completed."""
    state = {}
    atoms = _atoms(schedule, rank)
    for kind, stage, d, mb in atoms[:upto]:
        key = (stage, d, mb)
        if kind == KIND_F:
            state[key] = "B"
        elif kind == KIND_BI:
            state[key] = "W"
        else:
            state.pop(key, None)
    kind, stage, d, mb = atoms[upto]
    if kind == KIND_F:
        state[(stage, d, mb)] = "F"
    return {(*k, w) for k, w in state.items()}


@pytest.mark.parametrize("name", ["1f1b", "interleaved", "zb-v", "dualpipe"])
def test_live_set_at_the_peak_is_the_closed_form_and_the_walk(name):
    res = run(name)
    sch = res.workload.schedule
    sp = res.spans
    for r in range(PP):
        t = res.peaks[r].time
        on = [i for i in range(len(sp.rank)) if sp.rank[i] == r]
        running = [k for k, i in enumerate(on) if sp.start[i] <= t <= sp.end[i]]
        assert running, (name, r)
        live = res.live_at_peak(r)
        walk = _walk(sch, r, running[-1])
        assert as_set(live) == walk, (name, r)
        waiting = sum(e["waits_for"] in ("F", "B") for e in live)
        assert waiting == CLOSED_FORMS[name][1](PP, r, M, len(sch.placement[r])), (name, r, live)


def test_the_walk_sees_the_schedule_as_the_simulator_ran_it():
    """The second method's atom order is the simulator's (so the walk compares like with like)."""
    for name in ("interleaved", "zb-v", "dualpipe"):
        res = run(name)
        sp = res.spans
        for r in range(PP):
            ran = [(int(sp.kind[i]), int(sp.stage[i]), int(sp.direction[i]), int(sp.mb[i]))
                   for i in range(len(sp.rank)) if sp.rank[i] == r]
            assert ran == _atoms(schedules.build(name, PP, M, 2 if name != "dualpipe" else None), r)
