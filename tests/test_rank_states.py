"""What a rank holds beyond the sum of its stages, worked by hand on the tiny model
(h 256, 4 heads, d_h 32, d_hr 16, d_cq 128, d_c 64, f 512, h_E 128, 1 shared expert, V 1024):
Transformer Engine's placeholder weight gradients (one per distinct weight shape), a tied
embedding shared by the first and last stage on one rank, an MTP module's embedding copy."""
import dataclasses
from pathlib import Path

import pipesim
from pipesim.memory import CAT

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
TINY = SCENARIOS / "tiny.toml"
V, H = 1024, 256


def static(res, rank, cat):
    return res.peaks[rank].breakdown[cat]


def run(**sets):
    return pipesim.simulate(pipesim.load_scenario(TINY, sets))


# Distinct per-device weight shapes (tp = 1), elements:
MLA = (256 * 128 + 128 * 128 + 128 * 64      # W_DQ, W_UQ, W_QR
       + 256 * 64 + 64 * 128 + 256 * 16      # W_DKV, W_UK (= W_UV's shape), W_KR
       + 128 * 256)                          # W_O [n_h*d_h, h]
DENSE = 256 * 1024 + 512 * 256               # fc1 [h, 2f], fc2 [f, h]
MOE = 256 * 256                              # expert fc1 [h, 2h_E]; fc2 [h_E, h] is W_O's shape;
                                             # the shared expert (N_s*h_E = 128) repeats both


def test_te_placeholders_one_per_distinct_shape():
    on, off = run(**{"training.te_wgrad_placeholders": True}), run(**{"training.te_wgrad_placeholders": False})
    # tiny's auto split on 4 stages: [1, 2, 2, 1]; layer 0 is dense, the rest MoE
    assert static(on, 0, "grads") - static(off, 0, "grads") == 2 * (MLA + DENSE) == 1_024_000
    for r in (1, 2, 3):
        assert static(on, r, "grads") - static(off, r, "grads") == 2 * (MLA + MOE) == 368_640


def test_tied_embedding_is_one_matrix_on_a_v_shaped_rank():
    tied = {"model.tied_embeddings": True, "schedule.name": "zb-v", "training.recipe": "paper",
            "parallel.pp": 2}
    untied = dict(tied, **{"model.tied_embeddings": False})
    a, b = run(**tied), run(**untied)
    # zb-v: rank 0 holds stage 0 (embedding) and the last stage (head); tied, it keeps one
    # [V, h] matrix: BF16 weights 2, FP32 grads 4, optimizer 4 + 2 + 2 (paper dtypes), no ZeRO
    assert a.workload.schedule.stage(0, 1) == a.workload.schedule.num_stages - 1
    for cat, per in (("weights", 2), ("grads", 4), ("optimizer", 8)):
        assert static(b, 0, cat) - static(a, 0, cat) == V * H * per
        # ranks without both stages are unchanged
        assert static(b, 1, cat) == static(a, 1, cat)


def test_mtp_keeps_an_embedding_copy_away_from_the_embedding():
    base = {"training.recipe": "paper", "model.mtp_modules": 1}
    one = run(**base)                                       # 1f1b: MTP with the head on rank 3
    v = run(**dict(base, **{"schedule.name": "zb-v", "parallel.pp": 2}))  # rank 0: embedding, head, MTP
    last = one.ranks - 1
    no_mtp = run(**{"training.recipe": "paper"})
    mtp_own = one.workload.costs[-1].weights_bytes - no_mtp.workload.costs[-1].weights_bytes
    # on 1f1b the MTP's rank lacks the embedding: its own copy, V*h BF16 weights
    assert static(one, last, "weights") == one.workload.costs[-1].weights_bytes + V * H * 2
    # on zb-v the embedding is on the same rank: shared, nothing added
    r0 = [v.workload.costs[v.workload.schedule.stage(0, c)].weights_bytes for c in range(2)]
    assert static(v, 0, "weights") == sum(r0)
    assert mtp_own > 0
