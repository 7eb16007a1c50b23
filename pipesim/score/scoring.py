"""Prediction against measurement, per pipeline rank.

Which rank a file measures (``assign_ranks``), first rule that applies:

1. the file names its ranks: a CSV's ``rank`` column, a snapshot holding several devices (the
   device index), Megatron's ``[Rank N]`` — a *global* rank, mapped to the pipeline rank
   ``N // (tp·cp·dp)`` as Megatron's default rank order ``tp-cp-ep-dp-pp`` lays ranks out
   (pipeline outermost); the tensor-parallel peers of one stage merge into their largest peak;
2. the file name holds ``rankN`` (``rank3.pickle``, ``snapshot_rank_3``, ``log-rank-3.txt``);
3. the file's position among the measured arguments (the first is rank 0).

Two files measuring one rank, or a rank the scenario does not have, is a ``ScoreError``.

What is compared (``Result.peaks[r]``: ``bytes`` is allocated + fragmentation):

- measured peak allocated  vs  predicted peak allocated (``bytes − breakdown["fragmentation"]``);
- measured peak reserved   vs  predicted peak total incl. fragmentation (``bytes``): pipesim's
  fragmentation is the allocator's reserve on top of what is allocated;
- error = (predicted − measured) / measured · 100;
- peak rank: the argmax of each side over the ranks measured (only said with two or more);
- curve error, where a timeline was measured: both allocated curves as step functions over a
  normalised time axis, 0 at the start and 1 at the end of the simulated step and of the
  measured window (their absolute times differ; the window is a file's first to last event, the
  same for every rank of a CSV), sampled at ``SAMPLES`` points;
  mean |predicted − measured| / measured peak · 100.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipesim.score.measured import Measured, RankMeasure, ScoreError

SAMPLES = 1000
_RANK_IN_NAME = re.compile(r"(?<![a-z])rank[_-]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Assigned:
    """A rank's measurement, the file it came from and how its rank was decided."""

    rank: int
    measure: RankMeasure
    source: str
    format: str
    how: str


@dataclass(frozen=True)
class RankScore:
    rank: int
    source: str
    predicted_allocated: int
    measured_allocated: int | None
    error_pct: float | None
    predicted_total: int            # incl. fragmentation: compared with reserved
    measured_reserved: int | None
    reserved_error_pct: float | None
    curve_error_pct: float | None


@dataclass(frozen=True)
class Score:
    result: object                  # the pipesim.Result
    assigned: dict[int, Assigned]
    ranks: tuple[RankScore, ...]
    predicted_peak_rank: int | None
    measured_peak_rank: int | None
    notes: tuple[str, ...]

    @property
    def peak_rank_agrees(self) -> bool | None:
        if self.measured_peak_rank is None:
            return None
        return self.predicted_peak_rank == self.measured_peak_rank

    def worst_error_pct(self) -> float | None:
        errs = [abs(r.error_pct) for r in self.ranks if r.error_pct is not None]
        return max(errs) if errs else None


def rank_in_name(source: str) -> int | None:
    """N of the last ``rankN`` in the file's name (not its folders), or ``None``."""
    found = _RANK_IN_NAME.findall(Path(source).name)
    return int(found[-1]) if found else None


def assign_ranks(measured: list[Measured], scenario) -> dict[int, Assigned]:
    """Pipeline rank -> its measurement, by the rules in this module's docstring."""
    par = scenario.parallel
    out: dict[int, Assigned] = {}
    for position, m in enumerate(measured):
        if m.rank_origin == "global":
            per_stage = par.tp * par.cp * par.dp
            picks = {}
            for g, rm in m.ranks.items():
                r = g // per_stage
                picks.setdefault(r, []).append((g, rm))
            found = {r: (_merge([rm for _, rm in gs]),
                         f"[Rank {', '.join(str(g) for g, _ in gs)}] // (tp·cp·dp = {per_stage})")
                     for r, gs in picks.items()}
        elif m.rank_origin == "content":
            found = {r: (rm, "in the file") for r, rm in m.ranks.items()}
        else:
            named = rank_in_name(m.source)
            rm = m.ranks[0]
            found = ({named: (rm, "file name")} if named is not None
                     else {position: (rm, f"argument position {position}")})
        for r, (rm, how) in found.items():
            if not 0 <= r < par.pp:
                raise ScoreError(f"{m.source}: measures rank {r} ({how}), but the scenario has ranks "
                                 f"0..{par.pp - 1}; name the file rankN or pass the files in rank order")
            if r in out:
                raise ScoreError(f"{m.source}: measures rank {r} ({how}), already measured by "
                                 f"{out[r].source} ({out[r].how}); give each rank one file")
            out[r] = Assigned(r, rm, m.source, m.format, how)
    return dict(sorted(out.items()))


def _merge(measures: list[RankMeasure]) -> RankMeasure:
    """Peak-only measures of one stage's peers: the largest of each peak."""
    def top(vals):
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None
    return RankMeasure(top(m.peak_allocated for m in measures), top(m.peak_reserved for m in measures))


def predicted_curve(result, rank: int, categories: tuple[str, ...] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(u, allocated)``: the rank's allocated bytes (no fragmentation; or only ``categories``)
    after each ledger record, ``u`` the record's time as a fraction of the step."""
    from pipesim.memory import CAT

    times, levels = result.timeline(rank)
    if categories:
        allocated = levels[:, [CAT[c] for c in categories]].sum(axis=1)
    else:
        allocated = levels[:, :-1].sum(axis=1)      # the last column is fragmentation
    span = result.makespan
    return (times / span if span > 0 else np.zeros_like(times)), allocated


def measured_curve(rm: RankMeasure) -> tuple[np.ndarray, np.ndarray] | None:
    """``(u, bytes)`` of a measured timeline over its window (``RankMeasure.window_s``, or its own
    first and last time), or ``None`` without one."""
    if not rm.has_timeline:
        return None
    t = rm.times_s
    start, end = rm.window_s or (t[0], t[-1])
    if end <= start:
        return None
    return (t - start) / (end - start), rm.bytes


def sample(u: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A step function (``values[i]`` from ``u[i]`` on; 0 before the first) at ``grid``."""
    idx = np.searchsorted(u, grid, side="right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], 0)


def _error(pred: int, meas: int | None) -> float | None:
    return None if not meas else (pred - meas) / meas * 100.0


def score(result, measured: list[Measured], categories: tuple[str, ...] | None = None) -> Score:
    """Score ``result`` (a ``pipesim.Result``) against the measured files.

    ``categories`` (e.g. ``("activations", "logits")``) compares only those categories of the
    prediction — their peak and their curve — with the measurement, for a run that recorded
    one kind of memory (saved activations, say) rather than the allocator's total."""
    from pipesim.memory import CAT

    for c in categories or ():
        if c not in CAT:
            raise ScoreError(f"--category: {c!r} is not a memory category; allowed: {', '.join(CAT)}")
    assigned = assign_ranks(measured, result.scenario)
    if not assigned:
        raise ScoreError("no measured rank to score: give at least one file")
    grid = np.linspace(0.0, 1.0, SAMPLES)
    rows = []
    for r, a in assigned.items():
        peak = result.peaks[r]
        pred_alloc = peak.bytes - peak.breakdown.get("fragmentation", 0)
        if categories:
            pred_alloc = int(predicted_curve(result, r, categories)[1].max(initial=0))
        m = a.measure
        curve = None
        mc = measured_curve(m)
        if mc is not None and m.peak_allocated:
            pu, pv = predicted_curve(result, r, categories)
            diff = np.abs(sample(pu, pv, grid) - sample(*mc, grid))
            curve = float(diff.mean()) / m.peak_allocated * 100.0
        rows.append(RankScore(r, a.source, pred_alloc, m.peak_allocated, _error(pred_alloc, m.peak_allocated),
                              peak.bytes, m.peak_reserved, _error(peak.bytes, m.peak_reserved), curve))
    with_meas = [row for row in rows if row.measured_allocated is not None]
    pred_peak = meas_peak = None
    if len(with_meas) >= 2:
        pred_peak = max(with_meas, key=lambda row: row.predicted_allocated).rank
        meas_peak = max(with_meas, key=lambda row: row.measured_allocated).rank
    notes = tuple(dict.fromkeys(f"{m.source}: {n}" for m in measured for n in m.notes))
    return Score(result, assigned, tuple(rows), pred_peak, meas_peak, notes)
