"""What a real framework keeps (``inventory = "framework"``): every tensor PyTorch autograd
saves for backward in one layer, as the fused kernels of Megatron-Core / Transformer Engine
save it, per device and micro-batch. Each entry was checked against the PyTorch harness in
``benchmarks/fidelity`` (saved-tensor hooks, deduplicated by storage); the op that keeps it is
named in ``why``. Symbols as in ``pipesim.model.tensors``; a = activation bytes, a' = FP8-eligible
linear inputs, 4 = FP32, 8 = int64.

Norms (fused RMSNorm, Apex / TE): keep their input (a) and one FP32 reciprocal RMS per token;
the normalised output is kept by the linear that consumes it. With sequence parallelism the
norm runs on T_sp tokens and the column-parallel linear keeps its sequence-sharded input,
all-gathering it again in backward (Korthikanti et al. 2022, section 4.2.2).

GQA / MHA sublayer (``gqa_tensors``): attn.input, attn.rstd, attn.normed (W), with qk_norm
    attn.q_pre, attn.k_pre, attn.qk_rstd; attn.q a·T·n_h/tp·d, attn.k and attn.v a·T·g/tp·d
    (flash; eager expands them to n_h/tp heads), then context / lse or probs as for MLA.
MLA sublayer (tensors made by TP-replicated weights cover T tokens, TP-split ones n_h/tp heads):
    mla.input           a·T_sp·h             C   attention norm input (the layer input)
    mla.rstd            4·T_sp                   its reciprocal RMS
    mla.normed          a'·T_sp·h            W   input of W_DQ (or W_Q), W_DKV, W_KR
    mla.latents         a·T·(d_cq + d_c)         latents, kept by the q / kv latent norms
    mla.latent_rstd     4·T·(number of latent norms)
    mla.latents_normed  a'·T·(d_cq + d_c)    W   input of the up-projections W_UQ|W_QR, W_UK|W_UV
    mla.k_rope          a·T·d_hr                 the shared rope key before rope: kept only when
                                                 the up-projections are recomputed (a region input)
    mla.q, mla.k        a·T·n_h/tp·(d_h + d_hr)  query, key (contiguous copies for the kernel)
    mla.v               a·T·n_h/tp·d_h           value
    flash: mla.context  a·T·n_h/tp·d_h       W   kernel output = W_O input (same storage)
           mla.lse      4·b·n_h/tp·(s/cp)        FP32 log-sum-exp per query and head
    eager: mla.probs    a·b·n_h/tp·(s/cp)·s      softmax output (kept by softmax and by P·V)
           mla.probs_mask, mla.probs_dropped  (with dropout) 1 and a bytes per score
           mla.context  a·T·n_h/tp·d_h       W   P·V output made contiguous for W_O
    mla.mask            T_sp·h                   hidden dropout mask (with dropout)
Dense FFN: mlp.input (C with sublayer checkpoints), mlp.rstd, mlp.normed (W); mlp.hidden
    a'·T·2f/tp (fc1 output = SwiGLU input); mlp.silu a·T·f/tp (eager SwiGLU only: SiLU(gate),
    kept by the multiply); mlp.product a'·T·f/tp (W, fc2 input); mlp.mask T_sp·h (dropout).
MoE FFN:
    moe.input, moe.rstd (the MoE norm's input and 1/rms)
    router.input        a'·T_sp·h            W   the normalised input, kept by the router's
                                                 linear (the first to save it) and shared by
                                                 the shared experts; the dispatch gathers from it
    router.probs        4·T_sp·N                 FP32 softmax / sigmoid scores (kept by the op
                                                 and by the gather of the chosen scores)
    router.indices      8·T_sp·N_r               int64 top-k indices (topk, gather)
    router.weights      4·T_sp·(N_r + 1)         sigmoid only: the chosen scores and their sum,
                                                 kept by the normalising division
    experts.indices     16·S, or 4·S fused       int64 gather indices of the dispatch (shared by
                                                 the unpermute) and of the probabilities, or
                                                 TE's int32 row map
    experts.input       a'·R·h               W   the tokens this device's experts receive
    experts.hidden      a'·R·2h_E/etp            fc1 output = SwiGLU input (FP8-cached by V3)
    experts.silu        a·R·h_E/etp              eager SwiGLU only
    experts.product     a'·R·h_E/etp         W   fc2 input
    combine "output":   experts.output a·S·h (the experts' output, kept by the multiply with
                        the probabilities for their gradient) and experts.probs a·S (the
                        probabilities, kept for the tokens' gradient)
    combine "activation": experts.probs a·R (kept by the weighted SwiGLU)
    shared.hidden a·T·2N_s·h_E/tp', shared.silu (eager), shared.product a'·T·N_s·h_E/tp' (W),
        tp' = tp with ``shared_placement = "megatron"`` (a TP-split MLP), 1 with "paper"; the
        shared experts read router.input, so they keep no input of their own
    moe.mask            T_sp·h                   FFN output dropout mask (with dropout)
Embedding: embedding.ids 8·T (int64 ids, kept by the embedding's backward).
Head: head.input a·T_sp·h, head.rstd 4·T_sp, head.normed a'·T_sp·h (W); loss "fp32":
    loss.softmax 4·T·⌈V/tp⌉ (FP32 log-softmax of the FP32 copy of the logits; the BF16 logits
    and the copy are freed in forward); "fused": loss.grad a·T·⌈V/tp⌉ (the gradient, written
    in forward over the logits); loss.targets 8·T (the int64 labels). Head, embedding and loss are never recomputed (frameworks
    checkpoint transformer layers only).
MTP module (DeepSeek-V3 section 2.2): mtp.input a·T_sp·h and mtp.embed a·T_sp·h (inputs of
    its two norms, C), mtp.rstd 8·T_sp, mtp.ids 8·T (its embedding lookup), mtp.normed
    a'·T_sp·2h (the concatenation, input of the projection, W); then an MoE layer, a head and
    its own loss.
"""
from __future__ import annotations

from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.tensors import Shape, Tensor, tensor, vocab_shard

TENSORS = {
    "embedding": ("ids",),
    "mla": ("input", "rstd", "normed", "latents", "latent_rstd", "latents_normed", "k_rope",
            "q", "k", "v", "probs", "probs_mask", "probs_dropped", "context", "lse", "mask"),
    "attn": ("input", "rstd", "normed", "q_pre", "k_pre", "qk_rstd", "q", "k", "v", "probs",
             "probs_mask", "probs_dropped", "context", "lse", "mask"),
    "mlp": ("input", "rstd", "normed", "hidden", "silu", "product", "mask"),
    "moe": ("input", "rstd", "mask"),
    "router": ("input", "probs", "indices", "weights"),
    "experts": ("indices", "input", "hidden", "silu", "product", "output", "probs"),
    "shared": ("hidden", "silu", "product"),
    "mtp": ("input", "embed", "rstd", "ids", "normed"),
    "head": ("input", "rstd", "normed"),
    "loss": ("softmax", "grad", "targets"),
}
# DeepSeek-V3's selective recomputation (arXiv 2412.19437, section 3.2.3): all RMSNorms and the
# MLA up-projections are recomputed, the SwiGLU's input cached and its output recomputed.
# Recomputing the up-projections pays only if the attention kernel's q, k, v go too: they are
# rebuilt from the latents before the attention backward (the harness: one checkpoint around
# the latent norms, up-projections, rope and attention core), so the latents and the rope key
# are kept as that region's inputs and the attention output by W_O.
V3_RECOMPUTED = {"mla.rstd", "mla.normed", "mla.latent_rstd", "mla.latents_normed",
                 "mla.q", "mla.k", "mla.v", "mla.lse", "attn.rstd", "attn.normed", "attn.qk_rstd",
                 "mlp.rstd", "mlp.normed", "mlp.silu", "mlp.product",
                 "moe.rstd", "router.input", "experts.silu", "experts.product", "shared.silu",
                 "shared.product", "mtp.rstd", "mtp.normed"}
# kept only when a recompute region starts at it (see mla.k_rope)
REGION_INPUTS = {"mla.k_rope": "mla.latents_normed"}
NEVER_RECOMPUTED = ("embedding", "head", "loss")


def _norm(module: str, g: Shape, h: int, tokens: int, *, c: bool, what: str) -> list[Tensor]:
    """A fused RMSNorm's input (C when it starts a checkpoint) and its FP32 reciprocal RMS."""
    return [tensor(f"{module}.input", (tokens, h), g.act, g.a, c=c, why=f"{what} RMSNorm input"),
            tensor(f"{module}.rstd", (tokens,), "fp32", 4, why=f"{what} RMSNorm 1/rms")]


def mla_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    h, T = m.hidden, g.T
    heads = m.heads // g.tp
    lat = m.q_compress + m.kv_compress
    n_lat = 1 + (m.q_compress > 0)
    out = _norm("mla", g, h, g.T_sp, c=True, what="attention")
    out += [
        tensor("mla.normed", (g.T_sp, h), g.act8, g.a8, w=True,
               why="input of the down-projections (W_DQ or W_Q, W_DKV, W_KR)"),
        tensor("mla.latents", (T, lat), g.act, g.a, why="q/kv latent RMSNorm inputs"),
        tensor("mla.latent_rstd", (n_lat, T), "fp32", 4, why="latent RMSNorms' 1/rms"),
        tensor("mla.latents_normed", (T, lat), g.act8, g.a8, w=True,
               why="input of the up-projections (W_UQ|W_QR, W_UK|W_UV)"),
        tensor("mla.k_rope", (T, m.rope_head_dim), g.act, g.a,
               why="rope key, input of the recomputed up-projection region"),
        tensor("mla.q", (g.b, heads, g.s // g.cp, m.head_dim + m.rope_head_dim), g.act, g.a,
               why="attention kernel: query"),
        tensor("mla.k", (g.b, heads, g.s // g.cp, m.head_dim + m.rope_head_dim), g.act, g.a,
               why="attention kernel: key"),
        tensor("mla.v", (g.b, heads, g.s // g.cp, m.head_dim), g.act, g.a, why="attention kernel: value"),
    ]
    scores = (g.b, heads, g.s // g.cp, g.s)
    if g.flash:
        out += [tensor("mla.context", (T, heads * m.head_dim), g.act, g.a, w=True,
                       why="attention kernel output = W_O input"),
                tensor("mla.lse", (g.b, heads, g.s // g.cp), "fp32", 4, why="attention kernel log-sum-exp")]
    else:
        out.append(tensor("mla.probs", scores, g.act, g.a, why="softmax output (softmax, P·V)"))
        if g.dropout:
            out += [tensor("mla.probs_mask", scores, "bool", 1, why="attention dropout mask"),
                    tensor("mla.probs_dropped", scores, g.act, g.a, why="dropped probabilities (P·V)")]
        out.append(tensor("mla.context", (T, heads * m.head_dim), g.act, g.a, w=True,
                          why="P·V output made contiguous, W_O input"))
    if g.dropout:
        out.append(tensor("mla.mask", (g.T_sp, h), "bool", 1, why="hidden dropout mask"))
    return out


def gqa_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    """Grouped-query (multi-head when kv_heads = heads) attention: the fused QKV projection's
    input, the kernel's q, k, v — k and v at the kv heads with a kernel that takes GQA natively
    (flash), expanded to every query head for eager attention's matmuls — its output and
    statistics; with ``qk_norm`` (Qwen3) the per-head norms keep their inputs and 1/rms."""
    h, T = m.hidden, g.T
    heads, kv = m.heads // g.tp, m.kv_groups // g.tp
    d, sl = m.head_dim, g.s // g.cp
    out = _norm("attn", g, h, g.T_sp, c=True, what="attention")
    out.append(tensor("attn.normed", (g.T_sp, h), g.act8, g.a8, w=True, why="QKV projection input"))
    if m.qk_norm:
        out += [tensor("attn.q_pre", (T, heads * d), g.act, g.a, why="q RMSNorm input"),
                tensor("attn.k_pre", (T, kv * d), g.act, g.a, why="k RMSNorm input"),
                tensor("attn.qk_rstd", (T, heads + kv), "fp32", 4, why="q/k RMSNorms' 1/rms")]
    kv_kept = kv if g.flash else heads
    out += [tensor("attn.q", (g.b, heads, sl, d), g.act, g.a, why="attention kernel: query"),
            tensor("attn.k", (g.b, kv_kept, sl, d), g.act, g.a, why="attention kernel: key"),
            tensor("attn.v", (g.b, kv_kept, sl, d), g.act, g.a, why="attention kernel: value")]
    scores = (g.b, heads, sl, g.s)
    if g.flash:
        out += [tensor("attn.context", (T, heads * d), g.act, g.a, w=True, why="attention kernel output = W_O input"),
                tensor("attn.lse", (g.b, heads, sl), "fp32", 4, why="attention kernel log-sum-exp")]
    else:
        out.append(tensor("attn.probs", scores, g.act, g.a, why="softmax output (softmax, P·V)"))
        if g.dropout:
            out += [tensor("attn.probs_mask", scores, "bool", 1, why="attention dropout mask"),
                    tensor("attn.probs_dropped", scores, g.act, g.a, why="dropped probabilities (P·V)")]
        out.append(tensor("attn.context", (T, heads * d), g.act, g.a, w=True, why="P·V output made contiguous, W_O input"))
    if g.dropout:
        out.append(tensor("attn.mask", (g.T_sp, h), "bool", 1, why="hidden dropout mask"))
    return out


def attention_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    return mla_tensors(m, g) if m.attention == "mla" else gqa_tensors(m, g)


def _swiglu(module: str, tokens: int, width: int, g: Shape, fused: bool) -> list[Tensor]:
    # DeepSeek-V3 caches the SwiGLU input in FP8 too (section 3.3.2): a' with fp8_activations
    out = [tensor(f"{module}.hidden", (tokens, 2 * width), g.act8, g.a8, why="fc1 output, SwiGLU input")]
    if not fused:
        out.append(tensor(f"{module}.silu", (tokens, width), g.act, g.a, why="SiLU(gate), kept by the multiply"))
    out.append(tensor(f"{module}.product", (tokens, width), g.act8, g.a8, w=True, why="fc2 input"))
    return out


def mlp_tensors(m: ModelConfig, g: Shape, t: TrainingConfig, sublayer: bool) -> list[Tensor]:
    h = m.hidden
    out = _norm("mlp", g, h, g.T_sp, c=sublayer, what="FFN")
    out.append(tensor("mlp.normed", (g.T_sp, h), g.act8, g.a8, w=True, why="fc1 input"))
    out += _swiglu("mlp", g.T, m.dense_ffn_hidden // g.tp, g, t.swiglu_fusion)
    if g.dropout:
        out.append(tensor("mlp.mask", (g.T_sp, h), "bool", 1, why="hidden dropout mask"))
    return out


def moe_tensors(m: ModelConfig, g: Shape, t: TrainingConfig, sublayer: bool) -> list[Tensor]:
    h, N, k = m.hidden, m.routed_experts, m.experts_per_token
    Tr = g.T_sp                                    # the router scores this rank's tokens
    out = _norm("moe", g, h, g.T_sp, c=sublayer, what="MoE")
    out += [tensor("router.input", (g.T_sp, h), g.act8, g.a8, w=True,
                   why="router and shared-expert input, dispatch source"),
            tensor("router.probs", (Tr, N), "fp32", 4, why=f"FP32 {m.router} scores"),
            tensor("router.indices", (Tr, k), "int64", 8, why="top-k indices (topk, gather)")]
    if m.router == "sigmoid":
        out.append(tensor("router.weights", (Tr, k + 1), "fp32", 4,
                          why="chosen scores and their sum (normalisation)"))
    if t.moe_permute_fusion:
        out.append(tensor("experts.indices", (g.S,), "int32", 4, why="fused permute row map"))
    else:   # one index gathers the tokens (and scatters them back), one the probabilities
        out.append(tensor("experts.indices", (2, g.S), "int64", 8,
                          why="dispatch gather / unpermute indices, probability gather indices"))
    out.append(tensor("experts.input", (g.R, h), g.act8, g.a8, w=True, why="routed experts' fc1 input"))
    out += _swiglu("experts", g.R, m.moe_ffn_hidden // g.etp, g, t.swiglu_fusion)
    if t.moe_combine == "output":
        out += [tensor("experts.output", (g.S, h), g.act, g.a, why="expert output, kept for the probabilities' gradient"),
                tensor("experts.probs", (g.S, 1), g.act, g.a, why="routing probabilities, kept for the output's gradient")]
    else:
        out.append(tensor("experts.probs", (g.R, 1), g.act, g.a, why="routing probabilities (weighted SwiGLU)"))
    if m.shared_experts:
        width = m.shared_width
        if t.shared_placement == "megatron":
            width //= g.tp
        out += _swiglu("shared", g.T, width, g, t.swiglu_fusion)
    if g.dropout:
        out.append(tensor("moe.mask", (g.T_sp, h), "bool", 1, why="hidden dropout mask"))
    return out


def loss_tensors(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape) -> list[Tensor]:
    shape_ = (g.T, vocab_shard(m, p))
    targets = tensor("loss.targets", (g.T,), "int64", 8, c=True, why="labels, kept by the loss")
    if t.cross_entropy == "fused":
        return [tensor("loss.grad", shape_, g.act, g.a, c=True, why="fused cross-entropy: gradient in the logits buffer"),
                targets]
    return [tensor("loss.softmax", shape_, "fp32", 4, c=True, why="FP32 log-softmax of the logits' FP32 copy"),
            targets]


def head_tensors(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape) -> list[Tensor]:
    h = m.hidden
    return (_norm("head", g, h, g.T_sp, c=True, what="final")
            + [tensor("head.normed", (g.T_sp, h), g.act8, g.a8, w=True, why="output layer input")]
            + loss_tensors(m, p, t, g))


def layer_tensors(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape,
                  kind: str) -> list[Tensor]:
    """The framework's tensors of one layer of ``kind``: dense | moe | embedding | head | mtp."""
    sub = t.recompute_granularity == "sublayer"
    h = m.hidden
    if kind == "dense":
        return attention_tensors(m, g) + mlp_tensors(m, g, t, sub)
    if kind == "moe":
        return attention_tensors(m, g) + moe_tensors(m, g, t, sub)
    if kind == "embedding":
        return [tensor("embedding.ids", (g.T,), "int64", 8, w=True, c=True, why="embedding backward")]
    if kind == "head":
        return head_tensors(m, p, t, g)
    if kind == "mtp":
        pre = [tensor("mtp.input", (g.T_sp, h), g.act, g.a, c=True, why="MTP hidden-state RMSNorm input"),
               tensor("mtp.embed", (g.T_sp, h), g.act, g.a, c=True, why="MTP embedding RMSNorm input"),
               tensor("mtp.rstd", (2, g.T_sp), "fp32", 4, why="MTP RMSNorms' 1/rms"),
               tensor("mtp.ids", (g.T,), "int64", 8, c=True, why="MTP embedding backward"),
               tensor("mtp.normed", (g.T_sp, 2 * h), g.act8, g.a8, w=True, why="projection input")]
        return pre + attention_tensors(m, g) + moe_tensors(m, g, t, sub) + head_tensors(m, p, t, g)
    raise ValueError(f"layer kind: one of dense, moe, embedding, head, mtp; got {kind!r}")
