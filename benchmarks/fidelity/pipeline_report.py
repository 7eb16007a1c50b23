"""The pipeline run's outputs: the table (printed, CSV, Markdown), one PNG per schedule, and the
measured timelines as CSV in ``pipesim score``'s plain format. Every file is written to a
temporary name beside its target and renamed, so a failed run leaves no partial file.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

__all__ = ["COLUMNS", "rows_of", "table_text", "write_actions_csv", "write_csv", "write_markdown", "write_plot",
           "write_timeline_csv"]

MIB = 2 ** 20

COLUMNS = ("schedule", "rank", "stages", "measured_mib", "predicted_mib", "error_pct", "per_mb_error_pct",
           "peak_rank", "same_peak_rank", "measured_peak_action", "predicted_peak_action", "curve_error_pct",
           "profiler_activation_mib", "profiler_total_mib")


def rows_of(comparison, profiler: dict | None) -> list[dict]:
    """One row per rank; ``profiler[rank]``: (activation-category peak, total peak) in bytes."""
    rows = []
    for s in comparison.ranks:
        prof = (profiler or {}).get(s.rank)
        rows.append({
            "schedule": comparison.name, "rank": s.rank, "stages": " ".join(map(str, s.stages)),
            "measured_mib": s.measured / MIB, "predicted_mib": s.predicted / MIB, "error_pct": s.error_pct,
            "per_mb_error_pct": s.per_mb_error_pct,
            "peak_rank": ("*" if s.rank == comparison.measured_peak_rank else "")
            + ("p" if s.rank == comparison.predicted_peak_rank else ""),
            "same_peak_rank": "yes" if comparison.same_peak_rank else "no",
            "measured_peak_action": s.measured_at, "predicted_peak_action": s.predicted_at,
            "curve_error_pct": 100.0 * s.curve_error,
            "profiler_activation_mib": None if prof is None else prof[0] / MIB,
            "profiler_total_mib": None if prof is None else prof[1] / MIB,
        })
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _cells(row: dict) -> list[str]:
    out = []
    for c in COLUMNS:
        v = row[c]
        if c in ("error_pct", "per_mb_error_pct"):
            out.append(f"{v:+.2f}")
        elif c == "curve_error_pct":
            out.append(f"{v:.2f}")
        else:
            out.append(_fmt(v))
    return out


HEADERS = ("schedule", "rank", "stages", "measured MiB", "predicted MiB", "error %", "per-mb error %",
           "peak", "same peak rank", "action at peak (measured)", "action at peak (predicted)",
           "curve error %", "profiler activation MiB", "profiler total MiB")

NOTE = ("measured: the bytes autograd holds for backward (saved-tensor hooks, storages once) plus, between an "
        "input-gradient backward (I) and its W, the output gradients torch keeps for W; predicted: "
        "pipesim's activations + logits on torch's op order; error = (predicted - measured) / measured; "
        "per-mb error: the same for one micro-batch's forward on the rank's stages; peak: * measured peak "
        "rank, p predicted; curve error: mean |predicted - measured| after each action / measured peak; "
        "profiler columns: torch.profiler memory timeline (category ACTIVATION, and all categories) where "
        "it was recorded; MiB = 2**20 bytes")


def table_text(rows: list[dict]) -> str:
    cells = [list(HEADERS)] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    numeric = {i for i, c in enumerate(COLUMNS) if c == "rank" or c.endswith(("_mib", "_pct"))}
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(x.rjust(w) if k and i in numeric else x.ljust(w)
                               for i, (x, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(" + NOTE + ")\n"


def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in COLUMNS])
    _atomic(path, buf.getvalue().encode())


def write_markdown(path: Path, rows: list[dict], preamble: str) -> None:
    lines = [preamble.rstrip(), "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", NOTE, ""]
    _atomic(path, "\n".join(lines).encode())


def write_timeline_csv(path: Path, series: list[tuple[int, np.ndarray, np.ndarray, str | None]]) -> None:
    """``time_s,rank,bytes[,category]`` rows: one series per (rank, category) as (rank, times in
    seconds, bytes, category or None)."""
    with_cat = any(c is not None for *_, c in series)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_s", "rank", "bytes"] + (["category"] if with_cat else []))
    for rank, t, b, cat in series:
        for ti, bi in zip(t.tolist(), b.tolist()):
            w.writerow([f"{ti:.6f}", rank, int(bi)] + ([cat] if with_cat else []))
    _atomic(path, buf.getvalue().encode())


def write_actions_csv(path: Path, comparison, results: list[dict]) -> None:
    """Every action of every rank: its token, kind, micro-batch, stage, times (s from the step's
    earliest start), measured bytes before / at its highest / after, and pipesim's after."""
    origin = min(d["step_ns"][0] for d in results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "index", "action", "kind", "mb", "stage", "start_s", "end_s",
                "measured_before", "measured_high", "measured_after", "predicted_after"])
    for d in sorted(results, key=lambda x: x["rank"]):
        pred = comparison.predicted_curves[d["rank"]]
        for i, a in enumerate(d["actions"]):
            w.writerow([d["rank"], i, f"{a['stage']}{a['kind']}{a['mb']}", a["kind"], a["mb"], a["stage"],
                        f"{(a['start_ns'] - origin) / 1e9:.6f}", f"{(a['end_ns'] - origin) / 1e9:.6f}",
                        a["before"], a["high"], a["after"], int(pred[i])])
    _atomic(path, buf.getvalue().encode())


def write_plot(path: Path, comparison, profiler_curves: dict | None = None) -> None:
    """Predicted and measured saved bytes per rank on the rank's action axis (MiB);
    ``profiler_curves[rank]``, where given, is the profiler's level at the step's start and after
    every action (one more value than actions)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(comparison.ranks)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.3 * n + 0.8), squeeze=False)
    for ax, s, meas, pred in zip(axes[:, 0], comparison.ranks, comparison.measured_curves, comparison.predicted_curves):
        x = np.arange(len(meas) + 1)
        ax.step(x, np.r_[0, meas] / MIB, where="post", lw=1.8, label="measured (torch: saved tensors + dY kept for W)")
        ax.step(x, np.r_[0, pred] / MIB, where="post", lw=1.4, ls="--", label="predicted (pipesim, activations + logits)")
        if profiler_curves and s.rank in profiler_curves:
            ax.step(x, profiler_curves[s.rank] / MIB, where="post", lw=1.0,
                    ls=":", color="gray", label="torch.profiler category ACTIVATION")
        ax.plot([s.measured_index + 1], [s.measured / MIB], "o", color="C0", ms=5)
        ax.plot([s.predicted_index + 1], [s.predicted / MIB], "x", color="C1", ms=7)
        ax.set_ylabel("MiB")
        ax.set_title(f"rank {s.rank} (stages {', '.join(map(str, s.stages))}): peak {s.measured / MIB:.2f} MiB measured "
                     f"at {s.measured_at}, {s.predicted / MIB:.2f} MiB predicted at {s.predicted_at} "
                     f"({s.error_pct:+.1f}%)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("action index on the rank (F / B / I / W in execution order)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{comparison.name}: saved-activation memory per rank, torch.distributed.pipelining (CPU, gloo) vs pipesim",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic(path, buf.getvalue())
