"""Hugging Face config.json files read as models. The fixtures are written here from each
model's published config (the fields and values of its config.json on the Hugging Face hub);
each must give the same parameters as the preset of the same model."""
import json

import pytest

import pipesim
from pipesim.cli import main
from pipesim.model import ModelError, load_preset
from pipesim.model.hf_config import read_hf_config
from pipesim.model.params import model_params

CONFIGS = {
    "mixtral-8x7b": {"architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
                     "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
                     "vocab_size": 32000, "tie_word_embeddings": False},
    "llama-3-8b": {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
                   "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False},
    "qwen2-57b-a14b": {"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 3584,
                       "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28,
                       "intermediate_size": 18944, "moe_intermediate_size": 2560,
                       "shared_expert_intermediate_size": 20480, "num_experts": 64,
                       "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
                       "vocab_size": 151936, "tie_word_embeddings": False},
    "qwen3-30b-a3b": {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048,
                      "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                      "num_hidden_layers": 48, "intermediate_size": 6144, "moe_intermediate_size": 768,
                      "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1,
                      "mlp_only_layers": [], "vocab_size": 151936, "tie_word_embeddings": False},
    "deepseek-v3": {"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 7168,
                    "num_attention_heads": 128, "qk_nope_head_dim": 128, "v_head_dim": 128,
                    "qk_rope_head_dim": 64, "q_lora_rank": 1536, "kv_lora_rank": 512,
                    "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256,
                    "n_shared_experts": 1, "num_experts_per_tok": 8, "num_hidden_layers": 61,
                    "first_k_dense_replace": 3, "moe_layer_freq": 1, "vocab_size": 129280,
                    "num_nextn_predict_layers": 1, "scoring_func": "sigmoid", "tie_word_embeddings": False},
    "deepseek-v2-lite": {"architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 2048,
                         "num_attention_heads": 16, "qk_nope_head_dim": 128, "v_head_dim": 128,
                         "qk_rope_head_dim": 64, "q_lora_rank": None, "kv_lora_rank": 512,
                         "intermediate_size": 10944, "moe_intermediate_size": 1408,
                         "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
                         "num_hidden_layers": 27, "first_k_dense_replace": 1, "moe_layer_freq": 1,
                         "vocab_size": 102400, "scoring_func": "softmax", "tie_word_embeddings": False},
}


def write(tmp_path, name, cfg):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(cfg))
    return p


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_config_gives_the_presets_parameters(tmp_path, name):
    m = read_hf_config(write(tmp_path, name, CONFIGS[name]))
    m.validate()
    preset = load_preset(name)
    assert model_params(m, mtp=True) == model_params(preset, mtp=True)
    assert (m.attention, m.routed_experts, m.shared_width, m.router) == (
        preset.attention, preset.routed_experts, preset.shared_width, preset.router)


@pytest.mark.parametrize("cfg, phrase", [
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures: 'GPT2LMHeadModel' is not supported; supported: Deepseek"),
    ({"architectures": ["MixtralForCausalLM"], "hidden_size": 4096}, "num_attention_heads: missing"),
    ({**CONFIGS["mixtral-8x7b"], "num_local_experts": "8"}, "num_local_experts: expected int"),
    ({**CONFIGS["qwen2-57b-a14b"], "mlp_only_layers": [3]}, "mlp_only_layers: dense layers"),
    ({**CONFIGS["deepseek-v3"], "v_head_dim": 64}, "v_head_dim: pipesim models MLA"),
    ([1, 2], "expected a JSON object"),
    ({**CONFIGS["llama-3-8b"], "attention_bias": True}, "attention_bias: true puts biases on the q, k, v and o"),
    ({**CONFIGS["llama-3-8b"], "mlp_bias": True}, "mlp_bias: true puts biases on the FFN"),
    ({**CONFIGS["qwen3-30b-a3b"], "attention_bias": True}, "attention_bias: true"),
    ({**CONFIGS["llama-3-8b"], "attention_bias": "no"}, "attention_bias: expected bool"),
])
def test_bad_configs_name_the_field(tmp_path, cfg, phrase):
    with pytest.raises(ModelError) as e:
        read_hf_config(write(tmp_path, "bad", cfg))
    assert phrase in str(e.value) and "bad.json" in str(e.value)


def test_scenario_reads_hf_config_and_keys_override(tmp_path):
    write(tmp_path, "mixtral", CONFIGS["mixtral-8x7b"])
    sc = tmp_path / "s.toml"
    sc.write_text('[model]\nhf_config = "mixtral.json"\nlayers = 4\n[parallel]\npp = 2\n'
                  '[training]\nseq_len = 256\nmicrobatches = 4\n')
    s = pipesim.load_scenario(sc)
    assert s.model.layers == 4 and s.model.routed_experts == 8
    res = pipesim.simulate(s)
    assert res.peaks[0].bytes > 0


def test_bad_hf_config_in_a_scenario_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    sc = tmp_path / "s.toml"
    sc.write_text('[model]\nhf_config = "x.json"\n')
    out = tmp_path / "out"
    assert main(["run", str(sc), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.hf_config" in err[0] and "x.json" in err[0]
    assert not out.exists()


def test_model_verb_reads_hf_config_without_a_scenario(tmp_path, capsys):
    p = write(tmp_path, "llama", CONFIGS["llama-3-8b"])
    assert main(["model", "--hf", str(p)]) == 0
    text = capsys.readouterr().out
    assert "8,030,261,248" in text                    # the model total in Table 3


# Dense GQA models, dimensions from each model's config.json on the Hugging Face hub, checked
# against public copies found with the search tool: Mistral-7B-v0.1 (huggingface.co/mistralai/
# Mistral-7B-v0.1; sumitdotml/transformers mistral-7b-v0.1/README.md: dim 4096, 32 layers, 32/8
# heads of 128, hidden 14336, vocab 32000); Qwen2-7B (huggingface.co/Qwen/Qwen2-7B; the Instruct
# model's config and module tree printed in Retruth/deontic nlp_models/qwen2/README.md: 3584,
# 28/4 heads, 28 layers, 18944, vocab 152064, q/k/v_proj bias=True, o_proj bias=False);
# Qwen3-8B (huggingface.co/Qwen/Qwen3-8B; sanjithudupa/compute-aware-arch-search
# Qwen3-8B/config.json: "head_dim": 128 given explicitly, 4096, 32/8 heads, 36 layers, 12288,
# vocab 151936, untied). Totals as their model cards publish them: Mistral-7B 7.24B, Qwen2-7B
# 7.62B, Qwen3-8B 8.19B parameters.
DENSE_GQA = {
    "mistral-7b-v0.1": ({"architectures": ["MistralForCausalLM"], "hidden_size": 4096,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
                         "intermediate_size": 14336, "vocab_size": 32000, "tie_word_embeddings": False},
                        7.24e9),
    "qwen2-7b": ({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_attention_heads": 28,
                  "num_key_value_heads": 4, "num_hidden_layers": 28, "intermediate_size": 18944,
                  "vocab_size": 152064, "tie_word_embeddings": False}, 7.62e9),
    "qwen3-8b": ({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 4096, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 36,
                  "intermediate_size": 12288, "vocab_size": 151936, "tie_word_embeddings": False,
                  "attention_bias": False}, 8.19e9),
}


def _dense_gqa_total(c: dict, bias: bool, qk_norm: bool) -> int:
    """The parameters of a Llama-style dense GQA model worked from the config by hand: per layer
    W_Q h·n_h·d, W_K and W_V h·g·d each, W_O n_h·d·h, SwiGLU 3·h·f, two RMSNorms 2h; Qwen2 adds
    the q, k, v biases (n_h + 2g)·d, Qwen3 the per-head q and k norm weights 2d; then the
    embedding and the untied head V·h each and the final norm h."""
    h, nh, g, f = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    d = c.get("head_dim", h // nh)
    layer = h * nh * d + 2 * h * g * d + nh * d * h + 3 * h * f + 2 * h
    layer += (nh + 2 * g) * d if bias else 0
    layer += 2 * d if qk_norm else 0
    return c["num_hidden_layers"] * layer + 2 * c["vocab_size"] * h + h


@pytest.mark.parametrize("name", sorted(DENSE_GQA))
def test_dense_gqa_configs_match_the_published_totals(tmp_path, name):
    cfg, published = DENSE_GQA[name]
    m = read_hf_config(write(tmp_path, name, cfg))
    m.validate()
    assert (m.attention, m.routed_experts, m.qkv_bias, m.qk_norm) == (
        "gqa", 0, name.startswith("qwen2"), name.startswith("qwen3"))
    assert m.head_dim == 128 and m.kv_groups == cfg["num_key_value_heads"]
    total = model_params(m, mtp=True)
    assert total == _dense_gqa_total(cfg, m.qkv_bias, m.qk_norm)
    assert abs(total - published) <= 0.005 * published, f"{name}: {total:,} vs published {published:,.0f}"
