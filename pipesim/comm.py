"""Communication inside a layer: expert-parallel all-to-all and tensor-parallel collectives,
their bytes and the time they take on the link class their group spans.

**All-to-all.** Dispatch sends every token a device holds to the ``k`` experts it is routed to;
combine sends the expert outputs back. With the experts spread evenly over ``ep`` devices, a
routed copy stays on its own device with probability 1/ep, so the bytes one device sends per
phase are

    bytes = T · k · h · v · (ep − 1) / ep,      T = b · s / cp  (/ tp with sequence parallelism)

(``v`` bytes per value). DeepSeek-V3 (report, section 3.3.2) quantises the activations before
dispatch to FP8 (v = 1) and keeps combine in BF16; elsewhere both use the activation dtype. A
backward runs two all-to-alls on the gradients, the combine's first (to the experts) and the
dispatch's after them (back to the tokens), in the activation dtype: FP8 applies to the forward
dispatch only. Full recomputation runs the layer's forward again inside its backward, all-to-all
included.

Link class: an EP group within one node (ep ≤ node_size) runs on NVLink. A group spanning
nodes sends the share (ep − node_size)/ep of the routed copies over the scale-out NIC and the
share (node_size − 1)/ep over NVLink, both at once, so the phase takes the longer of the two:

    t = max(bytes_inter / bw_nic, bytes_intra / bw_nvlink)

This ignores DeepSeek-V3's node-limited routing (each token reaches at most 4 nodes, sent once
per node and forwarded inside it), which lowers the inter-node bytes: an upper bound there.

**TP / SP collectives.** Every TP-split sublayer (attention; a dense MLP; routed experts split
with etp > 1) joins its partial results once per pass: with sequence parallelism an all-gather
before and a reduce-scatter after (Megatron-LM), without it one all-reduce. A ring moves
(tp − 1)/tp of the full tensor per all-gather or reduce-scatter and twice that per all-reduce,
so either way a sublayer costs

    t = 2 · (tp − 1)/tp · T · h · v / bw,      T = b · s / cp

per forward and the same per backward (the conjugate collectives), on NVLink when tp ≤
node_size. DeepSeek-style shared experts and MLA's down-projections are replicated over TP
(``pipesim.model.flops``): they add none. The embedding's and the head's collectives are left
out (one each per step and micro-batch, against a layer's two).
"""
from __future__ import annotations


def a2a_phase_bytes(tokens: int, topk: int, hidden: int, value_bytes: int, ep: int) -> float:
    """Bytes one device sends in one dispatch or combine (module docstring)."""
    if ep <= 1:
        return 0.0
    return tokens * topk * hidden * value_bytes * (ep - 1) / ep


def a2a_phase_seconds(tokens: int, topk: int, hidden: int, value_bytes: int, ep: int,
                      node_size: int, nvlink_gbps: float, nic_gbps: float) -> float:
    """Time of one dispatch or combine: NVLink inside a node, the longer of NIC and NVLink across."""
    if ep <= 1:
        return 0.0
    per_copy = tokens * topk * hidden * value_bytes / ep      # bytes to each destination device
    if ep <= node_size:
        return per_copy * (ep - 1) / (nvlink_gbps * 1e9)
    inter = per_copy * (ep - node_size) / (nic_gbps * 1e9)
    intra = per_copy * (node_size - 1) / (nvlink_gbps * 1e9)
    return max(inter, intra)


def moe_layer_a2a_phases(sc) -> tuple[float, float, float, float]:
    """One MoE layer's all-to-alls on one device, seconds: (dispatch F, combine F, the first and
    the second all-to-all of B); zeros without routed experts or with ep = 1. B's first is the
    combine's gradient and its second the dispatch's; under full recomputation they also carry
    the recomputed forward's dispatch and combine (each runs just before the gradient phase of
    the same sublayer)."""
    m, p, t, hw = sc.model, sc.parallel, sc.training, sc.hardware
    if not m.routed_experts or p.ep <= 1:
        return 0.0, 0.0, 0.0, 0.0
    tokens = t.micro_batch_size * t.seq_len // p.cp
    if p.sp and p.tp > 1:
        tokens //= p.tp
    v = t.dtypes.activations

    def phase(value_bytes):
        return a2a_phase_seconds(tokens, m.experts_per_token, m.hidden, value_bytes, p.ep, hw.node_size,
                                 hw.nvlink_bandwidth_gbps, hw.p2p_bandwidth_gbps)

    dispatch, combine, gradient = phase(1 if t.fp8_activations else v), phase(v), phase(v)
    again = t.recompute == "full"
    return (dispatch, combine, gradient + (dispatch if again else 0.0),
            gradient + (combine if again else 0.0))


def moe_layer_a2a_seconds(sc) -> tuple[float, float]:
    """(forward, backward) all-to-all seconds of one MoE layer on one device; the backward
    repeats the forward's under full recomputation."""
    d, c, first, second = moe_layer_a2a_phases(sc)
    return d + c, first + second


def tp_sublayer_seconds(sc) -> float:
    """One TP-split sublayer's collectives in one pass (module docstring); 0 at tp = 1."""
    p, t, hw = sc.parallel, sc.training, sc.hardware
    if p.tp <= 1:
        return 0.0
    full = t.micro_batch_size * t.seq_len // p.cp * sc.model.hidden * t.dtypes.activations
    bw = hw.nvlink_bandwidth_gbps if p.tp <= hw.node_size else hw.p2p_bandwidth_gbps
    return 2 * (p.tp - 1) / p.tp * full / (bw * 1e9)


def tp_layer_seconds(sc, moe: bool) -> tuple[float, float]:
    """(forward, backward) TP collective seconds of one layer: attention, plus the MLP when it
    is TP-split (dense, or routed experts with etp > 1); the backward repeats the forward's
    under full recomputation."""
    one = tp_sublayer_seconds(sc)
    sublayers = 1 + (1 if not moe or sc.parallel.etp > 1 else 0)
    f = sublayers * one
    return f, f + (f if sc.training.recompute == "full" else 0.0)
