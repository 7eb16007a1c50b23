"""Benchmark comparisons of schedules: every schedule family on DeepSeek-V3 (the paper's layout
and DeepSeek's own) and DeepSeek-V2, across micro-batch counts and recompute policies.

    python benchmarks/compare_schedules.py [--out benchmarks/results]

For every (scenario, micro-batches, recompute, family) that the family accepts: the peak rank
and its GiB, the spread between the highest and the lowest rank's peak, the step time, the mean
bubble, and the exposed communication: the seconds a rank's compute stream waits on its own
all-to-all and TP collectives (``pipesim.simulator.exposed_comm``), worst rank, as a share of
the step. Writes ``compare_schedules.md`` (the tables and a paragraph derived from them) and
``compare_schedules.png`` (peak GiB against step time, one panel per scenario) atomically.

Scenarios: ``scenarios/v3_pp16.toml`` (the paper's layout: TP 2, EP 8 in a node, 1F1B, full
recompute), ``scenarios/v3_dualpipe.toml`` (DeepSeek's own: EP 64 over 8 nodes, no TP,
DualPipe, selective recompute) and ``scenarios/v2_pp8.toml``. Micro-batches: 2·pp and 4·pp.
Families that need another stage count get the automatic split (``pipesim.compare``).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipesim.compare import compare  # noqa: E402
from pipesim.memory import GIB  # noqa: E402
from pipesim.plots import save  # noqa: E402
from pipesim.report import mean_bubble  # noqa: E402
from pipesim.scenario import load_scenario  # noqa: E402
from pipesim.simulator import exposed_comm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (("DeepSeek-V3, the paper's layout", "v3_pp16.toml"),
             ("DeepSeek-V3, DeepSeek's own layout", "v3_dualpipe.toml"),
             ("DeepSeek-V2", "v2_pp8.toml"))
RECOMPUTE = ("none", "selective", "full")


def rows_for(path: Path) -> tuple[list[dict], list[tuple]]:
    """One dict per run of the scenario's grid, and the skipped (M, recompute, family, reason)."""
    pp = load_scenario(path).parallel.pp
    rows, skipped = [], []
    for m in (2 * pp, 4 * pp):
        for rc in RECOMPUTE:
            cmp = compare(path, microbatches=m, overrides={"training.recompute": rc})
            skipped += [(m, rc, name, reason) for name, reason in cmp.skipped]
            for run in cmp.runs:
                res = run.result
                peaks = [p.bytes for p in res.peaks]
                exposed = exposed_comm(res.spans, res.ranks)
                rows.append({"microbatches": m, "recompute": rc, "schedule": run.schedule,
                             "peak_rank": res.peak_rank, "peak_gib": max(peaks) / GIB,
                             "spread_gib": (max(peaks) - min(peaks)) / GIB, "step_ms": res.makespan * 1e3,
                             "bubble": mean_bubble(res), "exposed_ms": float(exposed.max()) * 1e3,
                             "exposed_share": float(exposed.max()) / res.makespan if res.makespan else 0.0,
                             "verdict": res.verdict(), "auto": run.auto_split})
    return rows, skipped


def table(rows: list[dict]) -> list[str]:
    out = ["| M | recompute | schedule | peak rank | peak GiB | spread GiB | step ms | bubble | exposed comm ms (share) | verdict |",
           "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        name = r["schedule"] + (" (auto split)" if r["auto"] else "")
        out.append(f"| {r['microbatches']} | {r['recompute']} | {name} | {r['peak_rank']} | {r['peak_gib']:.2f} | "
                   f"{r['spread_gib']:.2f} | {r['step_ms']:.0f} | {r['bubble']:.1%} | "
                   f"{r['exposed_ms']:.0f} ({r['exposed_share']:.1%}) | {r['verdict']} |")
    return out


def findings(label: str, rows: list[dict]) -> str:
    """What the numbers show for one scenario, each claim computed from the rows."""
    m = max(r["microbatches"] for r in rows)
    parts = []
    for rc in RECOMPUTE:
        sel = [r for r in rows if r["microbatches"] == m and r["recompute"] == rc]
        if not sel:
            continue
        fast = min(sel, key=lambda r: r["step_ms"])
        low = min(sel, key=lambda r: r["peak_gib"])
        fits = [r["schedule"] for r in sel if r["verdict"] != "OOM"]
        how = "without recompute" if rc == "none" else f"with {rc} recompute"
        parts.append(f"{how} the fastest is {fast['schedule']} ({fast['step_ms']:.0f} ms), the lowest "
                     f"peak {low['schedule']} ({low['peak_gib']:.1f} GiB); {len(fits)} of {len(sel)} families fit")
    text = f"**{label}** ({m} micro-batches): " + "; ".join(parts) + "."
    by = {(r["schedule"], r["recompute"]): r for r in rows if r["microbatches"] == m}
    for rc in RECOMPUTE:
        one, dual = by.get(("1f1b", rc)), by.get(("dualpipe", rc))
        if one and dual and one["exposed_ms"] > 0:
            how = "without recompute" if rc == "none" else f"{rc} recompute"
            text += (f" The all-to-all and TP time the compute stream waits on (worst rank, {how}): "
                     f"1F1B {one['exposed_ms']:.0f} ms ({one['exposed_share']:.1%} of its step), DualPipe "
                     f"{dual['exposed_ms']:.0f} ms ({dual['exposed_share']:.1%}), its FB pairs hiding "
                     f"{1 - dual['exposed_ms'] / one['exposed_ms']:.0%} of it.")
            break
    return text


def plot(results: list[tuple[str, list[dict], float]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False)
    for ax, (label, rows, usable) in zip(axes[0], results):
        m = max(r["microbatches"] for r in rows)
        for rc, marker in zip(RECOMPUTE, "o^s"):
            sel = [r for r in rows if r["microbatches"] == m and r["recompute"] == rc]
            ax.scatter([r["step_ms"] for r in sel], [r["peak_gib"] for r in sel], marker=marker,
                       label="no recompute" if rc == "none" else f"{rc} recompute")
            for r in sel:
                ax.annotate(r["schedule"], (r["step_ms"], r["peak_gib"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.axhline(usable, color="black", linestyle="--", linewidth=1, label=f"usable {usable:g} GiB")
        ax.set_yscale("log")
        ax.set_title(f"{label}, {m} micro-batches", fontsize=10)
        ax.set_xlabel("step time (ms)")
        ax.set_ylabel("worst rank's peak (GiB, log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    replace_atomically(path, lambda tmp: save(fig, tmp))


def replace_atomically(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``, with
    the permissions a plain open() would give (mkstemp's 0600 would outlive the rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, lines, notes = [], ["# Schedules compared", "",
                                 "Generated by `python benchmarks/compare_schedules.py`; every number below is "
                                 "a pipesim simulation (see the script's docstring for the columns).", ""], []
    for label, name in SCENARIOS:
        rows, skipped = rows_for(ROOT / "scenarios" / name)
        hw = load_scenario(ROOT / "scenarios" / name).hardware
        results.append((label, rows, hw.memory_gib - hw.reserve_gib))
        notes.append(findings(label, rows))
        lines += [f"## {label} (`scenarios/{name}`)", ""] + table(rows) + [""]
        lines += [f"- skipped at M = {m}, {rc} recompute: {fam}: {why}" for m, rc, fam, why in skipped] + [""]
    lines[4:4] = ["## What the numbers show", ""] + [n + "\n" for n in notes] + \
                 ["![peak against step time](compare_schedules.png)", ""]
    md = args.out / "compare_schedules.md"
    replace_atomically(md, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    plot(results, args.out / "compare_schedules.png")
    print("\n\n".join(notes))
    print(f"wrote {md} and {args.out / 'compare_schedules.png'}")


if __name__ == "__main__":
    main()
