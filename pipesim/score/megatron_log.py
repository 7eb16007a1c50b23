"""Megatron-LM training logs: the lines of ``report_memory`` (``megatron/training/utils.py``).

``report_memory(name)`` prints, on every rank whose data-parallel rank is 0 (so each
tensor- and pipeline-parallel rank reports once)::

    [Rank 3] (after 10 iterations) memory (MB) | allocated: 1234.5 | max allocated: 2345.6 | reserved: 3000.0 | max reserved: 3100.0

with ``N = torch.distributed.get_rank()`` (the global rank), each number a
``torch.cuda.*memory_*()`` byte count divided by ``1024.0 * 1024.0`` (so MB here is 2**20
bytes), printed with Python's default float formatting. ``training_log`` calls it once, after
the first logging interval (the optimizer state then exists), as ``(after N iterations)``.
Newer versions append ``| device usage: X``; forks may omit fields or prefix the line with a
logger's header, and two ranks' lines can run together when their output interleaves — so
every ``memory (MB)`` report on a line is read, and its fields by name.

``max allocated`` / ``max reserved`` are the peaks since the process started (or since the
last ``reset_peak_memory_stats``): the measured peaks, over every step so far. There is no
timeline in this format. When a rank reports several times, its largest peak is kept.
"""
from __future__ import annotations

import re

from pipesim.score.measured import Measured, RankMeasure, unrecognised

MIB = 2 ** 20   # report_memory's "MB": mega_bytes = 1024.0 * 1024.0

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
#: one report: an optional ``[Rank N]``, the report's name, ``memory (MB)``, then ``| key: value``s
REPORT = re.compile(r"(?:\[Rank (?P<rank>\d+)\]\s*)?(?P<name>[^\[\]|\n]*?)\s*memory \(MB\)"
                    rf"(?P<fields>(?:\s*\|\s*[a-z][a-z ]*?:\s*{_NUMBER})+)")
_FIELD = re.compile(rf"\|\s*(?P<key>[a-z][a-z ]*?):\s*(?P<value>{_NUMBER})")


def reports(text: str) -> list[tuple[int | None, str, dict[str, float]]]:
    """Every ``report_memory`` report in ``text`` with a ``max allocated`` field:
    ``(rank or None, name, {field: MB})``."""
    out = []
    for m in REPORT.finditer(text):
        fields = {f["key"].strip(): float(f["value"]) for f in _FIELD.finditer(m["fields"])}
        if "max allocated" in fields:
            out.append((int(m["rank"]) if m["rank"] is not None else None, m["name"].strip(), fields))
    return out


def looks_like(text: str) -> bool:
    return bool(reports(text))


def parse(text: str, source: str) -> Measured:
    """The ``Measured`` of a log's text: one rank per ``[Rank N]`` (global ranks), or one
    unnamed rank when the lines carry no prefix."""
    found = reports(text)
    if not found:
        raise unrecognised(source, "a text file without Megatron report_memory lines")
    named = [r for r in found if r[0] is not None]
    notes = []
    if named and len(named) < len(found):
        notes.append(f"{len(found) - len(named)} report(s) without a [Rank N] prefix ignored")
    use = named or [(0, name, fields) for _, name, fields in found]
    peaks: dict[int, tuple[int, int | None]] = {}
    for rank, _, fields in use:
        alloc = round(fields["max allocated"] * MIB)
        reserved = round(fields["max reserved"] * MIB) if "max reserved" in fields else None
        old_alloc, old_res = peaks.get(rank, (0, None))
        both = [v for v in (old_res, reserved) if v is not None]
        peaks[rank] = (max(old_alloc, alloc), max(both) if both else None)
    ranks = {r: RankMeasure(peak_allocated=a, peak_reserved=res) for r, (a, res) in sorted(peaks.items())}
    notes.append("Megatron's max allocated / max reserved are peaks since the run began, over "
                 "every step up to the report; no timeline")
    return Measured(source, "megatron-log", ranks, "global" if named else "none", tuple(notes))
