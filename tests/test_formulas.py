"""Formulas a mutation could change without another test noticing, each against a value worked
by hand: the selective-recompute FLOP share of B, the W-time cap, the ETP token factor."""
from pathlib import Path

import numpy as np

import pipesim
from pipesim.memory import KIND_B, KIND_BI, KIND_W
from pipesim.model import ParallelConfig, TrainingConfig, load_preset, stage_costs

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml"


def durations(res, kind):
    sp = res.spans
    return np.unique(np.round((sp.end - sp.start)[sp.kind == kind], 12))


def test_selective_recompute_adds_the_recomputed_share_of_forward_flops_to_b():
    sc = pipesim.load_scenario(TINY, {"training.recompute": "selective", "training.keep": ["router"],
                                      "parallel.pp": 1, "training.microbatches": 1})
    res = pipesim.simulate(sc)
    rate = sc.hardware.peak_tflops * 1e12 * sc.hardware.efficiency
    # B = Σ_j (flops_b + flops_w + flops_f · recomputed / (recomputed + stored)) / rate
    layers = res.workload.costs[0].layers
    expect = sum(L.flops_b + L.flops_w + (L.flops_f * L.recompute_bytes / (L.recompute_bytes + L.stored_bytes)
                                          if L.recompute_bytes else 0) for L in layers) / rate
    assert np.allclose(durations(res, KIND_B), expect, rtol=1e-12)
    # and it lies strictly between no recompute and full recompute
    none = sum(L.flops_b + L.flops_w for L in layers) / rate
    full = none + sum(L.flops_f for L in layers if L.recompute_bytes) / rate
    assert none < expect < full


def test_w_time_is_capped_by_the_backward_time():
    # weight_ms 10 > backward_ms 4: W takes the whole backward (4 ms), the input-grad B nothing
    res = pipesim.simulate(pipesim.load_scenario(TINY, {"schedule.name": "zb-h1", "timing.weight_ms": 10.0,
                                                        "timing.backward_ms": 4.0}))
    assert np.allclose(durations(res, KIND_W), 4e-3) and np.allclose(durations(res, KIND_BI), 0.0)


def test_etp_shares_tokens_within_the_group_and_splits_each_expert():
    m = load_preset("tiny")
    t = TrainingConfig(seq_len=256, recipe="paper", expert_tokens="routed")
    one = stage_costs(m, ParallelConfig(tp=2, ep=4, etp=1, dp=2, sp=True), t, [2]).layers[0]
    two = stage_costs(m, ParallelConfig(tp=2, ep=2, etp=2, dp=2, sp=True), t, [2]).layers[0]
    # R = etp · T_sp · N_r: T_sp = 256/2 = 128, N_r = 2 → 256 and 512 token copies; the paper
    # inventory's experts keep input a·R·h, mask R·h, hidden 2a·R·h_E/etp, silu a·R·h_E/etp and
    # product a·R·h_E/etp (h = 256, h_E = 128)
    def experts(R, etp):
        return 2 * R * 256 + R * 256 + (4 + 2 + 2) * R * 128 // etp
    assert one.stored_by_module["experts"] == experts(256, 1)
    assert two.stored_by_module["experts"] == experts(512, 2)
