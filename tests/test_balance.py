"""Stage imbalance (pipesim.balance): the DP's optimum against a hand derivation and a brute force,
the model's per-layer work against the workload's stage durations, the warning on an imbalanced
split and not on a balanced one, and the suggested split measured by simulating it."""
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipesim
from pipesim.balance import IMBALANCE_THRESHOLD, balanced_split, layer_seconds, stage_seconds
from pipesim.report import peak_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "scenarios" / "tiny.toml"


def run(**sets):
    return pipesim.simulate(pipesim.load_scenario(TINY, sets))


def test_dp_uniform_layers_and_a_heavy_last_stage():
    """13 layers of work 1 on 4 stages, the last also holding a head of work 3 (total 16).

    Lower bound: 16 / 4 = 4. The last stage holds >= 1 layer, so it is >= 3 + 1 = 4, and
    reaching 4 forces it to exactly one layer; the other 12 layers on 3 stages of at most 4
    each must then be 4, 4, 4. So the unique optimum is (4, 4, 4, 1) with max 4, where the even
    split (4, 3, 3, 3) has a last stage of 3 + 3 = 6."""
    per_layer, fixed = [1.0] * 13, [0.0, 0.0, 0.0, 3.0]
    assert balanced_split(per_layer, fixed) == (4, 4, 4, 1)
    assert max(stage_seconds(per_layer, fixed, (4, 4, 4, 1))) == 4.0
    assert max(stage_seconds(per_layer, fixed, (4, 3, 3, 3))) == 6.0


def _compositions(n, k):
    for cuts in itertools.combinations(range(1, n), k - 1):
        b = (0, *cuts, n)
        yield tuple(b[i + 1] - b[i] for i in range(k))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=9), st.data())
def test_dp_equals_brute_force(work, data):
    """The DP's largest stage equals the smallest over every contiguous split (each stage >= 1)."""
    k = data.draw(st.integers(1, len(work)))
    fixed = data.draw(st.lists(st.integers(0, 9), min_size=k, max_size=k))
    best = min(max(stage_seconds(work, fixed, c)) for c in _compositions(len(work), k))
    split = balanced_split(work, fixed)
    assert sum(split) == len(work) and min(split) >= 1 and len(split) == k
    assert max(stage_seconds(work, fixed, split)) == best


@pytest.mark.parametrize("name", ["v3_pp16.toml", "llama3_8b.toml", "tiny.toml"])
def test_per_layer_work_adds_up_to_the_workloads_stage_durations(name):
    """Second path: the balance's per-layer F + B work, summed over each stage of the scenario's
    split, is the workload's F[s] + B[s] (the durations the simulator ran)."""
    sc = pipesim.load_scenario(ROOT / "scenarios" / name)
    res = pipesim.simulate(sc)
    per_layer, fixed = layer_seconds(sc)
    assert len(per_layer) == sc.model.layers
    tm = res.workload.timing
    for s, t in enumerate(stage_seconds(per_layer, fixed, sc.layers_per_stage)):
        assert t == pytest.approx(tm.f[s] + tm.b[s], rel=1e-12)


def test_warning_on_an_imbalanced_split_and_its_suggestion_measured():
    """tiny on pp = 2 split [4, 2]: under 1F1B rank r runs M forwards and M backwards of its
    stage, so busy(r) = M (F[r] + B[r]) and the warning's ratio is max / mean of those."""
    res = run(**{"parallel.pp": 2, "placement.layers_per_stage": [4, 2]})
    info = res.imbalance
    m, tm = res.scenario.microbatches, res.workload.timing
    busy = [m * (tm.f[s] + tm.b[s]) for s in range(2)]
    assert [res.busy(r) for r in range(2)] == pytest.approx(busy, rel=1e-9)
    assert info["ratio"] == pytest.approx(max(busy) / (sum(busy) / 2), rel=1e-5)
    assert info["ratio"] > 1 + IMBALANCE_THRESHOLD and info["rank"] == 0
    # the suggestion, simulated: its busiest rank is M x the predicted largest stage, lower than now
    split = tuple(info["suggested"])
    after = pipesim.simulate(pipesim.load_scenario(TINY, {"parallel.pp": 2,
                                                          "placement.layers_per_stage": list(split)}))
    predicted = [m * t / 1e3 for t in info["suggested_stage_ms"]]
    assert [after.busy(r) for r in range(2)] == pytest.approx(predicted, rel=1e-5)
    assert max(after.busy(r) for r in range(2)) < max(busy)
    assert info["suggested_busy_ms"] == pytest.approx(max(predicted) * 1e3, rel=1e-5)
    assert info["suggested_makespan_ms"] == pytest.approx(after.makespan * 1e3, abs=1e-6)
    assert info["suggested_makespan_ms"] < info["makespan_ms"]
    # the suggestion is the scenario's own key, and the warning is in the table and the summary
    assert info["suggested_text"].startswith(f"layers_per_stage = {list(split)}")
    assert "WARNING stage imbalance: rank 0" in peak_table(res)
    assert json.loads(json.dumps(res.summary()))["imbalance"] == info
    assert peak_table(res).splitlines()[-1].split(":")[0] in ("OK", "TIGHT", "OOM")


def test_no_warning_on_a_balanced_split():
    res = run(**{"parallel.pp": 2})
    busy = [res.busy(r) for r in range(2)]
    assert max(busy) / (sum(busy) / 2) <= 1 + IMBALANCE_THRESHOLD
    assert res.imbalance is None and res.summary()["imbalance"] is None
    assert "WARNING" not in peak_table(res)


def test_timing_overrides_leave_no_split_to_suggest():
    """With [timing] the op times are given per stage, not per layer: moving layers changes nothing."""
    res = run(**{"parallel.pp": 2, "timing.forward_ms": [1.0, 2.0], "timing.backward_ms": [2.0, 4.0]})
    assert res.imbalance["ratio"] == pytest.approx(6 / 4.5, rel=1e-6)   # busy 3M and 6M ms
    assert res.imbalance["suggested"] is None and "[timing]" in res.imbalance["reason"]


def test_the_papers_split_warns_and_the_suggestion_lowers_the_busiest_rank():
    """v3_pp16 (the paper's [4]*15 + [1] under 1F1B): rank r is busy M (F[r] + B[r]); the
    suggestion, simulated, has its busiest rank at M x its predicted largest stage, below now."""
    sc = pipesim.load_scenario(ROOT / "scenarios" / "v3_pp16.toml")
    res = pipesim.simulate(sc)
    info = res.imbalance
    assert info is not None and info["suggested"] is not None
    assert sum(info["suggested"]) == sc.model.layers and len(info["suggested"]) == len(sc.layers_per_stage)
    after = pipesim.simulate(pipesim.load_scenario(ROOT / "scenarios" / "v3_pp16.toml",
                                                   {"placement.layers_per_stage": info["suggested"]}))
    busy = [after.busy(r) for r in range(after.ranks)]
    assert busy == pytest.approx([sc.microbatches * t / 1e3 for t in info["suggested_stage_ms"]], rel=1e-5)
    assert max(busy) < max(res.busy(r) for r in range(res.ranks))
    assert max(info["suggested_stage_ms"]) < max(info["stage_ms"])
