"""Search: of the layouts, schedules, recompute policies, micro-batch sizes and ZeRO levels one
could use, which fit under a memory limit, and the Pareto frontier of (step time, worst-rank peak).

    python -m pipesim search scenarios/v3_pp16.toml --vary schedule,recompute,zero [--memory-limit 80]

Each knob has a default range around the scenario (``KNOBS``); the points are the cartesian
product, simulated by ``pipesim.grid`` at the scenario's global batch (micro-batch size ×
micro-batches × dp fixed, so step times compare the same work). ``pp`` keeps the device count
(dp = pp₀·dp₀ / pp). A point fits when its worst-rank peak is at most the limit (default the
device's usable memory, ``Result.capacity_bytes``).

The frontier: the fitting points that no other fitting point dominates (no worse in both step
time and peak, better in one). Found by one pass in step-time order keeping each point whose peak
is below every faster point's (the classic 2-D skyline, O(n log n)).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import schedules  # noqa: E402
from pipesim import grid  # noqa: E402
from pipesim.memory import GIB  # noqa: E402
from pipesim.model.config import RECOMPUTE, ZERO  # noqa: E402
from pipesim.plots import save  # noqa: E402

KNOBS = ("schedule", "pp", "recompute", "micro_batch_size", "layers_per_stage", "zero")


def knob_values(name: str, sc) -> list[dict]:
    """The default range of knob ``name`` around scenario ``sc``: a list of override dicts."""
    p = sc.parallel
    if name == "schedule":
        return [{"schedule.name": n, "schedule.chunks": None} for n in schedules.names()]
    if name == "pp":
        world = p.pp * p.dp
        pps = [q for q in (p.pp // 2, p.pp, p.pp * 2) if q >= 1 and world % q == 0]
        return [{"parallel.pp": q, "parallel.dp": world // q} for q in dict.fromkeys(pps)]
    if name == "recompute":
        return [{"training.recompute": r} for r in RECOMPUTE]
    if name == "micro_batch_size":
        return [{"training.micro_batch_size": m} for m in (1, 2, 4)]
    if name == "layers_per_stage":
        return [{}, {"placement.layers_per_stage": "auto"}]
    if name == "zero":
        return [{"training.zero": z} for z in ZERO]
    raise ValueError(name)


def points(sc, knobs) -> list[dict]:
    """The cartesian product of the knobs' ranges, each point one merged override dict."""
    combos = [{}]
    for k in knobs:
        combos = [{**c, **v} for c in combos for v in knob_values(k, sc)]
    return combos


def frontier(rows: list[dict]) -> list[dict]:
    """The non-dominated rows of (``step_ms``, ``max_peak_bytes``), fastest first."""
    out, best = [], None
    for r in sorted(rows, key=lambda r: (r["step_ms"], r["max_peak_bytes"])):
        tie = out and (r["step_ms"], r["max_peak_bytes"]) == (out[-1]["step_ms"], out[-1]["max_peak_bytes"])
        if best is None or r["max_peak_bytes"] < best or tie:    # equal points dominate neither
            out.append(r)
            best = r["max_peak_bytes"]
    return out


def search(path, knobs, sets: dict | None = None, limit_bytes: int | None = None,
           workers: int | None = None, progress=None):
    """``(rows, fitting, front, limit_bytes)``: every point's row, those at or under the limit,
    and their frontier."""
    from pipesim.scenario import load_scenario

    sc = load_scenario(path, sets or {})
    gb = sc.training.micro_batch_size * sc.microbatches * sc.parallel.dp
    pts = points(sc, knobs)
    rows = grid.run(path, pts, base=sets, global_batch=gb, workers=workers, progress=progress)
    for pt, r in zip(pts, rows):
        r["point"] = {k: v for k, v in pt.items() if v is not None}
    ok = [r for r in rows if r["status"] == "ok"]
    if limit_bytes is None:
        limit_bytes = ok[0]["capacity_bytes"] if ok else int(sc.hardware.memory_gib * GIB)
    fitting = [r for r in ok if r["max_peak_bytes"] <= limit_bytes]
    return rows, fitting, frontier(fitting), limit_bytes


def _label(r) -> str:
    from pipesim.sweep import value_text

    return ", ".join(f"{k}={value_text(v)}" for k, v in r["point"].items()) or "(the scenario as it is)"


def table(name, rows, fitting, front, limit_bytes, top: int = 20) -> str:
    """The fitting points ranked by step time, frontier points marked ``*``."""
    from pipesim.report import aligned

    on = {id(r) for r in front}
    invalid = sum(r["status"] != "ok" for r in rows)
    lines = [f"{name}: {len(rows)} configurations, {len(fitting)} fit under {limit_bytes / GIB:.2f} GiB, "
             f"{len(front)} on the frontier of (step time, worst-rank peak), {invalid} invalid"]
    ranked = sorted(fitting, key=lambda r: (r["step_ms"], r["max_peak_bytes"]))[:top]
    lines += aligned(["", "step ms", "max peak GiB", "peak rank", "bubble", "configuration"],
                     [["*" if id(r) in on else "", f"{r['step_ms']:.2f}", f"{r['max_peak_bytes'] / GIB:.2f}",
                       str(r["peak_rank"]), f"{r['mean_bubble']:.1%}", _label(r)] for r in ranked], left=0)
    if len(fitting) > top:
        lines.append(f"({len(fitting) - top} more fitting configurations in search.csv)")
    lines.append("(* = on the frontier: no other fitting configuration is both faster and lighter)")
    return "\n".join(lines)


def png(name, rows, front, limit_bytes, path) -> None:
    """``frontier.png``: every valid point (step, peak), the frontier as a step line, the limit dashed."""
    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r["step_ms"] for r in ok], [r["max_peak_bytes"] / GIB for r in ok], s=10, alpha=0.5,
               label="every configuration")
    if front:
        ax.plot([r["step_ms"] for r in front], [r["max_peak_bytes"] / GIB for r in front], marker="o",
                color="tab:red", drawstyle="steps-post", label="frontier (fits)")
    ax.axhline(limit_bytes / GIB, color="black", linestyle="--", linewidth=1,
               label=f"memory limit {limit_bytes / GIB:.2f} GiB")
    ax.set_xlabel("step time (ms)")
    ax.set_ylabel("worst-rank peak (GiB)")
    ax.set_title(f"{name}: step time vs peak memory, {len(ok)} configurations")
    ax.legend(fontsize=8)
    save(fig, path)
