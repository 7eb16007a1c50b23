"""The vocabulary of the activation model: one stored tensor (``Tensor``) and the token counts
and byte widths every formula uses (``Shape``), derived in one place from the configs.

Symbols: b micro-batch, s sequence, T = b·s/cp tokens on this CP rank, T_sp = T/tp with
sequence parallelism (else T), a activation bytes, a' the bytes of the FP8-eligible linear
inputs (1 with ``fp8_activations``, else a), S = T_sp·N_r token copies this device dispatches,
R the token copies its routed experts receive.

R, tokens held by this device's routed experts per micro-batch:
    routed: R = etp · T_sp · N_r · imbalance   (every device sends T_sp·N_r token copies and,
            balanced, receives as many; an ETP group shares its tokens)
    paper:  R = (N/ep) · E, E = b·s·N_r/N · imbalance   (the paper's Table 10: one device's own
            micro-batch spread over all experts, i.e. R = T·N_r/ep; it undercounts by ep/tp)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig


@dataclass(frozen=True)
class Tensor:
    """One activation tensor of a layer, on one device, per micro-batch.

    ``shape`` and ``dtype`` say what a framework allocates (per device), ``nbytes`` what it
    costs; ``why`` names the op that keeps it for backward, so it can be checked against a real
    run (``pipesim model SCENARIO --tensors``).
    """

    name: str            # "module.tensor"
    nbytes: int
    weight_input: bool   # input of a weight matmul: needed until the weight gradient (W)
    checkpoint: bool     # kept under full recomputation (a recompute region's input)
    shape: tuple[int, ...] = ()
    dtype: str = ""
    why: str = ""

    @property
    def module(self) -> str:
        return self.name.split(".")[0]


def tensor(name: str, shape: tuple[int, ...], dtype: str, width: int, *, w: bool = False,
           c: bool = False, why: str = "") -> Tensor:
    """A ``Tensor`` of ``shape`` with ``width`` bytes per element."""
    return Tensor(name, math.prod(shape) * width, w, c, tuple(shape), dtype, why)


DTYPE_NAMES = {1: "fp8", 2: "bf16", 4: "fp32", 8: "int64"}


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
    ep: int
    etp: int
    flash: bool
    dropout: bool  # dropout masks exist (probability > 0)

    @property
    def act(self) -> str:
        return DTYPE_NAMES.get(self.a, f"{self.a}B")

    @property
    def act8(self) -> str:
        return DTYPE_NAMES.get(self.a8, f"{self.a8}B")


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
                 p.tp, p.cp, p.ep, p.etp, t.attention == "flash", t.dropout > 0)


def vocab_shard(m: ModelConfig, p: ParallelConfig) -> int:
    """Vocabulary entries per device (``ModelConfig.vocab_shard``: padded, / tp)."""
    return m.vocab_shard(p.tp)
