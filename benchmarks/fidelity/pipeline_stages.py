"""The harness model cut into pipeline stages exactly as pipesim places them, and the torch
schedule that runs them.

pipesim says which layers a stage holds (``pipesim.placement.stage_plans`` over
``scenario.layers_per_stage``) and which (rank, chunk) holds a stage (``Schedule.stage``); a
``StageModule`` is those layers of ``fidelity.torch_model``, built on the rank that holds them.
The stage with the output head returns its last hidden state: the head (final norm, output
matmul, cross-entropy) runs as the schedule's ``loss_fn``, which torch.distributed.pipelining
calls right after that stage's forward, inside the same pipeline action.

    from fidelity.pipeline_stages import FAMILIES, scenario, build_stages
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import pipesim
from pipesim.placement import stage_plans
from fidelity import torch_model

__all__ = ["FAMILIES", "Family", "StageModule", "build_stages", "example_args", "scenario", "torch_stage_map"]

ROOT = Path(__file__).resolve().parents[2]
BASE_SCENARIO = ROOT / "scenarios" / "tiny.toml"


@dataclass(frozen=True)
class Family:
    """A schedule both pipesim and torch.distributed.pipelining have."""

    name: str            # pipesim's name (``schedules.names()``)
    torch_class: str     # class in ``torch.distributed.pipelining.schedules``
    chunks: int          # stages per rank
    style: str           # torch's stage → rank mapping: "loop" (s % pp) or "v"


# One look-up for every family the run covers; an unknown name lists these.
FAMILIES = {
    "gpipe": Family("gpipe", "ScheduleGPipe", 1, "loop"),
    "1f1b": Family("1f1b", "Schedule1F1B", 1, "loop"),
    "interleaved": Family("interleaved", "ScheduleInterleaved1F1B", 2, "loop"),
    "zb-v": Family("zb-v", "ScheduleZBVZeroBubble", 2, "v"),
    "dualpipev": Family("dualpipev", "ScheduleDualPipeV", 2, "v"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"schedule {name!r}: one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def scenario(name: str, *, pp: int = 4, microbatches: int = 8, seq_len: int = 128, layers: int = 8):
    """pipesim's scenario of the run: the tiny model with ``layers`` layers (enough for two
    chunks per rank), b = 1, ``seq_len`` tokens, ``microbatches`` per step, BF16, the megatron
    recipe (no dropout, flash attention, fused SwiGLU, FP32 loss: what ``torch_model`` runs by
    default), no recomputation, exact bytes (allocator rounding 1)."""
    fam = family(name)
    overrides = {"model.layers": layers, "parallel.pp": pp, "training.seq_len": seq_len,
                 "training.micro_batch_size": 1, "training.microbatches": microbatches,
                 "training.recipe": "megatron", "training.recompute": "none",
                 "schedule.name": fam.name, "placement.layers_per_stage": "auto",
                 "overheads.allocator_rounding": 1, "overheads.fragmentation": 0.0}
    if fam.name == "interleaved":
        overrides["schedule.chunks"] = fam.chunks
    return pipesim.load_scenario(BASE_SCENARIO, overrides)


def torch_stage_map(fam: Family, pp: int) -> dict[int, int]:
    """Torch's stage → rank mapping for ``fam`` (``pipelining._utils``), as its schedules use it."""
    from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping
    return generate_stage_to_rank_mapping(pp, pp * fam.chunks, style=fam.style)


def check_placement(sc, fam: Family) -> None:
    """pipesim's (rank, chunk) → stage must be torch's stage → rank, chunk by chunk in stage order."""
    sch = sc.build_schedule()
    torch_map = torch_stage_map(fam, sc.parallel.pp)
    for r in range(sch.pp):
        mine = [sch.stage(r, c) for c in range(len(sch.placement[r]))]
        theirs = sorted(s for s, rank in torch_map.items() if rank == r)
        if mine != theirs:
            raise ValueError(f"{fam.name}: rank {r} holds stages {mine} in pipesim, {theirs} in torch")


class StageModule(nn.Module):
    """The layers of one pipeline stage: the embedding (stage 0), transformer layers, and, on the
    head's stage, the head, which ``loss`` runs (not ``forward``)."""

    def __init__(self, plan, m, t, dtype: torch.dtype):
        super().__init__()
        self.index = plan.index
        self.embedding = torch_model.build_layer("embedding", m, t, dtype, seed=10_000) if plan.embedding else None
        self.blocks = nn.ModuleList(torch_model.build_layer("moe" if m.is_moe(i) else "dense", m, t, dtype, seed=i)
                                    for i in plan.layers)
        self.head = torch_model.build_layer("head", m, t, dtype, seed=10_001) if plan.head else None

    def forward(self, x):
        if self.embedding is not None:
            x = self.embedding(x)
        for block in self.blocks:
            x = block(x)
        return x

    def loss(self, x, targets):
        return self.head(x, targets)


def example_args(sc, plan, dtype: torch.dtype):
    """(input, output) of one micro-batch of a stage, for torch's static stage metadata."""
    b, s, h = sc.training.micro_batch_size, sc.training.seq_len, sc.model.hidden
    hidden = torch.empty(b, s, h, dtype=dtype, requires_grad=True)
    x = torch.zeros(b, s, dtype=torch.int64) if plan.embedding else hidden
    return x, torch.empty(b, s, h, dtype=dtype, requires_grad=True)


def build_stages(sc, rank: int, dtype: torch.dtype) -> list[StageModule]:
    """The stage modules of ``rank``, in chunk order (chunk c holds ``Schedule.stage(rank, c)``)."""
    sch = sc.build_schedule()
    plans = stage_plans(sc.model, sc.placement, sc.layers_per_stage)
    return [StageModule(plans[sch.stage(rank, c)], sc.model, sc.training, dtype)
            for c in range(len(sch.placement[rank]))]
