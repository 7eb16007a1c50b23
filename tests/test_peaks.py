"""Peaks (``pipesim.peaks``) against what the ledger's records say when summed independently
(bytes, time, op and the breakdown, with fragmentation computed here from its definition), and
against hand-counted cases: a peak between ops made of p2p buffers, an FB posting both inputs."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import pipesim
import schedules
from pipesim.memory import CATEGORIES
from pipesim.placement import auto_split

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def ledger_peaks(res, categories=None):
    """Each rank's peak from the full ledger: cumulative sum, first argmax, bincount (and, into
    ``categories`` if given, the category of each peak record)."""
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
        frag = int(np.ceil(int(by_cat.sum()) * res.fragmentation))   # its definition: ceil(f * allocated)
        assert int(tot[i]) == int(by_cat.sum()) + frag
        breakdown["fragmentation"] = frag
        if categories is not None:
            categories.append(CATEGORIES[led.cat[lo + i]])
        out.append((int(tot[i]), float(led.time[lo + i]), res._op_at(r, int(led.atom[lo + i]), float(led.time[lo + i])),
                    breakdown))
    return out


def same(res):
    fast = [(p.bytes, p.time, p.op, p.breakdown) for p in res.peaks]
    assert fast == ledger_peaks(res)


def scenario(name, pp, m, chunks=None, rounding=None, **hardware):
    sc = pipesim.load_scenario(SCENARIOS / "tiny.toml")
    sch = schedules.build(name, pp, m, chunks)
    overheads = sc.overheads if rounding is None else dataclasses.replace(sc.overheads, allocator_rounding=rounding)
    return dataclasses.replace(
        sc, microbatches=m, parallel=dataclasses.replace(sc.parallel, pp=pp),
        schedule=dataclasses.replace(sc.schedule, name=name, chunks=chunks),
        hardware=dataclasses.replace(sc.hardware, **hardware), overheads=overheads,
        layers_per_stage=auto_split(sc.model.layers, sch.num_stages))


CASES = [(n, pp, m, c) for n, c in (("gpipe", None), ("1f1b", None), ("interleaved", 2), ("zb-h1", None),
                                    ("zb-v", None), ("dualpipe", None), ("dualpipev", None))
         for pp, m in ((2, 4), (4, 8), (4, 12))]


@pytest.mark.parametrize("name,pp,m,chunks", CASES)
def test_peak_is_the_ledgers_first_maximum(name, pp, m, chunks):
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


@pytest.mark.parametrize("name,chunks", [("gpipe", None), ("1f1b", None), ("zb-h1", None), ("zb-v", None),
                                         ("interleaved", 2), ("dualpipev", None)])
def test_same_peak_when_it_sits_between_ops(name, chunks):
    # With 1 MiB allocator rounding the tiny model's boundary tensors (a few KiB) each take 1 MiB,
    # so rank 0 peaks in a slot between two ops, where p2p buffers pile up.
    res = pipesim.simulate(scenario(name, 4, 8, chunks, rounding=2 ** 20, p2p_latency_us=0.0,
                                    p2p_bandwidth_gbps=1e12))
    categories = []
    assert [(p.bytes, p.time, p.op, p.breakdown) for p in res.peaks] == ledger_peaks(res, categories)
    assert categories[0] == "p2p"
    if name == "gpipe":
        # Rank 0 peaks after its last forward F7, before B0. The hop is shorter than a forward, so
        # F6's output arrived during F7 and is returned only when the next op (B0) starts; F7's
        # output was just sent; B0's receive was just posted: 3 buffers of 1 MiB.
        assert res.peaks[0].op == "F mb 7 stage 0"
        assert res.peaks[0].breakdown["p2p"] == 3 * 2 ** 20


def test_an_fb_posts_both_inputs_before_it_starts():
    # DualPipe's overlapped F&B waits for both inputs, so both receive buffers exist before it
    # starts; the backward half's is handed over when that half starts
    res = pipesim.simulate(pipesim.load_scenario(SCENARIOS / "v3_dualpipe.toml"))
    sp, p2p = res.spans, res.p2p
    halves = (p2p.recv > 0) & (sp.op_index[p2p.recv - 1] == sp.op_index[p2p.recv]) & \
             (sp.rank[p2p.recv - 1] == sp.rank[p2p.recv])
    assert halves.sum() > 100
    fb_start = sp.start[p2p.recv[halves] - 1]
    assert (p2p.posted_time[halves] <= fb_start).all()
    assert (p2p.consumed_time[halves] == sp.start[p2p.recv[halves]]).all()
    assert (p2p.posted_slot[halves] == p2p.recv[halves] - 1 + p2p.recv_rank[halves]).all()
    same(res)
