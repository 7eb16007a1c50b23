"""What ``pipesim score`` shows: the per-rank table, ``score.json`` and ``score.png``.

Numbers are bytes inside, GiB (2**30) on the page; errors are percentages of the measured value.
"""
from __future__ import annotations

import json
import math

import numpy as np

from pipesim.score.scoring import SAMPLES, Score, measured_curve, predicted_curve

GIB = 2 ** 30

COMPARED = {
    "allocated": "measured peak allocated vs predicted peak allocated (Result.peaks[r].bytes minus "
                 "its fragmentation)",
    "reserved": "measured peak reserved vs predicted peak total incl. fragmentation (Result.peaks[r].bytes)",
    "error": "(predicted - measured) / measured * 100",
    "curve": f"allocated curves on a 0..1 axis (the simulated step; the measured window), "
             f"{SAMPLES} samples: mean |predicted - measured| / measured peak * 100",
}


def _gib(b) -> str:
    return "-" if b is None else f"{b / GIB:.3f}"


def _pct(p) -> str:
    return "-" if p is None else f"{p:+.1f}%"


def _mark(s: Score, rank: int) -> str:
    marks = [name for name, r in (("pred", s.predicted_peak_rank), ("meas", s.measured_peak_rank)) if r == rank]
    return "+".join(marks)


def table(s: Score) -> str:
    """The per-rank comparison as text, one line per measured rank, then the verdicts."""
    sc = s.result.scenario
    head = ("rank", "pred GiB", "meas GiB", "error", "pred+frag", "reserved", "res err", "curve err",
            "peak", "source")
    lines = [f"{sc.name}: {sc.schedule.name}, pp={s.result.ranks}, {sc.microbatches} micro-batches — "
             f"predicted vs measured, {len(s.ranks)} rank(s)"]
    rows = [head]
    for r in s.ranks:
        rows.append((str(r.rank), _gib(r.predicted_allocated), _gib(r.measured_allocated), _pct(r.error_pct),
                     _gib(r.predicted_total), _gib(r.measured_reserved), _pct(r.reserved_error_pct),
                     "-" if r.curve_error_pct is None else f"{r.curve_error_pct:.1f}%", _mark(s, r.rank),
                     f"{r.source} ({s.assigned[r.rank].how})"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for k, row in enumerate(rows):
        cells = [c.rjust(w) if i < len(head) - 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("(GiB = 2**30 bytes; error = (predicted - measured) / measured; 'pred+frag' = predicted "
                 "total incl. fragmentation, compared with 'reserved'; curve err = mean |difference| / "
                 "measured peak on a normalised step axis; peak = the rank is the peak of pred / meas)")
    if s.measured_peak_rank is None:
        lines.append("peak rank: one rank measured, nothing to compare")
    else:
        lines.append(f"peak rank: predicted {s.predicted_peak_rank}, measured {s.measured_peak_rank} "
                     f"({'agree' if s.peak_rank_agrees else 'DISAGREE'})")
    worst = s.worst_error_pct()
    if worst is not None:
        lines.append(f"largest |error|: {worst:.1f}%")
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


def _round(x):
    return None if x is None else round(x, 4)


def summary(s: Score) -> dict:
    """JSON-able content of ``score.json``."""
    sc = s.result.scenario
    return {
        "scenario": sc.name,
        "schedule": {"name": sc.schedule.name, "pp": s.result.ranks, "microbatches": sc.microbatches},
        "compared": COMPARED,
        "ranks": [{
            "rank": r.rank, "source": r.source, "format": s.assigned[r.rank].format,
            "rank_from": s.assigned[r.rank].how,
            "predicted_allocated_bytes": r.predicted_allocated, "measured_allocated_bytes": r.measured_allocated,
            "error_pct": _round(r.error_pct),
            "predicted_total_bytes": r.predicted_total, "measured_reserved_bytes": r.measured_reserved,
            "reserved_error_pct": _round(r.reserved_error_pct), "curve_error_pct": _round(r.curve_error_pct),
        } for r in s.ranks],
        "predicted_peak_rank": s.predicted_peak_rank,
        "measured_peak_rank": s.measured_peak_rank,
        "peak_rank_agrees": s.peak_rank_agrees,
        "max_abs_error_pct": _round(s.worst_error_pct()),
        "notes": list(s.notes),
    }


def json_text(s: Score) -> str:
    return json.dumps(summary(s), indent=2, sort_keys=True) + "\n"


def png(s: Score, path) -> None:
    """Per measured rank: predicted and measured allocated GiB over the normalised step."""
    from pipesim.plots import plt, save

    n = len(s.ranks)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, s.ranks):
        pu, pv = predicted_curve(s.result, r.rank)
        ax.step(np.append(pu, 1.0), np.append(pv, pv[-1] if len(pv) else 0) / GIB, where="post",
                color="#4c72b0", label="predicted (allocated)")
        mc = measured_curve(s.assigned[r.rank].measure)
        if mc is not None:
            ax.step(mc[0], mc[1] / GIB, where="post", color="#dd8452", label="measured")
        if r.measured_allocated is not None:
            ax.axhline(r.measured_allocated / GIB, color="#dd8452", linestyle="--", linewidth=1,
                       label="measured peak")
        if r.measured_reserved is not None:
            ax.axhline(r.measured_reserved / GIB, color="#c44e52", linestyle=":", linewidth=1,
                       label="measured peak reserved")
            ax.axhline(r.predicted_total / GIB, color="#4c72b0", linestyle=":", linewidth=1,
                       label="predicted peak incl. fragmentation")
        err = "" if r.error_pct is None else f", error {r.error_pct:+.1f}%"
        ax.set_title(f"rank {r.rank}{err}", fontsize=9)
        ax.set_xlabel("normalised time (0 = step start, 1 = step end)")
        ax.set_ylabel("GiB")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    sc = s.result.scenario
    fig.suptitle(f"{sc.name}: predicted vs measured memory per rank ({sc.schedule.name}, pp={s.result.ranks})")
    save(fig, path)
