"""``Result``: what one simulated step says about memory, built after the run with numpy.

The total allocated on a rank is the running sum of its ledger records; fragmentation adds
``fraction × allocated`` on top (a strictly increasing function, so it peaks where the
allocated bytes do). The peak is the first record at which the total is highest, its breakdown
the per-category level there, the op in flight the atom whose span holds it (``pipesim.peaks``,
over the ledger: one record per layer-level allocation or release).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipesim.memory import CATEGORIES, GIB, STATIC, build_ledger
from pipesim.peaks import find_peaks
from pipesim.simulator import exposed_comm


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

    def __init__(self, scenario, workload, spans, p2p):
        self.scenario = scenario
        self.workload = workload
        self.spans = spans
        self.p2p = p2p
        # what the peak is compared against: the device less what the framework cannot use
        self.device_bytes = int(scenario.hardware.memory_gib * GIB)
        self.reserve_bytes = int(scenario.hardware.reserve_gib * GIB)
        self.capacity_bytes = self.device_bytes - self.reserve_bytes
        self.tight_fraction = scenario.overheads.tight_fraction
        self.fragmentation = scenario.overheads.fragmentation

    @cached_property
    def ledger(self):
        """Every allocation and release, per layer (``pipesim.memory.Ledger``); built on demand."""
        wl = self.workload
        return build_ledger(self.spans, wl.templates, wl.static, self.p2p)

    @cached_property
    def _bounds(self) -> np.ndarray:
        return np.searchsorted(self.ledger.rank, np.arange(self.ranks + 1))

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
        frag = self.fragmentation_bytes(levels.sum(axis=1))
        return self.ledger.time[rec], np.column_stack([levels, frag])

    def total(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(times, bytes)``: the rank's total (allocated + fragmentation) after each record."""
        rec = self.records(rank)
        alloc = np.cumsum(self.ledger.delta[rec])
        return self.ledger.time[rec], alloc + self.fragmentation_bytes(alloc)

    def fragmentation_bytes(self, allocated):
        """What fragmentation adds on top of ``allocated`` bytes: ``ceil(fraction × allocated)``."""
        return np.ceil(np.asarray(allocated) * self.fragmentation).astype(np.int64)

    @cached_property
    def peaks(self) -> tuple[RankPeak, ...]:
        sch = self.workload.schedule
        out = []
        for p in find_peaks(self.ledger, self.ranks):
            breakdown = {c: int(v) for c, v in zip(CATEGORIES, p.by_category.tolist())}
            frag = int(self.fragmentation_bytes(p.allocated))
            breakdown["fragmentation"] = frag
            out.append(RankPeak(p.rank, p.allocated + frag, p.time, self._op_at(p.rank, p.atom, p.time),
                                tuple(sch.stage(p.rank, c) for c in range(len(sch.placement[p.rank]))),
                                breakdown))
        return tuple(out)

    def _op_at(self, rank: int, atom: int, t: float) -> str:
        """The op the rank is running at time t, preferring ``atom`` ("idle" between ops)."""
        sp = self.spans
        if atom < 0 or not (sp.start[atom] <= t <= sp.end[atom]) or sp.rank[atom] != rank:
            # a p2p record or a static one: find the atom of this rank spanning t
            sel = np.nonzero((sp.rank == rank) & (sp.start <= t) & (sp.end >= t))[0]
            if len(sel) == 0:
                return "idle"
            atom = int(sel[-1])
        op = self.workload.schedule.ranks[rank][int(sp.op_index[atom])]
        kind = ("F", "B", "B (input grad)", "W")[int(sp.kind[atom])]
        text = f"{kind} mb {int(sp.mb[atom])} stage {int(sp.stage[atom])}"
        if self.workload.schedule.num_directions > 1:
            text += f" dir {int(sp.direction[atom])}"
        return text + (f" in {op}" if op.kind == "FB" else "")

    @cached_property
    def peak_rank(self) -> int:
        return max(self.peaks, key=lambda p: p.bytes).rank

    @cached_property
    def exposed_comm(self) -> np.ndarray:
        """Seconds per rank its compute stream waits on its own all-to-all and TP collectives
        (``pipesim.simulator.exposed_comm``): part of ``busy``, the time overlap could win back."""
        return exposed_comm(self.spans, self.ranks)

    def busy(self, rank: int) -> float:
        sel = self.spans.rank == rank
        return float((self.spans.end[sel] - self.spans.start[sel]).sum())

    def bubble_fraction(self, rank: int) -> float:
        """Idle share of the step on this rank: 1 - busy / makespan."""
        return 1.0 - self.busy(rank) / self.makespan if self.makespan > 0 else 0.0

    @cached_property
    def imbalance(self) -> dict | None:
        """The stage-imbalance warning (``pipesim.balance``): the busiest rank against the mean,
        the balancing ``layers_per_stage`` and the measured step with it; None when balanced."""
        from pipesim.balance import imbalance
        return imbalance(self)

    def live_at_peak(self, rank: int) -> list[dict]:
        """The micro-batches whose activations are resident at the rank's peak (``pipesim.live``)."""
        from pipesim.live import live_set
        cache = self.__dict__.setdefault("_live", {})   # the table, summary and plots all ask
        if rank not in cache:
            cache[rank] = live_set(self, rank, self.peaks[rank].time)
        return cache[rank]

    def activations_by_module(self, rank: int) -> dict[str, int]:
        """The resident activations at the rank's peak by model module (``pipesim.live``)."""
        from pipesim.live import by_module
        return by_module(self, self.live_at_peak(rank))

    def fits(self, rank: int) -> bool:
        return self.peaks[rank].bytes <= self.capacity_bytes

    def verdict(self, rank: int | None = None) -> str:
        """OK, TIGHT or OOM for one rank (or, with ``rank=None``, the worst over the step).

        OOM: the peak exceeds the usable capacity. TIGHT: it fits with less headroom than
        ``tight_fraction`` of the usable capacity (``[overheads] tight_fraction``, default 0.1):
        what the model leaves out or takes at its low end — allocator fragmentation (5-30% of
        allocated memory in the paper, section 6), communication buffers beyond the configured
        ones, routing imbalance above ``imbalance`` — can use that much.
        """
        if rank is None:
            order = {"OK": 0, "TIGHT": 1, "OOM": 2}
            return max((self.verdict(r) for r in range(self.ranks)), key=order.__getitem__)
        headroom = self.capacity_bytes - self.peaks[rank].bytes
        if headroom < 0:
            return "OOM"
        return "TIGHT" if headroom < self.tight_fraction * self.capacity_bytes else "OK"

    def table(self) -> list[dict]:
        """One flat dict per rank, scalar values only, so ``pandas.DataFrame(res.table())`` (or a
        CSV writer) takes it as it is: the peak (bytes, GiB, time, op), verdict and headroom, each
        category's bytes at the peak (``<category>_bytes``), the micro-batches resident there
        (awaiting F or B, and awaiting W) and the rank's busy time and bubble."""
        rows = []
        for p in self.peaks:
            live = self.live_at_peak(p.rank)
            waiting_w = sum(e["waits_for"] == "W" for e in live)
            row = {"rank": p.rank, "stages": ",".join(map(str, p.stages)), "peak_bytes": p.bytes,
                   "peak_gib": p.bytes / GIB, "peak_time_ms": p.time * 1e3, "op_at_peak": p.op,
                   "verdict": self.verdict(p.rank), "headroom_bytes": self.capacity_bytes - p.bytes}
            row.update({f"{c}_bytes": n for c, n in p.breakdown.items()})
            row.update({"resident": len(live) - waiting_w, "resident_awaiting_w": waiting_w,
                        "busy_ms": self.busy(p.rank) * 1e3, "bubble_fraction": self.bubble_fraction(p.rank),
                        "exposed_comm_ms": float(self.exposed_comm[p.rank]) * 1e3})
            rows.append(row)
        return rows

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
                "verdict": self.verdict(p.rank),
                "live_at_peak": self.live_at_peak(p.rank),
                "activations_by_module_at_peak": self.activations_by_module(p.rank),
                "headroom_bytes": self.capacity_bytes - p.bytes,
                "bubble_fraction": round(self.bubble_fraction(p.rank), 6),
                "exposed_comm_ms": round(float(self.exposed_comm[p.rank]) * 1e3, 6),
            })
        worst = self.peaks[self.peak_rank]
        return {
            "scenario": sc.name,
            "schedule": {"name": sc.schedule.name, "pp": self.ranks, "microbatches": sc.microbatches,
                         "chunks": len(self.workload.schedule.placement[0]),
                         "stages": self.workload.schedule.num_stages},
            "layers_per_stage": list(sc.layers_per_stage),
            "capacity_bytes": self.capacity_bytes,
            "device_bytes": self.device_bytes,
            "reserve_bytes": self.reserve_bytes,
            "makespan_ms": round(self.makespan * 1e3, 6),
            "peak_rank": self.peak_rank,
            "peak_bytes": worst.bytes,
            "fits": all(self.fits(r) for r in range(self.ranks)),
            "verdict": self.verdict(),
            "tight_fraction": self.tight_fraction,
            "imbalance": self.imbalance,
            "ranks": ranks,
        }
