"""Output speed and size: ``pipesim run`` end to end (a fresh process, as a user or CI runs it),
then where the time goes in-process (simulation, each file), and timeline.csv's size plain and
gzip-compressed.

    python benchmarks/outputs_speed.py [--repeat 1] [--profile]

Cases (issue 15), each timed as ``python -m pipesim run ... --quiet -o <tmp>``:
  V3 1F1B pp16 x 1024 micro-batches, every output     target under 10 s (22 s before issue 15)
  1F1B pp64 x 1024 (V3 with 64 layers, auto split)    target under 30 s
  scenarios/v3_pp16.toml with ``--plots none``        target under 1 s
The pp64 case is the one benchmarks/speed.py builds (64 layers, since 61 cannot fill 64 stages),
here through ``--set`` so the CLI runs it. Times are wall-clock on this machine: when other jobs
share it, they can be twice the quiet figures. ``--profile`` prints cProfile's top functions of
the in-process pp16 x 1024 run. Nothing here is asserted; it prints figures and their ratio to
the target.
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PP16 = ROOT / "scenarios" / "v3_pp16.toml"
CASES = [
    ("V3 1F1B pp16 x 1024, every output", [PP16, "--set", "training.microbatches=1024"], 10.0),
    ("1F1B pp64 x 1024 (64 layers), every output",
     [PP16, "--set", "training.microbatches=1024", "--set", "parallel.pp=64", "--set", "model.layers=64",
      "--set", "placement.layers_per_stage=auto"], 30.0),
    ("v3_pp16 --plots none", [PP16, "--plots", "none"], 1.0),
]


def end_to_end(args, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pipesim", "run", *map(str, args), "--quiet",
                                "-o", Path(tmp) / "out"], capture_output=True, text=True, cwd=ROOT)
            best = min(best, time.perf_counter() - t0)
        if p.returncode not in (0, 1):
            sys.exit(f"pipesim run failed ({p.returncode}): {p.stderr.strip()}")
    return best


def in_process(profile: bool) -> None:
    """The pp16 x 1024 run step by step, and timeline.csv's size plain and gzip."""
    import pipesim
    from pipesim.export import summary_json, text_writer, timeline_csv, trace_json
    from pipesim.plots import memory_png, peaks_png, schedule_png

    sc = pipesim.load_scenario(PP16)
    sc = dataclasses.replace(sc, microbatches=1024)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    res = pipesim.simulate(sc)
    steps = [("simulate (with peaks)", time.perf_counter() - t0)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = [("summary.json", lambda p: text_writer(summary_json(res))(p)),
                 ("timeline.csv", lambda p: text_writer(timeline_csv(res))(p)),
                 ("timeline.csv.gz", lambda p: text_writer(timeline_csv(res))(p)),
                 ("trace.json", lambda p: text_writer(trace_json(res))(p)),
                 ("trace.json.gz", lambda p: text_writer(trace_json(res))(p)),
                 ("memory.png", lambda p: memory_png(res, p)), ("peaks.png", lambda p: peaks_png(res, p)),
                 ("schedule.png", lambda p: schedule_png(res, p))]
        sizes = {}
        for name, write in files:
            t0 = time.perf_counter()
            write(out / name)
            steps.append((name, time.perf_counter() - t0))
            sizes[name] = (out / name).stat().st_size
    if prof:
        prof.disable()
    print(f"\nin-process, V3 1F1B pp16 x 1024: {len(res.ledger):,} ledger records, {len(res.spans.start):,} atoms")
    for name, sec in steps:
        size = f"{sizes[name] / 2 ** 20:8.1f} MiB" if name in sizes else ""
        print(f"  {name:24s} {sec:7.2f} s  {size}")
    print(f"  timeline.csv gzip ratio {sizes['timeline.csv'] / sizes['timeline.csv.gz']:.1f}x, "
          f"{sizes['timeline.csv'] / len(res.ledger):.0f} bytes a record plain")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the best is shown (default 1)")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process pp16 x 1024 run")
    a = ap.parse_args()
    print(f"{'case':48s} {'seconds':>8s} {'target':>7s} {'ratio':>6s}")
    for name, args, target in CASES:
        sec = end_to_end(args, a.repeat)
        print(f"{name:48s} {sec:8.2f} {target:7.1f} {sec / target:6.2f}", flush=True)
    in_process(a.profile)


if __name__ == "__main__":
    main()
