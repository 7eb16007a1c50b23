"""Interleaved 1F1B (Narayanan et al., 2021; the order Megatron-LM runs): V chunks per rank.

    python -m pipesim schedule interleaved --pp 4 --microbatches 8 --chunks 2

The model is cut into S = V * pp stages; rank r's chunk c holds stage ``c * pp + r``, so a
micro-batch visits every rank V times. Each rank walks V * M "virtual" micro-batches k. Forward
k is taken from groups of pp micro-batches, chunk by chunk:

    group = k // (pp * V),  chunk = (k % (pp * V)) // pp,  mb = group * pp + k % pp

and backward k is the same with the chunk mirrored (``V - 1 - chunk``): the last stages'
gradients come first. Rank r runs three phases over these V * M virtual ops:

    1. warm-up:   w = min((pp - r - 1) * 2 + (V - 1) * pp, V * M) forwards    F(0) .. F(w-1)
    2. steady:    V * M - w pairs, i = 0 ..                                 F(w + i), B(i)
    3. cool-down: w backwards                                               B(V*M - w) .. B(V*M - 1)

so rank r holds at most ``min(w + 1, V * M)`` chunk-micro-batches of activations.

Allowed input: V = chunks >= 2 (default 2; V = 1 is plain ``1f1b``), and M a multiple of pp.
The multiple is Megatron-LM's own requirement for this order: micro-batches travel in groups
of pp, and the group formula above names micro-batches up to the next multiple of pp. (Unlike
Megatron-LM we do not switch to all-forward-first when M == pp; the warm-up formula above
gives a valid order there too.)
"""
from __future__ import annotations

from schedules.ops import B, F, Op, Schedule, ScheduleError

DEFAULT_CHUNKS = 2


def virtual(pp: int, V: int, k: int, backward: bool) -> tuple[int, int]:
    """(chunk, mb) of rank-local virtual micro-batch ``k``; backward runs chunks last-first."""
    group, within = divmod(k, pp * V)
    chunk = within // pp
    if backward:
        chunk = V - 1 - chunk
    return chunk, group * pp + within % pp


def warmup(pp: int, microbatches: int, V: int, rank: int) -> int:
    """Forwards before the first backward: ``min((pp - r - 1) * 2 + (V - 1) * pp, V * M)``."""
    return min((pp - rank - 1) * 2 + (V - 1) * pp, V * microbatches)


def rank_ops(pp: int, microbatches: int, V: int, rank: int) -> list[Op]:
    total = V * microbatches

    def fwd(k: int) -> Op:
        c, m = virtual(pp, V, k, backward=False)
        return F(m, c)

    def bwd(k: int) -> Op:
        c, m = virtual(pp, V, k, backward=True)
        return B(m, c)

    w = warmup(pp, microbatches, V, rank)
    ops = [fwd(k) for k in range(w)]                         # 1. warm-up
    for i in range(total - w):                               # 2. steady
        ops += [fwd(w + i), bwd(i)]
    ops += [bwd(k) for k in range(total - w, total)]         # 3. cool-down
    return ops


def build(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    V = DEFAULT_CHUNKS if chunks is None else chunks
    if V < 2:
        raise ScheduleError(f"interleaved needs chunks >= 2 per rank (default {DEFAULT_CHUNKS}), got {V}; "
                            "chunks=1 is the '1f1b' schedule", "chunks")
    if microbatches % pp:
        lower = microbatches // pp * pp
        near = f"{lower} or {lower + pp}" if lower else f"{pp}"
        raise ScheduleError(f"interleaved needs microbatches to be a multiple of pp={pp} "
                            f"(micro-batches travel in groups of pp), got {microbatches}; try {near}", "microbatches")
    return Schedule(
        name="interleaved", pp=pp, microbatches=microbatches, chunks=V, num_stages=V * pp,
        ranks=tuple(tuple(rank_ops(pp, microbatches, V, r)) for r in range(pp)),
        placement=tuple(tuple(c * pp + r for c in range(V)) for r in range(pp)),
        directions=tuple((0,) * V for _ in range(pp)),
        stream_microbatches=(microbatches,), splits_w=False,
    )
