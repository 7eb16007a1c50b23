"""A Hugging Face ``config.json`` read as a ``ModelConfig``: the one place that maps its fields.

    from pipesim.model.hf_config import read_hf_config
    m = read_hf_config("Mixtral-8x7B/config.json")      # ModelError names the file and field

``architectures[0]`` picks the mapping; every field the model needs must be present (a missing
one is an error naming it, never a guess), except those whose Hugging Face default is stated
below. Supported (``SUPPORTED``):

    DeepseekV2ForCausalLM, DeepseekV3ForCausalLM   attention "mla"
        hidden_size → hidden, num_attention_heads → heads, qk_nope_head_dim → head_dim (must
        equal v_head_dim), qk_rope_head_dim → rope_head_dim, q_lora_rank (null = 0) →
        q_compress, kv_lora_rank → kv_compress, intermediate_size → dense_ffn_hidden,
        moe_intermediate_size → moe_ffn_hidden, n_routed_experts → routed_experts,
        n_shared_experts → shared_experts, num_experts_per_tok → experts_per_token,
        num_hidden_layers → layers, first_k_dense_replace → dense_layers, moe_layer_freq →
        moe_every, vocab_size → vocab, tie_word_embeddings → tied_embeddings,
        num_nextn_predict_layers (default 0) → mtp_modules, scoring_func (default softmax) → router
    MixtralForCausalLM                              attention "gqa", every layer MoE
        num_key_value_heads → kv_heads, head_dim (default hidden/heads), intermediate_size →
        moe_ffn_hidden, num_local_experts → routed_experts, num_experts_per_tok
    Qwen2MoeForCausalLM, Qwen3MoeForCausalLM        attention "gqa"
        num_experts → routed_experts, moe_intermediate_size → moe_ffn_hidden,
        intermediate_size → dense_ffn_hidden, decoder_sparse_step (default 1) → moe_every,
        mlp_only_layers must be empty; Qwen2-MoE: shared_expert_intermediate_size →
        shared_ffn_hidden with a gated shared expert, q/k/v biases; Qwen3-MoE: per-head q/k
        RMSNorm, no shared expert
    LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM   dense, "gqa"
        intermediate_size → dense_ffn_hidden; Qwen2 adds q/k/v biases, Qwen3 q/k norms
    Refused: attention_bias = true (Llama, Qwen3, Qwen3-MoE: Hugging Face then biases q, k, v
    and o_proj, and pipesim's qkv_bias covers Qwen2's q, k, v only) and mlp_bias = true (Llama:
    biased FFN projections); both default to false.
Keys of the scenario's ``[model]`` table override what the file gives.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipesim.model.config import ModelConfig, ModelError

DEEPSEEK = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
MOE_GQA = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
DENSE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
SUPPORTED = DEEPSEEK + MOE_GQA + DENSE
# config flags that add biases pipesim does not model (Hugging Face's modeling code of each)
_ATTENTION_BIAS = ("attention_bias", "the q, k, v and o projections")
_BIASES = {"LlamaForCausalLM": (_ATTENTION_BIAS, ("mlp_bias", "the FFN's gate, up and down projections")),
           "Qwen3ForCausalLM": (_ATTENTION_BIAS,), "Qwen3MoeForCausalLM": (_ATTENTION_BIAS,)}
_MISSING = object()


def read_hf_config(path: str | Path, **overrides) -> ModelConfig:
    """The model of a Hugging Face ``config.json``; keyword arguments override its fields."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such Hugging Face config file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a readable JSON config: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    archs = raw.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED:
        raise ModelError(f"{path}: architectures: {arch!r} is not supported; supported: {', '.join(SUPPORTED)}")
    fields = _fields(raw, arch, path)
    fields.update(overrides)
    try:
        m = ModelConfig(**fields)
    except TypeError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return m


def _get(raw: dict, key: str, path: Path, default=_MISSING, kind=int):
    value = raw.get(key, default)
    if value is _MISSING:
        raise ModelError(f"{path}: {key}: missing, needed for {raw['architectures'][0]}")
    if value is None and default is not _MISSING:
        value = default
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ModelError(f"{path}: {key}: expected {kind.__name__}, got {value!r}")
    return value


def _fields(raw: dict, arch: str, path: Path) -> dict:
    g = lambda key, default=_MISSING, kind=int: _get(raw, key, path, default, kind)  # noqa: E731
    hidden, heads = g("hidden_size"), g("num_attention_heads")
    out = {"name": str(raw.get("_name_or_path") or raw.get("model_type") or arch),
           "hidden": hidden, "heads": heads, "layers": g("num_hidden_layers"),
           "vocab": g("vocab_size"), "tied_embeddings": g("tie_word_embeddings", False, bool)}
    if arch in DEEPSEEK:
        nope, v = g("qk_nope_head_dim"), g("v_head_dim")
        if nope != v:
            raise ModelError(f"{path}: v_head_dim: pipesim models MLA with one head dim for the "
                             f"no-rope q/k part and v; got qk_nope_head_dim {nope}, v_head_dim {v}")
        q_lora = raw.get("q_lora_rank")
        out.update(attention="mla", head_dim=nope, rope_head_dim=g("qk_rope_head_dim"),
                   q_compress=0 if q_lora is None else g("q_lora_rank"), kv_compress=g("kv_lora_rank"),
                   dense_ffn_hidden=g("intermediate_size"), moe_ffn_hidden=g("moe_intermediate_size"),
                   routed_experts=g("n_routed_experts"), shared_experts=g("n_shared_experts", 0),
                   experts_per_token=g("num_experts_per_tok"),
                   dense_layers=g("first_k_dense_replace", 0), moe_every=g("moe_layer_freq", 1),
                   mtp_modules=g("num_nextn_predict_layers", 0),
                   router=g("scoring_func", "softmax", str))
        return out
    for key, what in _BIASES.get(arch, ()):
        if g(key, False, bool):
            raise ModelError(f"{path}: {key}: true puts biases on {what}, which pipesim does not "
                             f"model (qkv_bias is Qwen2's q, k, v biases); supported: false")
    out.update(attention="gqa", kv_heads=g("num_key_value_heads", heads),
               head_dim=g("head_dim", hidden // heads), rope_head_dim=0, q_compress=0, kv_compress=0,
               qkv_bias=arch.startswith("Qwen2"), qk_norm=arch.startswith("Qwen3"))
    if arch in DENSE:
        out.update(dense_ffn_hidden=g("intermediate_size"), moe_ffn_hidden=0, routed_experts=0,
                   shared_experts=0, experts_per_token=0, dense_layers=out["layers"])
        return out
    if arch == "MixtralForCausalLM":
        out.update(dense_ffn_hidden=0, moe_ffn_hidden=g("intermediate_size"),
                   routed_experts=g("num_local_experts"), shared_experts=0,
                   experts_per_token=g("num_experts_per_tok"), dense_layers=0)
        return out
    if raw.get("mlp_only_layers"):
        raise ModelError(f"{path}: mlp_only_layers: dense layers between MoE layers other than "
                         f"every decoder_sparse_step-th are not supported; got {raw['mlp_only_layers']!r}")
    shared = g("shared_expert_intermediate_size", 0) if arch == "Qwen2MoeForCausalLM" else 0
    out.update(dense_ffn_hidden=g("intermediate_size"), moe_ffn_hidden=g("moe_intermediate_size"),
               routed_experts=g("num_experts"), experts_per_token=g("num_experts_per_tok"),
               shared_experts=1 if shared else 0, shared_ffn_hidden=shared,
               shared_expert_gate=bool(shared), dense_layers=0,
               moe_every=g("decoder_sparse_step", 1))
    return out
