"""FLOPs per layer and micro-batch on one device: forward (F), input-gradient backward (B) and
weight-gradient backward (W).

Convention: a matmul [m, k] × [k, n] costs 2·m·k·n in F, the same again in B (the input
gradient) and again in W (the weight gradient). Attention's two weightless matmuls (scores
Q·Kᵀ and context P·V) cost 2·b·n_h/tp·(s/cp)·s·(d_h + d_hr) and 2·b·n_h/tp·(s/cp)·s·d_h in F
and twice that in B (gradients of both operands), nothing in W. Causal attention is counted
in full (the masked half is computed, as eager attention does; flash attention would skip
about half of it). Element-wise work (norms, SiLU, softmax, rope) is left out.

Token counts as in ``activations``: T = b·s/cp; TP-replicated weights (W_DQ, W_DKV, W_KR,
W_QR, the router, the shared experts, the MTP projection) process all T tokens on every TP
rank; TP-split weights process T tokens with 1/tp of their columns; routed experts process the
R tokens dispatched to this device with 1/etp of each expert.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipesim.model.activations import Shape, shape, vocab_shard
from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.params import mla_matrices


@dataclass(frozen=True)
class LayerFlops:
    f: int      # forward
    b: int      # input-gradient backward
    w: int      # weight-gradient backward


def _matmul_flops(m: ModelConfig, p: ParallelConfig, g: Shape, kind: str) -> int:
    """Forward FLOPs of a layer's weight matmuls: 2 · tokens · (per-device weight elements)."""
    h, T = m.hidden, g.T
    total = 0
    if kind in ("dense", "moe", "mtp"):
        for n, split in mla_matrices(m).values():       # every MLA matrix sees all T tokens
            total += 2 * T * (n // p.tp if split else n)
        if kind == "dense":
            total += 2 * T * 3 * h * m.dense_ffn_hidden // p.tp             # SwiGLU, TP-split
        else:
            total += 2 * T * h * m.routed_experts                            # router
            total += _routed_expert_flops(m, p, g)                           # routed experts
            total += 2 * T * 3 * h * m.shared_width                          # shared experts
    if kind == "mtp":
        total += 2 * g.T_sp * 2 * h * h                 # projection [2h, h], token-wise
    if kind in ("head", "mtp"):
        total += 2 * T * h * vocab_shard(m, p)          # output head, vocab-parallel
    return total


def _routed_expert_flops(m: ModelConfig, p: ParallelConfig, g: Shape) -> int:
    """Forward FLOPs of one MoE layer's routed experts: 2 · R · 3·h·d_ffn / etp (SwiGLU)."""
    return 2 * g.R * 3 * m.hidden * m.moe_ffn_hidden // p.etp


def routed_expert_flops(m: ModelConfig, p: ParallelConfig, t: TrainingConfig) -> int:
    """One MoE layer's routed-expert FLOPs on one device, per micro-batch, in F (and again in
    B and in W, as every weight matmul): the part of the layer between its dispatch and its
    combine, which the simulator's phases need apart (``pipesim.simulator.Phases``)."""
    return _routed_expert_flops(m, p, shape(m, p, t))


def _attention_flops(m: ModelConfig, g: Shape, kind: str) -> int:
    """Forward FLOPs of Q·Kᵀ and P·V (causal counted in full)."""
    if kind not in ("dense", "moe", "mtp"):
        return 0
    heads, s_loc = m.heads // g.tp, g.s // g.cp
    scores = 2 * g.b * heads * s_loc * g.s * (m.head_dim + m.rope_head_dim)   # Q·Kᵀ
    context = 2 * g.b * heads * s_loc * g.s * m.head_dim                      # P·V
    return scores + context


def layer_flops(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, kind: str) -> LayerFlops:
    """F = matmuls + attention; B = matmuls + 2·attention; W = matmuls.

    The embedding is a lookup (0 in F and B; its weight gradient is a scatter-add, 0 here).
    """
    g = shape(m, p, t)
    mm, att = _matmul_flops(m, p, g, kind), _attention_flops(m, g, kind)
    return LayerFlops(f=mm + att, b=mm + 2 * att, w=mm)
