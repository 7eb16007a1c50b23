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

__all__ = ["FB", "Op", "Schedule", "ScheduleError", "build", "names", "parse_op"]

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
    if name not in _FAMILIES:
        raise ScheduleError(f"unknown schedule {name!r}; allowed: {', '.join(_FAMILIES)}", "name")
    for label, value in (("pp", pp), ("microbatches", microbatches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScheduleError(f"{label} must be an integer >= 1, got {value!r}", label)
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise ScheduleError(f"chunks must be an integer >= 1, got {chunks!r}", "chunks")
    return _build(name, pp, microbatches, chunks)


@lru_cache(maxsize=16)
def _build(name: str, pp: int, microbatches: int, chunks: int | None) -> Schedule:
    # Schedules are immutable and fully determined by these four values: validating a scenario
    # and then simulating it builds its schedule once.
    module, func = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), func)(pp, microbatches, chunks)
