"""DualPipe and DualPipeV: DeepSeek's bidirectional schedule and its one-stream "V" fold.

The per-rank op order reproduces deepseek-ai/DualPipe (``dualpipe/dualpipe.py`` and
``dualpipe/dualpipev.py``, ``step()``) exactly, as recorded in
``docs/reference/dualpipe.md``. Both classes run the same eight numbered steps; only the
constants differ, so the steps live once, in ``_eight_steps``:

    symbol   DualPipe (P ranks, M micro-batches)   DualPipeV (R ranks, M micro-batches)
    H        P/2                                   R
    h        min(r, P-1-r)                         r
    C        M/2  (micro-batches per direction)    M
    special  middle ranks, h == H-1                tip rank, r == R-1

    step  reference comment         iterations       body of one iteration
    1     nF0                       2(H-h-1)         F0
    2     nF0F1                     h+1              F0, F1
    3     nB1W1F1 (zero bubble)     H-h-1            B1*, W, F1
    4     nF0B1F1B0 (main step)     C-2H+h+1         [F0&B1], [F1&B0]   (special rank, i=0: F0, B1, [F1&B0])
    5     nB1F1B0                   H-h-1            B1, [F1&B0]
    6     nB1B0 (2nd half ZB)       h+1              B1, B0; W deferred from iteration floor((h+1)/2) on
    7     nWB0 (zero bubble)        H-h-1            W, B0*
    8     nW                        h+1              W

Here F0/F1/B0/B1 name the *local phase*: phase 0 is the stream in which the rank is an early stage
(distance h from its input), phase 1 the stream in which it is a late stage (distance h from the
loss). Ops carry the rank's *chunk* instead: for DualPipe ``chunk = phase XOR (rank >= P/2)``, for
DualPipeV ``chunk = phase``. ``B*`` defers its weight-gradient to a later ``W``; ``W`` pops the
oldest deferred job (FIFO, like the reference's ``WeightGradStore``) and is labelled with that job's
(micro-batch, chunk).

    import schedules
    s = schedules.build("dualpipe", pp=4, microbatches=8)
    print(s.text())
"""
from __future__ import annotations

from collections import deque

from schedules.ops import B, F, FB_of, Op, Schedule, ScheduleError, W

__all__ = ["build_dualpipe", "build_dualpipev", "step_iterations"]


def step_iterations(H: int, h: int, C: int) -> tuple[int, ...]:
    """Iteration counts of steps 1..8 for a rank at half-rank ``h`` (see the module docstring)."""
    warm = H - h - 1  # distance from the middle (DualPipe) or tip (DualPipeV)
    return (
        2 * warm,          # 1: nF0
        h + 1,             # 2: nF0F1
        warm,              # 3: nB1W1F1
        C - 2 * H + h + 1,  # 4: nF0B1F1B0
        warm,              # 5: nB1F1B0
        h + 1,             # 6: nB1B0
        warm,              # 7: nWB0
        h + 1,             # 8: nW
    )


class _RankProgram:
    """Accumulates one rank's ops, numbering micro-batches per chunk and queueing deferred Ws.

    Ops come from the shared factories (``F``, ``B``, ``W``, ``FB_of``): a DualPipe rank repeats
    few distinct ops, and constructing a frozen dataclass per slot dominated the build time.
    """

    def __init__(self, flip: int) -> None:
        self._flip = flip  # chunk = local phase XOR flip
        self._next_f = [0, 0]
        self._next_b = [0, 0]
        self._pending_w: deque[tuple[int, int]] = deque()
        self.ops: list[Op] = []

    def _take_f(self, phase: int) -> tuple[int, int]:
        """(micro-batch, chunk) of the phase's next forward."""
        chunk = phase ^ self._flip
        mb = self._next_f[chunk]
        self._next_f[chunk] = mb + 1
        return mb, chunk

    def _take_b(self, phase: int, defer_w: bool) -> tuple[int, int]:
        """(micro-batch, chunk) of the phase's next backward; queues its W if deferred."""
        chunk = phase ^ self._flip
        mb = self._next_b[chunk]
        self._next_b[chunk] = mb + 1
        if defer_w:
            self._pending_w.append((mb, chunk))
        return mb, chunk

    def f(self, phase: int) -> None:
        self.ops.append(F(*self._take_f(phase)))

    def b(self, phase: int, defer_w: bool = False) -> None:
        mb, chunk = self._take_b(phase, defer_w)
        # B's cache keys on how it is called: spell full backwards as FB_of does, so they share
        self.ops.append(B(mb, chunk, w_deferred=True) if defer_w else B(mb, chunk))

    def fb(self, f_phase: int, b_phase: int) -> None:
        # The forward is taken before the backward, as in the reference's pre-forward/pre-backward.
        f_mb, f_chunk = self._take_f(f_phase)
        b_mb, b_chunk = self._take_b(b_phase, False)
        self.ops.append(FB_of(f_mb, f_chunk, b_mb, b_chunk))

    def fb_pairs(self, count: int) -> None:
        """``count`` iterations of (FB(F0, B1), FB(F1, B0)) at once: each counter steps by one
        per iteration, so each half of the pairs is a comprehension over the iteration index."""
        c0, c1 = self._flip, 1 ^ self._flip           # chunks of phases 0 and 1
        f0, f1, b0, b1 = self._next_f[c0], self._next_f[c1], self._next_b[c0], self._next_b[c1]
        pairs = [None] * (2 * max(count, 0))
        pairs[0::2] = [FB_of(f0 + i, c0, b1 + i, c1) for i in range(count)]
        pairs[1::2] = [FB_of(f1 + i, c1, b0 + i, c0) for i in range(count)]
        self.ops.extend(pairs)
        for counter, chunk in ((self._next_f, c0), (self._next_f, c1), (self._next_b, c0), (self._next_b, c1)):
            counter[chunk] += count

    def w(self) -> None:
        self.ops.append(W(*self._pending_w.popleft()))

    @property
    def pending_w(self) -> int:
        return len(self._pending_w)


def _eight_steps(prog: _RankProgram, H: int, h: int, C: int, special: bool) -> None:
    """Run the reference's steps 1..8 on ``prog`` in local phases (counts: ``step_iterations``)."""
    n1, n2, n3, n4, n5, n6, n7, n8 = step_iterations(H, h, C)

    # Step 1: nF0, 2(H-h-1) iterations
    for _ in range(n1):
        prog.f(0)

    # Step 2: nF0F1, h+1 iterations
    for _ in range(n2):
        prog.f(0)
        prog.f(1)

    # Step 3: nB1W1F1, H-h-1 iterations; each W pops the B1 just deferred
    for _ in range(n3):
        prog.b(1, defer_w=True)
        prog.w()
        prog.f(1)

    # Step 4 (main step): nF0B1F1B0, C-2H+h+1 iterations
    if n4 > 0 and special:
        # The reference does not overlap this pair "to further reduce bubble size".
        prog.f(0)
        prog.b(1)
        prog.fb(1, 0)
    prog.fb_pairs(n4 - 1 if n4 > 0 and special else max(n4, 0))

    # Step 5: nB1F1B0, H-h-1 iterations
    for _ in range(n5):
        prog.b(1)
        prog.fb(1, 0)

    # Step 6: nB1B0, h+1 iterations; zero bubble switches on at iteration floor((h+1)/2):
    # before that iteration's B1 when h is odd, between its B1 and B0 when h is even.
    switch = n6 // 2
    defer = False
    for i in range(n6):
        if i == switch and h % 2 == 1:
            defer = True
        prog.b(1, defer_w=defer)
        if i == switch and h % 2 == 0:
            defer = True
        prog.b(0, defer_w=defer)

    # Step 7: nWB0, H-h-1 iterations
    for _ in range(n7):
        prog.w()
        prog.b(0, defer_w=True)

    # Step 8: nW, h+1 iterations
    for _ in range(n8):
        prog.w()

    if prog.pending_w:  # the reference asserts an empty WeightGradStore queue here
        raise AssertionError(f"{prog.pending_w} weight-gradient jobs left after step 8")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_common(name: str, pp: int, microbatches: int, chunks: int | None) -> None:
    if not _is_int(pp) or pp < 1:
        raise ScheduleError(f"{name} needs pp to be an integer >= 1; got {pp!r}", "pp")
    if not _is_int(microbatches) or microbatches < 1:
        raise ScheduleError(f"{name} needs microbatches to be an integer >= 1; got {microbatches!r}", "microbatches")
    if chunks is not None and (not _is_int(chunks) or chunks != 2):
        raise ScheduleError(f"{name} holds exactly 2 chunks per rank; chunks must be None or 2, got {chunks!r}",
                            "chunks")


def build_dualpipe(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    """DualPipe on ``pp`` ranks (even) with ``microbatches`` in total over both directions.

    Rank r holds chunk 0 = stage r of direction 0 and chunk 1 = stage pp-1-r of direction 1;
    each direction carries microbatches/2 micro-batches. Requires pp even and microbatches even
    and >= 2*pp, as the reference asserts. Run: ``python -m pipesim schedule dualpipe --pp 4
    --microbatches 8``.
    """
    _check_common("dualpipe", pp, microbatches, chunks)
    if pp % 2:
        raise ScheduleError(
            f"dualpipe needs an even pp (rank r mirrors rank pp-1-r); got pp={pp}; use dualpipev for any pp",
            "pp")
    if microbatches % 2 or microbatches < 2 * pp:
        raise ScheduleError(
            f"dualpipe needs an even number of micro-batches >= 2*pp (={2 * pp} for pp={pp}); got {microbatches}",
            "microbatches")
    P, H, C = pp, pp // 2, microbatches // 2
    ranks = []
    for r in range(P):
        h = min(r, P - 1 - r)
        prog = _RankProgram(flip=int(r >= H))
        _eight_steps(prog, H, h, C, special=(h == H - 1))
        ranks.append(tuple(prog.ops))
    return Schedule(
        name="dualpipe",
        pp=P,
        microbatches=microbatches,
        chunks=2,
        num_stages=P,
        ranks=tuple(ranks),
        placement=tuple((r, P - 1 - r) for r in range(P)),
        directions=tuple((0, 1) for _ in range(P)),
        stream_microbatches=(C, C),
        splits_w=True,
    )


def build_dualpipev(pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    """DualPipeV ("cut-in-half") on ``pp`` ranks holding 2*pp stages in a V, one stream.

    Rank r holds chunk 0 = stage r (down leg) and chunk 1 = stage 2*pp-1-r (up leg). Any pp >= 1;
    requires microbatches >= 2*pp, as the reference asserts. Run: ``python -m pipesim schedule
    dualpipev --pp 4 --microbatches 10``.
    """
    _check_common("dualpipev", pp, microbatches, chunks)
    if microbatches < 2 * pp:
        raise ScheduleError(
            f"dualpipev needs micro-batches >= 2*pp (={2 * pp} for pp={pp}); got {microbatches}",
            "microbatches")
    R, C = pp, microbatches
    ranks = []
    for r in range(R):
        prog = _RankProgram(flip=0)
        _eight_steps(prog, R, r, C, special=(r == R - 1))
        ranks.append(tuple(prog.ops))
    return Schedule(
        name="dualpipev",
        pp=R,
        microbatches=microbatches,
        chunks=2,
        num_stages=2 * R,
        ranks=tuple(ranks),
        placement=tuple((r, 2 * R - 1 - r) for r in range(R)),
        directions=tuple((0, 0) for _ in range(R)),
        stream_microbatches=(C,),
        splits_w=True,
    )
