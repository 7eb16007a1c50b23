"""Activation memory per layer and micro-batch, on one device: what is stored between a layer's
forward and its backward under each recompute policy, and the transient working sets.

Convention (paper section 5, after Korthikanti et al. 2022): bytes per layer and micro-batch;
a = activation bytes (BF16: 2), masks 1 byte per element. Symbols: b micro-batch, s sequence,
T = b·s/cp tokens on this CP rank, T_sp = T/tp with sequence parallelism (else T), n_h heads,
d_h, d_hr, d_cq, d_c, h, f (dense FFN), h_E, N, N_r, N_s as in ``params``.

Where tensors live, the paper's rule: tensors of the norms / dropouts are sequence-sharded
(T_sp); tensors made by TP-split weights carry n_h/tp heads or f/tp columns; tensors made by
TP-replicated weights (the latents, the router, the shared expert) cover all T tokens.

Tensors (name: bytes; W = input of a weight matmul, kept for the weight gradient;
C = checkpoint, kept under full recomputation):
    mla.input      a·T_sp·h                   C   RMSNorm input (the layer input)
    mla.normed     a'·T_sp·h                  W   normalised input
    mla.latents    a'·T·(d_cq + d_c)          W   query and key-value latents
    mla.q          a·T·n_h(d_h + d_hr)/tp         queries
    mla.k          a·T·n_h(d_h + d_hr)/tp         keys
    mla.v          a·T·n_h·d_h/tp                 values
    mla.scores     eager: (2a + 1)·b·n_h/tp·(s/cp)·s   softmax output, dropout mask, dropout output
                   flash: 4·b·n_h/tp·(s/cp)            FP32 log-sum-exp statistics
    mla.context    a·T·n_h·d_h/tp             W   attention output (W_O input)
    mla.mask       T_sp·h                         output dropout mask
    mlp.input, mlp.normed, mlp.mask as for MLA; mlp.hidden a'·2T·f/tp (gate and up outputs,
        the SwiGLU inputs), mlp.silu a·T·f/tp, mlp.product a'·T·f/tp (W, down-projection input)
    moe.input      a·T_sp·h                   C   RMSNorm input
    moe.normed     a'·T_sp·h                  W   normalised input (router input)
    router.logits  2a·T·N                         router logits and probabilities
    router.routing a·T·N_r                    C   top-k routing output (the paper keeps it)
    experts.input  a'·R·h                     W   tokens of the local routed experts
    experts.mask   R·h                            their dropout mask (the paper counts it)
    experts.hidden a'·2R·h_E/etp, experts.silu a·R·h_E/etp, experts.product a'·R·h_E/etp (W)
    shared.input a'·T·h (W), shared.mask T·h, shared.hidden a'·2T·N_s·h_E, shared.silu
        a·T·N_s·h_E, shared.product a'·T·N_s·h_E (W)         (N_s shared experts act as one
        SwiGLU of width N_s·h_E on every token)
    embedding.ids  8·T                        W C int64 token ids (the embedding gradient)
    head.input a·T_sp·h (C), head.normed a'·T_sp·h (W)
    mtp.input a·T_sp·h (C), mtp.embed a·T_sp·h (C), mtp.normed a'·T_sp·2h (W),
        mtp.logits T·⌈V/tp⌉·(a + 4) (its own BF16 + FP32 logits, kept until its backward)
a' = 1 byte with ``fp8_activations`` (DeepSeek-V3 caches the inputs of its FP8 linear layers
and the SwiGLU inputs in FP8), else a. The attention output stays at a: V3 keeps it in E5M6,
wider than FP8.

R, tokens held by this device's routed experts per micro-batch:
    routed: R = etp · T_sp · N_r · imbalance   (every device sends T_sp·N_r token copies and,
            balanced, receives as many; an ETP group shares its tokens)
    paper:  R = (N/ep) · E, E = b·s·N_r/N · imbalance   (the paper's Table 10: one device's own
            micro-batch spread over all experts, i.e. R = T·N_r/ep; it undercounts by ep/tp)

Paper check (TP2 SP2 CP1 EP8, b = 1, s = 4096, eager, expert_tokens = "paper"): MLA none
5,794,430,976 bytes per layer; MoE none 373,358,592; full: MLA 29,360,128, MoE 29,425,664.

Policies: none keeps every tensor; full keeps the C tensors; selective keeps the C tensors and
those named in ``keep`` (a module name keeps all its tensors; ``"deepseek-v3"`` stands for
DeepSeek-V3's choice: recompute RMSNorm outputs, MLA up-projections and SwiGLU outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig

MODULES = ("embedding", "mla", "mlp", "moe", "router", "experts", "shared", "mtp", "head")
TENSORS = {
    "embedding": ("ids",),
    "mla": ("input", "normed", "latents", "q", "k", "v", "scores", "context", "mask"),
    "mlp": ("input", "normed", "hidden", "silu", "product", "mask"),
    "moe": ("input", "normed"),
    "router": ("logits", "routing"),
    "experts": ("input", "mask", "hidden", "silu", "product"),
    "shared": ("input", "mask", "hidden", "silu", "product"),
    "mtp": ("input", "embed", "normed", "logits"),
    "head": ("input", "normed"),
}
# DeepSeek-V3 (arXiv 2412.19437, section 3.2.3): recompute all RMSNorms and the MLA
# up-projections; cache the SwiGLU inputs and recompute its output. Everything else is kept.
_V3_RECOMPUTED = {"mla.normed", "mla.q", "mla.k", "mla.v", "mlp.normed", "mlp.silu",
                  "mlp.product", "moe.normed", "experts.silu", "experts.product", "shared.silu",
                  "shared.product", "mtp.normed", "head.normed"}
KEEP_PRESETS = {
    "deepseek-v3": tuple(f"{m}.{t}" for m in MODULES for t in TENSORS[m]
                         if f"{m}.{t}" not in _V3_RECOMPUTED),
}


def keep_names() -> tuple[str, ...]:
    """Every name ``TrainingConfig.keep`` accepts: presets, modules and module.tensor names."""
    return (tuple(KEEP_PRESETS) + MODULES
            + tuple(f"{m}.{t}" for m in MODULES for t in TENSORS[m]))


@dataclass(frozen=True)
class Tensor:
    """One activation tensor of a layer, on one device, per micro-batch."""

    name: str            # "module.tensor"
    nbytes: int
    weight_input: bool   # input of a weight matmul: needed until the weight gradient (W)
    checkpoint: bool     # kept under full recomputation

    @property
    def module(self) -> str:
        return self.name.split(".")[0]


@dataclass(frozen=True)
class Shape:
    """The token counts and byte widths every formula uses (one place to derive them)."""

    b: int
    s: int
    T: int        # b·s/cp
    T_sp: int     # T/tp with SP, else T
    R: int        # tokens of this device's routed experts
    S: int        # token copies this device dispatches (T_sp·N_r)
    a: int        # activation bytes
    a8: int       # bytes of the FP8-eligible linear inputs
    tp: int
    cp: int
    etp: int
    flash: bool


def shape(m: ModelConfig, p: ParallelConfig, t: TrainingConfig) -> Shape:
    b, s = t.micro_batch_size, t.seq_len
    T = b * s // p.cp
    T_sp = T // p.tp if p.sp else T
    if t.expert_tokens == "paper":
        R = math.ceil(T * m.experts_per_token * t.imbalance / p.ep)
    else:
        R = math.ceil(p.etp * T_sp * m.experts_per_token * t.imbalance)
    a = t.dtypes.activations
    return Shape(b, s, T, T_sp, R, T_sp * m.experts_per_token, a, 1 if t.fp8_activations else a,
                 p.tp, p.cp, p.etp, t.attention == "flash")


def _scores_bytes(m: ModelConfig, g: Shape) -> int:
    heads = m.heads // g.tp
    if g.flash:
        return 4 * g.b * heads * (g.s // g.cp)              # FP32 log-sum-exp per query and head
    return (2 * g.a + 1) * g.b * heads * (g.s // g.cp) * g.s  # softmax + mask + dropout output


def mla_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    """The MLA sublayer's tensors (see the module docstring)."""
    h, qk = m.hidden, m.heads * (m.head_dim + m.rope_head_dim) // g.tp
    hv = m.heads * m.head_dim // g.tp
    return [
        Tensor("mla.input", g.a * g.T_sp * h, False, True),
        Tensor("mla.normed", g.a8 * g.T_sp * h, True, False),
        Tensor("mla.latents", g.a8 * g.T * (m.q_compress + m.kv_compress), True, False),
        Tensor("mla.q", g.a * g.T * qk, False, False),
        Tensor("mla.k", g.a * g.T * qk, False, False),
        Tensor("mla.v", g.a * g.T * hv, False, False),
        Tensor("mla.scores", _scores_bytes(m, g), False, False),
        Tensor("mla.context", g.a * g.T * hv, True, False),
        Tensor("mla.mask", g.T_sp * h, False, False),
    ]


def _swiglu(module: str, tokens: int, width: int, g: Shape) -> list[Tensor]:
    return [
        Tensor(f"{module}.hidden", g.a8 * 2 * tokens * width, False, False),   # gate, up outputs
        Tensor(f"{module}.silu", g.a * tokens * width, False, False),          # SiLU(gate)
        Tensor(f"{module}.product", g.a8 * tokens * width, True, False),       # SiLU(gate)·up
    ]


def mlp_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    """The dense FFN sublayer's tensors."""
    h = m.hidden
    return ([Tensor("mlp.input", g.a * g.T_sp * h, False, True),
             Tensor("mlp.normed", g.a8 * g.T_sp * h, True, False)]
            + _swiglu("mlp", g.T, m.dense_ffn_hidden // g.tp, g)
            + [Tensor("mlp.mask", g.T_sp * h, False, False)])


def moe_tensors(m: ModelConfig, g: Shape) -> list[Tensor]:
    """The MoE sublayer's tensors: norm, router, routed experts, shared experts."""
    h, N, Nr = m.hidden, m.routed_experts, m.experts_per_token
    out = [Tensor("moe.input", g.a * g.T_sp * h, False, True),
           Tensor("moe.normed", g.a8 * g.T_sp * h, True, False),
           Tensor("router.logits", 2 * g.a * g.T * N, False, False),
           Tensor("router.routing", g.a * g.T * Nr, False, True),
           Tensor("experts.input", g.a8 * g.R * h, True, False),
           Tensor("experts.mask", g.R * h, False, False)]
    out += _swiglu("experts", g.R, m.moe_ffn_hidden // g.etp, g)
    if m.shared_experts:
        out += [Tensor("shared.input", g.a8 * g.T * h, True, False),
                Tensor("shared.mask", g.T * h, False, False)]
        out += _swiglu("shared", g.T, m.shared_experts * m.moe_ffn_hidden, g)
    return out


def vocab_shard(m: ModelConfig, p: ParallelConfig) -> int:
    """⌈V/tp⌉: vocabulary entries per device (padded)."""
    return -(-m.vocab // p.tp)


def logits_bytes(m: ModelConfig, p: ParallelConfig, t: TrainingConfig) -> int:
    """Output-head logits + loss working set: T·⌈V/tp⌉·(a + 4).

    The head's BF16 output (a bytes) and its FP32 copy for the cross-entropy (4 bytes), whose
    softmax and gradient are computed in place (Megatron's vocab-parallel cross-entropy); they
    live from the head's forward to the end of its backward.
    """
    g = shape(m, p, t)
    return g.T * vocab_shard(m, p) * (g.a + 4)


def layer_tensors(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, kind: str) -> list[Tensor]:
    """Tensors of one layer of ``kind``: dense | moe | embedding | head | mtp."""
    g = shape(m, p, t)
    h = m.hidden
    if kind == "dense":
        return mla_tensors(m, g) + mlp_tensors(m, g)
    if kind == "moe":
        return mla_tensors(m, g) + moe_tensors(m, g)
    if kind == "embedding":
        return [Tensor("embedding.ids", 8 * g.T, True, True)]
    if kind == "head":
        return [Tensor("head.input", g.a * g.T_sp * h, False, True),
                Tensor("head.normed", g.a8 * g.T_sp * h, True, False)]
    if kind == "mtp":
        return ([Tensor("mtp.input", g.a * g.T_sp * h, False, True),
                 Tensor("mtp.embed", g.a * g.T_sp * h, False, True),
                 Tensor("mtp.normed", g.a8 * g.T_sp * 2 * h, True, False)]
                + mla_tensors(m, g) + moe_tensors(m, g)
                + [Tensor("head.input", g.a * g.T_sp * h, False, True),
                   Tensor("head.normed", g.a8 * g.T_sp * h, True, False),
                   Tensor("mtp.logits", logits_bytes(m, p, t), False, False)])
    raise ValueError(f"layer kind: one of dense, moe, embedding, head, mtp; got {kind!r}")


def kept(tensors: list[Tensor], t: TrainingConfig) -> list[bool]:
    """Which tensors the recompute policy stores (True) or re-materialises in backward."""
    if t.recompute == "none":
        return [True] * len(tensors)
    names = set()
    if t.recompute == "selective":
        for k in t.keep:
            names.update(KEEP_PRESETS.get(k, (k,)))
    return [x.checkpoint or x.name in names or x.module in names for x in tensors]


@dataclass(frozen=True)
class LayerActivations:
    """Stored and transient activation bytes of one layer (one device, one micro-batch)."""

    stored_by_module: dict[str, int]
    stored: int
    w: int
    recompute: int
    forward_transient: int
    backward_transient: int
    a2a: int


def _working_sets(m: ModelConfig, g: Shape, kind: str, sp_gather: bool) -> tuple[int, int]:
    """(forward extra, backward) working sets of the largest sublayer, never stored.

    forward, per sublayer: the all-gathered normalised input a·T·h when SP gathers it; MLA eager
        also the pre-softmax scores a·b·n_h/tp·(s/cp)·s; the FFN its output before the combine /
        reduce-scatter a·T·h.
    backward, per sublayer: the input gradient before its reduce-scatter a·T·h plus the
        gradients of the sublayer's largest tensors: MLA dQ, dK, dV (+ eager dP and dS, two
        score-sized tensors); FFN the gradients of hidden and product, a·3·tokens·width (routed
        experts also their dispatched inputs a·R·h, the router 2a·T·N).
    A layer's F and B run its sublayers one after the other, so the layer's value is the max.
    """
    a, T, h = g.a, g.T, m.hidden
    gather = a * T * h if sp_gather else 0
    heads = m.heads // g.tp
    qk = m.heads * (m.head_dim + m.rope_head_dim) // g.tp
    hv = m.heads * m.head_dim // g.tp
    s_loc = g.s // g.cp
    pre_scores = 0 if g.flash else a * g.b * heads * s_loc * g.s
    fwd_mla = gather + pre_scores
    bwd_mla = a * T * h + a * T * (2 * qk + hv) + 2 * pre_scores
    if kind in ("dense", "moe", "mtp"):
        if kind == "dense":
            width = m.dense_ffn_hidden // g.tp
            fwd_ffn = gather + a * T * h
            bwd_ffn = a * T * h + 3 * a * T * width
        else:
            shared = m.shared_experts * m.moe_ffn_hidden
            fwd_ffn = gather + a * g.R * h + a * T * h
            bwd_ffn = (a * T * h + a * g.R * h + 3 * a * g.R * (m.moe_ffn_hidden // g.etp)
                       + 3 * a * T * shared + 2 * a * T * m.routed_experts)
        return max(fwd_mla, fwd_ffn), max(bwd_mla, bwd_ffn)
    if kind == "head":
        return gather, a * T * h
    return 0, 0                                                    # embedding: a lookup


def layer_activations(m: ModelConfig, p: ParallelConfig, t: TrainingConfig,
                      kind: str) -> LayerActivations:
    """Stored bytes by module and the transients of one layer under ``t.recompute``.

    stored      = Σ kept tensors
    w           = Σ kept W tensors, plus the kept checkpoints when some W tensor is recomputed
                  (the weight gradient re-materialises it from them), so 0 <= w <= stored
    recompute   = Σ dropped tensors (re-materialised during B; 0 for recompute none)
    forward_transient  = recompute + the forward working set (dropped tensors exist during F)
    backward_transient = the backward working set
    a2a (MoE)   = (a' + a)·(S + R)·h: dispatch send + receive buffers at a', combine at a
    """
    g = shape(m, p, t)
    tensors = layer_tensors(m, p, t, kind)
    keep = kept(tensors, t)
    by_module: dict[str, int] = {}
    stored = w = dropped = 0
    w_dropped = False
    for x, k in zip(tensors, keep):
        if k:
            by_module[x.module] = by_module.get(x.module, 0) + x.nbytes
            stored += x.nbytes
            w += x.nbytes if x.weight_input else 0
        else:
            dropped += x.nbytes
            w_dropped = w_dropped or x.weight_input
    if w_dropped:
        w += sum(x.nbytes for x, k in zip(tensors, keep) if k and x.checkpoint and not x.weight_input)
    fwd, bwd = _working_sets(m, g, kind, p.sp and p.tp > 1)
    a2a = (g.a8 + g.a) * (g.S + g.R) * m.hidden if kind in ("moe", "mtp") else 0
    return LayerActivations(by_module, stored, w, dropped, dropped + fwd, bwd, a2a)


def boundary_bytes(m: ModelConfig, p: ParallelConfig, t: TrainingConfig) -> int:
    """The hidden state sent to the next stage per micro-batch: a·b·s·h/cp, /tp with SP."""
    return t.dtypes.activations * shape(m, p, t).T_sp * m.hidden
