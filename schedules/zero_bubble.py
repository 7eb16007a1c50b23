"""Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024): ZB-H1, ZB-V.

    python -m pipesim schedule zb-h1 --pp 4 --microbatches 8
    python -m pipesim schedule zb-v --pp 4 --microbatches 8

Both split the backward into B (input gradient, on the critical path; written ``B*``) and W
(weight gradient, needed only by the optimizer), and use the Ws to fill bubbles. The orders
below are the paper's handcrafted ones as reconstructed here; the tests check their closed
forms (peak activations, bubble) rather than a trace.

ZB-H1 -- rank r holds stage r; the order is 1F1B with every B split, and rank r keeps its
last r weight-gradients pending (the last rank's Ws fill the cool-down bubble of the ranks
before it). With w = min(pp - r - 1, M):

    1. warm-up:   w forwards                               F(0) .. F(w-1)
    2. steady:    M - w steps, i = 0 ..                    F(w + i), B*(i), then W(i - r) if i >= r
    3. cool-down: w steps, m = M - w .. M - 1               B*(m), then W(m - r) if m >= r
    4. drain:     min(r, M) weight-gradients               W(max(M - r, 0)) .. W(M - 1)

Activations: the same in-flight count as 1F1B, min(pp - r, M) (counted F to B; a W only keeps
the weight-gradient inputs). With F, B (full backward) and W times and M >= pp, each rank idles
(pp - 1)(F + B - 2W), a third of 1F1B's when F = B/2 = W.

ZB-V -- V-shaped placement like DualPipeV: 2pp stages, rank r holds chunk 0 = stage r and
chunk 1 = stage 2pp - 1 - r; one stream enters at rank 0 chunk 0, turns at rank pp - 1 and
ends (loss) at rank 0 chunk 1. With N = max(M, 2pp - 1) (the order is built for at least
2pp - 1 micro-batches, then ops of micro-batches >= M are dropped) rank r runs:

    1. warm-up chunk 0:  2(pp - r) - 1 ops             F0
    2. warm-up both:     r steps                       F1, F0
    3. turn:             pp - r steps                  F1, B1*, W1
    4. steady:           N - pp steps                  F0 (while any left), B0*, W0, F1, B1*, W1
    5. cool-down both:   r steps                       B0*, B1*
    6. cool-down chunk 0: pp - r steps                 B0*, W0 (oldest pending)
    7. drain:            the r pending W1, then the r pending W0

Counted in half-stage (chunk) activations, every rank peaks at 2pp when M >= 2pp - 1: the same
as 1F1B's pp full stages on rank 0, spread over all ranks.
"""
from __future__ import annotations

from collections import deque

from schedules.gpipe import check_one_chunk, single_chunk
from schedules.one_f_one_b import warmup
from schedules.ops import B, F, Op, Schedule, ScheduleError, W


def zb_h1_rank_ops(pp: int, microbatches: int, rank: int) -> list[Op]:
    M, r = microbatches, rank
    w = warmup(pp, M, r)

    def backward(m: int) -> list[Op]:
        return [B(m, 0, w_deferred=True)] + ([W(m - r)] if m >= r else [])

    ops = [F(m) for m in range(w)]                           # 1. warm-up
    for i in range(M - w):                                   # 2. steady
        ops += [F(w + i)] + backward(i)
    for m in range(M - w, M):                                # 3. cool-down
        ops += backward(m)
    ops += [W(m) for m in range(max(M - r, 0), M)]           # 4. drain
    return ops


def build_zb_h1(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    check_one_chunk("zb-h1", chunks)
    ranks = [zb_h1_rank_ops(pp, microbatches, r) for r in range(pp)]
    return single_chunk("zb-h1", pp, microbatches, ranks, splits_w=True)


def zb_v_rank_ops(pp: int, microbatches: int, rank: int) -> list[Op]:
    r = rank
    N = max(microbatches, 2 * pp - 1)
    ops: list[Op] = []
    nxt = {"F0": 0, "F1": 0, "B0": 0, "B1": 0}               # next micro-batch per (kind, chunk)
    pending = {0: deque(), 1: deque()}                       # deferred Ws per chunk, oldest first

    def f(c: int) -> None:
        ops.append(F(nxt[f"F{c}"], c))
        nxt[f"F{c}"] += 1

    def b(c: int) -> None:
        m = nxt[f"B{c}"]
        ops.append(B(m, c, w_deferred=True))
        pending[c].append(m)
        nxt[f"B{c}"] += 1

    def w(c: int) -> None:
        ops.append(W(pending[c].popleft(), c))

    for _ in range(2 * (pp - r) - 1):                        # 1. warm-up chunk 0
        f(0)
    for _ in range(r):                                       # 2. warm-up both chunks
        f(1), f(0)
    for _ in range(pp - r):                                  # 3. turn
        f(1), b(1), w(1)
    for _ in range(N - pp):                                  # 4. steady
        if nxt["F0"] < N:
            f(0)
        b(0), w(0), f(1), b(1), w(1)
    for _ in range(r):                                       # 5. cool-down both chunks
        b(0), b(1)
    for _ in range(pp - r):                                  # 6. cool-down chunk 0
        b(0), w(0)
    while pending[1]:                                        # 7. drain
        w(1)
    while pending[0]:
        w(0)
    return [op for op in ops if op.mb < microbatches]


def build_zb_v(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    if chunks not in (None, 2):
        raise ScheduleError(f"zb-v holds two chunks per rank (V shape): chunks must be 2 or omitted, got {chunks}",
                            "chunks")
    S = 2 * pp
    return Schedule(
        name="zb-v", pp=pp, microbatches=microbatches, chunks=2, num_stages=S,
        ranks=tuple(tuple(zb_v_rank_ops(pp, microbatches, r)) for r in range(pp)),
        placement=tuple((r, S - 1 - r) for r in range(pp)),
        directions=tuple((0, 0) for _ in range(pp)),
        stream_microbatches=(microbatches,), splits_w=True,
    )
