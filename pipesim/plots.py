"""Pictures for people, in GiB over ms, with the device capacity and the peaks marked:
``memory.png`` (the peak rank's stacked timeline above every rank's total), ``peaks.png``
(what each rank's peak is made of) and ``schedule.png`` (every rank's ops over time)."""
from __future__ import annotations

import numpy as np

from pipesim.live import short
from pipesim.memory import CATEGORIES, GIB

_COLORS = {
    "weights": "#4c72b0", "grads": "#55a868", "optimizer": "#8172b2", "comm_buffers": "#937860",
    "activations": "#dd8452", "recompute": "#c44e52", "workspace": "#da8bc3", "a2a": "#8c8c8c",
    "gather": "#ccb974", "logits": "#64b5cd", "p2p": "#2f4b7c", "fragmentation": "#d9d9d9",
}


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported when a picture is drawn: the import is
    about 0.8 s, half of a ``run --plots none`` that imports this module and draws nothing
    (benchmarks/outputs_speed.py)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def __getattr__(name):
    """``pipesim.plots.plt`` for the modules that draw their own figures (imported on first use)."""
    if name == "plt":
        return _pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save(fig, path) -> None:
    """Lay out, write and close a figure (every picture of pipesim is written this way)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


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


#: Time bins of memory.png's stacked panel once a rank has more records than pixels: about one
#: per pixel column of the 1,000-pixel-wide plot.
_MEMORY_BINS = 1200


def _binned_levels(times, levels, makespan: float, bins: int):
    """At most one step per time bin: in each bin holding records, the levels at its record with
    the highest total, from the bin's start (the stack stays one consistent moment per bin, and
    the rank's peak, the highest record of its bin, is kept). Fewer than ``4 × bins`` records
    are returned as they are."""
    if len(times) <= 4 * bins or makespan <= 0:
        return times, levels
    slot = np.minimum((times / makespan * bins).astype(np.int64), bins - 1)
    order = np.lexsort((-levels.sum(axis=1), slot))      # by bin, highest total first
    head = order[np.append(True, slot[order][1:] != slot[order][:-1])]
    return slot[head] * (makespan / bins), levels[head]


def memory_png(result, path) -> None:
    """Write the two-panel memory figure of ``result`` to ``path``."""
    sc = result.scenario
    pr = result.peak_rank
    peak = result.peaks[pr]
    names = list(CATEGORIES) + ["fragmentation"]
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    records = result.records(pr)
    times, levels = _binned_levels(*result.timeline(pr), result.makespan, _MEMORY_BINS)
    binned = len(times) < records.stop - records.start
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
                  f"{sc.schedule.name}, pp={result.ranks}, {sc.microbatches} micro-batches"
                  + (f"\n(each of {_MEMORY_BINS} time bins at its highest moment)" if binned else ""),
                  fontsize=10 if binned else None)
    ax1.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    grid = _rank_grid(result, bins=600)
    cmap = plt.get_cmap("viridis").with_extremes(over="red")
    extent = (0, result.makespan * 1e3, result.ranks - 0.5, -0.5)
    img = ax2.imshow(grid / GIB, aspect="auto", interpolation="nearest", cmap=cmap, extent=extent,
                     vmin=0, vmax=cap)
    for p in result.peaks:
        ax2.plot(p.time * 1e3, p.rank, marker="v", color="white", markeredgecolor="black", markersize=5)
    ax2.set_yticks(range(0, result.ranks, max(1, result.ranks // 16)))
    ax2.set_ylabel("pipeline rank")
    ax2.set_xlabel("time in the step (ms)")
    ax2.set_title("every rank's total (incl. fragmentation; red = over the device, ▼ = the rank's peak)")
    # the colour bar sits outside ax2 so both panels keep the same time axis
    fig.colorbar(img, cax=ax2.inset_axes([1.01, 0.0, 0.015, 1.0]), label="GiB", extend="max")
    save(fig, path)


_KIND_COLORS = ("#4c72b0", "#dd8452", "#c44e52", "#55a868")   # F, B, B (input grad), W
_KIND_COLORS_DIR1 = ("#a1c9f4", "#ffb482", "#ff9f9b", "#8de5a1")   # the same, paler: DualPipe's direction 1
_KIND_LABELS = ("F forward", "B backward", "B input-grad (W deferred)", "W weight-grad")

#: Ops per rank up to which schedule.png draws one box per op. The plot is about 1,000 pixels
#: wide at 110 dpi; with 250 ops on the busiest rank an op is 4 pixels or more, enough to see it
#: and the white gap between two; beyond that boxes merge into noise, so the chart shows each
#: rank's time-binned occupancy instead (one pixel column per bin).
BOX_LIMIT = 250
_BINS = 1000
WINDOW_OPS = 60


def _ops(sp):
    """``(first, op_of_atom)``: the first atom of each op, and each atom's op (the atoms of one op,
    two for an FB, share its rank and op_index and are adjacent in the span table)."""
    key = sp.rank.astype(np.int64) * (int(sp.op_index.max(initial=0)) + 1) + sp.op_index
    new = np.append(True, key[1:] != key[:-1]) if len(key) else np.zeros(0, bool)
    return np.nonzero(new)[0], np.cumsum(new) - 1


def _color(kind: int, direction: int, dirs: bool) -> str:
    return (_KIND_COLORS_DIR1 if dirs and direction == 1 else _KIND_COLORS)[kind]


def _boxes(ax, result, dirs: bool, window: tuple[float, float] | None = None) -> None:
    """One box per op: a lone atom fills its row, an FB's two atoms the upper and lower half of
    one box spanning the op, each in its kind's (and direction's) colour. One collection per
    colour, so the cost does not grow with artists per op."""
    from matplotlib.collections import PolyCollection
    sp = result.spans
    first, op_of_atom = _ops(sp)
    size = np.bincount(op_of_atom, minlength=len(first))
    lo = np.minimum.reduceat(sp.start, first) * 1e3
    hi = np.maximum.reduceat(sp.end, first) * 1e3
    o = op_of_atom
    pos = np.arange(len(o)) - first[o]                   # 0 or 1: which half of an FB
    y0 = np.where(size[o] > 1, sp.rank - 0.4 + 0.4 * pos, sp.rank - 0.4)
    h = np.where(size[o] > 1, 0.4, 0.8)
    t0, t1 = window or (0.0, result.makespan * 1e3)
    shown = (hi[o] >= t0) & (lo[o] <= t1)                # only the ops in the window are drawn
    for d in range(2 if dirs else 1):
        for k in range(4):
            sel = shown & (sp.kind == k) & ((sp.direction == d) | (not dirs))
            if not sel.any():
                continue
            verts = np.stack([np.column_stack([lo[o[sel]], y0[sel]]), np.column_stack([hi[o[sel]], y0[sel]]),
                              np.column_stack([hi[o[sel]], y0[sel] + h[sel]]),
                              np.column_stack([lo[o[sel]], y0[sel] + h[sel]])], axis=1)
            ax.add_collection(PolyCollection(verts, facecolors=_color(k, d, dirs), edgecolors="white",
                                             linewidths=0.3))
    ax.set_xlim(t0, t1)
    ax.set_ylim(result.ranks - 0.5, -0.5)


def _covered(start, end, x):
    """Time inside the disjoint intervals [start, end) (sorted) up to each x."""
    if len(start) == 0:
        return np.zeros(len(x))
    length = end - start
    done = np.searchsorted(end, x, "right")              # intervals over by x
    full = np.append(0.0, np.cumsum(length))[done]
    inside = np.clip(x - start[np.minimum(done, len(start) - 1)], 0, None)
    return full + np.where(done < len(start), np.minimum(inside, length[np.minimum(done, len(start) - 1)]), 0)


def occupancy(result, bins: int, dirs: bool) -> dict[tuple[int, int], np.ndarray]:
    """``occ[(kind, direction)][r, b]``: the share of time bin b (of ``bins`` equal bins over the
    step) that rank r spends in atoms of that kind (and direction), from each group's covered
    time at the bin edges (a rank's atoms of one kind never overlap)."""
    sp = result.spans
    edges = np.linspace(0.0, result.makespan, bins + 1)
    width = result.makespan / bins if result.makespan > 0 else 1.0
    out = {}
    for d in range(2 if dirs else 1):
        for k in range(4):
            grid = np.zeros((result.ranks, bins))
            for r in range(result.ranks):
                sel = (sp.rank == r) & (sp.kind == k) & ((sp.direction == d) | (not dirs))
                if sel.any():
                    order = np.argsort(sp.start[sel], kind="stable")
                    grid[r] = np.diff(_covered(sp.start[sel][order], sp.end[sel][order], edges)) / width
            if grid.any():
                out[(k, d)] = grid
    return out


def _binned(ax, result, dirs: bool) -> None:
    """Each rank's row as an image: every pixel column one time bin, its colour the mix of the
    op kinds' colours by their share of the bin (white where the rank idles)."""
    from matplotlib.colors import to_rgb
    occ = occupancy(result, _BINS, dirs)
    rgb = np.zeros((result.ranks, _BINS, 3))
    busy = np.zeros((result.ranks, _BINS))
    for (k, d), share in occ.items():
        rgb += share[:, :, None] * np.array(to_rgb(_color(k, d, dirs)))
        busy += share
    scale = np.maximum(busy, 1.0)[:, :, None]          # an FB's two halves can fill a bin twice
    rgb = rgb / scale + (1.0 - np.minimum(busy, 1.0))[:, :, None]
    ax.imshow(np.clip(rgb, 0, 1), aspect="auto", interpolation="nearest",
              extent=(0, result.makespan * 1e3, result.ranks - 0.5, -0.5))


def schedule_png(result, path) -> None:
    """Write a Gantt chart of every rank's ops over the step, each rank's peak marked: one box per
    op up to ``BOX_LIMIT`` ops on a rank, the time-binned occupancy beyond it."""
    sp = result.spans
    dirs = result.workload.schedule.num_directions > 1
    first, _ = _ops(sp)
    most = int(np.bincount(sp.rank[first], minlength=result.ranks).max(initial=0))
    from matplotlib.patches import Rectangle
    plt = _pyplot()
    height = 1.2 + 0.35 * min(result.ranks, 32)
    if most <= BOX_LIMIT:
        fig, ax = plt.subplots(figsize=(12, height))
        _boxes(ax, result, dirs)
        how = "one box per op" + ("; an FB op: its F half above its B half" if dirs else "")
    else:
        # the whole step binned, and below it one box per op over the first and the last
        # WINDOW_OPS ops' worth of time (warm-up and cool-down, where schedules differ)
        below = min(height, 6.0)
        fig = plt.figure(figsize=(12, height + below))
        grid = fig.add_gridspec(2, 2, height_ratios=[height, below])
        ax = fig.add_subplot(grid[0, :])
        _binned(ax, result, dirs)
        span = result.makespan * 1e3 * WINDOW_OPS / most
        for col, window in enumerate([(0.0, span), (result.makespan * 1e3 - span, result.makespan * 1e3)]):
            sub = fig.add_subplot(grid[1, col])
            _boxes(sub, result, dirs, window)
            sub.set_title(("first" if col == 0 else "last") + f" {span:.0f} ms, one box per op", fontsize=9)
            sub.set_yticks(range(0, result.ranks, max(1, result.ranks // 16)))
            sub.tick_params(labelsize=7)
            sub.set_xlabel("time in the step (ms)")
        how = f"{most} ops on a rank: each column 1/{_BINS} of the step, coloured by the ops' share of it"
    for d in range(2 if dirs else 1):
        for k in range(4):
            if ((sp.kind == k) & ((sp.direction == d) | (not dirs))).any():
                ax.add_patch(Rectangle((0, 0), 0, 0, color=_color(k, d, dirs),
                                       label=_KIND_LABELS[k] + (f", direction {d}" if dirs else "")))
    for p in result.peaks:
        ax.plot(p.time * 1e3, p.rank, marker="v", color="black", markersize=6 if result.ranks <= 32 else 3)
    ax.plot([], [], marker="v", color="black", linestyle="none", label="memory peak of the rank")
    step = max(1, result.ranks // 32)
    ax.set_yticks(range(0, result.ranks, step))
    ax.set_yticklabels([f"rank {r}" for r in range(0, result.ranks, step)], fontsize=7)
    ax.set_xlabel("time in the step (ms)")
    sc = result.scenario
    ax.set_title(f"{sc.name}: {sc.schedule.name} op timeline, pp={result.ranks}, "
                 f"{sc.microbatches} micro-batches, step {result.makespan * 1e3:.1f} ms\n({how})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    save(fig, path)


def peaks_png(result, path) -> None:
    """Write one stacked bar per rank: its peak, split by category, against the device."""
    names = list(CATEGORIES) + ["fragmentation"]
    peaks = result.peaks
    ranks = np.arange(result.ranks)
    fig, ax = _pyplot().subplots(figsize=(min(4 + 0.45 * result.ranks, 16), 5.5))
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
