"""Placement: transformer layers → model stages, and which stage holds embedding, head and MTP.

A schedule says which (rank, chunk) holds which stage (``Schedule.stage``); this module says
which layers a stage holds. Together they give every rank its layers. DeepSeek-V3's wish to
keep the embedding and the output head on one rank is met by DualPipe and the V-shaped
schedules by construction: rank 0 holds stage 0 and the last stage.
"""
from __future__ import annotations

from dataclasses import dataclass


class PlacementError(ValueError):
    """Bad placement; the message starts with the offending key."""


@dataclass(frozen=True)
class StagePlan:
    """What one model stage holds."""

    index: int
    layers: range            # global transformer-layer indices
    embedding: bool
    head: bool
    mtp: bool


def auto_split(layers: int, stages: int) -> tuple[int, ...]:
    """Even split of ``layers`` over ``stages``; the remainder goes one layer each to the middle.

    The first stage also holds the embedding and the last the output head, so extra layers go
    to the stages in between, centred: ``stages - 2`` middle stages take them first.
    """
    base, extra = divmod(layers, stages)
    counts = [base] * stages
    order = sorted(range(stages), key=lambda s: (s in (0, stages - 1), abs(s - (stages - 1) / 2), s))
    for s in order[:extra]:
        counts[s] += 1
    return tuple(counts)


def resolve_layers(model, placement, stages: int) -> tuple[int, ...]:
    """Layers per stage from ``[placement]``; checks the list against the model and the schedule."""
    if model.layers < stages:
        raise PlacementError(f"layers_per_stage: the model has {model.layers} layers, fewer than the "
                             f"schedule's {stages} stages; use fewer ranks or chunks")
    spec = placement.layers_per_stage
    if spec == "auto":
        counts = auto_split(model.layers, stages)
    elif isinstance(spec, str):
        raise PlacementError(f"layers_per_stage: \"auto\" or a list of {stages} integers, got {spec!r}")
    else:
        counts = tuple(spec)
        if len(counts) != stages:
            raise PlacementError(f"layers_per_stage: the schedule has {stages} stages, the list has {len(counts)} entries")
        if any(c < 1 for c in counts):
            raise PlacementError(f"layers_per_stage: every stage needs >= 1 layer, got {list(counts)}")
        if sum(counts) != model.layers:
            raise PlacementError(f"layers_per_stage: sums to {sum(counts)}, the model has {model.layers} layers")
    for key in ("embedding_stage", "head_stage", "mtp_stage"):
        s = getattr(placement, key)
        if not -stages <= s < stages:
            raise PlacementError(f"{key}: a stage index in [{-stages}, {stages - 1}], got {s}")
    return counts


def stage_plans(model, placement, counts: tuple[int, ...]) -> tuple[StagePlan, ...]:
    """One ``StagePlan`` per stage, in stage order."""
    n = len(counts)
    emb, head, mtp = (getattr(placement, k) % n for k in ("embedding_stage", "head_stage", "mtp_stage"))
    plans, first = [], 0
    for s, c in enumerate(counts):
        plans.append(StagePlan(s, range(first, first + c), s == emb, s == head,
                               s == mtp and model.mtp_modules > 0))
        first += c
    return tuple(plans)


def split_text(counts) -> str:
    """Layers per stage as people read them, runs folded: ``(4,)*15 + (1,)`` → ``[4]*15 + [1]``."""
    runs = []
    for c in counts:
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return " + ".join(f"[{c}]*{n}" if n > 1 else f"[{c}]" for c, n in runs)
