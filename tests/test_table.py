"""``Result.table()``: one flat row per rank that a DataFrame takes as it is, agreeing with the
summary, with the ledger's running totals (a second path to the peak) and with the closed forms."""
import json
from pathlib import Path

import pytest

import pipesim

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml"


def run(**sets):
    return pipesim.simulate(pipesim.load_scenario(TINY, sets))


@pytest.mark.parametrize("name", ["1f1b", "zb-h1", "dualpipe"])
def test_rows_agree_with_the_summary_and_the_ledger(name):
    res = run(**{"schedule.name": name})
    rows, summary = res.table(), res.summary()
    assert [r["rank"] for r in rows] == list(range(res.ranks))
    for row, s in zip(rows, summary["ranks"]):
        assert all(isinstance(v, (int, float, str)) for v in row.values())     # flat: one column each
        assert row["peak_bytes"] == s["peak_bytes"] and row["verdict"] == s["verdict"]
        assert row["stages"] == ",".join(map(str, s["stages"]))
        assert row["headroom_bytes"] == summary["capacity_bytes"] - row["peak_bytes"]
        # the categories at the peak add up to it, and the ledger's running total peaks there too
        cats = {k[:-len("_bytes")]: v for k, v in row.items()
                if k.endswith("_bytes") and k not in ("peak_bytes", "headroom_bytes")}
        assert cats == s["breakdown_bytes"] and sum(cats.values()) == row["peak_bytes"]
        times, totals = res.total(row["rank"])
        assert int(totals.max()) == row["peak_bytes"]
        assert row["peak_time_ms"] == pytest.approx(float(times[totals.argmax()]) * 1e3, abs=1e-9)
        live = s["live_at_peak"]
        assert row["resident"] + row["resident_awaiting_w"] == len(live)
        assert row["resident_awaiting_w"] == sum(e["waits_for"] == "W" for e in live)
        # bubble = 1 - busy / step
        assert row["bubble_fraction"] == pytest.approx(1 - row["busy_ms"] / summary["makespan_ms"], abs=1e-6)
    json.dumps(rows)


def test_1f1b_resident_column_is_the_closed_form():
    """1F1B: rank r holds pp - r micro-batches when its warm-up ends (Narayanan et al. 2021)."""
    res = run()
    assert [r["resident"] for r in res.table()] == [res.ranks - r for r in range(res.ranks)]
    assert all(r["resident_awaiting_w"] == 0 for r in res.table())


def test_a_dataframe_takes_the_rows_as_they_are():
    pd = pytest.importorskip("pandas")
    res = run()
    df = pd.DataFrame(res.table())
    assert len(df) == res.ranks and df["peak_bytes"].max() == max(p.bytes for p in res.peaks)
    assert df.loc[df["peak_bytes"].idxmax(), "rank"] == res.peak_rank
