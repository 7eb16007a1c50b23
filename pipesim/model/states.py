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

from pipesim.model.config import DTypes, ParallelConfig
from pipesim.model.params import expert_modules

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
