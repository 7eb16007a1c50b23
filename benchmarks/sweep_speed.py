"""Grid-sweep speed over scenarios/v3_pp16.toml (32 micro-batches): local processes (1 worker and
all cores) and a dask LocalCluster (1 and 2 worker processes).

    python benchmarks/sweep_speed.py [--points N] [--grid fits|distinct] [--no-dask] [--no-reuse]

Two grids of about N points (default 10,000):

- ``fits`` (default), the question a user asks: every schedule family x recompute policy x
  micro-batch size x ZeRO level x allocator fragmentation x device size. ZeRO, fragmentation and
  device size change memory only, so the points share the SimPy runs of 7 x 3 x 2 = 42 steps
  (``pipesim.grid._spans``) and pay only for their scenario, workload and peaks;
- ``distinct``: recompute x efficiency x p2p latency x p2p bandwidth, each changing the op
  times: every point is its own SimPy run (the worst case, nothing to reuse).

The fits grid has at least 1,008 points (one device size). ``--no-reuse`` also times one worker
with the run cache off, to show what it saves. Prints wall seconds, ms per point, the load
average and (one worker) CPU seconds; the targets (10,000 points under 60 s on 2 cores; dask 2
workers at least 1.7x one) are read from the output, never asserted. On a shared machine the
wall times are noisy and the CPU time of one worker is the steadier figure: quote both.
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
SCHEDULES = ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-v", "dualpipe", "dualpipev"]
DEVICES = [40, 48, 64, 80, 94, 96, 120, 141, 180, 192, 256, 288]


def axes(kind: str, n: int) -> dict:
    """About ``n`` points of grid ``kind``; the memory-only keys last, so that the points of one
    chunk (``grid.CHUNK``, consecutive in grid order) share their run."""
    if kind == "fits":
        head = {"schedule.name": SCHEDULES, "training.recompute": ["none", "selective", "full"],
                "training.micro_batch_size": [1, 2], "training.zero": ["none", "os", "os+g", "os+g+params"],
                "overheads.fragmentation": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]}
        per = grid.size(head)
        return {**head, "hardware.memory_gib": DEVICES[:max(1, min(len(DEVICES), math.ceil(n / per)))]}
    head = {"training.recompute": ["full", "selective"],
            "hardware.efficiency": [round(0.2 + 0.01 * i, 3) for i in range(25)],
            "hardware.p2p_latency_us": [5 * (i + 1) for i in range(8)]}
    return {**head, "hardware.p2p_bandwidth_gbps": [25 + 5 * i for i in range(max(1, math.ceil(n / grid.size(head))))]}


def timed(label, pts, **kw) -> float:
    """Wall seconds of one grid run, printed with the machine's load average before it and, for
    one worker (this process), the CPU seconds it took: a shared machine stretches the wall time
    of a run, not its CPU time. (A pool's CPU time is not shown: RUSAGE_CHILDREN misses part of
    its workers'.)"""
    load = os.getloadavg()[0]
    c, t = time.process_time(), time.perf_counter()
    rows = grid.run(SCENARIO, pts, **kw)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    ok = sum(r["status"] == "ok" for r in rows)
    used = f"  CPU {dc:7.2f} s {dc / len(rows) * 1e3:6.2f} ms/point" if kw.get("workers") == 1 else ""
    print(f"{label:34s} {len(rows):6d} points ({ok} valid)  wall {dt:7.2f} s {dt / len(rows) * 1e3:6.2f} "
          f"ms/point  (load {load:.1f}){used}", flush=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--grid", choices=("fits", "distinct"), default="fits")
    ap.add_argument("--no-dask", action="store_true", help="skip the dask LocalCluster runs")
    ap.add_argument("--no-reuse", action="store_true", help="also time local processes without the run cache")
    ap.add_argument("--workers", type=int, default=grid.cores(), help="the many-worker count (default all cores)")
    a = ap.parse_args()
    ax = axes(a.grid, a.points)
    pts = grid.points(ax)
    print(f"grid '{a.grid}': {' x '.join(str(len(v)) for v in ax.values())} = {len(pts)} points over "
          f"{Path(SCENARIO).name}; {grid.cores()} cores (a shared machine gives noisy figures)")
    one = timed("processes, 1 worker", pts, workers=1)
    many = timed(f"processes, {a.workers} workers", pts, workers=a.workers)
    print(f"speed-up {a.workers} workers / 1: {one / many:.2f}x; target: 10,000 points under 60 s on 2 cores")
    if a.no_reuse:
        keep = grid.RUN_CACHE
        grid.RUN_CACHE = 0
        grid._runs.clear()
        try:
            bare = timed("processes, 1 worker, no reuse", pts, workers=1)
        finally:
            grid.RUN_CACHE = keep
        print(f"run reuse saves {1 - one / bare:.0%} of one worker's time")
    if a.no_dask:
        return
    from distributed import Client, LocalCluster

    times = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
                Client(lc) as client:
            before = client.run(time.process_time)       # the workers are up before the clock starts
            times[n] = timed(f"dask LocalCluster, {n} worker(s)", pts, dask=client)
            used = sum(client.run(time.process_time).values()) - sum(before.values())
            print(f"{'':34s} the workers' CPU {used:7.2f} s {used / len(pts) * 1e3:6.2f} ms/point")
    print(f"dask speed-up 2 workers / 1: {times[1] / times[2]:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
