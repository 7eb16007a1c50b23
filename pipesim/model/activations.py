"""Activation memory per layer and micro-batch, on one device: which tensors are stored between
a layer's forward and its backward under the recompute policy, and the transient working sets.

The tensors come from one of two inventories (``TrainingConfig.inventory``):
``inventory_framework`` (what PyTorch keeps with Megatron-Core / Transformer Engine kernels,
measured by ``benchmarks/fidelity``) or ``inventory_paper`` (the paper's Table 10 convention).

Policies: none keeps every tensor; full keeps the checkpoints (C: the layer input, or each
sublayer's input with ``recompute_granularity = "sublayer"``); selective keeps the checkpoints
and those named in ``keep`` (a module name keeps all its tensors; ``"deepseek-v3"`` stands for
DeepSeek-V3's choice: recompute the RMSNorms and the MLA up-projections, cache the SwiGLU input
and recompute its output). In the framework inventory the embedding, the head and the loss are
never recomputed, and a tensor that only a recompute region keeps (``REGION_INPUTS``) is stored
only when that region is recomputed.

    from pipesim.model.activations import layer_activations, tensor_listing
"""
from __future__ import annotations

from dataclasses import dataclass

from pipesim.model import inventory_framework as framework
from pipesim.model import inventory_paper as paper
from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.params import attention_matrices
from pipesim.model.tensors import Shape, Tensor, shape, vocab_shard
from pipesim.model.transients import peaks, working_sets

__all__ = ["LayerActivations", "Tensor", "boundary_bytes", "keep_names", "kept", "layer_activations",
           "layer_tensors", "shape", "tensor_listing", "vocab_shard"]

MODULES = ("embedding", "mla", "attn", "mlp", "moe", "router", "experts", "shared", "mtp", "head", "loss")
_INVENTORIES = {"framework": framework, "paper": paper}


def _names(inv) -> tuple[str, ...]:
    return tuple(f"{m}.{x}" for m in MODULES for x in inv.TENSORS.get(m, ()))


KEEP_PRESETS = {"deepseek-v3": {k: tuple(n for n in _names(inv) if n not in inv.V3_RECOMPUTED)
                                for k, inv in _INVENTORIES.items()}}


def keep_names() -> tuple[str, ...]:
    """Every name ``TrainingConfig.keep`` accepts: presets, modules and module.tensor names."""
    tensors = dict.fromkeys(_names(framework) + _names(paper))
    return tuple(KEEP_PRESETS) + MODULES + tuple(tensors)


def layer_tensors(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, kind: str) -> list[Tensor]:
    """Tensors of one layer of ``kind`` (dense | moe | embedding | head | mtp) in ``t``'s inventory."""
    return _INVENTORIES[t.inventory].layer_tensors(m, p, t, shape(m, p, t), kind)


def status(tensors: list[Tensor], t: TrainingConfig) -> list[str]:
    """Per tensor: "stored", "recomputed" (dropped in F, rebuilt in B) or "absent" (never saved)."""
    framework_inv = t.inventory == "framework"
    names: set[str] = set()
    if t.recompute == "selective":
        for k in t.keep:
            names.update(KEEP_PRESETS[k][t.inventory] if k in KEEP_PRESETS else (k,))

    def one(x: Tensor) -> str:
        if t.recompute == "none":
            return "stored"
        if x.checkpoint or x.name in names or x.module in names:
            return "stored"
        if framework_inv and x.module in framework.NEVER_RECOMPUTED:
            return "stored"
        return "recomputed"

    out = [one(x) for x in tensors]
    if framework_inv:       # a region's input is kept only when selective recompute runs it
        by_name = dict(zip((x.name for x in tensors), out)) if t.recompute == "selective" else {}
        for i, x in enumerate(tensors):
            region = framework.REGION_INPUTS.get(x.name)
            if region is not None:
                out[i] = "stored" if by_name.get(region) == "recomputed" else "absent"
    return out


def kept(tensors: list[Tensor], t: TrainingConfig) -> list[bool]:
    """Which tensors the recompute policy stores (True)."""
    return [s == "stored" for s in status(tensors, t)]


@dataclass(frozen=True)
class LayerActivations:
    """Stored and transient activation bytes of one layer (one device, one micro-batch)."""

    stored_by_module: dict[str, int]
    stored: int              # Σ stored tensors (incl. the loss module's)
    w: int                   # part of ``stored`` needed until the weight gradient
    w_grad_outputs: int      # output gradients of the weight matmuls, kept from B to a deferred W
    w_recompute: int         # dropped weight-matmul inputs a deferred W re-materialises
    recompute: int
    forward_transient: int
    backward_transient: int
    a2a: int


def _linear_outputs(m: ModelConfig, p: ParallelConfig, g: Shape, kind: str) -> int:
    """Σ over the layer's weight matmuls of its output's elements per device (tokens × columns).

    A deferred weight gradient dW = Xᵀ·dY needs each matmul's output gradient dY from B until W
    (Qi et al. 2024, zero-bubble pipeline parallelism). Row-parallel outputs count all T tokens
    (with SP their gradient is all-gathered before the weight gradient).
    """
    h, T = m.hidden, g.T
    out = 0
    if kind in ("dense", "moe", "mtp"):
        for _, (_, cols, tp) in attention_matrices(m).items():
            out += T * (cols // p.tp if tp == "col" else cols)
        if kind == "dense":
            out += T * (2 * m.dense_ffn_hidden // p.tp + h)
        else:
            out += g.T_sp * m.routed_experts                                  # router
            out += g.R * (2 * m.moe_ffn_hidden // p.etp + h)                  # routed experts
            if m.shared_experts:
                out += T * (2 * m.shared_width + h)
    if kind == "mtp":
        out += g.T_sp * h                                                     # projection
    if kind in ("head", "mtp"):
        out += T * vocab_shard(m, p)
    return out


def _a2a_bytes(m: ModelConfig, g: Shape, t: TrainingConfig, kind: str) -> int:
    """EP all-to-all buffers while an MoE layer runs.

    paper inventory: (a' + a)·(S + R)·h, dispatch and combine, send and receive;
    framework: the send buffers only, a'·S·h (permuted tokens) + a·R·h (expert outputs) — the
    receive buffers are the kept experts.input and experts.output; none when ep = 1.
    """
    if kind not in ("moe", "mtp"):
        return 0
    if t.inventory == "paper":
        return (g.a8 + g.a) * (g.S + g.R) * m.hidden
    if g.ep == 1:
        return 0
    return (g.a8 * g.S + g.a * g.R) * m.hidden


def layer_activations(m: ModelConfig, p: ParallelConfig, t: TrainingConfig,
                      kind: str) -> LayerActivations:
    """Stored bytes by module and the transients of one layer under ``t.recompute``.

    stored      = Σ stored tensors
    w           = Σ stored W tensors, plus the stored checkpoints when some W tensor is
                  recomputed (a deferred weight gradient re-materialises it from them)
    w_recompute = Σ recomputed W tensors (rebuilt again by a deferred W)
    w_grad_outputs = a' · Σ_matmuls tokens·columns (``_linear_outputs``; the head's at a)
    recompute   = Σ recomputed tensors (re-materialised during B; 0 for recompute none)
    forward_transient  = paper: recompute + the forward working set (dropped tensors exist
                         during F); framework: F's measured working set beyond the stored
                         tensors (``transients.peaks``), recomputed tensors included as they live
    backward_transient = the backward working set (``pipesim.model.transients``)
    a2a         = ``_a2a_bytes``
    """
    g = shape(m, p, t)
    tensors = layer_tensors(m, p, t, kind)
    st = status(tensors, t)
    by_module: dict[str, int] = {}
    stored = w = dropped = w_dropped = 0
    for x, s in zip(tensors, st):
        if s == "stored":
            by_module[x.module] = by_module.get(x.module, 0) + x.nbytes
            stored += x.nbytes
            w += x.nbytes if x.weight_input else 0
        elif s == "recomputed":
            dropped += x.nbytes
            w_dropped += x.nbytes if x.weight_input else 0
    if w_dropped:
        w += sum(x.nbytes for x, s in zip(tensors, st)
                 if s == "stored" and x.checkpoint and not x.weight_input and x.module != "loss")
    fwd, bwd = working_sets(m, p, t, g, kind, tensors, st)
    # paper: the dropped tensors are all held during F; framework: measured, they never all
    # coexist (a recompute region frees as it goes), so F holds its working set alone
    forward = dropped + fwd if t.inventory == "paper" else peaks(m, p, t, g, kind, tensors, st).forward
    # with FP8 training the weight-gradient GEMM takes its output gradient in FP8 too
    # (DeepSeek-V3 Figure 6), so a deferred W keeps dY at a' (the output head stays in BF16)
    head_dy = g.T * vocab_shard(m, p) if kind in ("head", "mtp") else 0
    dy = g.a8 * (_linear_outputs(m, p, g, kind) - head_dy) + g.a * head_dy
    return LayerActivations(by_module, stored, w, dy, w_dropped,
                            dropped, forward, bwd, _a2a_bytes(m, g, t, kind))


def tensor_listing(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, kind: str) -> list[dict]:
    """Every tensor of a layer of ``kind``: name, shape, dtype, bytes, status and why (JSON-able)."""
    tensors = layer_tensors(m, p, t, kind)
    out = []
    for x, s in zip(tensors, status(tensors, t)):
        reason = x.why
        if s == "recomputed":
            reason = f"recomputed in backward under recompute = {t.recompute!r}"
        elif s == "absent":
            reason = "not saved: only a recompute region starting here keeps it"
        out.append({"name": x.name, "shape": list(x.shape), "dtype": x.dtype, "bytes": x.nbytes,
                    "status": s, "why": reason})
    return out


def boundary_bytes(m: ModelConfig, p: ParallelConfig, t: TrainingConfig) -> int:
    """The hidden state sent to the next stage per micro-batch: a·b·s·h/cp, /tp with SP."""
    return t.dtypes.activations * shape(m, p, t).T_sp * m.hidden
