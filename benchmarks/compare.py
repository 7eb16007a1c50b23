"""Compare every schedule on one model and layout: per-rank peak memory, step time, bubble.

    python benchmarks/compare.py [SCENARIO] [--microbatches 32] [-o results/compare]

A thin caller of ``pipesim.compare`` (also ``python -m pipesim compare``) with the paper's case
and 32 micro-batches as defaults. Each schedule runs the scenario's model, parallel layout and
training settings; a schedule with another stage count than the scenario's (V-shaped and
interleaved schedules have 2·pp stages) gets an automatic layer split. Writes ``compare.csv`` and
``compare.png`` (peak per rank, one line per schedule, device capacity dashed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipesim import compare
from pipesim.scenario import ScenarioError
from pipesim.export import text_writer, write_outputs

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "v3_pp16.toml"))
    ap.add_argument("--microbatches", type=int, default=32)
    ap.add_argument("-o", "--output", default="results/compare")
    args = ap.parse_args()
    try:
        cmp = compare.compare(args.scenario, microbatches=args.microbatches)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(compare.table(cmp))
    files = write_outputs(Path(args.output), {"compare.csv": text_writer(compare.csv_text(cmp)),
                                              "compare.png": lambda p: compare.png(cmp, p)})
    print("wrote " + ", ".join(map(str, files)))


if __name__ == "__main__":
    main()
