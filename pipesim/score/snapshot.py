"""``torch.cuda.memory`` snapshots: the pickles of ``torch.cuda.memory._dump_snapshot(path)``.

The format (PyTorch ``torch/cuda/memory.py``, ``_snapshot``'s docstring, and the C++ that builds
it, ``torch/csrc/cuda/memory_snapshot.cpp``, ``_memory_snapshot_pickled``) is plain data::

    {"segments": [{"device", "address", "total_size", "allocated_size", "active_size",
                   "blocks": [{"size", "requested_size", "state", "frames", ...}], ...}],
     "device_traces": [[{"action", "addr", "size", "stream", "time_us", "frames", ...}, ...],
                       ...one list per device]}

``segments`` is the allocator's state when the snapshot was taken: one entry per ``cudaMalloc``
(reserved = the sum of ``total_size``), each split into blocks whose ``state`` is
``active_allocated``, ``active_pending_free`` (the docstring spells it ``active_awaiting_free``)
or ``inactive``. ``device_traces`` is the history recorded since
``torch.cuda.memory._record_memory_history()``: ``alloc`` / ``free_requested`` /
``free_completed`` of blocks, ``segment_alloc`` / ``segment_free`` (and ``segment_map`` /
``segment_unmap`` for expandable segments) of reserved memory, ``snapshot`` and ``oom`` markers.
``time_us`` exists from PyTorch 2.1 on; an older trace is read in event order.
``torch.cuda.memory.memory_snapshot()`` gives the segment list alone; that is accepted too.

The allocated timeline follows ``torch.cuda._memory_viz.trace``: ``alloc`` adds the block's
size, ``free_completed`` removes it (memory stays in use until the free completes). The trace
is a ring buffer (``max_entries``), so it may start after allocations that are still live: the
level at its start is what the segments hold at the end minus the trace's net change. Reserved
bytes are replayed the same way from the segment events.
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from pipesim.score.measured import Measured, RankMeasure, ScoreError, unrecognised

#: pickle's framing: PROTO opcode then protocol 2..5 (``pickle.dump``'s default is 4 or 5;
#: PyTorch's C++ ``write_pickle`` writes protocol 2).
MAGIC = tuple(bytes([0x80, p]) for p in range(2, 6))

_ACTIVE = ("active_allocated", "active_pending_free", "active_awaiting_free")
_ALLOC_DELTA = {"alloc": 1, "free_completed": -1}
_RESERVE_DELTA = {"segment_alloc": 1, "segment_map": 1, "segment_free": -1, "segment_unmap": -1}
# the only globals a snapshot can need: Python writes these two containers as ``builtins`` calls
# in protocols below 4 (everything else in a snapshot has its own opcode)
_ALLOWED_GLOBALS = {("builtins", "set"), ("builtins", "frozenset")}


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, numbers, booleans and None — nothing that runs code.

    A pickle can name any importable callable and have it called while loading; a snapshot is
    plain data, so every global but the builtin containers is refused before it is looked up.
    """

    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise ScoreError(f"{self.source}: the pickle refers to {module}.{name}; a torch memory snapshot "
                         f"is plain data (dicts, lists, numbers, strings), so it is not loaded")

    def persistent_load(self, pid):
        raise ScoreError(f"{self.source}: the pickle holds a persistent reference; a torch memory "
                         f"snapshot is plain data, so it is not loaded")


def load_plain(data: bytes, source: str):
    """Unpickle ``data`` allowing only plain data; ``ScoreError`` naming ``source`` otherwise."""
    try:
        return _PlainDataUnpickler(data, source).load()
    except ScoreError:
        raise
    except Exception as exc:       # a truncated or corrupt pickle: any of pickle's many errors
        raise unrecognised(source, f"a pickle that cannot be read ({type(exc).__name__}: {exc})") from None


def parse(data: bytes, source: str) -> Measured:
    """The ``Measured`` of a snapshot pickle's bytes."""
    snap = load_plain(data, source)
    if isinstance(snap, list):          # torch.cuda.memory_snapshot(): the segments alone
        snap = {"segments": snap, "device_traces": []}
    if not isinstance(snap, dict) or not isinstance(snap.get("segments"), list):
        raise unrecognised(source, "a pickle, but not a torch memory snapshot (no 'segments' list)")
    traces = snap.get("device_traces") or []
    if not isinstance(traces, list) or not all(isinstance(t, list) for t in traces):
        raise unrecognised(source, "a snapshot whose 'device_traces' is not a list per device")
    try:
        devices = sorted({int(s["device"]) for s in snap["segments"]}
                         | {d for d, t in enumerate(traces) if t})
        ranks = {d: _device(snap["segments"], traces[d] if d < len(traces) else [], d) for d in devices}
    except (KeyError, TypeError, ValueError) as exc:
        raise unrecognised(source, f"a snapshot with a malformed segment or trace entry ({exc!r})") from None
    if not ranks:
        raise ScoreError(f"{source}: the snapshot is empty (no segments and no trace); record it with "
                         f"torch.cuda.memory._record_memory_history() before the step")
    notes = []
    if not any(traces):
        notes.append("no allocation trace (record with torch.cuda.memory._record_memory_history()): "
                     "peak allocated is the allocation when the snapshot was taken, not a peak")
    elif any(e.get("time_us") is None for t in traces for e in t):
        notes.append("trace without time_us (PyTorch < 2.1): events are spaced evenly in order")
    if len(ranks) > 1:
        notes.append(f"{len(ranks)} devices in one snapshot: device index taken as the pipeline rank")
        return Measured(source, "snapshot", ranks, "content", tuple(notes))
    return Measured(source, "snapshot", {0: next(iter(ranks.values()))}, "none", tuple(notes))


def _device(segments: list, trace: list, device: int) -> RankMeasure:
    """One device's timeline, its peak allocated and its peak reserved."""
    mine = [s for s in segments if int(s["device"]) == device]
    live_end = sum(int(b["size"]) for s in mine for b in s["blocks"] if b["state"] in _ACTIVE)
    reserved_end = sum(int(s["total_size"]) for s in mine)
    alloc = np.array([_ALLOC_DELTA.get(e["action"], 0) * int(e.get("size", 0)) for e in trace], dtype=np.int64)
    reserve = np.array([_RESERVE_DELTA.get(e["action"], 0) * int(e.get("size", 0)) for e in trace],
                       dtype=np.int64)
    # the level before the first recorded event; 0 when the segments do not cover the trace
    # (a segment list filtered to one pool, or taken from another moment)
    start = max(live_end - int(alloc.sum()), 0)
    reserved_start = max(reserved_end - int(reserve.sum()), 0)
    levels = start + np.concatenate([[0], np.cumsum(alloc)])
    reserved = reserved_start + np.concatenate([[0], np.cumsum(reserve)])
    if trace and all(e.get("time_us") is not None for e in trace):
        t_us = np.array([float(e["time_us"]) for e in trace])
        times = np.concatenate([[t_us[0]], t_us]) / 1e6
    else:
        times = np.arange(len(trace) + 1, dtype=float)
    keep = np.concatenate([[True], alloc != 0])     # one point per change of the allocated bytes
    return RankMeasure(peak_allocated=int(levels.max()), peak_reserved=int(reserved.max()),
                       times_s=times[keep] if trace else None, bytes=levels[keep] if trace else None)
