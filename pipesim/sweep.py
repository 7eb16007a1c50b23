"""Sweep one scenario key: the scenario run once per value, peak memory and step time per value.

    python -m pipesim sweep scenarios/tiny.toml training.microbatches 4 8 16

Each value is applied as an override (``load_scenario(path, {key: value})``), so it is checked
exactly as the same value written in the file. Every value is validated before anything runs:
``scenarios`` raises one ``ScenarioError`` with a line per distinct problem.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipesim.api import simulate  # noqa: E402
from pipesim.memory import GIB  # noqa: E402
from pipesim.plots import save  # noqa: E402
from pipesim.report import aligned, mean_bubble  # noqa: E402
from pipesim.results import Result  # noqa: E402
from pipesim.scenario import Scenario, ScenarioError, load_scenario  # noqa: E402


@dataclass(frozen=True)
class Point:
    """One value of the swept key and the step it gives."""

    value: object
    result: Result

    @property
    def worst(self):
        """The peak of the peak rank (``RankPeak``)."""
        return self.result.peaks[self.result.peak_rank]

    @property
    def headroom_bytes(self) -> int:
        return self.result.capacity_bytes - self.worst.bytes


@dataclass(frozen=True)
class Sweep:
    key: str
    points: tuple[Point, ...]

    @property
    def name(self) -> str:
        return self.points[0].result.scenario.name

    def context(self) -> str:
        """What the values share (schedule, pp, micro-batches, device), the swept key left out."""
        sc = self.points[0].result.scenario
        parts = {"schedule.name": sc.schedule.name, "parallel.pp": f"pp={sc.parallel.pp}",
                 "training.microbatches": f"{sc.microbatches} micro-batches",
                 "hardware.memory_gib": f"device {sc.hardware.memory_gib:g} GiB"}
        return ", ".join(v for k, v in parts.items() if k != self.key)


def value_text(value) -> str:
    """A value as it was written: strings bare, the rest in TOML / JSON form (``[4, 4, 1]``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def scenarios(path, key: str, values, overrides: dict | None = None) -> list[Scenario]:
    """The scenario of every value, or ``ScenarioError`` with one line per distinct problem.

    A problem that only some values have names them (``(parallel.pp = 16, 32)``); one that every
    value has (a bad override, a broken file) is reported once, as it stands.
    """
    out, failures = [], {}
    for v in values:
        try:
            out.append(load_scenario(path, {**(overrides or {}), key: v}))
        except ScenarioError as exc:
            failures.setdefault(str(exc), []).append(v)
    if failures:
        raise ScenarioError("\n".join(
            msg if len(vals) == len(values) else f"{msg} ({key} = {', '.join(map(value_text, vals))})"
            for msg, vals in failures.items()))
    if not out:
        raise ScenarioError(f"{path}: {key}: no values to sweep")
    return out


def sweep(path, key: str, values, overrides: dict | None = None) -> Sweep:
    """Validate every value of ``key``, then simulate the scenario once per value."""
    return Sweep(key, tuple(Point(v, simulate(sc)) for v, sc in zip(values, scenarios(path, key, values, overrides))))


def table(sw: Sweep) -> str:
    """One row per value: the peak rank's peak, the activations in it, fit, headroom, step, bubble."""
    head = [sw.key, "max peak GiB", "peak rank", "activ GiB", "fits", "headroom GiB", "step ms", "bubble"]
    rows = []
    for pt in sw.points:
        res = pt.result
        rows.append([value_text(pt.value), f"{pt.worst.bytes / GIB:.3f}", str(res.peak_rank),
                     f"{pt.worst.breakdown['activations'] / GIB:.3f}", "yes" if pt.headroom_bytes >= 0 else "NO",
                     f"{pt.headroom_bytes / GIB:+.3f}", f"{res.makespan * 1e3:.2f}", f"{mean_bubble(res):.1%}"])
    lines = [f"{sw.name}: sweep of {sw.key} over {len(sw.points)} values ({sw.context()})"]
    lines += aligned(head, rows, left=1)
    lines.append("(max peak = the peak of the peak rank; activ = its activations at that moment; "
                 "bubble = idle share of the step, mean over ranks)")
    return "\n".join(lines)


def csv_text(sw: Sweep) -> str:
    """``sweep.csv``: one row per value (GiB rounded; bytes exact)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["value", "max_peak_gib", "peak_rank", "fits", "headroom_gib", "step_ms", "mean_bubble",
                "max_peak_bytes", "peak_activations_bytes", "capacity_bytes"])
    for pt in sw.points:
        res = pt.result
        w.writerow([value_text(pt.value), f"{pt.worst.bytes / GIB:.4f}", res.peak_rank, pt.headroom_bytes >= 0,
                    f"{pt.headroom_bytes / GIB:.4f}", f"{res.makespan * 1e3:.3f}", f"{mean_bubble(res):.4f}",
                    pt.worst.bytes, pt.worst.breakdown["activations"], res.capacity_bytes])
    return buf.getvalue()


def png(sw: Sweep, path) -> None:
    """``sweep.png``: the max peak (and the activations in it) against the value, the device dashed.

    Numbers are placed on a numeric axis; other values (names, lists) one per tick, in order.
    """
    pts = sw.points
    numeric = all(isinstance(p.value, (int, float)) and not isinstance(p.value, bool) for p in pts)
    x = [p.value for p in pts] if numeric else list(range(len(pts)))
    fig, ax = plt.subplots(figsize=(8, 5))
    # values without an order between them (names, lists) get markers, not connecting lines
    line = {} if numeric else {"linestyle": "none"}
    ax.plot(x, [p.worst.bytes / GIB for p in pts], marker="o", label="max peak (peak rank)", **line)
    ax.plot(x, [p.worst.breakdown["activations"] / GIB for p in pts], marker=".",
            **(line or {"linestyle": ":"}), label="activations in that peak")
    for xi, p in zip(x, pts):
        ax.annotate(f"rank {p.result.peak_rank}", (xi, p.worst.bytes / GIB), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    caps = [p.result.capacity_bytes / GIB for p in pts]
    if len(set(caps)) == 1:
        ax.axhline(caps[0], color="black", linestyle="--", linewidth=1, label=f"device {caps[0]:g} GiB")
    else:
        ax.plot(x, caps, color="black", linestyle="--", linewidth=1, label="device capacity")
    ax.set_xticks(x, [value_text(p.value) for p in pts])
    if not numeric:
        ax.set_xlim(-0.5, len(pts) - 0.5)
    ax.set_xlabel(sw.key)
    ax.set_ylabel("memory (GiB)")
    ax.set_ylim(0, max(max(caps), max(p.worst.bytes / GIB for p in pts)) * 1.12)
    ax.set_title(f"{sw.name}: max peak memory vs {sw.key}\n{sw.context()}", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
