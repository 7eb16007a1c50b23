"""Simulator speed: simulated ops per second, end to end (scenario → Result, no plots), against a
bare SimPy 1F1B baseline timed in the same run.

    python benchmarks/speed.py [--repeat 3]

Cases: V3 1F1B at pp 16 with 1024 micro-batches; 1F1B at pp 64 with 1024 (DeepSeek-V3's
dimensions with 64 layers, since 61 layers cannot fill 64 stages); V3 DualPipe at pp 16 with
256. The baseline is the least a SimPy pipeline simulation can do: one process per rank, one
timeout per op, one integer for memory, no dependencies between ranks. pipesim does more per
op (dependencies, p2p delays, per-layer memory accounting, peaks and breakdowns) but asks SimPy
for less: a rank process yields only when an input's producer has not run yet (about once per
F/B pair in 1F1B), and memory is laid over the op spans with numpy afterwards, peaks found per
op. Targets: ratio >= 1.0; V3 DualPipe pp 16 x 256 under 0.5 s.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import simpy

import pipesim
from pipesim.model import costs
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
        t0 = time.perf_counter()
        res = pipesim.simulate(sc)
        _ = res.peaks
        best = min(best, time.perf_counter() - t0)
    return best, len(res.spans.start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'case':34s} {'ops':>8s} {'pipesim s':>10s} {'ops/s':>10s} {'baseline ops/s':>15s} {'ratio':>6s}")
    for label, pp, m, name, layers in (("V3 1F1B pp16 x 1024", 16, 1024, "1f1b", None),
                                       ("V3-dims 64 layers 1F1B pp64 x 1024", 64, 1024, "1f1b", 64),
                                       ("V3 DualPipe pp16 x 256", 16, 256, "dualpipe", None)):
        sc = scenario(pp, m, name, layers)
        t, n = timed(sc, args.repeat)
        bt, bn = min(baseline(pp, m) for _ in range(args.repeat))
        print(f"{label:34s} {n:8d} {t:10.3f} {n / t:10.0f} {bn / bt:15.0f} {(n / t) / (bn / bt):6.2f}")


if __name__ == "__main__":
    main()
