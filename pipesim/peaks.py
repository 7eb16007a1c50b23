"""Per-rank memory peaks from the ledger: each rank's running sum of its records and the first
record where it is highest.

The total allocated on a rank after record k is the sum of its records 0..k (static states
first, then every layer-level allocation and release in causal order, ``pipesim.memory``), so
its peak is the first maximum of that cumulative sum, and the peak's breakdown is the per
category sum of the same records. Fragmentation, ``ceil(f · allocated)``, grows with the
allocated bytes, so it peaks at the same record (``pipesim.results``).

A per-atom search that skips the ledger was measured against this (``benchmarks/speed.py``,
``peaks``): it saved about 6% of ``simulate`` on v3_pp16 and 9% at pp 64 x 1024, less than the
20% that would justify a second way of finding the same record.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipesim.memory import CATEGORIES


@dataclass(frozen=True)
class PeakRecord:
    """Where one rank peaks: allocated bytes there (before fragmentation), the record's time and
    atom, and the allocated bytes per category (``CATEGORIES`` order) at that record."""

    rank: int
    allocated: int
    time: float
    atom: int                 # -1: a static record
    by_category: np.ndarray   # int64, len(CATEGORIES)


def find_peaks(ledger, ranks: int) -> list[PeakRecord]:
    """The peak record of every rank of ``ledger`` (``pipesim.memory.Ledger``, rank-major)."""
    bounds = np.searchsorted(ledger.rank, np.arange(ranks + 1))
    out = []
    for r in range(ranks):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        level = np.cumsum(ledger.delta[lo:hi])
        i = int(np.argmax(level))
        cats = np.bincount(ledger.cat[lo:lo + i + 1].astype(np.int64), weights=ledger.delta[lo:lo + i + 1],
                           minlength=len(CATEGORIES)).round().astype(np.int64)
        out.append(PeakRecord(r, int(level[i]), float(ledger.time[lo + i]), int(ledger.atom[lo + i]), cats))
    return out
