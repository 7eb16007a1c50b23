"""Recipes and their options, each checked against a value worked by hand on the tiny model
(h 256, 4 heads, d_h 32, d_hr 16, d_cq 128, d_c 64, f 512, h_E 128, 8 experts, 1 shared,
top-2, V 1024) or on the paper's DeepSeek-V3 layout."""
import dataclasses

import pytest

from pipesim.model import DTypes, ModelError, ParallelConfig, TrainingConfig, load_preset, stage_costs
from pipesim.model.activations import layer_activations, tensor_listing
from pipesim.model.recipe import RECIPES

TINY = load_preset("tiny")
V3 = load_preset("deepseek-v3")
b, s = 1, 256
T, h, nh = b * s, 256, 4


def acts(kind, p=ParallelConfig(), **kw):
    return layer_activations(TINY, p, TrainingConfig(micro_batch_size=b, seq_len=s, **kw), kind)


def test_no_recipe_named_is_megatron_and_each_option_overrides():
    t = TrainingConfig()
    assert t.recipe == "megatron"
    for key, value in RECIPES["megatron"].items():
        got = dataclasses.asdict(t.dtypes) if key == "dtypes" else getattr(t, key)
        assert got == value, key
    t2 = TrainingConfig(recipe="paper", dropout=0.0, attention="flash")
    assert (t2.dropout, t2.attention, t2.inventory, t2.recompute_granularity) == (0.0, "flash", "paper", "sublayer")
    t3 = TrainingConfig(dtypes=DTypes(momentum=2))
    assert (t3.dtypes.momentum, t3.dtypes.variance, t3.dtypes.master) == (2, 4, 4)


def test_bad_recipe_and_options_name_what_is_allowed():
    for kw, key, allowed in (({"recipe": "nemo"}, "recipe", "megatron"),
                             ({"cross_entropy": "bf16"}, "cross_entropy", "fused"),
                             ({"moe_combine": "x"}, "moe_combine", "activation"),
                             ({"dropout": 1.5}, "dropout", "[0, 1)"),
                             ({"recompute_granularity": "block"}, "recompute_granularity", "sublayer")):
        with pytest.raises(ModelError) as e:
            TrainingConfig(**kw).validate(TINY)
        assert str(e.value).startswith(key) and allowed in str(e.value)


def test_dropout_adds_its_masks_and_the_dropped_probabilities():
    # eager attention: softmax output a·b·n_h·s² is kept either way; dropout adds its bool mask
    # (1 byte per score) and the dropped copy (a bytes), and a bool mask after W_O and after the
    # FFN (T·h each)
    off, on = acts("dense", attention="eager"), acts("dense", attention="eager", dropout=0.1)
    scores = b * nh * s * s
    assert on.stored - off.stored == scores * (1 + 2) + 2 * T * h
    assert off.stored_by_module["mla"] - acts("dense", attention="flash").stored_by_module["mla"] == (
        2 * scores - 4 * b * nh * s)        # eager keeps P (BF16); flash keeps the FP32 lse


def test_cross_entropy_fp32_keeps_the_fp32_softmax_fused_the_bf16_gradient():
    fp32, fused = acts("head", cross_entropy="fp32"), acts("head", cross_entropy="fused")
    assert fp32.stored_by_module["loss"] == 4 * T * 1024 + 8 * T       # and the int64 labels
    assert fused.stored_by_module["loss"] == 2 * T * 1024 + 8 * T


def test_swiglu_fusion_drops_the_silu_output():
    f = 512                                         # dense FFN width
    assert acts("dense", swiglu_fusion=False).stored - acts("dense", swiglu_fusion=True).stored == 2 * T * f


def test_moe_combine_output_keeps_the_expert_output():
    S = T * 2                                       # token copies (top-2)
    out, act = acts("moe", moe_combine="output"), acts("moe", moe_combine="activation")
    # output: the experts' output S·h and the probabilities S, BF16; activation: probabilities R = S
    assert out.stored_by_module["experts"] - act.stored_by_module["experts"] == 2 * S * h


def test_permute_fusion_keeps_int32_row_map():
    S = T * 2
    # unfused: two int64 index vectors (tokens, probabilities); fused: one int32 row map
    assert acts("moe").stored - acts("moe", moe_permute_fusion=True).stored == (2 * 8 - 4) * S


def test_full_recompute_granularity():
    # layer: only the layer input a·T·h; sublayer: also the FFN's input
    layer = acts("dense", recompute="full", recompute_granularity="layer")
    sub = acts("dense", recompute="full", recompute_granularity="sublayer")
    assert layer.stored == 2 * T * h and sub.stored == 2 * 2 * T * h


def test_deepseek_v3_selective_keeps_latents_rope_key_and_attention_output():
    a = acts("moe", recipe="deepseek-v3")         # fp8 on: a' = 1 byte
    ls = {r["name"]: r for r in tensor_listing(TINY, ParallelConfig(), TrainingConfig(
        micro_batch_size=b, seq_len=s, recipe="deepseek-v3"), "moe")}
    stored = {n for n, r in ls.items() if r["status"] == "stored"}
    assert {"mla.input", "mla.latents", "mla.k_rope", "mla.context", "experts.hidden"} <= stored
    assert not {"mla.q", "mla.k", "mla.v", "mla.normed", "experts.product"} & stored
    # MLA: input 2·T·h + latents 2·T·(d_cq + d_c) + rope key 2·T·d_hr + output 2·T·n_h·d_h
    assert a.stored_by_module["mla"] == 2 * T * h + 2 * T * (128 + 64) + 2 * T * 16 + 2 * T * nh * 32


def test_deferred_w_keeps_every_matmul_output_gradient():
    # dense layer, per token: MLA outputs W_DQ 128 + W_UQ 128 + W_QR 64 + W_DKV 64 + W_UK 128 +
    # W_UV 128 + W_KR 16 + W_O 256 = 912; FFN fc1 2·512 + fc2 256 = 1280; BF16
    assert acts("dense").w_grad_outputs == 2 * T * (912 + 1280)


def test_deferred_w_under_recompute_rebuilds_its_inputs():
    none, full = acts("dense"), acts("dense", recompute="full")
    assert none.w_recompute == 0
    # full: every weight input but the checkpoint is dropped: mla.normed, latents_normed,
    # context (flash), mlp.normed, product — 2·T·(h + (d_cq + d_c) + n_h·d_h + h + f)
    assert full.w_recompute == 2 * T * (256 + 192 + 128 + 256 + 512)


def test_context_parallel_shards_zero_states_over_dp_times_cp():
    paper = TrainingConfig(recipe="paper", zero="os")
    cp1 = ParallelConfig(tp=2, pp=16, ep=8, dp=32, cp=1, sp=True)
    cp2 = ParallelConfig(tp=2, pp=16, ep=8, dp=16, cp=2, sp=True)
    assert cp2.edp_effective == 8 == cp1.edp_effective            # 16·2·2/8
    a, c = (stage_costs(V3, p, paper, range(4, 8)) for p in (cp1, cp2))
    # Table 8, os: 429,719,552·8/32 + 5,820,645,376·8/8, the same 64 devices either way
    assert a.optimizer_bytes == c.optimizer_bytes == 5_928_075_264


def test_megatron_shared_placement_splits_shared_experts_and_shards_router_over_dp():
    p = ParallelConfig(tp=2, pp=16, ep=8, dp=32, sp=True)
    meg = stage_costs(V3, p, TrainingConfig(recipe="paper", shared_placement="megatron", zero="os"), range(4, 8))
    pap = stage_costs(V3, p, TrainingConfig(recipe="paper", zero="os"), range(4, 8))
    shared = 4 * 3 * 7168 * 2048                  # four layers' shared expert
    gate = 4 * 256 * 7168
    assert pap.params - meg.params == shared // 2
    # optimizer (8 bytes/param): paper: shared + gate over EDP 8; megatron: shared/2 + gate over DP 32
    assert pap.optimizer_bytes - meg.optimizer_bytes == (shared + gate) * 8 // 8 - (shared // 2 + gate) * 8 // 32


def test_optimizer_without_master_copy():
    c = stage_costs(V3, ParallelConfig(tp=2, pp=16, ep=8, dp=32, sp=True),
                    TrainingConfig(recipe="paper", dtypes=DTypes(master=0, momentum=4, variance=4)), range(4, 8))
    assert c.optimizer_bytes == 6_250_364_928 * 8      # Table 6 params x (0 + 4 + 4)


def test_sequence_must_divide_over_cp_and_sp():
    t = TrainingConfig(seq_len=4098)
    with pytest.raises(ModelError, match="seq_len: must be divisible by parallel.cp"):
        t.validate_layout(ParallelConfig(cp=4))
    with pytest.raises(ModelError, match="parallel.tp"):
        TrainingConfig(seq_len=4098).validate_layout(ParallelConfig(tp=4, sp=True))
    TrainingConfig(seq_len=4096).validate_layout(ParallelConfig(tp=4, cp=2, sp=True))


def test_a_recipes_keep_list_goes_only_with_its_selective_recompute():
    # deepseek-v3 recomputes selectively with its keep list; asked for full, no keep is inherited
    assert TrainingConfig(recipe="deepseek-v3").keep == ("deepseek-v3",)
    t = TrainingConfig(recipe="deepseek-v3", recompute="full")
    assert t.keep == ()
    t.validate(TINY)
