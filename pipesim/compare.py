"""Compare schedule families on one scenario: the same model, layout and training settings run
under each family, peak memory per rank, step time and bubble side by side.

    python -m pipesim compare scenarios/v3_pp16.toml [--schedules 1f1b,zb-h1] [--microbatches 32]

Each family runs the scenario through its overrides (``schedule.name`` = the family, and
``training.microbatches`` when given), so it meets the same validation as a scenario file and
``pipesim.simulate`` on that modified scenario gives the same numbers. The scenario's
``schedule.chunks`` stays with its own family; the others take their default. When a family has
another stage count than the scenario's own schedule (interleaved and the V shapes run 2·pp
stages), its layers are split automatically (``placement.layers_per_stage = "auto"``, see
``pipesim.placement.auto_split``) and the table says so. A family whose constraints the scenario
violates (micro-batch counts, fewer layers than stages) is skipped with the reason.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import schedules  # noqa: E402
from pipesim.api import simulate  # noqa: E402
from pipesim.memory import GIB  # noqa: E402
from pipesim.plots import save  # noqa: E402
from pipesim.placement import split_text  # noqa: E402
from pipesim.report import aligned, mean_bubble  # noqa: E402
from pipesim.results import Result  # noqa: E402
from pipesim.scenario import Scenario, ScenarioError, load_scenario  # noqa: E402


@dataclass(frozen=True)
class Run:
    """One family's simulated step."""

    schedule: str
    result: Result
    auto_split: bool     # layers split automatically: the family's stage count differs from the scenario's


@dataclass(frozen=True)
class Comparison:
    """Every family asked for: the ones that ran, in order, and the ones skipped with the reason."""

    scenario: Scenario                       # as given (with its overrides)
    microbatches: int
    runs: tuple[Run, ...]
    skipped: tuple[tuple[str, str], ...]     # (schedule, reason)


def compare(path, names=None, microbatches: int | None = None, overrides: dict | None = None) -> Comparison:
    """Run scenario ``path`` (with ``overrides``) under each family of ``names`` (default: all of
    ``schedules.names()``) with ``microbatches`` (default: the scenario's).

    Raises ``ScenarioError`` if the scenario itself is invalid and ``ScheduleError`` for an
    unknown family name; a family the scenario cannot run under is skipped, not raised.
    """
    overrides = dict(overrides or {})
    base = load_scenario(path, overrides)
    names = schedules.names() if names is None else tuple(names)
    for name in names:
        if name not in schedules.names():
            raise schedules.ScheduleError(f"unknown schedule {name!r}; allowed: {', '.join(schedules.names())}", "name")
    m = base.microbatches if microbatches is None else microbatches
    runs, skipped = [], []
    for name in names:
        chunks = base.schedule.chunks if name == base.schedule.name else None
        try:
            stages = schedules.build(name, base.parallel.pp, m, chunks).num_stages
        except schedules.ScheduleError as exc:
            skipped.append((name, str(exc)))
            continue
        auto = stages != len(base.layers_per_stage)
        family = {**overrides, "schedule.name": name, "schedule.chunks": chunks, "training.microbatches": m}
        if auto:
            family["placement.layers_per_stage"] = "auto"
        try:
            sc = load_scenario(path, family)
        except ScenarioError as exc:
            skipped.append((name, str(exc).removeprefix(f"{Path(path)}: ")))
            continue
        runs.append(Run(name, simulate(sc), auto))
    return Comparison(base, m, tuple(runs), tuple(skipped))


def _numbers(res: Result) -> dict:
    peaks = [p.bytes for p in res.peaks]
    return {"stages": res.workload.schedule.num_stages, "max": max(peaks), "min": min(peaks),
            "peak_rank": res.peak_rank, "step_ms": res.makespan * 1e3, "bubble": mean_bubble(res),
            "fits": all(res.fits(r) for r in range(res.ranks))}


def table(cmp: Comparison) -> str:
    """The comparison as aligned text: one row per family that ran, then the skipped ones."""
    sc = cmp.scenario
    head = ["schedule", "stages", "max peak GiB", "min peak GiB", "peak rank", "step ms", "bubble",
            "fits", "layers per stage"]
    rows = []
    for run in cmp.runs:
        n = _numbers(run.result)
        split = split_text(run.result.scenario.layers_per_stage) + (" (auto)" if run.auto_split else "")
        rows.append([run.schedule, str(n["stages"]), f"{n['max'] / GIB:.3f}", f"{n['min'] / GIB:.3f}",
                     str(n["peak_rank"]), f"{n['step_ms']:.2f}", f"{n['bubble']:.1%}",
                     "yes" if n["fits"] else "NO", split])
    lines = [f"{sc.name}: schedules compared, pp={sc.parallel.pp}, {cmp.microbatches} micro-batches, "
             f"device {sc.hardware.memory_gib:g} GiB (scenario's own: {sc.schedule.name}, "
             f"{len(sc.layers_per_stage)} stages)"]
    lines += aligned(head, rows, left=1) if rows else ["no schedule family can run this scenario"]
    if any(run.auto_split for run in cmp.runs):
        lines.append(f"(auto) = the family has another stage count than the scenario's "
                     f"{len(sc.layers_per_stage)}: its layers are split evenly, extra ones to the middle stages")
    lines += [f"skipped {name}: {reason}" for name, reason in cmp.skipped]
    return "\n".join(lines)


def csv_text(cmp: Comparison) -> str:
    """``compare.csv``: one row per family that ran (GiB rounded; bytes exact)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["schedule", "stages", "max_peak_gib", "min_peak_gib", "peak_rank", "step_ms", "mean_bubble",
                "fits", "max_peak_bytes", "min_peak_bytes", "layers_per_stage", "auto_split"])
    for run in cmp.runs:
        n = _numbers(run.result)
        w.writerow([run.schedule, n["stages"], f"{n['max'] / GIB:.4f}", f"{n['min'] / GIB:.4f}", n["peak_rank"],
                    f"{n['step_ms']:.3f}", f"{n['bubble']:.4f}", n["fits"], n["max"], n["min"],
                    " ".join(map(str, run.result.scenario.layers_per_stage)), run.auto_split])
    return buf.getvalue()


def png(cmp: Comparison, path) -> None:
    """``compare.png``: each family's peak per rank (GiB), the device capacity dashed."""
    sc = cmp.scenario
    fig, ax = plt.subplots(figsize=(10, 5))
    for run in cmp.runs:
        res = run.result
        ax.plot(range(res.ranks), [p.bytes / GIB for p in res.peaks], marker="o",
                label=f"{run.schedule} (step {res.makespan * 1e3:.2f} ms)" + (", auto split" if run.auto_split else ""))
    cap = sc.hardware.memory_gib
    ax.axhline(cap, color="black", linestyle="--", linewidth=1, label=f"device {cap:g} GiB")
    ax.set_xlabel("pipeline rank")
    ax.set_ylabel("peak memory (GiB)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, None)
    ax.set_title(f"{sc.name}: peak per rank by schedule, pp={sc.parallel.pp}, {cmp.microbatches} micro-batches")
    ax.legend(fontsize=8)
    save(fig, path)
