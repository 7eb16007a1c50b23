"""What a real run measured, in one shape whatever file it came from.

Every reader in ``pipesim.score`` turns its format into a ``Measured``: per rank, the peak
allocated and reserved bytes where the file says them, and a timeline (seconds, bytes, and by
category where the format has categories) where the file has one. Scoring then works on this
one structure and never on a format's own fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: What ``pipesim score`` reads, in the words an error message uses to list them.
EXPECTED = ("a torch.cuda.memory snapshot pickle (torch.cuda.memory._dump_snapshot), "
            "a torch.profiler memory timeline (export_memory_timeline .json, .json.gz or .raw.json.gz), "
            "a Megatron-LM log with report_memory lines ('[Rank N] ... memory (MB) | allocated: ...'), "
            "or a CSV with header time_s,rank,bytes[,category]")


class ScoreError(ValueError):
    """A measured file that cannot be scored; the message names the file and what was expected."""


def unrecognised(source: str, what: str) -> ScoreError:
    """The error for a file that is none of the formats (or a broken one): one line."""
    return ScoreError(f"{source}: {what}; expected {EXPECTED}")


@dataclass(frozen=True)
class RankMeasure:
    """One device's measurement. Bytes are integers; ``None`` where the format does not say.

    ``times_s`` and ``bytes`` are a step function: ``bytes[i]`` is the allocated total from
    ``times_s[i]`` until the next time. ``categories`` (name -> bytes, aligned with ``times_s``)
    is there when the format splits the total by category. ``window_s`` is the measured step's
    ``(start, end)`` when the file says it for several ranks at once (a CSV: its first and last
    time over every rank); otherwise the timeline's own first and last time are the window.
    """

    peak_allocated: int | None
    peak_reserved: int | None = None
    times_s: np.ndarray | None = None
    bytes: np.ndarray | None = None
    categories: dict[str, np.ndarray] | None = None
    window_s: tuple[float, float] | None = None

    @property
    def has_timeline(self) -> bool:
        return self.times_s is not None and len(self.times_s) > 0


#: How the keys of ``Measured.ranks`` were found (see ``pipesim.score.scoring.assign_ranks``).
RANK_ORIGINS = ("content", "global", "none")


@dataclass(frozen=True)
class Measured:
    """A measured file: where it came from, its format and its ranks.

    ``rank_origin`` says what the keys of ``ranks`` mean: ``"content"`` pipeline ranks named by
    the file itself (a CSV's rank column, a snapshot's device index when it has several),
    ``"global"`` torch.distributed ranks (Megatron's ``[Rank N]``; mapped to pipeline ranks by
    the scenario's layout), ``"none"`` one measurement under key 0 whose rank comes from the
    file name or the file's position among the arguments. ``notes`` are caveats for the report.
    """

    source: str
    format: str
    ranks: dict[int, RankMeasure]
    rank_origin: str = "none"
    notes: tuple[str, ...] = field(default=())
