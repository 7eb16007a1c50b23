"""Pipeline schedules as pure op lists: which op each pipeline rank runs, in which order.

    import schedules
    s = schedules.build("1f1b", pp=4, microbatches=8)
    s.ranks[0]          # ops of rank 0 in execution order

Pure Python, no SimPy: the simulator consumes these lists, people read them
(``python -m pipesim schedule 1f1b --pp 4 --microbatches 8``).
"""
from __future__ import annotations

import importlib
from functools import lru_cache

from schedules.ops import FB, Op, Schedule, ScheduleError, parse_op

__all__ = ["FB", "MAX_ATOMS", "Op", "Schedule", "ScheduleError", "build", "check_size", "names",
           "parse_op", "size"]

#: The most atoms (F, B and W ops; an FB counts two) a schedule may have, estimated from above
#: by ``size`` before it is built: about 5 s of simulation and a few GB of memory on one core.
MAX_ATOMS = 5_000_000

# Stages per rank of each family when ``chunks`` is None (DualPipe's two chunks are two
# directions over the same pp stages, so its stage count is pp).
_STAGES_PER_RANK = {"interleaved": None, "zb-v": 2, "dualpipev": 2}

# One look-up for every family: CLI name -> "module:function". Each builder takes
# (pp, microbatches, chunks) and returns a Schedule or raises ScheduleError.
_FAMILIES = {
    "gpipe": "schedules.gpipe:build",
    "1f1b": "schedules.one_f_one_b:build",
    "interleaved": "schedules.interleaved:build",
    "zb-h1": "schedules.zero_bubble:build_zb_h1",
    "zb-v": "schedules.zero_bubble:build_zb_v",
    "dualpipe": "schedules.dualpipe:build_dualpipe",
    "dualpipev": "schedules.dualpipe:build_dualpipev",
}


def names() -> tuple[str, ...]:
    """The schedule names ``build`` accepts."""
    return tuple(_FAMILIES)


def build(name: str, pp: int, microbatches: int, chunks: int | None = None) -> Schedule:
    """Build schedule ``name`` for ``pp`` ranks and ``microbatches`` micro-batches.

    ``chunks`` is the number of chunks (virtual stages) per rank where the family has a choice
    (interleaved); ``None`` takes the family's default. Raises ``ScheduleError`` on bad input.
    """
    check_size(name, pp, microbatches, chunks)
    return _build(name, pp, microbatches, chunks)


def _check_args(name: str, pp: int, microbatches: int, chunks: int | None) -> None:
    if name not in _FAMILIES:
        raise ScheduleError(f"unknown schedule {name!r}; allowed: {', '.join(_FAMILIES)}", "name")
    for label, value in (("pp", pp), ("microbatches", microbatches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScheduleError(f"{label} must be an integer >= 1, got {value!r}", label)
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise ScheduleError(f"chunks must be an integer >= 1, got {chunks!r}", "chunks")


def size(name: str, pp: int, microbatches: int, chunks: int | None = None) -> tuple[int, int]:
    """``(stages, atoms)`` of schedule ``name`` without building it: its exact stage count when the
    arguments are valid, and an upper bound of its atoms, ``stages * microbatches * 3`` (every
    micro-batch passes every stage once, as an F, a B and at most one W). For DualPipe,
    ``microbatches`` is the total over both directions, each passing the pp stages once.
    Raises ``ScheduleError`` for an unknown name or arguments that are not integers >= 1."""
    _check_args(name, pp, microbatches, chunks)
    if name == "interleaved":
        from schedules.interleaved import DEFAULT_CHUNKS
        per_rank = DEFAULT_CHUNKS if chunks is None else chunks
    else:
        per_rank = _STAGES_PER_RANK.get(name, 1)
    stages = pp * per_rank
    return stages, stages * microbatches * 3


def check_size(name: str, pp: int, microbatches: int, chunks: int | None = None) -> None:
    """``ScheduleError`` (blaming the largest of pp, microbatches and chunks) if schedule ``name``
    would have more than ``MAX_ATOMS`` atoms, before any op is built."""
    stages, atoms = size(name, pp, microbatches, chunks)
    if atoms <= MAX_ATOMS:
        return
    factors = {"pp": pp, "microbatches": microbatches, **({} if chunks is None else {"chunks": chunks})}
    blame = max(factors, key=factors.get)
    raise ScheduleError(f"{name} with pp={pp}, {microbatches} micro-batches and {stages} stages is up to "
                        f"{atoms:,} ops (stages x micro-batches x 3), more than the {MAX_ATOMS:,} pipesim "
                        f"simulates (schedules.MAX_ATOMS); reduce pp, microbatches or chunks", blame)


@lru_cache(maxsize=16)
def _build(name: str, pp: int, microbatches: int, chunks: int | None) -> Schedule:
    # Schedules are immutable and fully determined by these four values: validating a scenario
    # and then simulating it builds its schedule once.
    module, func = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), func)(pp, microbatches, chunks)
