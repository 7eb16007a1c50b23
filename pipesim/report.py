"""The per-rank peak table that ``pipesim run`` prints, its one-line verdict, and the helpers the
other tables (``compare``, ``sweep``) share: aligned columns and a step's mean bubble."""
from __future__ import annotations

from pipesim.balance import warning_lines
from pipesim.live import closed_form, column
from pipesim.memory import GIB

_COLUMNS = ("weights", "grads", "optimizer", "activations", "recompute")
_TRANSIENT = ("workspace", "a2a", "gather")


def peak_table(result) -> str:
    """Aligned text: one row per rank, the peak rank marked with ``*``, then the verdict."""
    sc = result.scenario
    head = ["rank", "stages", "peak GiB", "at ms", "weights", "grads", "optim", "activ",
            "recomp", "transient", "other", "headroom", "verdict", "bubble", "resident", "op in flight at peak"]
    rows = []
    for p in result.peaks:
        transient = sum(p.breakdown[c] for c in _TRANSIENT)
        other = p.bytes - sum(p.breakdown[c] for c in _COLUMNS) - transient
        mark = "*" if p.rank == result.peak_rank else " "
        rows.append([f"{mark}{p.rank}", ",".join(map(str, p.stages)), f"{p.bytes / GIB:.2f}",
                     f"{p.time * 1e3:.1f}"] + [f"{p.breakdown[c] / GIB:.2f}" for c in _COLUMNS] +
                    [f"{transient / GIB:.2f}", f"{other / GIB:.2f}", f"{(result.capacity_bytes - p.bytes) / GIB:+.2f}",
                     result.verdict(p.rank),
                     f"{result.bubble_fraction(p.rank):.1%}", column(result.live_at_peak(p.rank)), p.op])
    lines = [f"{sc.name}: {sc.schedule.name}, pp={result.ranks}, {sc.microbatches} micro-batches, "
             f"{result.workload.schedule.num_stages} stages, step {result.makespan * 1e3:.1f} ms "
             f"(simulated), device {result.device_bytes / GIB:g} GiB"
             + (f" - {result.reserve_bytes / GIB:g} GiB reserve (CUDA context, NCCL) = "
                f"{result.capacity_bytes / GIB:g} GiB usable" if result.reserve_bytes else "")]
    lines += aligned(head, rows)
    lines.append("(GiB = 2**30 bytes; 'transient' = workspace + a2a + gather of the running layer; "
                 "'other' = logits, p2p, comm buffers, fragmentation; 'resident' = micro-batches whose "
                 "activations are held at the peak, +kW awaiting their weight gradient; * = peak rank)")
    mods = result.activations_by_module(result.peak_rank)
    total = sum(mods.values()) or 1
    lines.append("activations at the peak rank's peak by module: " + ", ".join(
        f"{k} {v / GIB:.2f} GiB ({v / total:.0%})" for k, v in list(mods.items())[:6]))
    cf = closed_form(result, result.peak_rank)
    if cf:
        lines.append(f"resident at the peak rank's peak: {column(result.live_at_peak(result.peak_rank))}; "
                     f"closed form {cf}")
    lines += warning_lines(result.imbalance)
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result) -> str:
    """The step's verdict line: OK / TIGHT / OOM with the worst rank's numbers."""
    worst = result.peaks[result.peak_rank]
    cap = result.capacity_bytes
    word = result.verdict()
    if word != "OOM":
        tight = (f"; TIGHT: under {result.tight_fraction:.0%} headroom on "
                 + ", ".join(f"rank {p.rank}" for p in result.peaks if result.verdict(p.rank) == "TIGHT")
                 if word == "TIGHT" else "")
        return (f"{word}: fits, peak {worst.bytes / GIB:.2f} GiB on rank {worst.rank} "
                f"({(cap - worst.bytes) / GIB:.2f} GiB headroom of {cap / GIB:g} GiB usable{tight})")
    over = [p.rank for p in result.peaks if p.bytes > cap]
    return (f"OOM: does not fit, rank {worst.rank} peaks at {worst.bytes / GIB:.2f} GiB, "
            f"{(worst.bytes - cap) / GIB:.2f} GiB over the {cap / GIB:g} GiB usable "
            f"({len(over)} of {result.ranks} ranks over)")


def aligned(head: list[str], rows: list[list[str]], left: int = 0) -> list[str]:
    """Header, dashes and rows as text lines: the first ``left`` columns left-aligned, the last
    one unpadded, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def fmt(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c if i == len(cells) - 1 else c.ljust(w) if i < left else c.rjust(w))
        return "  ".join(out)
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def mean_bubble(result) -> float:
    """The idle share of the step, averaged over the ranks."""
    return sum(result.bubble_fraction(r) for r in range(result.ranks)) / result.ranks
