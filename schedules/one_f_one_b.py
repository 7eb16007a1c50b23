"""1F1B, non-interleaved (PipeDream-flush, as in Megatron-LM): one forward, one backward.

    python -m pipesim schedule 1f1b --pp 4 --microbatches 8

Rank r holds stage r. With pp ranks and M micro-batches, rank r runs three phases:

    1. warm-up:   w = min(pp - r - 1, M) forwards          F(0) .. F(w-1)
    2. steady:    M - w pairs, i = 0 .. M-w-1              F(w + i), B(i)
    3. cool-down: w backwards                              B(M-w) .. B(M-1)

So rank r holds at most w + 1 = min(pp - r, M) micro-batches' activations: the F of the first
steady pair comes before the first B frees one.
"""
from __future__ import annotations

from schedules.gpipe import check_one_chunk, single_chunk
from schedules.ops import B, F, Op, Schedule


def warmup(pp: int, microbatches: int, rank: int) -> int:
    """Forwards rank ``rank`` runs before its first backward: ``min(pp - rank - 1, M)``."""
    return min(pp - rank - 1, microbatches)


def rank_ops(pp: int, microbatches: int, rank: int, forwards=None, backwards=None) -> list[Op]:
    """Rank ``rank``'s ops. ``forwards``/``backwards`` (F(0..M-1), B(0..M-1)) may be passed in
    so that the ranks of one schedule slice the same two lists instead of each building its own."""
    M = microbatches
    fs = forwards if forwards is not None else [F(m) for m in range(M)]
    bs = backwards if backwards is not None else [B(m) for m in range(M)]
    w = warmup(pp, M, rank)
    steady = [None] * (2 * (M - w))                      # 2. steady: F(w + i), B(i)
    steady[0::2] = fs[w:]
    steady[1::2] = bs[:M - w]
    return fs[:w] + steady + bs[M - w:]                  # 1. warm-up, 2., 3. cool-down


def build(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    check_one_chunk("1f1b", chunks)
    fs = [F(m) for m in range(microbatches)]
    bs = [B(m) for m in range(microbatches)]
    return single_chunk("1f1b", pp, microbatches, [rank_ops(pp, microbatches, r, fs, bs) for r in range(pp)])
