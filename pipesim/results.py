"""``Result``: what one simulated step says about memory, built after the run with numpy.

Per rank, the ledger's records (already in causal order) are cumulated per category; the total
allocated is their sum and fragmentation adds ``fraction × allocated`` on top. The peak is the
first record at which the total is highest; its breakdown is the per-category level there, and
the op in flight is the atom whose span holds that record.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipesim.memory import CATEGORIES, GIB, STATIC


@dataclass(frozen=True)
class RankPeak:
    """The peak of one rank: bytes, when, during which op, and what it is made of."""

    rank: int
    bytes: int
    time: float
    op: str
    stages: tuple[int, ...]
    breakdown: dict[str, int]

    @property
    def static_bytes(self) -> int:
        return sum(self.breakdown[c] for c in STATIC)

    @property
    def dynamic_bytes(self) -> int:
        return self.bytes - self.static_bytes


class Result:
    """The outcome of ``pipesim.simulate(scenario)``."""

    def __init__(self, scenario, workload, spans, ledger):
        self.scenario = scenario
        self.workload = workload
        self.spans = spans
        self.ledger = ledger
        self.capacity_bytes = int(scenario.hardware.memory_gib * GIB)
        self.fragmentation = scenario.overheads.fragmentation
        self._bounds = np.searchsorted(ledger.rank, np.arange(workload.schedule.pp + 1))

    @property
    def ranks(self) -> int:
        return self.workload.schedule.pp

    @cached_property
    def makespan(self) -> float:
        """Seconds from the first op's start to the last op's end."""
        return float(self.spans.end.max()) if len(self.spans.end) else 0.0

    def records(self, rank: int) -> slice:
        """The rank's slice of the ledger (its records, in causal order)."""
        return slice(int(self._bounds[rank]), int(self._bounds[rank + 1]))

    def timeline(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(times, levels)``: levels[i, c] is category c's bytes after record i (incl.
        a last ``fragmentation`` column)."""
        rec = self.records(rank)
        cats = self.ledger.cat[rec].astype(np.int64)
        deltas = np.zeros((len(cats), len(CATEGORIES)), dtype=np.int64)
        deltas[np.arange(len(cats)), cats] = self.ledger.delta[rec]
        levels = np.cumsum(deltas, axis=0)
        frag = np.ceil(levels.sum(axis=1) * self.fragmentation).astype(np.int64)
        return self.ledger.time[rec], np.column_stack([levels, frag])

    def total(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(times, bytes)``: the rank's total (allocated + fragmentation) after each record."""
        rec = self.records(rank)
        alloc = np.cumsum(self.ledger.delta[rec])
        return self.ledger.time[rec], alloc + np.ceil(alloc * self.fragmentation).astype(np.int64)

    @cached_property
    def peaks(self) -> tuple[RankPeak, ...]:
        out = []
        sch = self.workload.schedule
        for r in range(self.ranks):
            lo = self.records(r).start
            _, tot = self.total(r)
            i = int(np.argmax(tot))
            cats = self.ledger.cat[lo:lo + i + 1]
            levels = np.bincount(cats, weights=self.ledger.delta[lo:lo + i + 1],
                                 minlength=len(CATEGORIES))
            breakdown = {c: int(round(v)) for c, v in zip(CATEGORIES, levels)}
            breakdown["fragmentation"] = int(tot[i] - sum(breakdown.values()))
            t = float(self.ledger.time[lo + i])
            out.append(RankPeak(r, int(tot[i]), t, self._op_at(r, lo + i),
                                tuple(sch.stage(r, c) for c in range(len(sch.placement[r]))), breakdown))
        return tuple(out)

    def _op_at(self, rank: int, rec: int) -> str:
        """The op the rank is running at ledger record ``rec`` ("idle" between ops)."""
        atom = int(self.ledger.atom[rec])
        t = self.ledger.time[rec]
        if atom < 0 or not (self.spans.start[atom] <= t <= self.spans.end[atom]) or self.spans.rank[atom] != rank:
            # a p2p record or a static one: find the atom of this rank spanning t
            sel = np.nonzero((self.spans.rank == rank) & (self.spans.start <= t) & (self.spans.end >= t))[0]
            if len(sel) == 0:
                return "idle"
            atom = int(sel[-1])
        op = self.workload.schedule.ranks[rank][int(self.spans.op_index[atom])]
        kind = ("F", "B", "B (input grad)", "W")[int(self.spans.kind[atom])]
        text = f"{kind} mb {int(self.spans.mb[atom])} stage {int(self.spans.stage[atom])}"
        if self.workload.schedule.num_directions > 1:
            text += f" dir {int(self.spans.direction[atom])}"
        return text + (f" in {op}" if op.kind == "FB" else "")

    @cached_property
    def peak_rank(self) -> int:
        return max(self.peaks, key=lambda p: p.bytes).rank

    def busy(self, rank: int) -> float:
        sel = self.spans.rank == rank
        return float((self.spans.end[sel] - self.spans.start[sel]).sum())

    def bubble_fraction(self, rank: int) -> float:
        """Idle share of the step on this rank: 1 - busy / makespan."""
        return 1.0 - self.busy(rank) / self.makespan if self.makespan > 0 else 0.0

    def fits(self, rank: int) -> bool:
        return self.peaks[rank].bytes <= self.capacity_bytes

    def summary(self) -> dict:
        """JSON-able summary (the content of ``summary.json``); deterministic for one scenario."""
        sc = self.scenario
        ranks = []
        for p in self.peaks:
            ranks.append({
                "rank": p.rank,
                "stages": list(p.stages),
                "peak_bytes": p.bytes,
                "peak_gib": round(p.bytes / GIB, 4),
                "peak_time_ms": round(p.time * 1e3, 6),
                "op_at_peak": p.op,
                "static_bytes": p.static_bytes,
                "dynamic_bytes": p.dynamic_bytes,
                "breakdown_bytes": p.breakdown,
                "fits": p.bytes <= self.capacity_bytes,
                "headroom_bytes": self.capacity_bytes - p.bytes,
                "bubble_fraction": round(self.bubble_fraction(p.rank), 6),
            })
        worst = self.peaks[self.peak_rank]
        return {
            "scenario": sc.name,
            "schedule": {"name": sc.schedule.name, "pp": self.ranks, "microbatches": sc.microbatches,
                         "chunks": len(self.workload.schedule.placement[0]),
                         "stages": self.workload.schedule.num_stages},
            "layers_per_stage": list(sc.layers_per_stage),
            "capacity_bytes": self.capacity_bytes,
            "makespan_ms": round(self.makespan * 1e3, 6),
            "peak_rank": self.peak_rank,
            "peak_bytes": worst.bytes,
            "fits": all(self.fits(r) for r in range(self.ranks)),
            "ranks": ranks,
        }
