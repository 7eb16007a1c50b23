"""Activation bytes against the Table 10 grid of the paper (docs/reference/activations.md) and
hand-worked variants of its formulas (flash attention, FP8, selective recompute, CP, EP tokens)."""
import pytest

from pipesim.model import ModelError, ParallelConfig, TrainingConfig, load_preset, stage_costs

V3 = load_preset("deepseek-v3")
PAPER = ParallelConfig(tp=2, pp=16, ep=8, etp=1, cp=1, dp=32, sp=True)
s, h, nh, dh, dhr, dcq, dc, hE, N, Nr = 4096, 7168, 128, 128, 64, 1536, 512, 2048, 256, 8
GIB, MIB = 2 ** 30, 2 ** 20


def paper_training(b, recompute, **kw):
    kw = {"recipe": "paper", "attention": "eager", "expert_tokens": "paper", **kw}
    return TrainingConfig(micro_batch_size=b, seq_len=s, recompute=recompute, **kw)


def table10(b, recompute, **kw):
    c = stage_costs(V3, PAPER, paper_training(b, recompute, **kw), range(4, 8))
    mla = sum(L.stored_by_module.get("mla", 0) for L in c.layers)
    moe = sum(L.stored_bytes for L in c.layers) - mla
    return mla, moe


def m1a(b):
    """M_1^A, TP2 SP2: every term halved except the latents 2bs(d_cq + d_c)."""
    return (4 * b * s * h // 2 + 2 * b * s * (dcq + dc) + 4 * b * s * (dh + dhr) * nh // 2
            + 2 * b * s * dh * nh // 2 + 5 * b * nh * s * s // 2 + 2 * b * s * dh * nh // 2
            + b * s * h // 2)


def m1e(b):
    """M_1^E, SP2 EP8 ETP1: E = b*s*N_r/N tokens per expert, 32 local experts."""
    E = b * s * Nr // N
    return (4 * b * s * h // 2 + 4 * b * s * N + 2 * b * s * Nr + 32 * (3 * E * h + 8 * E * hE)
            + 3 * b * s * h + 8 * b * s * hE)


GRID = {  # activations.md, Table 10 values (bytes), s = 4096
    1: (23_177_723_904, 1_493_434_368, 24_671_158_272, 117_440_512, 117_702_656, 235_143_168),
    2: (46_355_447_808, 2_986_868_736, 49_342_316_544, 234_881_024, 235_405_312, 470_286_336),
    4: (92_710_895_616, 5_973_737_472, 98_684_633_088, 469_762_048, 470_810_624, 940_572_672),
}


@pytest.mark.parametrize("b", [1, 2, 4])
def test_table10_grid(b):
    mla_none, moe_none, tot_none, mla_full, moe_full, tot_full = GRID[b]
    assert table10(b, "none") == (mla_none, moe_none)
    assert mla_none + moe_none == tot_none
    assert table10(b, "full") == (mla_full, moe_full)
    assert mla_full + moe_full == tot_full
    # ... and the formulas: 4·M_1^A, 4·M_1^E; full 4bsh and 4bsh + 8bsN_r
    assert mla_none == 4 * m1a(b) and moe_none == 4 * m1e(b)
    assert mla_full == 4 * b * s * h and moe_full == 4 * b * s * h + 8 * b * s * Nr


def test_table10_printed_units():
    assert abs(GRID[1][2] / GIB - 22.98) <= 0.005
    assert abs(GRID[1][5] / MIB - 224.25) <= 0.005
    c = stage_costs(V3, PAPER, paper_training(1, "full"), range(4, 8))
    assert round(sum(L.stored_bytes for L in c.layers) / MIB, 2) == 224.25


def layer(t, p=PAPER, index=4):
    return stage_costs(V3, p, t, [index]).layers[0]


def test_flash_attention_keeps_statistics_not_scores():
    eager, flash = layer(paper_training(1, "none")), layer(paper_training(1, "none", attention="flash"))
    scores = 5 * nh * s * s // 2            # softmax + mask + dropout output, 64 heads per device
    lse = 4 * (nh // 2) * s                 # FP32 log-sum-exp per query and local head
    assert eager.stored_by_module["mla"] - flash.stored_by_module["mla"] == scores - lse


def test_fp8_stores_linear_inputs_in_one_byte():
    bf16, fp8 = layer(paper_training(1, "none")), layer(paper_training(1, "none", fp8_activations=True))
    T, Tsp = s, s // 2
    # MLA: normalised input (T_sp·h) and the latents (T·(d_cq + d_c)) drop from 2 bytes to 1.
    assert bf16.stored_by_module["mla"] - fp8.stored_by_module["mla"] == Tsp * h + T * (dcq + dc)
    # Routed experts (R = b*s*N_r/ep = 4096 tokens): input R·h, SwiGLU inputs 2R·h_E, product R·h_E.
    R = s * Nr // 8
    assert bf16.stored_by_module["experts"] - fp8.stored_by_module["experts"] == R * h + 3 * R * hE


def test_selective_deepseek_v3_recomputes_norms_and_up_projections():
    t = paper_training(1, "selective", keep=("deepseek-v3",))
    L, none = layer(t), layer(paper_training(1, "none"))
    T, Tsp = s, s // 2
    dropped_mla = 2 * Tsp * h + 2 * (2 * T * (dh + dhr) * nh // 2) + 2 * T * dh * nh // 2
    assert L.stored_by_module["mla"] == none.stored_by_module["mla"] - dropped_mla
    R = s * Nr // 8
    assert L.stored_by_module["experts"] == none.stored_by_module["experts"] - 2 * R * hE - 2 * R * hE
    assert L.recompute_bytes == none.stored_bytes - L.stored_bytes > 0


def test_selective_keep_by_module_and_tensor():
    full = layer(paper_training(1, "full"))
    L = layer(paper_training(1, "selective", keep=("router", "mla.scores")))
    assert L.stored_bytes == full.stored_bytes + 4 * s * N + 5 * nh * s * s // 2


def test_context_parallel_splits_the_sequence():
    cp2 = ParallelConfig(tp=2, ep=8, cp=2, dp=16, sp=True)
    a, b = layer(paper_training(1, "none")), layer(paper_training(1, "none"), p=cp2)
    assert b.stored_by_module["mla"] * 2 == a.stored_by_module["mla"]
    assert b.stored_by_module["experts"] * 2 == a.stored_by_module["experts"]


def test_routed_tokens_and_imbalance():
    # Default convention: a device's experts hold the T_sp·N_r token copies it receives.
    R = s // 2 * Nr
    L = layer(TrainingConfig(micro_batch_size=1, seq_len=s, recipe="paper", expert_tokens="routed"))
    assert L.stored_by_module["experts"] == R * (2 * h + h + 8 * hE)
    L2 = layer(TrainingConfig(micro_batch_size=1, seq_len=s, recipe="paper", expert_tokens="routed",
                              imbalance=1.5))
    assert L2.stored_by_module["experts"] == (3 * R // 2) * (2 * h + h + 8 * hE)
    # a2a: dispatch + combine, send T_sp·N_r and receive R token copies, BF16 both ways
    assert L.a2a_bytes == (2 + 2) * (s // 2 * Nr + R) * h


@pytest.mark.parametrize("recompute, keep", [("none", ()), ("full", ()),
                                             ("selective", ("deepseek-v3",))])
def test_layer_invariants(recompute, keep):
    t = TrainingConfig(micro_batch_size=1, seq_len=1024, recompute=recompute, keep=keep)
    c = stage_costs(V3, PAPER, t, [2, 3], embedding=True, head=True, mtp=True)
    assert [L.name for L in c.layers] == ["embedding", "layer 2 (dense)", "layer 3 (moe)",
                                           "mtp 0", "head"]
    for L in c.layers:
        assert sum(L.stored_by_module.values()) == L.stored_bytes
        assert 0 <= L.w_bytes <= L.stored_bytes
        assert L.forward_transient_bytes >= 0 and L.recompute_bytes >= 0
        # frameworks recompute transformer layers only: never the embedding or the head
        assert (L.recompute_bytes == 0) == (recompute == "none" or L.name in ("embedding", "head"))
        assert L.a2a_bytes > 0 if ("moe" in L.name or "mtp" in L.name) else L.a2a_bytes == 0
    assert c.boundary_bytes == 2 * 1024 * h // 2
    # the default (megatron) recipe's FP32 loss keeps a 4-byte softmax of T x V/tp and the int64
    # labels, for the head and again for the MTP module's own loss
    assert c.logits_bytes == 2 * (1024 * (129280 // 2) * 4 + 8 * 1024)


def test_full_recompute_keeps_checkpoints_until_w():
    L = layer(paper_training(1, "full"))
    assert L.w_bytes == L.stored_bytes
    none = layer(paper_training(1, "none"))
    T, Tsp, R = s, s // 2, s * Nr // 8
    linear_inputs = (2 * Tsp * h + 2 * T * (dcq + dc) + 2 * T * dh * nh // 2         # MLA
                     + 2 * Tsp * h + 2 * R * h + 2 * R * hE + 2 * T * h + 2 * T * hE)  # MoE
    assert none.w_bytes == linear_inputs


@pytest.mark.parametrize("field, value, allowed", [
    ("recompute", "some", "selective"), ("attention", "sdpa", "flash"),
    ("keep", ("mla.nope",), "mla.q"), ("expert_tokens", "x", "routed"),
])
def test_bad_training_fields_name_what_is_allowed(field, value, allowed):
    kw = {field: value}
    if field == "keep":
        kw["recompute"] = "selective"
    with pytest.raises(ModelError) as e:
        TrainingConfig(**kw).validate(V3)
    assert str(e.value).startswith(field) and allowed in str(e.value)
