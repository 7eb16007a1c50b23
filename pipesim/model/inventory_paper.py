"""The paper's activation inventory (``inventory = "paper"``): Zhang & Su, arXiv 2502.07846,
section 5 and Table 10, in the convention of Korthikanti et al. 2022 — bytes per layer and
micro-batch, a = activation bytes, dropout masks 1 byte per element. It is kept so that the
paper's tables reproduce exactly; ``inventory_framework`` is what PyTorch really keeps.

Where tensors live, the paper's rule: tensors of the norms / dropouts are sequence-sharded
(T_sp); tensors made by TP-split weights carry n_h/tp heads or f/tp columns; tensors made by
TP-replicated weights (the latents, the router, the shared expert) cover all T tokens.

Tensors (W = input of a weight matmul, kept for the weight gradient; C = checkpoint):
    mla.input      a·T_sp·h                   C   RMSNorm input (the layer input)
    mla.normed     a'·T_sp·h                  W   normalised input
    mla.latents    a'·T·(d_cq + d_c)          W   query and key-value latents
    mla.q, mla.k   a·T·n_h(d_h + d_hr)/tp         queries, keys
    mla.v          a·T·n_h·d_h/tp                 values
    mla.scores     eager: (2a + 1)·b·n_h/tp·(s/cp)·s  softmax output, dropout mask and output
                   (a·… without dropout); flash: 4·b·n_h/tp·(s/cp) FP32 log-sum-exp
    mla.context    a·T·n_h·d_h/tp             W   attention output (W_O input)
    mla.mask       T_sp·h                         output dropout mask (with dropout)
    mlp.input, mlp.normed, mlp.mask as for MLA; mlp.hidden a'·2T·f/tp (gate and up outputs),
        mlp.silu a·T·f/tp, mlp.product a'·T·f/tp (W, down-projection input)
    moe.input      a·T_sp·h                   C   RMSNorm input
    moe.normed     a'·T_sp·h                  W   normalised input (router input)
    router.logits  2a·T·N                         router logits and probabilities
    router.routing a·T·N_r                    C   top-k routing output (the paper keeps it)
    experts.input  a'·R·h                     W   tokens of the local routed experts
    experts.mask   R·h                            their dropout mask (the paper counts it)
    experts.hidden a'·2R·h_E/etp, experts.silu a·R·h_E/etp, experts.product a'·R·h_E/etp (W)
    shared.input a'·T·h (W), shared.mask T·h, shared.hidden a'·2T·N_s·h_E, shared.silu
        a·T·N_s·h_E, shared.product a'·T·N_s·h_E (W)   (N_s shared experts as one SwiGLU)
    embedding.ids  8·T                        W C int64 token ids (the embedding gradient)
    head.input a·T_sp·h (C), head.normed a'·T_sp·h (W), loss.logits T·⌈V/tp⌉·(a + 4) (C: the
        BF16 logits and their FP32 copy, softmax and gradient computed in place)
    mtp.input a·T_sp·h (C), mtp.embed a·T_sp·h (C), mtp.normed a'·T_sp·2h (W), then an MoE
        layer, the head's tensors and its own loss.logits
Checkpoints (C) under full recomputation: granularity "sublayer" (the paper) keeps mla.input,
mlp.input / moe.input and router.routing; "layer" keeps mla.input only.

Paper check (TP2 SP2 CP1 EP8, b = 1, s = 4096, eager, expert_tokens = "paper"): MLA none
5,794,430,976 bytes per layer; MoE none 373,358,592; full: MLA 29,360,128, MoE 29,425,664.
"""
from __future__ import annotations

from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.tensors import Shape, Tensor, vocab_shard

TENSORS = {
    "embedding": ("ids",),
    "mla": ("input", "normed", "latents", "q", "k", "v", "scores", "context", "mask"),
    "attn": ("input", "normed", "q", "k", "v", "scores", "context", "mask"),
    "mlp": ("input", "normed", "hidden", "silu", "product", "mask"),
    "moe": ("input", "normed"),
    "router": ("logits", "routing"),
    "experts": ("input", "mask", "hidden", "silu", "product"),
    "shared": ("input", "mask", "hidden", "silu", "product"),
    "mtp": ("input", "embed", "normed"),
    "head": ("input", "normed"),
    "loss": ("logits",),
}
# DeepSeek-V3 (arXiv 2412.19437, section 3.2.3): recompute all RMSNorms and the MLA
# up-projections; cache the SwiGLU inputs and recompute its output. Everything else is kept.
V3_RECOMPUTED = {"mla.normed", "mla.q", "mla.k", "mla.v", "mlp.normed", "mlp.silu",
                 "mlp.product", "moe.normed", "attn.normed", "experts.silu", "experts.product", "shared.silu",
                 "shared.product", "mtp.normed", "head.normed"}


def _T(name, nbytes, w=False, c=False) -> Tensor:
    return Tensor(name, nbytes, w, c)


def _scores_bytes(m: ModelConfig, g: Shape) -> int:
    heads = m.heads // g.tp
    if g.flash:
        return 4 * g.b * heads * (g.s // g.cp)              # FP32 log-sum-exp per query and head
    per = 2 * g.a + 1 if g.dropout else g.a                 # softmax (+ mask + dropout output)
    return per * g.b * heads * (g.s // g.cp) * g.s


def mla_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    h, qk = m.hidden, m.heads * (m.head_dim + m.rope_head_dim) // g.tp
    hv = m.heads * m.head_dim // g.tp
    out = [_T("mla.input", g.a * g.T_sp * h, c=True),
           _T("mla.normed", g.a8 * g.T_sp * h, w=True),
           _T("mla.latents", g.a8 * g.T * (m.q_compress + m.kv_compress), w=True),
           _T("mla.q", g.a * g.T * qk), _T("mla.k", g.a * g.T * qk), _T("mla.v", g.a * g.T * hv),
           _T("mla.scores", _scores_bytes(m, g)),
           _T("mla.context", g.a * g.T * hv, w=True)]
    if g.dropout:
        out.append(_T("mla.mask", g.T_sp * h))
    return out


def gqa_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    """Multi-head / grouped-query attention in the same convention (Korthikanti et al.'s
    attention block, keys and values at the kv heads): attn.input, attn.normed, attn.q,
    attn.k, attn.v, attn.scores, attn.context, attn.mask."""
    h, d = m.hidden, m.head_dim
    q, kv = m.heads * d // g.tp, m.kv_groups * d // g.tp
    out = [_T("attn.input", g.a * g.T_sp * h, c=True), _T("attn.normed", g.a8 * g.T_sp * h, w=True),
           _T("attn.q", g.a * g.T * q), _T("attn.k", g.a * g.T * kv), _T("attn.v", g.a * g.T * kv),
           _T("attn.scores", _scores_bytes(m, g)), _T("attn.context", g.a * g.T * q, w=True)]
    if g.dropout:
        out.append(_T("attn.mask", g.T_sp * h))
    return out


def _attention(m: ModelConfig, g: Shape) -> list[Tensor]:
    return mla_tensors(m, g) if m.attention == "mla" else gqa_tensors(m, g)


def _swiglu(module: str, tokens: int, width: int, g: Shape) -> list[Tensor]:
    return [_T(f"{module}.hidden", g.a8 * 2 * tokens * width),     # gate, up outputs
            _T(f"{module}.silu", g.a * tokens * width),            # SiLU(gate)
            _T(f"{module}.product", g.a8 * tokens * width, w=True)]  # SiLU(gate)·up


def mlp_tensors(m: ModelConfig, g: Shape, sublayer: bool) -> list[Tensor]:
    h = m.hidden
    out = ([_T("mlp.input", g.a * g.T_sp * h, c=sublayer), _T("mlp.normed", g.a8 * g.T_sp * h, w=True)]
           + _swiglu("mlp", g.T, m.dense_ffn_hidden // g.tp, g))
    return out + ([_T("mlp.mask", g.T_sp * h)] if g.dropout else [])


def moe_tensors(m: ModelConfig, g: Shape, sublayer: bool) -> list[Tensor]:
    h, N, Nr = m.hidden, m.routed_experts, m.experts_per_token
    out = [_T("moe.input", g.a * g.T_sp * h, c=sublayer),
           _T("moe.normed", g.a8 * g.T_sp * h, w=True),
           _T("router.logits", 2 * g.a * g.T * N),
           _T("router.routing", g.a * g.T * Nr, c=sublayer),
           _T("experts.input", g.a8 * g.R * h, w=True)]
    if g.dropout:
        out.append(_T("experts.mask", g.R * h))
    out += _swiglu("experts", g.R, m.moe_ffn_hidden // g.etp, g)
    if m.shared_experts:
        out.append(_T("shared.input", g.a8 * g.T * h, w=True))
        if g.dropout:
            out.append(_T("shared.mask", g.T * h))
        out += _swiglu("shared", g.T, m.shared_width, g)
    return out


def logits_bytes(m: ModelConfig, p: ParallelConfig, g: Shape) -> int:
    """The head's BF16 output (a bytes) and its FP32 copy for the cross-entropy (4 bytes)."""
    return g.T * vocab_shard(m, p) * (g.a + 4)


def head_tensors(m: ModelConfig, p: ParallelConfig, g: Shape) -> list[Tensor]:
    h = m.hidden
    return [_T("head.input", g.a * g.T_sp * h, c=True),
            _T("head.normed", g.a8 * g.T_sp * h, w=True),
            _T("loss.logits", logits_bytes(m, p, g), c=True)]


def layer_tensors(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape,
                  kind: str) -> list[Tensor]:
    """The paper's tensors of one layer of ``kind``: dense | moe | embedding | head | mtp."""
    sub = t.recompute_granularity == "sublayer"
    h = m.hidden
    if kind == "dense":
        return _attention(m, g) + mlp_tensors(m, g, sub)
    if kind == "moe":
        return _attention(m, g) + moe_tensors(m, g, sub)
    if kind == "embedding":
        return [_T("embedding.ids", 8 * g.T, w=True, c=True)]
    if kind == "head":
        return head_tensors(m, p, g)
    if kind == "mtp":
        return ([_T("mtp.input", g.a * g.T_sp * h, c=True), _T("mtp.embed", g.a * g.T_sp * h, c=True),
                 _T("mtp.normed", g.a8 * g.T_sp * 2 * h, w=True)]
                + _attention(m, g) + moe_tensors(m, g, sub) + head_tensors(m, p, g))
    raise ValueError(f"layer kind: one of dense, moe, embedding, head, mtp; got {kind!r}")
