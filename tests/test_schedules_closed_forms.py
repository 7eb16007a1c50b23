"""Closed forms the papers state, checked on the built orders.

Activations in flight per rank are counted at op boundaries: +1 at each F atom, -1 at each B
atom (the B frees the stage's activations; a deferred W keeps only the weight-gradient inputs,
so it is not counted), in chunk units (one stage's activations for one micro-batch).

Bubbles use ``pipesim.simulator.unit_times`` (the simulator with fixed op times and zero
communication): bubble = makespan - busy.
"""
from __future__ import annotations

import pytest

import schedules
from pipesim.simulator import Timing, bubbles, critical_path, run, unit_times

PPS = (1, 2, 3, 4, 8, 16)


def peaks(s: schedules.Schedule) -> list[int]:
    out = []
    for ops in s.ranks:
        live = peak = 0
        for op in ops:
            for atom in op.atoms():
                live += {"F": 1, "B": -1}.get(atom.kind, 0)
            peak = max(peak, live)
        out.append(peak)
    return out


def sizes(pp: int) -> list[int]:
    return sorted({1, 2, pp, pp + 1, 2 * pp - 1, 2 * pp, 3 * pp})


@pytest.mark.parametrize("pp", PPS)
def test_peak_in_flight(pp):
    for M in sizes(pp):
        assert peaks(schedules.build("gpipe", pp, M)) == [M] * pp
        assert peaks(schedules.build("1f1b", pp, M)) == [min(pp - r, M) for r in range(pp)]
        # ZB-H1 keeps 1F1B's activation memory (Qi et al. 2024, Sec. 3.1)
        assert peaks(schedules.build("zb-h1", pp, M)) == [min(pp - r, M) for r in range(pp)]
        # ZB-V: forwards before rank r's first B are 2pp - r - 1 of chunk 0 and r + 1 of chunk 1
        # (phases 1-3), each capped by M
        assert peaks(schedules.build("zb-v", pp, M)) == [min(2 * pp - r - 1, M) + min(r + 1, M) for r in range(pp)]


@pytest.mark.parametrize("pp", PPS)
def test_zb_v_peak_is_1f1b_rank0_peak(pp):
    # the ZB paper's claim: with enough micro-batches every rank holds 2pp half-stage
    # activations = pp whole stages, what 1F1B holds on rank 0
    for M in (2 * pp - 1, 2 * pp, 3 * pp):
        assert peaks(schedules.build("zb-v", pp, M)) == [2 * pp] * pp


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("V", (2, 3, 4))
def test_interleaved_peak_is_megatron_warmup_plus_one(pp, V):
    for M in (pp, 2 * pp, 3 * pp):
        expected = [min((pp - r - 1) * 2 + (V - 1) * pp + 1, V * M) for r in range(pp)]
        assert peaks(schedules.build("interleaved", pp, M, V)) == expected


DURATIONS = [(1.0, 2.0, 1.0), (2.0, 3.0, 1.0), (1.0, 2.0, 0.5), (1.0, 3.0, 1.0)]


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("F,B,W", DURATIONS)
def test_bubble_1f1b_and_gpipe(pp, F, B, W):
    # (PP-1)(F+B): the DualPipe README table, and Narayanan et al. for GPipe/1F1B
    for name in ("1f1b", "gpipe"):
        for M in sizes(pp):
            spans, makespan = unit_times(schedules.build(name, pp, M), F, B, W)
            assert bubbles(spans, makespan) == pytest.approx([(pp - 1) * (F + B)] * pp)
            assert makespan == pytest.approx((M + pp - 1) * (F + B))


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("F,B,W", DURATIONS)
def test_bubble_zb_h1(pp, F, B, W):
    # (PP-1)(F+B-2W), B a full backward (DualPipe README table "ZB1P"); needs M >= pp so the
    # steady phase exists on every rank, and W <= F as in every case here
    for M in (pp, pp + 1, 2 * pp, 3 * pp):
        spans, makespan = unit_times(schedules.build("zb-h1", pp, M), F, B, W)
        assert bubbles(spans, makespan) == pytest.approx([(pp - 1) * (F + B - 2 * W)] * pp)


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("V", (2, 3, 4))
def test_bubble_interleaved(pp, V):
    # Narayanan et al. 2021: (pp-1)(F+B)/V in whole-stage times, i.e. (pp-1)(F+B) in the
    # per-chunk times the ops take here
    for F, B in ((1.0, 2.0), (2.0, 3.0)):
        for M in (pp, 2 * pp):
            spans, makespan = unit_times(schedules.build("interleaved", pp, M, V), F, B)
            assert bubbles(spans, makespan) == pytest.approx([(pp - 1) * (F + B)] * pp)


@pytest.mark.parametrize("pp", PPS)
def test_bubble_zb_v_equal_times(pp):
    # F = B_input = W = 1 per chunk (B full = 2), the ZB paper's setting for ZB-V: each rank
    # idles pp - 1 chunk-op units (F0 of mb 0 reaches rank r at t = r; the mirror ramp-down
    # leaves pp - 1 - r at the end), half of ZB-H1's pp - 1 whole-stage units
    for M in (2 * pp - 1, 2 * pp, 3 * pp):
        spans, makespan = unit_times(schedules.build("zb-v", pp, M), 1.0, 2.0, 1.0)
        assert bubbles(spans, makespan) == pytest.approx([pp - 1] * pp)
        assert makespan == pytest.approx(6 * M + pp - 1)


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-v", "dualpipe", "dualpipev"])
@pytest.mark.parametrize("F,B,W,FB", [(1.0, 2.0, 1.0, None), (2.0, 3.0, 1.0, 4.0), (1.0, 2.5, 0.5, None)])
def test_critical_path_equals_timing_makespan(name, F, B, W, FB):
    module = schedules._FAMILIES[name].split(":")[0]
    pytest.importorskip(module)
    for pp, M in ((2, 4), (4, 8), (3, 6), (8, 16)):
        try:
            s = schedules.build(name, pp, M)
        except schedules.ScheduleError:
            continue
        spans, makespan = unit_times(s, F, B, W, FB)
        S = s.num_stages
        sp = run(s, Timing(f=(F,) * S, b=(B,) * S, w=(W,) * S, hop=(0.0,) * S,
                           fb=None if FB is None else (FB,) * S))
        path = critical_path(sp)
        # a chain without gaps from t = 0 to the makespan: it starts with a first-stage forward,
        # each atom starts when the one before it on the chain ends, and their times add up
        first = path[0]
        assert sp.start[first] == 0 and sp.kind[first] == 0 and sp.stage[first] in (0, S - 1)
        for a, b in zip(path, path[1:]):
            assert sp.start[b] == pytest.approx(sp.end[a])
        assert sum(sp.end[i] - sp.start[i] for i in path) == pytest.approx(makespan)
        assert sp.end[path[-1]] == pytest.approx(makespan)
