"""FLOPs of the tiny preset worked by hand: 2mkn per matmul in F, again in B and in W;
attention's score and context matmuls in F, twice in B, never in W (causal counted in full)."""
from pipesim.model import ParallelConfig, TrainingConfig, load_preset, stage_costs

TINY = load_preset("tiny")     # h 256, 4 heads, d_h 32, d_hr 16, d_cq 128, d_c 64, f 512, h_E 128
b, s = 2, 64
T = b * s


def costs(p, **kw):
    return stage_costs(TINY, p, TrainingConfig(micro_batch_size=b, seq_len=s, **kw), [0, 1],
                       head=True).layers


def mla_weights(tp):
    replicated = 256 * 128 + 128 * 4 * 16 + 256 * 64 + 256 * 16           # W_DQ W_QR W_DKV W_KR
    split = 128 * 4 * 32 + 2 * 64 * 4 * 32 + 4 * 32 * 256                 # W_UQ W_UK W_UV W_O
    return replicated + split // tp


def test_dense_moe_and_head_flops_tp1():
    dense, moe, head = costs(ParallelConfig())
    attn = 2 * b * 4 * s * s * (32 + 16) + 2 * b * 4 * s * s * 32
    dense_mm = 2 * T * (mla_weights(1) + 3 * 256 * 512)
    assert (dense.flops_f, dense.flops_b, dense.flops_w) == (dense_mm + attn, dense_mm + 2 * attn, dense_mm)
    R = T * 2                                         # T_sp·N_r token copies (EP1)
    moe_mm = 2 * T * (mla_weights(1) + 8 * 256) + 2 * R * 3 * 256 * 128 + 2 * T * 3 * 256 * 128
    assert (moe.flops_f, moe.flops_w) == (moe_mm + attn, moe_mm)
    assert head.flops_f == head.flops_b == head.flops_w == 2 * T * 256 * 1024


def test_tp_splits_heads_and_ffn():
    dense, moe, head = costs(ParallelConfig(tp=2, ep=2, dp=1))
    attn = (2 * b * 2 * s * s * 48 + 2 * b * 2 * s * s * 32)
    assert dense.flops_f == 2 * T * (mla_weights(2) + 3 * 256 * 512 // 2) + attn
    assert head.flops_f == 2 * T * 256 * 512


def test_flops_ignore_recompute_policy():
    # Recomputation is charged by the simulator from flops_f; the layer's own counts stay.
    a = costs(ParallelConfig(), recompute="none")
    f = costs(ParallelConfig(), recompute="full")
    assert [(x.flops_f, x.flops_b, x.flops_w) for x in a] == [(x.flops_f, x.flops_b, x.flops_w) for x in f]
