"""trace.json's structure (pipesim.export.trace_json), checked against the run it describes and
against timeline.csv written from the same result: one process per rank, one slice per op in
the schedule, no two slices of a track overlapping after rounding to integer microseconds,
every p2p flow start paired with one end on the consumer's rank, and every memory counter equal
to the timeline's level at that microsecond (category by category, their sum the rank's total).

Two cases: tiny as it is (ops of a few microseconds, so rounding to integer microseconds
collapses records and tests the clamping) and DualPipe with fixed millisecond op times (FB ops,
two directions).
"""
import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

import pipesim
from pipesim.export import text_writer, timeline_csv, trace_json
from pipesim.memory import CATEGORIES

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml"
PP, M = 4, 8
FIXED = {"model.layers": 8, "model.dense_layers": 0, "timing.forward_ms": 1.0,
         "timing.backward_ms": 2.0, "timing.weight_ms": 1.0, "schedule.name": "dualpipe"}
CASES = {"tiny-1f1b": {}, "dualpipe-ms": FIXED}


@pytest.fixture(scope="module", params=sorted(CASES))
def written(request, tmp_path_factory):
    res = pipesim.simulate(pipesim.load_scenario(TINY, CASES[request.param]))
    out = tmp_path_factory.mktemp(request.param)
    text_writer(trace_json(res))(out / "trace.json")
    text_writer(timeline_csv(res))(out / "timeline.csv")
    trace = json.loads((out / "trace.json").read_text())
    with open(out / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return res, trace["traceEvents"], rows


def test_one_process_per_rank_named(written):
    res, events, _ = written
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {r: f"rank {r}" for r in range(PP)}
    assert sum(e["ph"] == "M" and e["name"] == "process_name" for e in events) == PP
    assert {e["pid"] for e in events if e["ph"] in "XC"} == set(range(PP))


def test_one_slice_per_op_none_overlapping(written):
    res, events, _ = written
    sch = res.workload.schedule
    slices = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            assert isinstance(e["ts"], int) and isinstance(e["dur"], int) and e["dur"] >= 0
            slices[(e["pid"], e["tid"])].append(e)
    for r in range(PP):
        ops = slices[(r, 0)]
        assert [e["args"]["op"] for e in ops] == [str(op) for op in sch.ranks[r]]   # the schedule's order
        for a, b in zip(ops, ops[1:]):
            assert a["ts"] + a["dur"] <= b["ts"], (a, b)
    fb = [e for ops in slices.values() for e in ops if " + " in e["name"]]
    if res.workload.schedule.num_directions > 1:
        # DualPipe: an FB op is one slice naming its two halves, one of each direction
        assert fb and all("dir 0" in e["name"] and "dir 1" in e["name"] for e in fb)
    else:
        assert not fb


def test_slices_follow_the_spans_within_rounding(written):
    res, events, _ = written
    sp = res.spans
    ops = iter(e for e in sorted((e for e in events if e["ph"] == "X"), key=lambda e: (e["pid"], e["ts"])))
    by_op = defaultdict(list)
    for i in range(len(sp.start)):
        by_op[(int(sp.rank[i]), int(sp.op_index[i]))].append(i)
    for (r, _), atoms in sorted(by_op.items()):
        e = next(ops)
        start_us = min(sp.start[i] for i in atoms) * 1e6
        end_us = max(sp.end[i] for i in atoms) * 1e6
        assert e["pid"] == r
        assert abs(e["ts"] - start_us) <= 0.5
        assert e["ts"] + e["dur"] <= end_us + 0.5


def test_flows_pair_up_one_per_cross_rank_tensor(written):
    res, events, _ = written
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert sum(e["ph"] == "s" for e in events) == len(starts)
    assert sum(e["ph"] == "f" for e in events) == len(ends)
    assert starts.keys() == ends.keys()
    # every micro-batch's activation crosses each of the pp-1 boundaries forward, and its
    # gradient each of them backward; DualPipe's two directions each carry half the micro-batches
    # across the same pp-1 boundaries
    assert len(starts) == 2 * (PP - 1) * M
    slices = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            slices[e["pid"]].append((e["ts"], e["ts"] + e["dur"]))
    for k, s in starts.items():
        f = ends[k]
        assert s["pid"] != f["pid"] and abs(s["pid"] - f["pid"]) in (1, PP - 1)
        assert f["ts"] >= s["ts"]
        assert any(a <= s["ts"] <= b for a, b in slices[s["pid"]])     # leaves from inside a slice
        assert any(a == f["ts"] for a, _ in slices[f["pid"]])          # lands on a slice's start


def test_counters_equal_the_timeline(written):
    """Replay timeline.csv per rank (each category's running sum of deltas; fragmentation the
    total less the categories), keep the state after the last record of each microsecond, and
    compare with the counters carried forward (a series is sampled only where it changes)."""
    res, events, rows = written
    series = list(CATEGORIES) + ["fragmentation"]
    expected = defaultdict(dict)        # rank -> ts -> state
    level = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
    for row in rows:
        r = int(row["rank"])
        level[r][row["category"]] += int(row["delta_bytes"])
        state = dict(level[r])
        state["fragmentation"] = int(row["rank_total_bytes"]) - sum(level[r].values())
        expected[r][round(float(row["time_ms"]) * 1e3)] = state
    counters = defaultdict(list)
    for e in events:
        if e["ph"] == "C":
            assert e["name"] == "memory" and set(e["args"]) <= set(series)
            counters[e["pid"]].append(e)
    assert set(expected) == set(counters) == set(range(PP))
    for r in range(PP):
        ts = [e["ts"] for e in counters[r]]
        assert ts == sorted(set(ts))                       # one sample per microsecond, in order
        got = dict.fromkeys(series, 0)
        samples = {e["ts"]: e["args"] for e in counters[r]}
        assert set(samples) <= set(expected[r])
        for t in sorted(expected[r]):
            got.update(samples.get(t, {}))
            assert got == expected[r][t], (r, t)
        assert sum(got.values()) == int([row for row in rows if int(row["rank"]) == r][-1]["rank_total_bytes"])
