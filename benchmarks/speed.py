"""Simulator speed: simulated ops per second, end to end (scenario → Result with its peaks, no
plots), against a bare SimPy 1F1B baseline of the same op count timed in the same run.

    python benchmarks/speed.py [--repeat 3]

Cases: V3 1F1B at pp 16 with 1024 micro-batches; 1F1B at pp 64 with 1024 (DeepSeek-V3's
dimensions with 64 layers, since 61 layers cannot fill 64 stages); V3 DualPipe at pp 16 with
256. Communication is modelled in all of them (p2p links with shared bandwidth, EP all-to-all,
TP collectives, FB phase overlap; ``pipesim.simulator``). The baseline is the least a SimPy
pipeline simulation can do: one process per rank, one timeout per op, one integer for memory,
no dependencies between ranks. pipesim does more per op: it waits for inputs, sends each
boundary tensor over a link (a timer and a completion event), and lays memory over the spans
with numpy afterwards, peaks found on the per-layer ledger.

Targets (issue 13): V3 DualPipe pp16 x 256 under 0.3 s, 1F1B pp64 x 1024 under 1.5 s.

Two shortcuts were measured and dropped, each buying under 20% of end-to-end time: pausing
Python's cyclic collector during a run (``gc off`` column: the same steps with the collector
paused, beside the run as it is), and finding peaks per atom without the ledger
(6-9%, ``pipesim.peaks``).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import simpy

import pipesim
from pipesim.model import costs
from pipesim.simulator import overlap
import schedules

ROOT = Path(__file__).resolve().parent.parent


def scenario(pp, microbatches, schedule, layers=None):
    sc = pipesim.load_scenario(ROOT / "scenarios" / ("v3_dualpipe.toml" if schedule == "dualpipe" else "v3_pp16.toml"))
    model = sc.model if layers is None else dataclasses.replace(sc.model, layers=layers)
    from pipesim.placement import auto_split
    sch = schedules.build(schedule, pp, microbatches)
    return dataclasses.replace(
        sc, model=model, microbatches=microbatches,
        parallel=dataclasses.replace(sc.parallel, pp=pp),
        schedule=dataclasses.replace(sc.schedule, name=schedule, chunks=None),
        layers_per_stage=auto_split(model.layers, sch.num_stages) if (layers or pp != 16) else sc.layers_per_stage)


def baseline(pp, microbatches, op_time=1.0):
    """Bare SimPy 1F1B: per rank one process that generates its own 1F1B order (warm-up
    forwards, steady F/B pairs, cool-down backwards), one timeout per op, an integer for memory."""
    env = simpy.Environment()
    mem = [0] * pp

    def rank(r):
        warm = min(pp - r - 1, microbatches)
        for _ in range(warm):
            yield env.timeout(op_time)
            mem[r] += 1
        for _ in range(microbatches - warm):
            yield env.timeout(op_time)
            mem[r] += 1
            yield env.timeout(op_time)
            mem[r] -= 1
        for _ in range(warm):
            yield env.timeout(op_time)
            mem[r] -= 1

    t0 = time.perf_counter()
    for r in range(pp):
        env.process(rank(r))
    env.run()
    return time.perf_counter() - t0, 2 * pp * microbatches


def timed(sc, repeat):
    best = float("inf")
    for _ in range(repeat):
        schedules._build.cache_clear()   # time the schedule's and the model's work too
        costs._kind_costs.cache_clear()
        overlap.cache_clear()            # and the FB phase runs
        t0 = time.perf_counter()
        res = pipesim.simulate(sc)
        _ = res.peaks
        best = min(best, time.perf_counter() - t0)
    return best, len(res.spans.start)


def timed_gc_off(sc, repeat):
    """``timed`` with the cyclic collector paused (the dropped shortcut)."""
    import gc
    gc.disable()
    try:
        return timed(sc, repeat)[0]
    finally:
        gc.enable()


TARGETS = {"V3-dims 64 layers 1F1B pp64 x 1024": 1.5, "V3 DualPipe pp16 x 256": 0.3}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'case':34s} {'atoms':>8s} {'pipesim s':>10s} {'target':>7s} {'ops/s':>10s} "
          f"{'baseline ops/s':>15s} {'ratio':>6s} {'gc off s':>9s}")
    for label, pp, m, name, layers in (("V3 1F1B pp16 x 1024", 16, 1024, "1f1b", None),
                                       ("V3-dims 64 layers 1F1B pp64 x 1024", 64, 1024, "1f1b", 64),
                                       ("V3 DualPipe pp16 x 256", 16, 256, "dualpipe", None)):
        sc = scenario(pp, m, name, layers)
        t, n = timed(sc, args.repeat)
        bt, bn = min(baseline(pp, m) for _ in range(args.repeat))
        gc_off = timed_gc_off(sc, args.repeat)
        target = TARGETS.get(label)
        mark = "" if target is None else f"{target:.1f}{'ok' if t < target else '!!'}"
        print(f"{label:34s} {n:8d} {t:10.3f} {mark:>7s} {n / t:10.0f} {bn / bt:15.0f} "
              f"{(n / t) / (bn / bt):6.2f} {gc_off:9.3f}")


if __name__ == "__main__":
    main()
