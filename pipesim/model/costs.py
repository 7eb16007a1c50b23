"""What one pipeline stage costs on one of its devices: model states, and per layer the
activation bytes (stored, transient) and FLOPs the simulator lays over time.

    from pipesim.model import load_preset, ParallelConfig, TrainingConfig, stage_costs
    c = stage_costs(load_preset("deepseek-v3"), ParallelConfig(tp=2, pp=16, ep=8, dp=32, sp=True),
                    TrainingConfig(recompute="full"), range(4, 8))
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from pipesim.model import activations as act
from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.flops import layer_flops
from pipesim.model.params import (device_params, embedding_params, head_params, layer_params,
                                  mtp_params, stage_params_per_device)
from pipesim.model.states import states_bytes


@dataclass(frozen=True)
class LayerCosts:
    """One layer of a stage, per device and micro-batch (bytes and FLOPs are ints)."""

    name: str                         # "embedding", "layer 4 (moe)", "mtp 0", "head"
    stored_bytes: int                 # kept from this layer's F until its B (or W)
    stored_by_module: dict[str, int]  # breakdown of stored_bytes by module
    w_bytes: int                      # part of stored_bytes needed until the weight gradient
    forward_transient_bytes: int      # working set only while F of this layer runs
    recompute_bytes: int              # activations re-materialised during B
    backward_transient_bytes: int     # gradient working set during B (excl. recompute_bytes)
    a2a_bytes: int                    # EP dispatch + combine buffers while the layer runs
    flops_f: int                      # forward
    flops_b: int                      # input-gradient backward
    flops_w: int                      # weight-gradient backward
    w_grad_outputs_bytes: int = 0     # weight matmuls' output gradients, kept from B to a deferred W
    w_recompute_bytes: int = 0        # dropped weight-matmul inputs a deferred W re-materialises
    logits_bytes: int = 0             # the loss's kept tensor (FP32 softmax or fused gradient)


@dataclass(frozen=True)
class StageCosts:
    """One stage on one of its devices (bytes, after ZeRO sharding)."""

    params: int                       # parameters on the device
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    gather_bytes: int                 # ZeRO os+g+params: largest layer's gathered weights, else 0
    boundary_bytes: int               # hidden state sent to the next stage per micro-batch
    logits_bytes: int                 # Σ the layers' logits_bytes (head and MTP losses), else 0
    layers: tuple[LayerCosts, ...]    # execution order: embedding, layers, MTP, head


@lru_cache(maxsize=64)
def _kind_costs(m, p, t, kind: str) -> LayerCosts:
    """A layer's costs depend on its kind, not its index: computed once per (config, kind)."""
    a = act.layer_activations(m, p, t, kind)
    fl = layer_flops(m, p, t, kind)
    # the loss's tensor is kept in its own category ("logits"): the largest single tensor of
    # the last stage, and one a user looks for by name
    by_module = dict(a.stored_by_module)
    loss = by_module.pop("loss", 0)
    return LayerCosts(name=kind, stored_bytes=a.stored - loss, stored_by_module=by_module,
                      w_bytes=a.w, w_grad_outputs_bytes=a.w_grad_outputs,
                      w_recompute_bytes=a.w_recompute, logits_bytes=loss,
                      forward_transient_bytes=a.forward_transient,
                      recompute_bytes=a.recompute, backward_transient_bytes=a.backward_transient,
                      a2a_bytes=a.a2a, flops_f=fl.f, flops_b=fl.b,
                      flops_w=fl.w)


def _layer_name(index: int, kind: str) -> str:
    return f"layer {index} ({kind})"


def _layer(m, p, t, name: str, kind: str) -> LayerCosts:
    return replace(_kind_costs(m, p, t, kind), name=name)


def stage_costs(model: ModelConfig, parallel: ParallelConfig, training: TrainingConfig, layers,
                *, embedding: bool = False, head: bool = False, mtp: bool = False) -> StageCosts:
    """Costs of the stage holding global transformer ``layers`` (dense if index < dense_layers),
    and optionally the embedding, the MTP modules and the output head.

    gather_bytes = max over the stage's layers of (per-device layer params · weights bytes)
    under ZeRO os+g+params: the unsharded weights all-gathered around one layer's F or B.
    """
    m, p, t = model, parallel, training
    layers = list(layers)
    sp_ = t.shared_placement
    per_dev = stage_params_per_device(m, p, layers, embedding=embedding, head=head, mtp=mtp,
                                      shared_placement=sp_)
    st = states_bytes(per_dev, p, t.dtypes, t.zero, sp_)

    items, layer_param_counts = [], []
    if embedding:
        items.append(_layer(m, p, t, "embedding", "embedding"))
        layer_param_counts.append(device_params(m, p, embedding_params(m), 0, sp_))
    for i in layers:
        kind = "moe" if m.is_moe(i) else "dense"
        items.append(_layer(m, p, t, _layer_name(i, kind), kind))
        layer_param_counts.append(device_params(m, p, layer_params(m, i), 1, sp_))
    if mtp:
        for k in range(m.mtp_modules):
            items.append(_layer(m, p, t, f"mtp {k}", "mtp"))
            layer_param_counts.append(device_params(m, p, mtp_params(m), 1, sp_))
    if head:
        items.append(_layer(m, p, t, "head", "head"))
        layer_param_counts.append(
            device_params(m, p, head_params(m, not (m.tied_embeddings and embedding)), 0, sp_))
    gather = 0
    if t.zero == "os+g+params":
        gather = max((sum(c.values()) for c in layer_param_counts), default=0) * t.dtypes.weights
    return StageCosts(params=sum(per_dev.values()), weights_bytes=st.weights,
                      grads_bytes=st.grads, optimizer_bytes=st.optimizer, gather_bytes=gather,
                      boundary_bytes=act.boundary_bytes(m, p, t),
                      logits_bytes=sum(L.logits_bytes for L in items),
                      layers=tuple(items))


def relabel(stage: StageCosts, layers) -> StageCosts:
    """``stage``'s costs for another run of transformer layers of the same kinds, in order.

    A layer's costs depend on its kind, not its index (``_kind_costs``), so stages that hold the
    same kinds cost the same; only the layer names differ. Saves recomputing them per stage."""
    layers = iter(layers)
    items = tuple(replace(L, name=_layer_name(next(layers), L.name.rsplit("(", 1)[1][:-1]))
                  if L.name.startswith("layer ") else L for L in stage.layers)
    return replace(stage, layers=items)
