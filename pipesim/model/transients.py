"""Transient working sets of one layer: the bytes a layer's forward and backward hold beyond
the tensors it stores, never kept from F to B.

    working_sets(m, p, t, g, kind, tensors, status) -> (forward extra, backward)

forward extra: what F holds at its peak on top of the stored tensors allocated so far (the
    ledger adds it, with the recomputed tensors, while the layer's F runs);
backward: what B holds at its peak on top of what was stored at its start (the ledger adds it
    while the layer's B runs; the stored tensors are released at B's end).
"""
from __future__ import annotations

from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.tensors import Shape, Tensor


def working_sets(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape, kind: str,
                 tensors: list[Tensor], status: list[str]) -> tuple[int, int]:
    """(forward extra, backward) bytes of a layer of ``kind`` (see the module docstring)."""
    return _paper_working_sets(m, g, kind, p.sp and p.tp > 1)


def _paper_working_sets(m: ModelConfig, g: Shape, kind: str, sp_gather: bool) -> tuple[int, int]:
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
            shared = m.shared_width
            fwd_ffn = gather + a * g.R * h + a * T * h
            bwd_ffn = (a * T * h + a * g.R * h + 3 * a * g.R * (m.moe_ffn_hidden // g.etp)
                       + 3 * a * T * shared + 2 * a * T * m.routed_experts)
        return max(fwd_mla, fwd_ffn), max(bwd_mla, bwd_ffn)
    if kind == "head":
        return gather, a * T * h
    return 0, 0                                                    # embedding: a lookup
