"""Pictures for people, in GiB over ms, with the device capacity and the peaks marked:
``memory.png`` (the peak rank's stacked timeline above every rank's total), ``peaks.png``
(what each rank's peak is made of) and ``schedule.png`` (every rank's ops over time)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipesim.live import short  # noqa: E402
from pipesim.memory import CATEGORIES, GIB  # noqa: E402

_COLORS = {
    "weights": "#4c72b0", "grads": "#55a868", "optimizer": "#8172b2", "comm_buffers": "#937860",
    "activations": "#dd8452", "recompute": "#c44e52", "workspace": "#da8bc3", "a2a": "#8c8c8c",
    "gather": "#ccb974", "logits": "#64b5cd", "p2p": "#2f4b7c", "fragmentation": "#d9d9d9",
}


def save(fig, path) -> None:
    """Lay out, write and close a figure (every picture of pipesim is written this way)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _steps(times, levels, until):
    """Step-function points: each level holds from its record's time to the next record's,
    the last one until ``until``."""
    t = np.repeat(times, 2)[1:]
    t = np.append(t, max(until, times[-1]))
    v = np.repeat(levels, 2, axis=0)
    return t, v


def _rank_grid(result, bins: int) -> np.ndarray:
    """``grid[r, k]``: rank r's highest total (bytes) during the k-th of ``bins`` equal time slices.

    The level in a slice is the one holding at its start plus every record inside it, so short
    spikes (one layer's recomputation) survive the down-sampling.
    """
    edges = np.linspace(0.0, result.makespan, bins + 1)
    grid = np.zeros((result.ranks, bins))
    for r in range(result.ranks):
        times, tot = result.total(r)
        at_start = tot[np.maximum(np.searchsorted(times, edges[:-1], "right") - 1, 0)]
        slot = np.minimum(np.searchsorted(edges, times, "right") - 1, bins - 1)
        inside = np.full(bins, -1, dtype=np.int64)
        np.maximum.at(inside, slot, tot)
        grid[r] = np.maximum(at_start, inside)
    return grid


def _capacity(ax, result) -> None:
    """The usable capacity as a dashed line, and the reserve (CUDA context, NCCL) above it as a
    grey band up to the device's memory."""
    cap, dev = result.capacity_bytes / GIB, result.device_bytes / GIB
    ax.axhline(cap, color="black", linestyle="--", linewidth=1)
    if dev > cap:
        ax.axhspan(cap, dev, color="0.85", zorder=0)
        label = f" usable {cap:g} GiB (device {dev:g} GiB, reserve {dev - cap:g} GiB above)"
    else:
        label = f" device {cap:g} GiB"
    ax.text(0.002, cap, label, transform=ax.get_yaxis_transform(), va="bottom", fontsize=8)


def memory_png(result, path) -> None:
    """Write the two-panel memory figure of ``result`` to ``path``."""
    sc = result.scenario
    pr = result.peak_rank
    peak = result.peaks[pr]
    names = list(CATEGORIES) + ["fragmentation"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    times, levels = result.timeline(pr)
    t, v = _steps(times * 1e3, levels / GIB, result.makespan * 1e3)
    keep = [i for i, n in enumerate(names) if levels[:, i].max() > 0]
    ax1.stackplot(t, *(v[:, i] for i in keep), labels=[names[i] for i in keep],
                  colors=[_COLORS[names[i]] for i in keep], linewidth=0)
    cap = result.capacity_bytes / GIB
    _capacity(ax1, result)
    ax1.plot([peak.time * 1e3], [peak.bytes / GIB], marker="v", color="red", markersize=9)
    ax1.annotate(f"peak {peak.bytes / GIB:.2f} GiB\n{peak.op}\n{short(result.live_at_peak(pr))}",
                 (peak.time * 1e3, peak.bytes / GIB),
                 textcoords="offset points", xytext=(8, 6), fontsize=8, color="red")
    ax1.set_ylabel("GiB")
    ax1.set_ylim(0, max(cap, peak.bytes / GIB) * 1.15)
    ax1.set_title(f"{sc.name}: rank {pr} (peak rank, stages {list(peak.stages)}) by category — "
                  f"{sc.schedule.name}, pp={result.ranks}, {sc.microbatches} micro-batches")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    grid = _rank_grid(result, bins=600)
    cmap = plt.get_cmap("viridis").with_extremes(over="red")
    extent = (0, result.makespan * 1e3, result.ranks - 0.5, -0.5)
    img = ax2.imshow(grid / GIB, aspect="auto", interpolation="nearest", cmap=cmap, extent=extent,
                     vmin=0, vmax=cap)
    for p in result.peaks:
        ax2.plot(p.time * 1e3, p.rank, marker="v", color="white", markeredgecolor="black", markersize=5)
    ax2.set_ylabel("pipeline rank")
    ax2.set_xlabel("time in the step (ms)")
    ax2.set_title("every rank's total (incl. fragmentation; red = over the device, ▼ = the rank's peak)")
    # the colour bar sits outside ax2 so both panels keep the same time axis
    fig.colorbar(img, cax=ax2.inset_axes([1.01, 0.0, 0.015, 1.0]), label="GiB", extend="max")
    save(fig, path)


_KIND_COLORS = ("#4c72b0", "#dd8452", "#c44e52", "#55a868")   # F, B, B (input grad), W
_KIND_LABELS = ("F forward", "B backward", "B input-grad (W deferred)", "W weight-grad")


def schedule_png(result, path) -> None:
    """Write a Gantt chart of every rank's ops over the step, each rank's peak marked."""
    sp = result.spans
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.35 * result.ranks))
    for k in range(4):
        sel = sp.kind == k
        if sel.any():
            ax.barh(sp.rank[sel], (sp.end[sel] - sp.start[sel]) * 1e3, left=sp.start[sel] * 1e3,
                    height=0.8, color=_KIND_COLORS[k], edgecolor="white", linewidth=0.2,
                    label=_KIND_LABELS[k])
    for p in result.peaks:
        ax.plot(p.time * 1e3, p.rank, marker="v", color="black", markersize=6)
    ax.plot([], [], marker="v", color="black", linestyle="none", label="memory peak of the rank")
    ax.set_yticks(range(result.ranks))
    ax.set_yticklabels([f"rank {r}" for r in range(result.ranks)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time in the step (ms)")
    sc = result.scenario
    ax.set_title(f"{sc.name}: {sc.schedule.name} op timeline, pp={result.ranks}, "
                 f"{sc.microbatches} micro-batches, step {result.makespan * 1e3:.1f} ms")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    save(fig, path)


def peaks_png(result, path) -> None:
    """Write one stacked bar per rank: its peak, split by category, against the device."""
    names = list(CATEGORIES) + ["fragmentation"]
    peaks = result.peaks
    ranks = np.arange(result.ranks)
    fig, ax = plt.subplots(figsize=(min(4 + 0.45 * result.ranks, 16), 5.5))
    bottom = np.zeros(result.ranks)
    for name in names:
        gib = np.array([p.breakdown[name] for p in peaks]) / GIB
        if gib.max() > 0:
            ax.bar(ranks, gib, bottom=bottom, color=_COLORS[name], label=name, width=0.8)
            bottom += gib
    cap = result.capacity_bytes / GIB
    _capacity(ax, result)
    pr = result.peak_rank
    for p in peaks:
        over = p.bytes > result.capacity_bytes
        ax.text(p.rank, p.bytes / GIB, f"{p.bytes / GIB:.1f}", ha="center", va="bottom", fontsize=7,
                color="red" if over else "black", fontweight="bold" if p.rank == pr else "normal")
    ax.set_xticks(ranks)
    ax.set_xticklabels([f"{r}*" if r == pr else str(r) for r in ranks], fontsize=7)
    ax.set_xlabel("pipeline rank (* = the peak rank)")
    ax.set_ylabel("GiB at the rank's peak")
    ax.set_ylim(0, max(cap, bottom.max()) * 1.15)
    sc = result.scenario
    verdict = {"OK": "fits", "TIGHT": "fits, TIGHT", "OOM": "OOM: does NOT fit"}[result.verdict()]
    ax.set_title(f"{sc.name}: every rank's peak by category — {sc.schedule.name}, pp={result.ranks}, "
                 f"{sc.microbatches} micro-batches ({verdict})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    save(fig, path)
