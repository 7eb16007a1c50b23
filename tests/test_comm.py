"""Communication: all-to-all and TP bytes and link classes, p2p links shared by transfers, and
how an FB op overlaps each half's all-to-all with the other's compute (DualPipe).

Expected values are worked by hand from the formulas in pipesim/comm.py's docstring and the
overlap rule in pipesim.simulator.Timing, never read from the code's output.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import pipesim
import schedules
from pipesim.comm import (a2a_phase_bytes, a2a_phase_seconds, moe_layer_a2a_phases, moe_layer_a2a_seconds,
                          tp_layer_seconds, tp_sublayer_seconds)
from pipesim.memory import KIND_BI
from pipesim.simulator import Phases, Timing, exposed_comm, overlap, run

ROOT = Path(__file__).resolve().parent.parent


def test_phase_bytes_by_hand():
    # 2 tokens, top-1, width 1, BF16, ep 2: each copy leaves its device with probability 1/2
    assert a2a_phase_bytes(2, 1, 1, 2, 2) == pytest.approx(2.0)
    # DeepSeek-V3 dispatch: 4096 tokens x 8 experts x 7168 x 1 byte (FP8), 63 of 64 copies remote
    assert a2a_phase_bytes(4096, 8, 7168, 1, 64) == pytest.approx(234_881_024 * 63 / 64)
    assert a2a_phase_bytes(4096, 8, 7168, 1, 1) == 0.0


def test_link_class_from_node_size():
    # tokens*k*h*v = 16e9 bytes; ep 16 -> 1e9 bytes to each destination
    # within a node (ep 8, node 8): 7 remote copies of 2e9 over NVLink 400 GB/s = 0.035 s
    assert a2a_phase_seconds(16_000_000_000, 1, 1, 1, 8, 8, 400.0, 50.0) == pytest.approx(7 * 2e9 / 400e9)
    # across nodes (ep 16, node 8): 8 copies over the NIC (0.16 s) and 7 over NVLink (0.0175 s)
    assert a2a_phase_seconds(16_000_000_000, 1, 1, 1, 16, 8, 400.0, 50.0) == pytest.approx(0.16)
    # a bigger node keeps the same group on NVLink: 15 copies over NVLink
    assert a2a_phase_seconds(16_000_000_000, 1, 1, 1, 16, 16, 400.0, 50.0) == pytest.approx(15e9 / 400e9)


def test_v3_recipe_dispatches_fp8_forward_bf16_backward():
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_dualpipe.toml")
    assert sc.training.fp8_activations and sc.parallel.ep == 64
    hw = sc.hardware
    per_copy_fp8 = 4096 * 8 * 7168 / 64          # b*s = 4096 tokens, top-8, h = 7168
    inter = (64 - hw.node_size) / (hw.p2p_bandwidth_gbps * 1e9)   # NIC side is the slower one
    fwd, bwd = moe_layer_a2a_seconds(sc)
    assert fwd == pytest.approx(per_copy_fp8 * inter * (1 + 2))   # FP8 dispatch + BF16 combine
    assert bwd == pytest.approx(per_copy_fp8 * inter * (2 + 2))   # both BF16


def _one_f_one_b_makespan(pp, M, F, B):
    """1F1B closed form: (M + pp - 1)(F + B) with zero hop (PipeDream-Flush / Megatron)."""
    return (M + pp - 1) * (F + B)


def test_1f1b_pays_the_all_to_all_in_full():
    pp, M = 4, 8
    sch = schedules.build("1f1b", pp, M)
    S = sch.num_stages
    cf, cb = 0.5, 0.75
    t = Timing(f=(1.0 + cf,) * S, b=(2.0 + cb,) * S, w=(1.0,) * S, hop=(0.0,) * S,
               comm_f=(cf,) * S, comm_b=(cb,) * S)
    sp = run(sch, t)
    assert sp.end.max() == pytest.approx(_one_f_one_b_makespan(pp, M, 1.0 + cf, 2.0 + cb))
    assert exposed_comm(sp, pp) == pytest.approx([M * (cf + cb)] * pp)


def _fb_spans(sch, sp):
    return [(j, sp.start[j], sp.end[j + 1]) for j in range(len(sp.start) - 1)
            if sp.rank[j] == sp.rank[j + 1] and sp.op_index[j] == sp.op_index[j + 1]
            and sch.ranks[sp.rank[j]][sp.op_index[j]].kind == "FB"]


@pytest.mark.parametrize("f,cf,b,cb,w", [
    (1.0, 0.4, 2.0, 0.5, 0.5),   # each comm fits under the other half's compute: hidden
    (1.0, 0.9, 2.0, 0.5, 0.5),   # F's compute 0.1 < B's comm 0.5: 0.4 shows
    (1.0, 0.2, 2.0, 1.5, 0.5),   # B's compute is short after deferring W: excess shows
])
def test_dualpipe_fb_overlaps_each_half_comm_with_the_other_compute(f, cf, b, cb, w):
    sch = schedules.build("dualpipe", 4, 8)
    S = sch.num_stages
    t = Timing(f=(f,) * S, b=(b,) * S, w=(w,) * S, hop=(0.0,) * S, comm_f=(cf,) * S, comm_b=(cb,) * S)
    sp = run(sch, t)
    fbs = _fb_spans(sch, sp)
    assert fbs
    for j, s, e in fbs:
        bdur = b - w if sp.kind[j + 1] == KIND_BI else b        # the B half's whole time
        f_comp, b_comp = f - cf, bdur - cb
        # by hand: F's compute under B's comm, then B's compute under F's comm
        want = max(f_comp, cb) + max(b_comp, cf)
        assert e - s == pytest.approx(want)
        assert sp.exposed_comm[j] + sp.exposed_comm[j + 1] == pytest.approx(want - f_comp - b_comp)
        if cf <= b_comp and cb <= f_comp:
            assert e - s == pytest.approx(f_comp + b_comp)      # max, not sum: comm fully hidden


def test_zero_comm_changes_no_time():
    sch = schedules.build("dualpipe", 4, 8)
    S = sch.num_stages
    base = Timing(f=(1.0,) * S, b=(2.0,) * S, w=(0.5,) * S, hop=(0.1,) * S)
    zero = dataclasses.replace(base, comm_f=(0.0,) * S, comm_b=(0.0,) * S)
    a, z = run(sch, base), run(sch, zero)
    assert np.array_equal(a.start, z.start) and np.array_equal(a.end, z.end)


def test_scenario_ep_across_nodes_is_slower_than_within_one():
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_pp16.toml")
    one = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, node_size=64))
    many = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, node_size=1))
    f1, _ = moe_layer_a2a_seconds(one)
    fn, _ = moe_layer_a2a_seconds(many)
    assert fn > f1 > 0
    assert pipesim.simulate(many).spans.end.max() > pipesim.simulate(one).spans.end.max()


def test_a_link_shared_by_two_transfers_halves_each_ones_bandwidth():
    # GPipe pp=2, M=2; F = 1, B = 2, W = 0; each boundary tensor 4 bytes over a 1 byte/s link
    # (4 s alone), no latency. Rank 0 sends F0's output at 1 and F1's at 2: alone 1..2 F0 sends
    # 1 byte; from 2 both drain at 1/2 byte/s, so F0's 3 left take until 8, when F1 has sent
    # 3 of its 4; F1's last byte alone arrives at 9. Rank 1 runs F0 [8,9], F1 [9,10], B0
    # [10,12], B1 [12,14]; the gradients cross the other direction's link the same way: B0
    # alone 12..14 (2 bytes), then both at 1/2: B0 done at 18, B1 (2 bytes left) alone to 20.
    sch = schedules.build("gpipe", 2, 2)
    t = Timing(f=(1.0, 1.0), b=(2.0, 2.0), w=(0.0, 0.0), hop=(0.0, 0.0),
               p2p_bytes=(4.0, 4.0), p2p_bandwidth=1.0)
    sp = run(sch, t)
    got = {(int(r), "FBbW"[k], int(m)): (s, a) for r, k, m, s, a
           in zip(sp.rank, sp.kind, sp.mb, sp.start, sp.arrival)}
    assert got[(0, "F", 0)][1] == pytest.approx(8.0) and got[(0, "F", 1)][1] == pytest.approx(9.0)
    assert got[(1, "F", 0)][0] == pytest.approx(8.0) and got[(1, "F", 1)][0] == pytest.approx(9.0)
    assert got[(1, "B", 0)][1] == pytest.approx(18.0) and got[(1, "B", 1)][1] == pytest.approx(20.0)
    assert got[(0, "B", 0)][0] == pytest.approx(18.0) and got[(0, "B", 1)][0] == pytest.approx(20.0)
    # unshared, one transfer each: arrivals at 5 and 6 (4 s after each send)
    alone = run(schedules.build("gpipe", 2, 1), t)
    assert alone.arrival[0] == pytest.approx(5.0)


def test_latency_follows_the_bytes():
    sch = schedules.build("1f1b", 2, 1)
    t = Timing(f=(1.0, 1.0), b=(2.0, 2.0), w=(0.0, 0.0), hop=(0.5, 0.5),
               p2p_bytes=(2.0, 2.0), p2p_bandwidth=4.0)
    sp = run(sch, t)
    # rank 0's F ends at 1; 2 bytes at 4 B/s = 0.5 s, then 0.5 s latency: rank 1 starts at 2
    assert sp.start[(sp.rank == 1) & (sp.kind == 0)][0] == pytest.approx(2.0)


@pytest.mark.parametrize("forward,backward,want", [
    # one layer each, phases of 1 s: F computes while B's first all-to-all runs, and so on in
    # lockstep: 4 s, the sum of the computes (all communication hidden)
    (((0, 1.0), (1, 1.0), (0, 1.0), (1, 1.0)), ((1, 1.0), (0, 1.0), (1, 1.0), (0, 1.0)), (4.0, 4.0)),
    # F's dispatch takes 2: B's expert compute [1,2] waits for the network until 3 for its
    # dispatch-gradient [3,4]; F's experts [3,4], then F's combine and B's attention [4,5]
    (((0, 1.0), (1, 2.0), (0, 1.0), (1, 1.0)), ((1, 1.0), (0, 1.0), (1, 1.0), (0, 1.0)), (5.0, 5.0)),
    # no communication at all: the two computes back to back, F first
    (((0, 1.0), (1, 0.0)), ((1, 0.0), (0, 2.0)), (1.0, 3.0)),
])
def test_overlap_of_two_phase_chains_by_hand(forward, backward, want):
    assert overlap(forward, backward) == pytest.approx(want)


def _phased(S, ph, f, b, w):
    cf = ph.layers * (ph.a2a[0] + ph.a2a[1])
    cb = ph.layers * (ph.a2a[2] + ph.a2a[3])
    return Timing(f=(f + cf,) * S, b=(b + cb,) * S, w=(w,) * S, hop=(0.0,) * S,
                  comm_f=(cf,) * S, comm_b=(cb,) * S, phases=(ph,) * S)


def test_dualpipe_fb_runs_each_moe_layers_phases():
    # two MoE layers per stage, nothing else: F computes attention 0.2 + experts 0.3 per layer,
    # B (input part) 0.4 + 0.6, W 0.2 + 0.3; every all-to-all 0.25 s. Per layer the chains pair
    # F attention | B combine-grad, F dispatch | B experts, F experts | B dispatch-grad, F
    # combine | B attention: max(.2,.25) + max(.25,.6) + max(.3,.25) + max(.25,.4) = 1.55 per
    # layer for a BI half; with the full B (W inside) experts .9 and attention .6: 2.05.
    ph = Phases(layers=2, attention=(0.4, 0.8, 0.4), experts=(0.6, 1.2, 0.6), a2a=(0.25,) * 4)
    sch = schedules.build("dualpipe", 4, 8)
    sp = run(sch, _phased(sch.num_stages, ph, 1.0, 3.0, 1.0))
    fbs = _fb_spans(sch, sp)
    assert fbs
    for j, s, e in fbs:
        assert e - s == pytest.approx(2 * (1.55 if sp.kind[j + 1] == KIND_BI else 2.05))


def test_dualpipe_bubble_with_the_overlapped_pair():
    # DeepSeek-V3 report, section 3.2.1: DualPipe's bubble (pp/2 - 1)(F&B + B - 3W), here with
    # F = W = 1 (the setting the formula holds exactly), B = 2 alone (compute + all-to-all), and
    # F&B the overlapped pair with a full B: F compute 0.7, B compute 1.6, all-to-all 0.3 / 0.4
    # (each under the other's compute: F&B = 2.3); with 0.6 / 0.9 the F side shows 0.5
    # (max(0.4, 0.9) + max(1.1, 0.6) = 2.0).
    for cf, cb, fb in ((0.3, 0.4, 2.3), (0.6, 0.9, 2.0)):
        for pp in (4, 8, 16):
            sch = schedules.build("dualpipe", pp, 2 * pp)
            S = sch.num_stages
            sp = run(sch, Timing(f=(1.0,) * S, b=(2.0,) * S, w=(1.0,) * S, hop=(0.0,) * S,
                                 comm_f=(cf,) * S, comm_b=(cb,) * S))
            busy = np.bincount(sp.rank, weights=sp.end - sp.start)
            assert (sp.end.max() - busy).max() == pytest.approx((pp / 2 - 1) * (fb + 2.0 - 3 * 1.0))


def test_tp_collectives_by_hand():
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_pp16.toml")
    p, t, hw = sc.parallel, sc.training, sc.hardware
    assert p.tp == 2 and p.tp <= hw.node_size
    # ring all-gather + reduce-scatter of b*s*h BF16 values: 2 (tp-1)/tp of the tensor over NVLink
    tensor = t.micro_batch_size * t.seq_len // p.cp * sc.model.hidden * 2
    one = 2 * (2 - 1) / 2 * tensor / (hw.nvlink_bandwidth_gbps * 1e9)
    assert tp_sublayer_seconds(sc) == pytest.approx(one)
    # a MoE layer with etp = 1: attention only; a dense layer: attention and MLP; the paper's
    # full recomputation runs each forward's collectives again in the backward
    assert p.etp == 1 and t.recompute == "full"
    assert tp_layer_seconds(sc, moe=True) == pytest.approx((one, 2 * one))
    assert tp_layer_seconds(sc, moe=False) == pytest.approx((2 * one, 4 * one))
    one_gpu = dataclasses.replace(sc, parallel=dataclasses.replace(p, tp=1, sp=False))
    assert tp_sublayer_seconds(one_gpu) == 0.0


def test_full_recompute_repeats_the_forward_all_to_all():
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_dualpipe.toml")
    d, c, cg, dg = moe_layer_a2a_phases(sc)
    none = dataclasses.replace(sc, training=dataclasses.replace(sc.training, recompute="none", keep=()))
    full = dataclasses.replace(sc, training=dataclasses.replace(sc.training, recompute="full", keep=()))
    assert moe_layer_a2a_seconds(none) == pytest.approx((d + c, cg + dg))
    assert moe_layer_a2a_seconds(full) == pytest.approx((d + c, cg + dg + d + c))


def test_one_f_one_b_pays_ep_across_nodes_dualpipe_hides_it():
    """The reason DualPipe exists: with EP 64 across 8 nodes the all-to-all is a large share of
    each op; 1F1B waits for all of it, DualPipe's FB pairs hide most of it."""
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_dualpipe.toml")
    res = pipesim.simulate(sc)
    sp, tm = res.spans, res.workload.timing
    exposed = exposed_comm(sp, res.ranks)
    total = np.zeros(res.ranks)
    np.add.at(total, sp.rank, np.asarray(tm.comm_f)[sp.stage] * (sp.kind == 0)
              + np.asarray(tm.comm_b)[sp.stage] * np.isin(sp.kind, (1, 2)))
    assert (exposed < total).all()          # the pairs hid part of every rank's all-to-all


def test_summary_reports_what_1f1b_waits_on():
    # 1F1B runs every op alone: each rank waits for all of its stage's all-to-all and TP
    # collectives, M times per direction: M * (comm_f + tp_f + comm_b + tp_b) of its stage
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_pp16.toml")
    res = pipesim.simulate(sc)
    tm = res.workload.timing
    for r, row in enumerate(res.summary()["ranks"]):
        want = sc.microbatches * (tm.comm_f[r] + tm.tp_f[r] + tm.comm_b[r] + tm.tp_b[r])
        assert row["exposed_comm_ms"] == pytest.approx(want * 1e3, rel=1e-6)
        assert res.table()[r]["exposed_comm_ms"] == pytest.approx(want * 1e3, rel=1e-9)
