"""The run's files as tools read them (pipesim.export): timeline.csv's op columns, its streamed
and gzip-compressed forms, and a reused output folder holding only what the last run wrote."""
import csv
import gzip
import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import pipesim
from pipesim import export
from pipesim.export import text_writer, timeline_csv, write_outputs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "scenarios" / "tiny.toml"


@pytest.fixture(scope="module")
def tiny():
    return pipesim.simulate(pipesim.load_scenario(TINY))


def rows_of(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_each_record_names_its_op(tiny):
    """A non-p2p record made by an atom lies inside that atom's span; and each micro-batch's
    activations, allocated by its F rows, are all released by its B rows on the same rank
    (1F1B without W: what a mislabelled micro-batch or rank would break)."""
    sp = tiny.spans
    span = {(int(sp.rank[i]), ("F", "B", "BI", "W")[sp.kind[i]], int(sp.mb[i]), int(sp.stage[i]),
             int(sp.chunk[i]), int(sp.direction[i])): (sp.start[i] * 1e3, sp.end[i] * 1e3)
            for i in range(len(sp.start))}
    rows = rows_of("".join(timeline_csv(tiny)))
    assert len(rows) == len(tiny.ledger)
    acts = defaultdict(int)
    for row in rows:
        if row["op"] == "static":
            assert float(row["time_ms"]) == 0.0 and row["microbatch"] == ""
            continue
        key = (int(row["rank"]), row["op"], int(row["microbatch"]), int(row["stage"]), int(row["chunk"]),
               int(row["direction"]))
        assert key in span, row
        if row["category"] != "p2p":
            t0, t1 = span[key]
            assert t0 - 1e-6 <= float(row["time_ms"]) <= t1 + 1e-6
        if row["category"] == "activations":
            assert row["op"] in ("F", "B")
            acts[(key[0], key[2])] += int(row["delta_bytes"])
    assert len(acts) == 4 * 8 and set(acts.values()) == {0}


def test_streamed_in_chunks_that_add_up(tiny, monkeypatch):
    """With 100 rows a chunk: the header, then ceil(records / 100) chunks per rank, none longer."""
    whole = "".join(timeline_csv(tiny))
    monkeypatch.setattr(export, "_ROWS_PER_CHUNK", 100)
    chunks = list(timeline_csv(tiny))
    per_rank = [tiny.records(r).stop - tiny.records(r).start for r in range(tiny.ranks)]
    assert len(chunks) == 1 + sum(-(-n // 100) for n in per_rank)
    assert max(c.count("\n") for c in chunks) == 100
    assert "".join(chunks) == whole


def test_gzip_holds_the_same_text_and_is_reproducible(tiny, tmp_path):
    text_writer(timeline_csv(tiny))(tmp_path / "timeline.csv")
    text_writer(timeline_csv(tiny))(tmp_path / "a.csv.gz")
    text_writer(timeline_csv(tiny))(tmp_path / "b.csv.gz")
    plain = (tmp_path / "timeline.csv").read_bytes()
    assert gzip.decompress((tmp_path / "a.csv.gz").read_bytes()) == plain
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert (tmp_path / "a.csv.gz").stat().st_size < len(plain) / 3


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipesim", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def test_run_without_plots_leaves_no_old_pictures(tmp_path):
    out = tmp_path / "out"
    assert cli("run", TINY, "-o", out).returncode == 0
    assert {"memory.png", "peaks.png", "schedule.png"} <= {f.name for f in out.iterdir()}
    assert cli("run", TINY, "-o", out, "--plots", "none", "--quiet").returncode == 0
    assert sorted(f.name for f in out.iterdir()) == ["summary.json", "timeline.csv", "trace.json"]
    assert cli("run", TINY, "-o", out, "--plots", "peaks", "--quiet").returncode == 0
    assert sorted(f.name for f in out.iterdir()) == ["peaks.png", "summary.json", "timeline.csv", "trace.json"]


def test_other_verbs_files_are_carried_over_own_stale_ones_removed(tmp_path):
    out = tmp_path / "out"
    write_outputs(out, {"compare.csv": text_writer("a\n"), "timeline.csv": text_writer("old\n"),
                        "schedule.png": text_writer("old\n")})
    write_outputs(out, {"summary.json": text_writer("{}\n"), "timeline.csv.gz": text_writer("new\n")})
    assert sorted(f.name for f in out.iterdir()) == ["compare.csv", "summary.json", "timeline.csv.gz"]
    assert (out / "compare.csv").read_text() == "a\n"
    write_outputs(out, {"compare.csv": text_writer("b\n")})      # another verb: the run's files stay
    assert sorted(f.name for f in out.iterdir()) == ["compare.csv", "summary.json", "timeline.csv.gz"]


@pytest.mark.parametrize("microbatches", [8, 200])
def test_schedule_png_artists_do_not_grow_with_ops(microbatches, tmp_path, monkeypatch):
    """One box per op (8 micro-batches: 16 ops a rank) or the binned view (200: 400 ops a rank,
    past BOX_LIMIT): either way a few dozen artists, not one per op."""
    from pipesim import plots
    res = pipesim.simulate(pipesim.load_scenario(TINY, {"training.microbatches": microbatches}))
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figs.append(fig))
    plots.schedule_png(res, tmp_path / "schedule.png")
    ops = sum(len(r) for r in res.workload.schedule.ranks)
    assert ops == 4 * 2 * microbatches
    artists = sum(len(ax.patches) + len(ax.collections) + len(ax.images) + len(ax.lines) for ax in figs[0].axes)
    assert artists < 30, artists
    binned = any(ax.images for ax in figs[0].axes)
    assert binned == (2 * microbatches > plots.BOX_LIMIT)
    plots._pyplot().close(figs[0])


def test_each_record_names_its_layer():
    """Per (rank, micro-batch, stage, layer), the activations its F stores are the model's
    ``stored_bytes`` of that layer (rounded to the allocator's granularity), and its B and W
    release them all; ZB-H1 so a split B and W both release part of each layer."""
    res = pipesim.simulate(pipesim.load_scenario(TINY, {"schedule.name": "zb-h1"}))
    g = res.scenario.overheads.allocator_rounding
    rows = rows_of("".join(timeline_csv(res)))
    stored = defaultdict(int)
    net = defaultdict(int)
    for row in rows:
        if row["category"] != "activations":
            assert row["category"] in ("p2p", "weights", "grads", "optimizer", "comm_buffers") or row["layer"]
            continue
        key = (int(row["rank"]), int(row["microbatch"]), int(row["stage"]), row["layer"])
        net[key] += int(row["delta_bytes"])
        if row["op"] == "F":
            stored[key] += int(row["delta_bytes"])
    assert set(net.values()) == {0}
    for (_, _, s, name), nbytes in stored.items():
        layer = next(L for L in res.workload.costs[s].layers if L.name == name)
        assert nbytes == -(-layer.stored_bytes // g) * g
    names = {L.name for c in res.workload.costs for L in c.layers if L.stored_bytes}
    assert {k[3] for k in stored} == names


def test_run_gzip_writes_the_same_files_compressed_and_drops_the_plain_ones(tmp_path):
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert cli("run", TINY, "--plots", "none", "-o", plain).returncode == 0
    assert cli("run", TINY, "--plots", "none", "-o", packed).returncode == 0
    assert cli("run", TINY, "--plots", "none", "--gzip", "-o", packed).returncode == 0
    assert sorted(p.name for p in packed.iterdir()) == ["summary.json", "timeline.csv.gz", "trace.json.gz"]
    for name in ("timeline.csv", "trace.json"):
        assert gzip.decompress((packed / f"{name}.gz").read_bytes()) == (plain / name).read_bytes()
