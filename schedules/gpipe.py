"""GPipe (Huang et al., 2019): every rank runs all forwards, then all backwards.

    python -m pipesim schedule gpipe --pp 4 --microbatches 8

Rank r holds stage r (one chunk). Phases per rank, with M micro-batches:

    1. forward:  M ops  F(0) .. F(M-1)
    2. backward: M ops  B(0) .. B(M-1)   (full backward; no W split)

Every rank holds all M micro-batches' activations at the end of phase 1, which is GPipe's peak.
"""
from __future__ import annotations

from schedules.ops import B, F, Schedule, ScheduleError


def single_chunk(name: str, pp: int, microbatches: int, ranks, splits_w: bool = False) -> Schedule:
    """A schedule where rank r holds stage r only (GPipe, 1F1B, ZB-H1)."""
    return Schedule(
        name=name, pp=pp, microbatches=microbatches, chunks=1, num_stages=pp,
        ranks=tuple(tuple(ops) for ops in ranks),
        placement=tuple((r,) for r in range(pp)), directions=tuple((0,) for _ in range(pp)),
        stream_microbatches=(microbatches,), splits_w=splits_w,
    )


def check_one_chunk(name: str, chunks: int | None) -> None:
    if chunks not in (None, 1):
        raise ScheduleError(f"{name} holds one chunk per rank: chunks must be 1 or omitted, got {chunks}", "chunks")


def build(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    check_one_chunk("gpipe", chunks)
    M = microbatches
    rank_ops = [F(m) for m in range(M)] + [B(m) for m in range(M)]  # phases 1 and 2, same on every rank
    return single_chunk("gpipe", pp, M, [rank_ops] * pp)
