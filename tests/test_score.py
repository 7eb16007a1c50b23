"""``pipesim score``: each reader on a file written here from its format's documented structure,
with the expected numbers worked by hand; rank assignment; the comparison; a real
``torch.profiler`` timeline; and the ``score`` verb as a user meets it (in-process, fast)."""
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import pipesim
from pipesim import cli
from pipesim.score import ScoreError, read, score
from pipesim.score.megatron_log import MIB
from pipesim.score.profiler_timeline import CATEGORIES
from pipesim.score.scoring import assign_ranks

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "tiny.toml"


@pytest.fixture(scope="module")
def tiny():
    return pipesim.simulate(pipesim.load_scenario(TINY))


def write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# ------------------------------------------------------------------------ torch memory snapshots
# Structure: torch/cuda/memory.py, ``_snapshot`` docstring (Segment, Block, TraceEntry), and
# torch/csrc/cuda/memory_snapshot.cpp, ``_memory_snapshot_pickled`` (the keys, the block states
# "active_allocated" / "active_pending_free" / "inactive", ``time_us`` on trace entries);
# ``torch.cuda.memory._dump_snapshot`` pickles that dict. The replay follows
# torch/cuda/_memory_viz.py ``trace`` (alloc adds, free_completed removes).

def event(action, addr, size, t_us=None):
    e = {"action": action, "addr": addr, "size": size, "stream": 0, "frames": []}
    if t_us is not None:
        e["time_us"] = t_us
    return e


def segment(total, blocks, device=0):
    return {"device": device, "address": 0x7F0000000000, "total_size": total,
            "allocated_size": sum(s for s, st in blocks if st == "active_allocated"),
            "active_size": sum(s for s, st in blocks if st != "inactive"), "stream": 0,
            "segment_type": "large", "segment_pool_id": (0, 0), "is_expandable": False, "frames": [],
            "blocks": [{"size": s, "requested_size": s, "state": st, "frames": []} for s, st in blocks]}


def test_snapshot_trace_alloc_free_gives_the_peak(tmp_path):
    # alloc 100, alloc 50, free 100 (requested then completed), alloc 200 → 100, 150, 50, 250: peak 250;
    # at the end 50 + 200 are live, as the segment says, so the trace started from 0
    trace = [event("segment_alloc", 0, 1024, 1), event("alloc", 0, 100, 2), event("alloc", 100, 50, 3),
             event("free_requested", 0, 100, 4), event("free_completed", 0, 100, 5),
             event("alloc", 256, 200, 6)]
    snap = {"segments": [segment(1024, [(100, "inactive"), (50, "active_allocated"), (106, "inactive"),
                                        (200, "active_allocated"), (568, "inactive")])],
            "device_traces": [trace]}
    m = read(write(tmp_path / "dump.pickle", pickle.dumps(snap)))
    assert m.format == "snapshot" and m.rank_origin == "none" and list(m.ranks) == [0]
    r = m.ranks[0]
    assert r.peak_allocated == 250 and r.peak_reserved == 1024
    assert r.bytes.tolist() == [0, 100, 150, 50, 250]
    assert r.times_s.tolist() == pytest.approx([1e-6, 2e-6, 3e-6, 5e-6, 6e-6])


def test_snapshot_trace_that_starts_late_starts_from_what_the_segments_hold(tmp_path):
    # the ring buffer dropped older events: 1000 live at the end, the trace's net is +250,
    # so 750 were live at its start → 850, 900, 800, 1000; reserved: 4096 at the end, the trace
    # freed a 2048 segment, so 6144 at its start (the peak); no time_us (PyTorch < 2.1): event order
    trace = [event("alloc", 0, 100), event("alloc", 100, 50), event("free_completed", 0, 100),
             event("segment_free", 0x10, 2048), event("alloc", 256, 200)]
    snap = {"segments": [segment(4096, [(1000, "active_allocated"), (3096, "inactive")])],
            "device_traces": [[], trace]}       # one list per device; only device 1 recorded
    snap["segments"][0]["device"] = 1
    m = read(write(tmp_path / "s.pickle", pickle.dumps(snap, protocol=2)))
    r = m.ranks[0]
    assert r.bytes.tolist() == [750, 850, 900, 800, 1000] and r.peak_allocated == 1000
    assert r.peak_reserved == 6144
    assert r.times_s.tolist() == [0, 1, 2, 3, 5]
    assert any("time_us" in n for n in m.notes)


def test_snapshot_without_trace_and_a_segments_only_list(tmp_path):
    # torch.cuda.memory.memory_snapshot() gives the segment list alone; pending-free blocks are live
    segs = [segment(2048, [(300, "active_allocated"), (200, "active_pending_free"), (1548, "inactive")])]
    m = read(write(tmp_path / "segments.pickle", pickle.dumps(segs)))
    assert m.ranks[0].peak_allocated == 500 and m.ranks[0].peak_reserved == 2048
    assert not m.ranks[0].has_timeline and any("no allocation trace" in n for n in m.notes)


def test_snapshot_with_two_devices_names_two_ranks(tmp_path):
    snap = {"segments": [segment(512, [(512, "active_allocated")], device=0),
                         segment(256, [(128, "active_allocated"), (128, "inactive")], device=1)],
            "device_traces": [[], []]}
    m = read(write(tmp_path / "both.pickle", pickle.dumps(snap)))
    assert m.rank_origin == "content" and {r: v.peak_allocated for r, v in m.ranks.items()} == {0: 512, 1: 128}


class _Touch:
    """A pickle that would create a file while being loaded, if its global were looked up."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_snapshot_unpickling_refuses_anything_but_plain_data(tmp_path):
    marker = tmp_path / "executed"
    bad = write(tmp_path / "evil.pickle", pickle.dumps({"segments": [], "x": _Touch(marker)}))
    with pytest.raises(ScoreError, match=r"evil\.pickle: the pickle refers to pathlib"):
        read(bad)
    assert not marker.exists()
    not_a_snapshot = write(tmp_path / "other.pickle", pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ScoreError, match="not a torch memory snapshot"):
        read(not_a_snapshot)


# ------------------------------------------------------------------ torch.profiler memory timelines
# Structure: torch/profiler/_memory_profiler.py, ``MemoryProfileTimeline._coalesce_timeline`` /
# ``export_memory_timeline`` ([times in µs, rows of a leading 0 + the 8 categories in
# ``_CATEGORY_TO_COLORS`` order]) and ``export_memory_timeline_raw`` ((time in ns, Action value,
# signed bytes, category index)); torch/profiler/profiler.py ``export_memory_timeline`` picks the
# form by suffix (.json, .json.gz, .raw.json.gz).

def test_profiler_timeline_json(tmp_path):
    #        pad  param  optim  input  temp  activ  grad  autograd  unknown
    rows = [[0,   100,   0,     10,    0,    0,     0,    0,        0],      # 110
            [0,   100,   200,   10,    5,    300,   0,    0,        0],      # 615: the peak
            [0,   100,   200,   10,    0,    0,     50,   0,        7]]      # 367
    m = read(write(tmp_path / "timeline.data", json.dumps([[1000, 2000, 3000], rows])))
    r = m.ranks[0]
    assert m.format == "profiler-timeline" and r.peak_allocated == 615 and r.peak_reserved is None
    assert r.bytes.tolist() == [110, 615, 367]
    assert r.times_s.tolist() == pytest.approx([0.001, 0.002, 0.003])
    assert list(r.categories) == list(CATEGORIES)
    assert r.categories["activation"].tolist() == [0, 300, 0] and r.categories["unknown"].tolist() == [0, 0, 7]


def test_profiler_raw_events_gzipped(tmp_path):
    # a parameter of 100 pre-existing (time -1: it takes the earliest time, 5 µs), an activation
    # of 40 created at 5 µs, a gradient of 30 at 7 µs, the activation destroyed at 9 µs
    # → 140 at 5 µs, 170 at 7 µs, 130 at 9 µs: peak 170
    events = [[-1, 1, 100, 0], [5000, 2, 40, 4], [7000, 2, 30, 5], [9000, 4, -40, 4]]
    m = read(write(tmp_path / "mem.raw.json.gz", gzip.compress(json.dumps(events).encode())))
    r = m.ranks[0]
    assert m.format == "profiler-raw" and r.bytes.tolist() == [140, 170, 130] and r.peak_allocated == 170
    assert r.times_s.tolist() == pytest.approx([5e-6, 7e-6, 9e-6])
    assert r.categories["gradient"].tolist() == [0, 30, 30] and r.categories["parameter"].tolist() == [100] * 3


def test_profiler_timeline_gzipped_and_a_wrong_row_width(tmp_path):
    good = [[1, 2], [[0, 1, 2, 3, 4, 5, 6, 7, 8], [0] * 9]]
    assert read(write(tmp_path / "t.json.gz", gzip.compress(json.dumps(good).encode()))).ranks[0].peak_allocated == 36
    with pytest.raises(ScoreError, match="leading 0 and 8 category sizes"):
        read(write(tmp_path / "w.json", json.dumps([[1, 2], [[1, 2], [3, 4]]])))


def test_real_torch_profiler_timeline_is_read(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(32, 64)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        for _ in range(2):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    path = tmp_path / "memory_timeline.json"
    with pytest.warns(FutureWarning):           # deprecated in favour of memory snapshots, still works
        prof.export_memory_timeline(str(path), device="cpu")    # the CPU path exports
    times, rows = json.loads(path.read_text())
    m = read(path)
    r = m.ranks[0]
    assert r.peak_allocated == max(sum(row) for row in rows) > 0
    assert len(r.times_s) == len(times) and r.categories["parameter"].max() > 0


# ------------------------------------------------------------------------------ Megatron-LM logs
# Format: Megatron-LM megatron/training/utils.py ``report_memory`` ("[Rank {get_rank()}] {name}
# memory (MB) | allocated: ... | max allocated: ... | reserved: ... | max reserved: ...", each
# value bytes / (1024.0 * 1024.0)); training.py ``training_log`` names it "(after N iterations)".

LOG = """ [2025-10-06 03:27:07] iteration       10/      10 | consumed samples:         5120 | lm loss: 9.76E+00 |
[Rank 0] (after 10 iterations) memory (MB) | allocated: 1000.0 | max allocated: 2000.5 | reserved: 3000.0 | max reserved: 3100.0
[Rank 1] (after 10 iterations) memory (MB) | allocated: 900.0 | max allocated: 2500.25 | reserved: 2600.0 | max reserved: 2700.0[Rank 3] (after 10 iterations) memory (MB) | allocated: 1.5 | max allocated: 4096 | reserved: 4200.0 | max reserved: 4300.0 | device usage: 5000.0
[2024-04-21 02:45:08][INFO][utils:190] - [Rank 2] (after 10 iterations) memory (MB) | allocated: 1.0 | max allocated: 1024 | reserved: 2048.0
"""


def test_megatron_lines_are_mib(tmp_path):
    m = read(write(tmp_path / "train.log", LOG))
    assert m.format == "megatron-log" and m.rank_origin == "global"
    got = {r: (v.peak_allocated, v.peak_reserved) for r, v in m.ranks.items()}
    assert got == {0: (round(2000.5 * MIB), 3100 * MIB), 1: (round(2500.25 * MIB), 2700 * MIB),
                   2: (1024 * MIB, None), 3: (4096 * MIB, 4300 * MIB)}


def test_megatron_global_ranks_map_to_pipeline_ranks(tmp_path):
    # Megatron's default order tp-cp-ep-dp-pp: pipeline rank = global // (tp·cp·dp); tp=2 here,
    # so global 0, 1 are stage 0 and 2, 3 stage 1, each keeping its larger peak
    sc = pipesim.load_scenario(TINY, {"parallel.tp": 2})
    a = assign_ranks([read(write(tmp_path / "train.log", LOG))], sc)
    assert {r: v.measure.peak_allocated for r, v in a.items()} == {0: round(2500.25 * MIB), 1: 4096 * MIB}
    assert a[1].measure.peak_reserved == 4300 * MIB and "[Rank 2, 3]" in a[1].how


def test_megatron_without_prefix_takes_its_rank_from_the_file_name(tmp_path):
    line = "(after 1 iterations) memory (MB) | allocated: 10 | max allocated: 20 | reserved: 30 | max reserved: 40\n"
    m = read(write(tmp_path / "log_rank3.txt", line))
    assert m.rank_origin == "none"
    a = assign_ranks([m], pipesim.load_scenario(TINY))
    assert list(a) == [3] and a[3].how == "file name" and a[3].measure.peak_allocated == 20 * MIB


# ---------------------------------------------------------------------------------- plain CSV

def test_csv_totals_and_categories(tmp_path):
    plain = read(write(tmp_path / "a.csv", "time_s,rank,bytes\n0.0,0,10\n0.2,0,30\n0.1,0,50\n0.0,1,7\n"))
    assert plain.ranks[0].bytes.tolist() == [10, 50, 30] and plain.ranks[0].peak_allocated == 50
    assert plain.ranks[1].peak_allocated == 7 and plain.ranks[0].window_s == (0.0, 0.2)
    # per category: the total is the sum of each category's latest value
    text = "rank,time_s,category,bytes\n0,0,weights,100\n0,1,activations,50\n0,2,activations,80\n0,3,weights,90\n"
    cat = read(write(tmp_path / "b.txt", text)).ranks[0]
    assert cat.bytes.tolist() == [100, 150, 180, 170] and cat.peak_allocated == 180
    assert cat.categories["weights"].tolist() == [100, 100, 100, 90]
    with pytest.raises(ScoreError, match=r"c\.csv: line 3"):
        read(write(tmp_path / "c.csv", "time_s,rank,bytes\n0,0,1\n0,x,2\n"))


# -------------------------------------------------------------------------------------- detection

def test_detection_is_by_content_and_errors_name_the_file(tmp_path):
    # a CSV named .pickle is still a CSV
    assert read(write(tmp_path / "x.pickle", "time_s,rank,bytes\n0,0,5\n")).format == "csv"
    for name, data in (("garbage.bin", b"\x00\x01\x02 not a thing"), ("notes.txt", "hello\nworld\n"),
                       ("obj.json", '{"a": 1}'), ("list.json", "[1, 2, 3]")):
        with pytest.raises(ScoreError) as info:
            read(write(tmp_path / name, data))
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name)) and "\n" not in msg
        assert all(w in msg for w in ("snapshot pickle", "memory timeline", "Megatron", "time_s,rank,bytes"))
    with pytest.raises(ScoreError, match="cannot be read"):
        read(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------- scoring

def csv_of(result, scale=1.0, stretch=3.0, offset=10.0, ranks=None):
    """A measured CSV that is the prediction's allocated curve, bytes × scale, on another clock;
    each rank's last level holds to the step's end, as a recorder spanning the step would see."""
    lines = ["time_s,rank,bytes"]
    for r in ranks if ranks is not None else range(result.ranks):
        times, levels = result.timeline(r)
        alloc = levels[:, :-1].sum(axis=1)
        for t, b in zip(np.append(times, result.makespan), np.append(alloc, alloc[-1])):
            lines.append(f"{float(offset + stretch * t)!r},{r},{int(round(b * scale))}")
    return "\n".join(lines) + "\n"


def test_score_of_the_prediction_itself_and_of_a_10_percent_larger_run(tmp_path, tiny):
    exact = score(tiny, [read(write(tmp_path / "same.csv", csv_of(tiny)))])
    for row in exact.ranks:
        peak = tiny.peaks[row.rank]
        assert row.predicted_allocated == peak.bytes - peak.breakdown["fragmentation"]
        assert row.measured_allocated == row.predicted_allocated and row.error_pct == 0
        assert row.curve_error_pct < 0.5
    assert exact.peak_rank_agrees and exact.predicted_peak_rank == tiny.peak_rank
    larger = score(tiny, [read(write(tmp_path / "larger.csv", csv_of(tiny, scale=1.1)))])
    # (p - 1.1 p) / 1.1 p = -1/11 = -9.0909 %
    assert all(row.error_pct == pytest.approx(-100 / 11, abs=1e-3) for row in larger.ranks)


def test_reserved_is_compared_with_the_total_including_fragmentation(tmp_path):
    res = pipesim.simulate(pipesim.load_scenario(TINY, {"overheads.fragmentation": 0.25}))
    peak = res.peaks[2]
    alloc = peak.bytes - peak.breakdown["fragmentation"]
    log = (f"[Rank 2] (after 1 iterations) memory (MB) | allocated: 1 | max allocated: {alloc / MIB!r} "
           f"| reserved: 1 | max reserved: {2 * peak.bytes / MIB!r}\n")
    s = score(res, [read(write(tmp_path / "m.log", log))])
    (row,) = s.ranks
    assert row.rank == 2 and row.error_pct == pytest.approx(0, abs=1e-6)
    assert row.predicted_total == peak.bytes and row.reserved_error_pct == pytest.approx(-50, abs=1e-6)
    assert s.peak_rank_agrees is None and row.curve_error_pct is None


def test_ranks_by_position_and_the_peak_rank_disagreement(tmp_path, tiny):
    # two one-rank files without rank names: the first argument is rank 0, the second rank 1;
    # rank 0 is measured far above rank 1, though rank 1 is the predicted peak of the two
    files = [write(tmp_path / "first.log", "x memory (MB) | allocated: 1 | max allocated: 900\n"),
             write(tmp_path / "second.log", "x memory (MB) | allocated: 1 | max allocated: 1\n")]
    s = score(tiny, [read(f) for f in files])
    assert [(a.rank, a.how) for a in s.assigned.values()] == [(0, "argument position 0"), (1, "argument position 1")]
    assert (s.predicted_peak_rank, s.measured_peak_rank, s.peak_rank_agrees) == (1, 0, False)
    with pytest.raises(ScoreError, match="rank 1 .*already measured by"):
        score(tiny, [read(write(tmp_path / "rank1.log", "x memory (MB) | max allocated: 3\n")), read(files[1])])
    with pytest.raises(ScoreError, match="ranks 0..3"):
        score(tiny, [read(write(tmp_path / "rank7.log", "x memory (MB) | max allocated: 3\n"))])


# ------------------------------------------------------------------------------------------- CLI

def test_cli_score_table_files_and_exit_status(tmp_path, capsys, tiny):
    measured = write(tmp_path / "run.csv", csv_of(tiny, scale=1.1))
    out_dir = tmp_path / "out"
    rc = cli.main(["score", str(TINY), str(measured), "-o", str(out_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "rank  pred GiB  meas GiB  error" in out and "-9.1%" in out and "peak rank: predicted 1, measured 1 (agree)" in out
    data = json.loads((out_dir / "score.json").read_text())
    assert [r["rank"] for r in data["ranks"]] == [0, 1, 2, 3] and data["peak_rank_agrees"] is True
    assert data["max_abs_error_pct"] == pytest.approx(100 / 11, abs=1e-3)
    assert (out_dir / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["score", str(TINY), str(measured), "-o", str(out_dir), "--max-error", "50"]) == 0
    assert cli.main(["score", str(TINY), str(measured), "-o", str(out_dir), "--max-error", "1"]) == 1
    assert "FAIL: largest |error| 9.1% exceeds --max-error 1%" in capsys.readouterr().out
    assert cli.main(["score", str(TINY), str(measured), "-o", str(out_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scenario"] == "tiny"


def test_cli_score_garbage_is_one_error_line_and_status_2(tmp_path, capsys):
    garbage = write(tmp_path / "garbage.dat", b"\x89\x00 binary junk \xff")
    out_dir = tmp_path / "never"
    assert cli.main(["score", str(TINY), str(garbage), "-o", str(out_dir)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {garbage}: ") and "time_s,rank,bytes" in err[0]
    assert not out_dir.exists()


def test_category_scores_one_kind_of_memory_against_the_real_pipeline_run(capsys):
    # benchmarks/results/pipeline_1f1b_saved.csv: the saved-activation bytes recorded on each rank
    # of the CPU pipeline run (benchmarks/fidelity/pipeline.py); pipesim's activations + logits
    # on the same scenario peak at the same bytes (the run matched to the byte)
    root = Path(__file__).resolve().parents[1]
    from pipesim.cli import main
    args = ["score", str(root / "scenarios" / "fidelity_pipeline.toml"),
            str(root / "benchmarks" / "results" / "pipeline_1f1b_saved.csv"),
            "--category", "activations,logits", "--json", "--max-error", "1"]
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        assert main(args + ["-o", d]) == 0
    s = json.loads(capsys.readouterr().out)
    rows = s["ranks"] if "ranks" in s else s["rows"]
    assert len(rows) == 4


def test_unknown_category_is_refused(tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    from pipesim.cli import main
    assert main(["score", str(root / "scenarios" / "fidelity_pipeline.toml"),
                 str(root / "benchmarks" / "results" / "pipeline_1f1b_saved.csv"),
                 "--category", "activation", "-o", str(tmp_path / "o")]) == 2
    assert "--category: 'activation' is not a memory category" in capsys.readouterr().err
