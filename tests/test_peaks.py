"""The per-atom peak search (``pipesim.peaks``) against the plain method it replaces: lay out the
whole per-layer ledger, take each rank's running sum and its first maximum. Both must name the
same record: bytes, time, op and every category of the breakdown."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import pipesim
import schedules
from pipesim.memory import CATEGORIES
from pipesim.placement import auto_split

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def ledger_peaks(res):
    """Each rank's peak from the full ledger: cumulative sum, first argmax, bincount."""
    out = []
    led = res.ledger
    for r in range(res.ranks):
        rec = res.records(r)
        _, tot = res.total(r)
        i = int(np.argmax(tot))
        lo = rec.start
        by_cat = np.zeros(len(CATEGORIES), dtype=np.int64)
        np.add.at(by_cat, led.cat[lo:lo + i + 1].astype(np.int64), led.delta[lo:lo + i + 1])
        breakdown = dict(zip(CATEGORIES, by_cat.tolist()))
        breakdown["fragmentation"] = int(tot[i]) - int(by_cat.sum())
        out.append((int(tot[i]), float(led.time[lo + i]), res._op_at(r, int(led.atom[lo + i]), float(led.time[lo + i])),
                    breakdown))
    return out


def same(res):
    fast = [(p.bytes, p.time, p.op, p.breakdown) for p in res.peaks]
    assert fast == ledger_peaks(res)


def scenario(name, pp, m, chunks=None, **hardware):
    sc = pipesim.load_scenario(SCENARIOS / "tiny.toml")
    sch = schedules.build(name, pp, m, chunks)
    return dataclasses.replace(
        sc, microbatches=m, parallel=dataclasses.replace(sc.parallel, pp=pp),
        schedule=dataclasses.replace(sc.schedule, name=name, chunks=chunks),
        hardware=dataclasses.replace(sc.hardware, **hardware),
        layers_per_stage=auto_split(sc.model.layers, sch.num_stages))


CASES = [(n, pp, m, c) for n, c in (("gpipe", None), ("1f1b", None), ("interleaved", 2), ("zb-h1", None),
                                    ("zb-v", None), ("dualpipe", None), ("dualpipev", None))
         for pp, m in ((2, 4), (4, 8), (4, 12))]


@pytest.mark.parametrize("name,pp,m,chunks", CASES)
def test_same_peak_as_the_full_ledger(name, pp, m, chunks):
    try:
        sc = scenario(name, pp, m, chunks)
    except schedules.ScheduleError:
        pytest.skip("size not allowed by the family")
    same(pipesim.simulate(sc))


@pytest.mark.parametrize("name", ["1f1b", "dualpipe", "zb-v"])
def test_same_peak_with_slow_links_and_with_instant_ones(name):
    # a hop longer than the ops moves send-buffer releases several ops later; a zero hop puts
    # them at the next op's start
    same(pipesim.simulate(scenario(name, 4, 8, p2p_latency_us=5e4, p2p_bandwidth_gbps=0.01)))
    same(pipesim.simulate(scenario(name, 4, 8, p2p_latency_us=0.0, p2p_bandwidth_gbps=1e12)))


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_same_peak_on_every_bundled_scenario(path):
    same(pipesim.simulate(pipesim.load_scenario(path)))
