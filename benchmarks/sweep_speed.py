"""Grid-sweep speed: a 10,000-point grid over scenarios/v3_pp16.toml (32 micro-batches) on local
processes (1 and all cores) and on a dask LocalCluster (1 and 2 workers).

    python benchmarks/sweep_speed.py [--points N] [--no-dask]

Prints seconds, ms per point and the speed-ups; the targets (under 60 s for 10,000 points on 2
cores; dask 2 workers >= 1.7x one) are read from the output, never asserted. On a shared machine
the figures are noisy.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipesim import grid  # noqa: E402

SCENARIO = str(Path(__file__).resolve().parents[1] / "scenarios" / "v3_pp16.toml")


def axes(n: int) -> dict:
    """A grid of about ``n`` points over knobs that change the simulation (efficiency, bandwidth,
    ZeRO, recompute) and one that does not (device memory)."""
    zero = ["none", "os", "os+g", "os+g+params"]
    recompute = ["full", "selective"]
    eff = [round(0.2 + 0.01 * i, 3) for i in range(25)]
    bw = [25 + 5 * i for i in range(max(1, math.ceil(n / (len(zero) * len(recompute) * len(eff) * 4))))]
    return {"training.zero": zero, "training.recompute": recompute, "hardware.efficiency": eff,
            "hardware.p2p_bandwidth_gbps": bw, "hardware.memory_gib": [80, 96, 141, 192]}


def timed(label, pts, **kw) -> float:
    t = time.perf_counter()
    rows = grid.run(SCENARIO, pts, **kw)
    dt = time.perf_counter() - t
    print(f"{label:32s} {len(rows):6d} points {dt:8.2f} s {dt / len(rows) * 1e3:7.2f} ms/point")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--no-dask", action="store_true")
    a = ap.parse_args()
    pts = grid.points(axes(a.points))
    cores = os.cpu_count() or 1
    print(f"{len(pts)} points over {SCENARIO} on {cores} cores (shared machines give noisy figures)")
    one = timed("processes, 1 worker", pts, workers=1)
    many = timed(f"processes, {cores} workers", pts, workers=cores)
    print(f"speed-up {one / many:.2f}x; target: 10,000 points under 60 s on 2 cores")
    if a.no_dask:
        return
    from distributed import Client, LocalCluster

    times = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
                Client(lc) as client:
            times[n] = timed(f"dask LocalCluster, {n} worker(s)", pts, dask=client)
    print(f"dask speed-up 2 workers / 1: {times[1] / times[2]:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
