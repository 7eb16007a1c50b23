"""Every preset's parameter count against its published total (within 0.5%), and a GQA layer's
parameters and activations worked by hand (Llama 3 8B)."""
import pytest

from pipesim.model import ModelError, ParallelConfig, TrainingConfig, load_preset, preset_names, stage_costs
from pipesim.model.activations import layer_activations
from pipesim.model.params import layer_params, model_params

# Published totals, from each model's report or model card (the preset files cite them).
PUBLISHED = {
    "deepseek-v2-lite": 15.7e9,       # DeepSeek-V2 report, appendix B
    "deepseek-v2": 236e9,             # DeepSeek-V2 report, abstract
    "deepseek-v3": 671e9,             # DeepSeek-V3 report: 671B main model (685B with MTP)
    "llama-3-8b": 8.03e9,             # Llama 3 model card
    "llama-3-70b": 70.6e9,
    "llama-3.1-405b": 405e9,          # Llama 3 Herd of Models, Table 3
    "mixtral-8x7b": 46.7e9,           # Mixtral of Experts, section 2
    "mixtral-8x22b": 141e9,           # Mistral AI's announcement: 141B total, 39B active
    "qwen2-57b-a14b": 57.4e9,         # Hugging Face model card
    "qwen3-30b-a3b": 30.5e9,          # Qwen3 report, Table 2
    "qwen3-235b-a22b": 235e9,
}


def test_every_published_preset_is_listed():
    assert set(preset_names()) - {"tiny"} == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_total_matches_published(name):
    m = load_preset(name)
    m.validate()
    assert abs(model_params(m) / PUBLISHED[name] - 1) < 0.005


def test_llama_8b_layer_by_hand():
    m = load_preset("llama-3-8b")
    L = layer_params(m, 0)
    # W_Q, W_O [4096, 4096]; W_K, W_V [4096, 8*128]; SwiGLU 3*4096*14336; two RMSNorms
    assert L == {"attention": 2 * 4096 * 4096 + 2 * 4096 * 1024, "norms": 2 * 4096,
                 "mlp": 3 * 4096 * 14336}
    # 8,030,261,248 = 2 * 128256*4096 (embedding, untied head) + 32 layers + final norm
    assert model_params(m) == 2 * 128256 * 4096 + 32 * sum(L.values()) + 4096 == 8_030_261_248


def test_qwen2_moe_gated_shared_expert_and_biases():
    m = load_preset("qwen2-57b-a14b")
    L = layer_params(m, 0)
    assert L["shared_experts"] == 3 * 3584 * 20480 and L["shared_gate"] == 3584
    assert L["attention_bias"] == (28 + 2 * 4) * 128
    assert L["routed_experts"] == 64 * 3 * 3584 * 2560


def test_gqa_framework_activations_by_hand():
    m = load_preset("llama-3-8b")
    b, s, h, d = 1, 4096, 4096, 128
    T = b * s
    a = layer_activations(m, ParallelConfig(tp=8, sp=True), TrainingConfig(seq_len=s), "dense")
    Tsp = T // 8
    heads, kv = 32 // 8, 8 // 8
    attn = (2 * Tsp * h + 4 * Tsp + 2 * Tsp * h         # norm input, 1/rms, normed (SP-sharded)
            + 2 * T * heads * d + 2 * 2 * T * kv * d    # q; k, v at the kv heads (flash)
            + 2 * T * heads * d + 4 * b * heads * s)    # output (W_O input), log-sum-exp
    f = 14336 // 8
    mlp = 2 * Tsp * h + 4 * Tsp + 2 * Tsp * h + 2 * T * 2 * f + 2 * T * f   # fused SwiGLU
    assert a.stored_by_module == {"attn": attn, "mlp": mlp}


def test_mixtral_stage_costs_run_and_vocab_padding():
    m = load_preset("mixtral-8x7b", vocab_multiple=128)
    assert m.vocab_shard(8) == 32768 // 8            # 32000 padded to a multiple of 1024
    c = stage_costs(m, ParallelConfig(tp=8, ep=8, dp=8, sp=True), TrainingConfig(seq_len=4096),
                    range(0, 4), embedding=True)
    assert c.layers[0].name == "embedding" and c.layers[1].name == "layer 0 (moe)"


def test_gqa_needs_tp_to_divide_kv_heads():
    with pytest.raises(ModelError, match="key/value heads"):
        ParallelConfig(tp=16).validate(load_preset("llama-3-8b"))
    with pytest.raises(ModelError, match="model.q_compress"):
        load_preset("llama-3-8b", q_compress=64).validate()
