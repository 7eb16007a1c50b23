"""``torch.profiler`` memory timelines: ``profile(...).export_memory_timeline(path, device)``.

Learned from PyTorch ``torch/profiler/profiler.py`` (``profile.export_memory_timeline``: the
suffix picks the form) and ``torch/profiler/_memory_profiler.py``
(``MemoryProfileTimeline._coalesce_timeline``, ``export_memory_timeline``,
``export_memory_timeline_raw``). The profiler must run with ``profile_memory=True,
record_shapes=True, with_stack=True``.

- ``.json`` (or ``.json.gz``): ``[times, sizes]``. ``times[i]`` is in microseconds (the
  profiler's nanoseconds divided by 1000; pre-existing tensors get the earliest time);
  ``sizes[i]`` is the level of every category after the events at ``times[i]``: 9 numbers, a
  leading 0 (the exporter adds one to each category's index, so the HTML plot can stack from
  0) then the categories in ``_CATEGORY_TO_COLORS`` order — PARAMETER, OPTIMIZER_STATE, INPUT,
  TEMPORARY, ACTIVATION, GRADIENT, AUTOGRAD_DETAIL and unknown (a tensor with no category).
- ``.raw.json.gz`` (gzipped only): ``[[time_ns, action, bytes, category], ...]``, one per
  event, ``action`` the ``Action`` enum value (PREEXISTING 1, CREATE 2, INCREMENT_VERSION 3,
  DESTROY 4), ``bytes`` already signed (negative when memory goes), ``category`` the index in
  the same order without the leading 0; a pre-existing tensor has time -1.

The total is the sum of the categories: the bytes of the tensors the profiler saw, which is
what the program allocated rather than what the caching allocator reserved.
"""
from __future__ import annotations

import numpy as np

from pipesim.score.measured import Measured, RankMeasure, unrecognised

#: Category names in the exporter's column order (``_memory_profiler._CATEGORY_TO_COLORS``).
CATEGORIES = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient",
              "autograd_detail", "unknown")
_ACTIONS = (1, 2, 3, 4)         # Action.PREEXISTING, CREATE, INCREMENT_VERSION, DESTROY


def is_timeline(obj) -> bool:
    """The shape of ``export_memory_timeline``'s JSON: ``[list of times, list of rows]``."""
    return (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, list) for x in obj)
            and len(obj[0]) == len(obj[1]) and all(isinstance(r, list) for r in obj[1][:1]))


def is_raw(obj) -> bool:
    """The shape of ``export_memory_timeline_raw``'s JSON: a list of 4-number events."""
    return (isinstance(obj, list) and len(obj) > 0
            and all(isinstance(e, list) and len(e) == 4 for e in obj[:1])
            and not is_timeline(obj))


def parse_timeline(obj, source: str) -> Measured:
    """The ``Measured`` of a decoded ``[times, sizes]`` timeline."""
    times, rows = obj
    try:
        t_us = np.array(times, dtype=float)
        sizes = np.array(rows, dtype=np.int64)
    except (TypeError, ValueError):
        raise unrecognised(source, "a profiler memory timeline with non-numeric times or sizes") from None
    if len(t_us) == 0:
        raise unrecognised(source, "an empty profiler memory timeline (was profile_memory=True?)")
    if sizes.ndim != 2 or sizes.shape[1] != len(CATEGORIES) + 1 or sizes[:, 0].any():
        raise unrecognised(source, f"a [times, sizes] JSON whose rows are not a leading 0 and "
                                   f"{len(CATEGORIES)} category sizes ({', '.join(CATEGORIES)})")
    levels = sizes[:, 1:]
    return _measured(source, "profiler-timeline", t_us / 1e6, levels)


def parse_raw(obj, source: str) -> Measured:
    """The ``Measured`` of decoded raw events ``[[time_ns, action, bytes, category], ...]``."""
    try:
        ev = np.array(obj, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise unrecognised(source, "a raw profiler memory timeline with non-integer fields") from None
    if (ev.ndim != 2 or not np.isin(ev[:, 1], _ACTIONS).all()
            or ((ev[:, 3] < 0) | (ev[:, 3] >= len(CATEGORIES))).any()):
        raise unrecognised(source, "a list of 4-number events whose action is not 1-4 or whose "
                                   f"category is not 0-{len(CATEGORIES) - 1}")
    t = ev[:, 0].astype(float)
    known = t[t >= 0]
    t[t < 0] = known.min() if len(known) else 0.0     # pre-existing tensors: the earliest time
    order = np.argsort(t, kind="stable")
    t, ev = t[order], ev[order]
    deltas = np.zeros((len(ev), len(CATEGORIES)), dtype=np.int64)
    deltas[np.arange(len(ev)), ev[:, 3]] = ev[:, 2]
    levels = np.cumsum(deltas, axis=0)
    last = np.append(t[1:] != t[:-1], True)           # the level after the last event of a time
    return _measured(source, "profiler-raw", t[last] / 1e9, levels[last])


def _measured(source: str, fmt: str, times_s: np.ndarray, levels: np.ndarray) -> Measured:
    total = levels.sum(axis=1)
    cats = {name: levels[:, i] for i, name in enumerate(CATEGORIES)}
    rank = RankMeasure(peak_allocated=int(total.max()), peak_reserved=None, times_s=times_s,
                       bytes=total, categories=cats)
    return Measured(source, fmt, {0: rank}, "none",
                    ("profiler totals count the tensors the profiler saw; the allocator's reserve "
                     "is not in this format",))
