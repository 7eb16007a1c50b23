"""Model states per device: weights, gradients and optimizer states by dtype, under ZeRO.

    weights   = P · dtypes.weights
    grads     = P · dtypes.grads
    optimizer = P · (dtypes.master + dtypes.momentum + dtypes.variance)
ZeRO shards (DeepSpeed's stages; the paper, section 4):
    none          nothing
    os            optimizer states
    os+g          optimizer states and gradients
    os+g+params   optimizer states, gradients and weights
A sharded quantity of the dense modules is divided by dp·cp (``ParallelConfig.zero_ways``: the
CP ranks of a DP replica hold the same parameters); of the expert-parallel modules by EDP
(= dp·cp·tp/(ep·etp)), rounded up (shards are padded equal). Which modules count as expert
modules is the recipe's ``shared_placement``: "paper" shards the whole MoE block (gate, routed
and shared experts) over EDP — its Table 8 needs it: os optimizer 429,719,552·8/32 +
5,820,645,376·8/8 = 5,928,075,264 bytes; "megatron" only the routed experts, as Megatron-Core
treats the router and the shared experts as dense parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipesim.model.config import DTypes, ModelConfig, ParallelConfig
from pipesim.model.params import attention_matrices, expert_modules

SHARDED = {
    "none": (),
    "os": ("optimizer",),
    "os+g": ("optimizer", "grads"),
    "os+g+params": ("optimizer", "grads", "weights"),
}


@dataclass(frozen=True)
class States:
    """Bytes per device."""

    weights: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer


def _shard(nbytes: int, ways: int) -> int:
    return -(-nbytes // ways)


def states_bytes(device_params: dict[str, int], p: ParallelConfig, dtypes: DTypes,
                 zero: str, shared_placement: str = "paper") -> States:
    """Weights, gradients and optimizer bytes of a device holding ``device_params`` (by module).

    Each part is ``Σ_group ⌈P_group · bytes / ways⌉`` over the dense (ways = dp·cp) and expert
    (ways = EDP) groups, with ways = 1 unless ZeRO shards that part.
    """
    experts = expert_modules(shared_placement)
    moe = sum(v for k, v in device_params.items() if k in experts)
    dense = sum(device_params.values()) - moe
    per_value = {"weights": dtypes.weights, "grads": dtypes.grads, "optimizer": dtypes.optimizer}
    out = {}
    for part, nbytes in per_value.items():
        sharded = part in SHARDED[zero]
        out[part] = (_shard(dense * nbytes, p.zero_ways if sharded else 1)
                     + _shard(moe * nbytes, p.edp_effective if sharded else 1))
    return States(**out)


def linear_weight_shapes(m: ModelConfig, p: ParallelConfig, kinds, shared_placement: str = "paper"
                         ) -> set[tuple[int, int]]:
    """Per-device weight shapes of the Transformer Engine linears in layers of ``kinds``.

    MLA: W_DQ [h, d_cq], W_UQ [d_cq, n_h·d_h/tp], W_QR [d_cq, n_h·d_hr] (or W_Q
    [h, n_h(d_h+d_hr)/tp]), W_DKV [h, d_c], W_UK and W_UV [d_c, n_h·d_h/tp], W_KR [h, d_hr],
    W_O [n_h·d_h/tp, h]; dense FFN fc1 [h, 2f/tp], fc2 [f/tp, h]; a routed expert's fc1
    [h, 2h_E/etp] and fc2 [h_E/etp, h] (one shape for all experts); the shared experts' fc1
    [h, 2N_s·h_E/tp'] and fc2 (tp' = tp with the megatron placement, else 1); the MTP
    projection [2h, h]. The router and the output layer are not TE modules.
    """
    h, tp = m.hidden, p.tp
    out: set[tuple[int, int]] = set()
    kinds = set(kinds)
    if kinds & {"dense", "moe", "mtp"}:
        for rows, cols, split in attention_matrices(m).values():
            out.add((rows // tp, cols) if split == "row" else (rows, cols // tp) if split else (rows, cols))
    if "dense" in kinds:
        out |= {(h, 2 * m.dense_ffn_hidden // tp), (m.dense_ffn_hidden // tp, h)}
    if kinds & {"moe", "mtp"}:
        e = m.moe_ffn_hidden // p.etp
        out |= {(h, 2 * e), (e, h)}
        if m.shared_experts:
            w = m.shared_width // (tp if shared_placement == "megatron" else 1)
            out |= {(h, 2 * w), (w, h)}
    if "mtp" in kinds:
        out.add((2 * h, h))
    return out


def wgrad_placeholder_bytes(m: ModelConfig, p: ParallelConfig, kinds, weight_bytes: int,
                            shared_placement: str = "paper") -> int:
    """Transformer Engine's placeholder weight gradients under gradient-accumulation fusion.

    With ``fuse_wgrad_accumulation`` the weight-gradient GEMM accumulates straight into the FP32
    ``main_grad`` buffer, and TE returns autograd a dummy tensor of the weight's shape instead;
    it caches one per distinct (shape, dtype) for the life of the process, so a device holds
    Σ over distinct weight shapes of rows·cols·weight_bytes (``linear_weight_shapes``).
    """
    return sum(r * c for r, c in linear_weight_shapes(m, p, kinds, shared_placement)) * weight_bytes
