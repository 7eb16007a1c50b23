"""Expert-parallel all-to-all: the bytes each MoE layer sends and the time they take.

Dispatch sends every token a device holds to the ``k`` experts it is routed to; combine sends
the expert outputs back. With the experts spread evenly over ``ep`` devices, a routed copy
stays on its own device with probability 1/ep, so the bytes one device sends per phase are

    bytes = T · k · h · v · (ep − 1) / ep,      T = b · s / cp  (/ tp with sequence parallelism)

(``v`` bytes per value). DeepSeek-V3 (report, section 3.3.2) quantises the activations before
dispatch to FP8 (v = 1) and keeps combine in BF16 (v = 2); elsewhere both are BF16. A backward
repeats both phases in reverse on the gradients, in BF16 (v = 2 each): DeepSeek-V3's FP8 applies
to the forward dispatch only.

Link class: an EP group within one node (ep ≤ node_size) runs on NVLink. A group spanning
nodes sends the share (ep − node_size)/ep of the routed copies over the scale-out NIC and the
share (node_size − 1)/ep over NVLink, both at once, so the phase takes the longer of the two:

    t = max(bytes_inter / bw_nic, bytes_intra / bw_nvlink)

This ignores DeepSeek-V3's node-limited routing (each token reaches at most 4 nodes, sent once
per node and forwarded inside it), which lowers the inter-node bytes; an upper bound there.
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


def moe_layer_a2a_seconds(sc) -> tuple[float, float]:
    """(forward, backward) all-to-all seconds of one MoE layer on one device: dispatch + combine."""
    m, p, t, hw = sc.model, sc.parallel, sc.training, sc.hardware
    if not m.routed_experts or p.ep <= 1:
        return 0.0, 0.0
    tokens = t.micro_batch_size * t.seq_len // p.cp
    if p.sp and p.tp > 1:
        tokens //= p.tp

    def phase(v):
        return a2a_phase_seconds(tokens, m.experts_per_token, m.hidden, v, p.ep, hw.node_size,
                                 hw.nvlink_bandwidth_gbps, hw.p2p_bandwidth_gbps)

    dispatch_bytes = 1 if t.fp8_activations else 2
    return phase(dispatch_bytes) + phase(2), 2 * phase(2)
