"""Grouped-query and multi-head attention worked by hand: parameters of a Qwen3-8B layer (q/k
norms), of a Qwen2-7B layer (q/k/v biases) and of a Mixtral-8x7B layer; the framework
inventory's stored bytes for eager attention (k, v repeated to every query head), dropout,
q/k norms, full and DeepSeek-V3-style selective recompute (the RMSNorms rebuilt, the kernel's
q, k, v kept), each from the tensor shapes of a Llama-style attention, not from pipesim."""
import dataclasses

import pytest

from pipesim.model import load_preset
from pipesim.model.activations import layer_activations
from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.params import layer_params



def dense_gqa(name, hidden, heads, head_dim, kv_heads, ffn, layers, vocab, **extra):
    """A dense grouped-query model: every layer a SwiGLU FFN of width ``ffn``, no MLA
    compression, no experts."""
    return ModelConfig(name=name, hidden=hidden, heads=heads, head_dim=head_dim, rope_head_dim=0,
                       q_compress=0, kv_compress=0, dense_ffn_hidden=ffn, moe_ffn_hidden=0,
                       routed_experts=0, shared_experts=0, experts_per_token=0, layers=layers,
                       dense_layers=layers, vocab=vocab, attention="gqa", kv_heads=kv_heads, **extra)


# a small Llama-shaped dense model: h 512, 8 query heads in 2 kv groups of d 64, f 1024
SMALL = dense_gqa("small-gqa", hidden=512, heads=8, head_dim=64, kv_heads=2, ffn=1024, layers=2, vocab=1000)
B, S = 2, 256
T = B * S
H, NH, G, D, F = 512, 8, 2, 64, 1024


def _acts(m, **training):
    t = TrainingConfig(micro_batch_size=B, seq_len=S, te_wgrad_placeholders=False, **training)
    return layer_activations(m, ParallelConfig(), t, "dense")


def test_qwen3_8b_layer_parameters_by_hand():
    # Qwen3-8B (config.json): h 4096, 32 heads, 8 kv heads, head_dim 128, f 12288
    m = dense_gqa("qwen3-8b", hidden=4096, heads=32, head_dim=128, kv_heads=8, ffn=12288, layers=36,
                  vocab=151936, qk_norm=True)
    L = layer_params(m, 0)
    assert L["attention"] == 4096 * 32 * 128 * 2 + 2 * 4096 * 8 * 128     # W_Q, W_O; W_K, W_V
    assert L["qk_norms"] == 2 * 128                                        # one weight per head dim, shared by heads
    assert L["mlp"] == 3 * 4096 * 12288 and L["norms"] == 2 * 4096
    assert "attention_bias" not in L


def test_qwen2_7b_biases_by_hand():
    m = dense_gqa("qwen2-7b", hidden=3584, heads=28, head_dim=128, kv_heads=4, ffn=18944, layers=28,
                  vocab=152064, qkv_bias=True)
    L = layer_params(m, 0)
    assert L["attention_bias"] == 3584 + 2 * 4 * 128                       # q: n_h·d = h; k, v: g·d
    assert L["attention"] == 2 * 3584 * 3584 + 2 * 3584 * 512


def test_mixtral_8x7b_layer_by_hand():
    L = layer_params(load_preset("mixtral-8x7b"), 0)
    assert L["routed_experts"] == 8 * 3 * 4096 * 14336
    assert L["gate"] == 4096 * 8                                           # the router [h, N]
    assert L["attention"] == 2 * 4096 * 4096 + 2 * 4096 * 1024


def _mlp_bytes():
    # norm input, 1/rms, normed (fc1 input), fc1 output [T, 2f], fc2 input [T, f] (fused SwiGLU)
    return 2 * T * H + 4 * T + 2 * T * H + 2 * T * 2 * F + 2 * T * F


def test_eager_attention_keeps_k_v_at_every_query_head():
    a = _acts(SMALL, attention="eager", dropout=0.0)
    attn = (2 * T * H + 4 * T + 2 * T * H          # norm input, 1/rms, q/k/v projection input
            + 3 * 2 * T * NH * D                   # q, and k, v repeated to the 8 query heads
            + 2 * B * NH * S * S                   # softmax output (bf16)
            + 2 * T * NH * D)                      # P·V output, W_O input
    assert a.stored_by_module == {"attn": attn, "mlp": _mlp_bytes()}


def test_dropout_adds_the_masks_and_the_dropped_probabilities():
    a = _acts(SMALL, attention="eager", dropout=0.1)
    no = _acts(SMALL, attention="eager", dropout=0.0)
    scores = B * NH * S * S
    # attention: a bool mask and the dropped bf16 probabilities per score, a bool mask per hidden value
    assert a.stored_by_module["attn"] - no.stored_by_module["attn"] == scores * (1 + 2) + T * H
    assert a.stored_by_module["mlp"] - no.stored_by_module["mlp"] == T * H


def test_multi_head_attention_is_gqa_with_one_head_per_group():
    mha = _acts(dataclasses.replace(SMALL, kv_heads=NH), attention="flash")
    gqa = _acts(SMALL, attention="flash")
    # flash keeps k and v at the kv heads: MHA keeps 2·2·T·(n_h − g)·d bytes more
    assert mha.stored_by_module["attn"] - gqa.stored_by_module["attn"] == 2 * 2 * T * (NH - G) * D
    assert mha.stored_by_module == _acts(dataclasses.replace(SMALL, kv_heads=0), attention="flash").stored_by_module


def _flash_attn(qk_norm):
    out = (2 * T * H + 4 * T + 2 * T * H + 2 * T * NH * D + 2 * 2 * T * G * D   # as above; k, v at g heads
           + 2 * T * NH * D + 4 * B * NH * S)                                    # kernel output, FP32 lse
    if qk_norm:   # the q and k norms keep their inputs (the projections' outputs) and 1/rms per head
        out += 2 * T * NH * D + 2 * T * G * D + 4 * T * (NH + G)
    return out


@pytest.mark.parametrize("qk_norm", [False, True])
def test_flash_gqa_with_and_without_qk_norm(qk_norm):
    a = _acts(dataclasses.replace(SMALL, qk_norm=qk_norm), attention="flash")
    assert a.stored_by_module == {"attn": _flash_attn(qk_norm), "mlp": _mlp_bytes()}


def test_qkv_bias_keeps_nothing_more():
    plain = _acts(SMALL, attention="flash")
    assert _acts(dataclasses.replace(SMALL, qkv_bias=True), attention="flash").stored == plain.stored


def test_full_recompute_keeps_the_layer_input_only():
    a = _acts(dataclasses.replace(SMALL, qk_norm=True), attention="flash", recompute="full")
    assert a.stored == 2 * T * H


@pytest.mark.parametrize("qk_norm", [False, True])
def test_deepseek_v3_selective_rebuilds_the_rmsnorms_only(qk_norm):
    a = _acts(dataclasses.replace(SMALL, qk_norm=qk_norm), attention="flash", recompute="selective",
              keep=("deepseek-v3",))
    # attention: 1/rms and the normed input go (and the q/k norms' 1/rms); the layer input, the
    # q/k norm inputs, the kernel's q, k, v, its output and lse stay
    attn = 2 * T * H + 2 * T * NH * D + 2 * 2 * T * G * D + 2 * T * NH * D + 4 * B * NH * S
    if qk_norm:
        attn += 2 * T * NH * D + 2 * T * G * D
    # FFN: its 1/rms, normed input and the SwiGLU output go; its input (R3's region input) and
    # fc1's output stay
    assert a.stored_by_module == {"attn": attn, "mlp": 2 * T * H + 2 * T * 2 * F}
