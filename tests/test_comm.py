"""Expert-parallel all-to-all: bytes, link class, and how an FB op overlaps it (DualPipe).

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
from pipesim.comm import a2a_phase_bytes, a2a_phase_seconds, moe_layer_a2a_seconds
from pipesim.memory import KIND_BI
from pipesim.simulator import Timing, exposed_comm, run

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
