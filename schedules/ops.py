"""The two types every schedule family produces and every consumer reads: ``Op`` and ``Schedule``.

An op is one unit of a rank's work, as small and frozen as possible so that schedules of
hundreds of thousands of ops stay cheap. It prints as a compact token and parses back:

    F0.3    forward of chunk 0, micro-batch 3
    B1.2    backward of chunk 1, micro-batch 2 (full backward)
    B1.2*   input-gradient backward whose weight-gradient runs later as a W op
    W0.2    weight-gradient of chunk 0, micro-batch 2
    [F0.3&B1.1]  an overlapped forward (chunk 0, mb 3) and backward (chunk 1, mb 1)

Micro-batch indices count within a stream (DualPipe has two streams, ``direction`` 0 and 1;
every other family has one). Inside a stream, data flows through model stages 0 → S-1 in
forward and back in backward; ``Schedule.stage`` maps (rank, chunk) to the stage it holds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

KINDS = ("F", "B", "W", "FB")


class ScheduleError(ValueError):
    """A schedule was asked for something it cannot run; the message says what is allowed.

    ``param`` names the argument of ``schedules.build`` at fault ("name", "pp", "microbatches"
    or "chunks"), or is None when the fault is not one argument's (a malformed op list)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Op:
    """One op of a rank. For ``FB``, ``mb``/``chunk`` mirror the forward half."""

    kind: str
    mb: int
    chunk: int = 0
    w_deferred: bool = False
    forward: "Op | None" = None
    backward: "Op | None" = None

    def __str__(self) -> str:
        if self.kind == "FB":
            return f"[{self.forward}&{self.backward}]"
        star = "*" if self.w_deferred else ""
        return f"{self.kind}{self.chunk}.{self.mb}{star}"

    def atoms(self) -> tuple["Op", ...]:
        """The atomic ops (F, B, W) this op runs, in order: FB gives (forward, backward)."""
        if self.kind == "FB":
            return (self.forward, self.backward)  # type: ignore[return-value]
        return (self,)


# Ops are immutable, so equal ops are shared: a 1F1B schedule of pp ranks holds 2M distinct
# ops, not 2M·pp (schedules of 10^5 ops build several times faster).
@lru_cache(maxsize=None)
def F(mb: int, chunk: int = 0) -> Op:
    return Op("F", mb, chunk)


@lru_cache(maxsize=None)
def B(mb: int, chunk: int = 0, w_deferred: bool = False) -> Op:
    return Op("B", mb, chunk, w_deferred)


@lru_cache(maxsize=None)
def W(mb: int, chunk: int = 0) -> Op:
    return Op("W", mb, chunk)


def FB(forward: Op, backward: Op) -> Op:
    """An overlapped forward of one micro-batch with the (full) backward of another."""
    if forward.kind != "F" or backward.kind != "B":
        raise ScheduleError(f"FB needs an F and a B, got {forward} and {backward}")
    return Op("FB", forward.mb, forward.chunk, False, forward, backward)


@lru_cache(maxsize=None)
def FB_of(f_mb: int, f_chunk: int, b_mb: int, b_chunk: int) -> Op:
    """The shared ``FB(F(f_mb, f_chunk), B(b_mb, b_chunk))``, for builders that emit many.

    Keyed by integers, not ops: hashing an ``Op`` runs the dataclass's Python ``__hash__``, which
    would cost more than building the op afresh.
    """
    return FB(F(f_mb, f_chunk), B(b_mb, b_chunk))


_TOKEN = re.compile(r"^([FBW])(\d+)\.(\d+)(\*?)$")


def parse_op(token: str) -> Op:
    """Inverse of ``str(op)``: ``parse_op(str(op)) == op``."""
    token = token.strip()
    if token.startswith("[") and token.endswith("]") and "&" in token:
        f, b = token[1:-1].split("&", 1)
        return FB(parse_op(f), parse_op(b))
    m = _TOKEN.match(token)
    if not m:
        raise ScheduleError(f"cannot parse op token {token!r}; expected e.g. F0.3, B1.2*, W0.2, [F0.3&B1.1]")
    kind, chunk, mb, star = m.groups()
    if star and kind != "B":
        raise ScheduleError(f"only B can defer its weight-gradient ('*'), got {token!r}")
    return Op(kind, int(mb), int(chunk), bool(star))


@dataclass(frozen=True)
class Schedule:
    """Per-rank op lists plus where model stages live.

    ``placement[r][c]`` is the stage held by rank r's chunk c; ``directions[r][c]`` the stream
    that chunk serves (0, or 1 for DualPipe's reverse stream). ``microbatches`` is the total as
    the user gave it (DualPipe: over both streams); ``stream_microbatches[d]`` is per stream.
    """

    name: str
    pp: int
    microbatches: int
    chunks: int
    num_stages: int
    ranks: tuple[tuple[Op, ...], ...]
    placement: tuple[tuple[int, ...], ...]
    directions: tuple[tuple[int, ...], ...]
    stream_microbatches: tuple[int, ...]
    splits_w: bool = False
    _where: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        where = {}
        for r, (stages, dirs) in enumerate(zip(self.placement, self.directions)):
            for c, (s, d) in enumerate(zip(stages, dirs)):
                where[(s, d)] = (r, c)
        object.__setattr__(self, "_where", where)

    def stage(self, rank: int, chunk: int) -> int:
        """The model stage that (rank, chunk) holds."""
        return self.placement[rank][chunk]

    def direction(self, rank: int, chunk: int) -> int:
        """The stream (0, or 1 for DualPipe's reverse stream) that (rank, chunk) serves."""
        return self.directions[rank][chunk]

    def locate(self, stage: int, direction: int = 0) -> tuple[int, int]:
        """The (rank, chunk) that holds ``stage`` for stream ``direction``."""
        return self._where[(stage, direction)]

    @property
    def num_directions(self) -> int:
        return len(self.stream_microbatches)

    def text(self) -> str:
        """Each rank's ops as one line of tokens."""
        return "\n".join(f"r{r}: " + " ".join(map(str, ops)) for r, ops in enumerate(self.ranks))
