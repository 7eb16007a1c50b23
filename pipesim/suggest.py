"""What to change when a scenario does not fit, or barely does: one-knob and two-knob changes,
each simulated (never estimated), ranked by whether they fit, the step time they cost and the
headroom they gain.

The knobs, one step each from the scenario as it is:

- ``training.recompute``: every other policy (none / selective / full);
- ``training.micro_batch_size``: halved, ``training.microbatches`` doubled so that the global
  batch (micro-batch size × micro-batches × dp) stays the same;
- ``schedule.name``: every other family (layers split automatically when the stage count changes,
  as ``pipesim compare`` does);
- ``training.zero``: each higher ZeRO level (none < os < os+g < os+g+params);
- ``placement.layers_per_stage``: one layer moved from the peak rank's largest stage to the
  neighbouring stage whose rank has the lower peak;
- ``parallel.pp``: doubled with ``parallel.dp`` halved (the same devices) and the micro-batches
  doubled (the same global batch), layers split automatically.

Two-knob changes are the pairs of one-knob changes on different knobs. Each change is a dict of
overrides; applied to the scenario file with ``load_scenario(path, {**sets, **change})`` it gives
exactly the peak and step reported (``pipesim.grid.evaluate`` runs it).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import schedules
from pipesim import grid
from pipesim.model.config import RECOMPUTE, ZERO

VERDICT_ORDER = {"OK": 0, "TIGHT": 1, "OOM": 2}


@dataclass(frozen=True)
class Suggestion:
    """One simulated change: its overrides, the knobs it turns, and what it gives."""

    change: dict            # overrides on top of the scenario (and its --set ones)
    knobs: tuple[str, ...]
    verdict: str
    peak_bytes: int
    headroom_bytes: int
    step_ms: float
    headroom_gain_bytes: int    # headroom with the change minus headroom without it
    step_change_ms: float       # step time with the change minus without it (positive: slower)

    def text(self) -> str:
        from pipesim.sweep import value_text

        return "; ".join(f"{k} = {value_text(v)}" for k, v in self.change.items())


def single_changes(sc, result) -> list[tuple[str, dict]]:
    """``(knob, overrides)`` for every one-knob step from scenario ``sc`` (simulated as ``result``)."""
    t, p = sc.training, sc.parallel
    out = [("recompute", {"training.recompute": r}) for r in RECOMPUTE if r != (t.recompute or "none")]
    if t.micro_batch_size > 1 and t.micro_batch_size % 2 == 0:
        out.append(("micro_batch_size", {"training.micro_batch_size": t.micro_batch_size // 2,
                                         "training.microbatches": sc.microbatches * 2}))
    for name in schedules.names():
        if name != sc.schedule.name:
            out.append(("schedule", {"schedule.name": name, "schedule.chunks": None}))
    level = ZERO.index(t.zero) if t.zero in ZERO else len(ZERO)
    out += [("zero", {"training.zero": z}) for z in ZERO[level + 1:]]
    moved = _move_layer(sc, result)
    if moved is not None:
        out.append(("layers_per_stage", {"placement.layers_per_stage": moved}))
    if p.dp % 2 == 0:
        out.append(("pp", {"parallel.pp": p.pp * 2, "parallel.dp": p.dp // 2,
                           "training.microbatches": sc.microbatches * 2}))
    return out


def _move_layer(sc, result) -> list[int] | None:
    """The split with one layer moved off the peak rank's largest stage, to the neighbouring
    stage (on another rank) whose rank peaks lower; None when no such move exists."""
    counts = list(sc.layers_per_stage)
    sched = result.workload.schedule
    owner = {}
    for r in range(result.ranks):
        for s in result.peaks[r].stages:
            owner[s] = r
    peak = result.peak_rank
    mine = [s for s in result.peaks[peak].stages if counts[s] > 1]
    if not mine or sched.num_stages != len(counts):
        return None
    s = max(mine, key=lambda i: (counts[i], -i))
    nbrs = [n for n in (s - 1, s + 1) if 0 <= n < len(counts) and owner.get(n, peak) != peak]
    if not nbrs:
        return None
    n = min(nbrs, key=lambda i: (result.peaks[owner[i]].bytes, i))
    counts[s] -= 1
    counts[n] += 1
    return counts


def suggest(path, sets: dict | None = None, result=None, two_knob: bool = True) -> list[Suggestion]:
    """Every one-knob (and two-knob) change that gains headroom, simulated, best first: changes
    that reach a better verdict first, then the smaller step-time cost, then the larger headroom."""
    from pipesim.api import simulate
    from pipesim.scenario import load_scenario

    sets = dict(sets or {})
    sc = load_scenario(path, sets)
    res = result if result is not None else simulate(sc)
    base_head = res.capacity_bytes - res.peaks[res.peak_rank].bytes
    singles = single_changes(sc, res)
    changes = [((k,), ov) for k, ov in singles]
    if two_knob:
        for (k1, a), (k2, b) in itertools.combinations(singles, 2):
            if k1 != k2 and not set(a) & set(b):     # micro-batch size and pp both set microbatches
                changes.append(((k1, k2), {**a, **b}))
    rows = grid.run(path, [ov for _, ov in changes], base=sets, workers=1)
    out = []
    for (knobs, ov), row in zip(changes, rows):
        if row["status"] != "ok" or row["headroom_bytes"] <= base_head:
            continue
        change = {k: v for k, v in ov.items() if v is not None or k != "schedule.chunks"}
        if row["auto_split"]:
            change["placement.layers_per_stage"] = "auto"
        out.append(Suggestion(change, knobs, row["verdict"], row["max_peak_bytes"], row["headroom_bytes"],
                              row["step_ms"], row["headroom_bytes"] - base_head,
                              row["step_ms"] - res.makespan * 1e3))
    out.sort(key=lambda s: (VERDICT_ORDER[s.verdict], len(s.knobs), s.step_change_ms, -s.headroom_gain_bytes))
    return out


def table(result, found: list[Suggestion], limit: int = 10) -> str:
    """The suggestions as text, best first (``limit`` of them)."""
    from pipesim.memory import GIB
    from pipesim.report import aligned

    res = result
    now = res.verdict()
    head_now = (res.capacity_bytes - res.peaks[res.peak_rank].bytes) / GIB
    lines = [f"what to change ({now} now: rank {res.peak_rank} peaks with {head_now:+.2f} GiB headroom, "
             f"step {res.makespan * 1e3:.2f} ms); each change simulated:"]
    if not found:
        lines.append("  no one- or two-knob change gains headroom")
        return "\n".join(lines)
    rows = [[s.text(), s.verdict, f"{s.peak_bytes / GIB:.2f}", f"{s.headroom_bytes / GIB:+.2f}",
             f"{s.headroom_gain_bytes / GIB:+.2f}", f"{s.step_ms:.2f}", f"{s.step_change_ms / (res.makespan * 1e3):+.1%}"]
            for s in found[:limit]]
    lines += ["  " + line for line in aligned(["change", "verdict", "max peak GiB", "headroom GiB", "gained GiB",
                                               "step ms", "step change"], rows, left=1)]
    if len(found) > limit:
        lines.append(f"  ({len(found) - limit} more changes gain headroom; ordered by verdict, knobs, step cost)")
    return "\n".join(lines)
