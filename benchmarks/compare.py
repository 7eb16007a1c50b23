"""Compare every schedule on one model and layout: per-rank peak memory, step time, bubble.

    python benchmarks/compare.py [SCENARIO] [--microbatches 32] [-o results/compare]

Each schedule runs the scenario's model, parallel layout and training settings with an
automatic layer split over that schedule's stage count (V-shaped and interleaved schedules have
2·pp stages), and the same micro-batch count. Writes ``compare.csv`` and ``compare.png``
(peak per rank, one line per schedule, device capacity dashed).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pipesim  # noqa: E402
import schedules  # noqa: E402
from pipesim.export import text_writer, write_outputs  # noqa: E402
from pipesim.placement import auto_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GIB = 2 ** 30


def run_all(sc, microbatches):
    out = {}
    for name in schedules.names():
        try:
            sch = schedules.build(name, sc.parallel.pp, microbatches)
        except schedules.ScheduleError as exc:
            print(f"{name:12s} skipped: {exc}")
            continue
        if sc.model.layers < sch.num_stages:
            print(f"{name:12s} skipped: {sc.model.layers} layers < {sch.num_stages} stages")
            continue
        s = dataclasses.replace(sc, microbatches=microbatches,
                                schedule=dataclasses.replace(sc.schedule, name=name, chunks=None),
                                layers_per_stage=auto_split(sc.model.layers, sch.num_stages))
        out[name] = pipesim.simulate(s, sch)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "v3_pp16.toml"))
    ap.add_argument("--microbatches", type=int, default=32)
    ap.add_argument("-o", "--output", default="results/compare")
    args = ap.parse_args()
    sc = pipesim.load_scenario(args.scenario)
    results = run_all(sc, args.microbatches)
    lines = ["schedule,stages,max_peak_gib,min_peak_gib,peak_rank,step_ms,mean_bubble,fits"]
    print(f"{'schedule':12s} {'stages':>6s} {'max peak GiB':>12s} {'min peak GiB':>12s} {'peak rank':>9s} "
          f"{'step ms':>9s} {'bubble':>7s} fits")
    for name, res in results.items():
        peaks = [p.bytes / GIB for p in res.peaks]
        bubble = sum(res.bubble_fraction(r) for r in range(res.ranks)) / res.ranks
        fits = all(res.fits(r) for r in range(res.ranks))
        print(f"{name:12s} {res.workload.schedule.num_stages:6d} {max(peaks):12.2f} {min(peaks):12.2f} "
              f"{res.peak_rank:9d} {res.makespan * 1e3:9.1f} {bubble:7.1%} {'yes' if fits else 'NO'}")
        lines.append(f"{name},{res.workload.schedule.num_stages},{max(peaks):.4f},{min(peaks):.4f},"
                     f"{res.peak_rank},{res.makespan * 1e3:.3f},{bubble:.4f},{fits}")

    def png(path):
        fig, ax = plt.subplots(figsize=(10, 5))
        for name, res in results.items():
            ax.plot(range(res.ranks), [p.bytes / GIB for p in res.peaks], marker="o", label=name)
        cap = sc.hardware.memory_gib
        ax.axhline(cap, color="black", linestyle="--", linewidth=1, label=f"device {cap:.0f} GiB")
        ax.set_xlabel("pipeline rank")
        ax.set_ylabel("peak memory (GiB)")
        ax.set_title(f"{sc.name}: peak per rank by schedule, pp={sc.parallel.pp}, "
                     f"{args.microbatches} micro-batches")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    files = write_outputs(Path(args.output), {"compare.csv": text_writer("\n".join(lines) + "\n"),
                                              "compare.png": png})
    print("wrote " + ", ".join(map(str, files)))


if __name__ == "__main__":
    main()
