"""Invariants of every simulated step, over random small scenarios of every schedule family,
layout and recipe (hypothesis): no memory category is ever negative, the dynamic categories
end at zero, each rank's peak is its ledger's maximum and at least its static memory, and
``summary()`` survives JSON and is the same run to run.

    python -m pytest tests/test_properties.py                                  # 25 examples
    PIPESIM_PROPERTY_EXAMPLES=2000 python -m pytest tests/test_properties.py   # thorough (minutes)
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pipesim  # noqa: E402
import schedules  # noqa: E402
from pipesim.export import summary_json  # noqa: E402
from pipesim.memory import CATEGORIES, STATIC  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "scenarios" / "tiny.toml"
EXAMPLES = int(os.environ.get("PIPESIM_PROPERTY_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 25,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def sizes(draw):
    """(family, pp, micro-batches, chunks) that the family accepts."""
    family = draw(st.sampled_from(schedules.names()))
    chunks = None
    if family == "dualpipe":
        pp = draw(st.sampled_from([2, 4]))
        m = 2 * draw(st.integers(pp, pp + 3))
    elif family == "dualpipev":
        pp = draw(st.integers(1, 3))
        m = draw(st.integers(2 * pp, 2 * pp + 4))
    elif family == "interleaved":
        pp = draw(st.integers(1, 3))
        chunks = draw(st.integers(2, 3))
        m = pp * draw(st.integers(1, 3))
    else:
        pp = draw(st.integers(1, 4))
        m = draw(st.integers(1, 9))
    try:
        schedules.build(family, pp, m, chunks)
    except schedules.ScheduleError:
        hypothesis.reject()
    return family, pp, m, chunks


@st.composite
def scenarios(draw, zero=st.sampled_from(["none", "os", "os+g"])):
    family, pp, m, chunks = draw(sizes())
    stages = schedules.size(family, pp, m, chunks)[0]
    layers = draw(st.integers(max(stages, 2), stages + 3))
    tp = draw(st.sampled_from([1, 2]))
    overrides = {
        "schedule.name": family, "schedule.chunks": chunks, "parallel.pp": pp, "training.microbatches": m,
        "model.layers": layers, "model.dense_layers": draw(st.integers(0, 2)),
        "model.mtp_modules": draw(st.integers(0, 1)), "model.tied_embeddings": draw(st.booleans()),
        "parallel.tp": tp, "parallel.sp": draw(st.booleans()) and tp > 1, "parallel.dp": 4,
        "parallel.ep": draw(st.sampled_from([1, 2, 4])), "parallel.cp": draw(st.sampled_from([1, 2])),
        "training.seq_len": draw(st.sampled_from([64, 128])),
        "training.micro_batch_size": draw(st.integers(1, 2)),
        "training.recipe": draw(st.sampled_from(["megatron", "deepseek-v3", "paper"])),
        "training.recompute": draw(st.sampled_from(["none", "full", "selective"])),
        "training.zero": draw(zero),
        "training.imbalance": draw(st.sampled_from([1.0, 1.5])),
        "overheads.fragmentation": draw(st.sampled_from([0.0, 0.1])),
        "overheads.allocator_rounding": draw(st.sampled_from([1, 512])),
        "overheads.comm_buffer_gib": draw(st.sampled_from([0.0, 0.01])),
    }
    return overrides


def _check(res) -> None:
    led = res.ledger
    for r in range(res.ranks):
        rec = res.records(r)
        cats, deltas = led.cat[rec], led.delta[rec]
        for c, name in enumerate(CATEGORIES):
            level = np.cumsum(deltas[cats == c])
            assert level.min(initial=0) >= 0, f"rank {r}: {name} goes negative ({level.min()})"
            if name not in STATIC:
                assert level[-1:].sum() == 0, f"rank {r}: {name} ends at {level[-1]}, not 0"
        _, total = res.total(r)
        peak = res.peaks[r]
        assert peak.bytes == int(total.max()), f"rank {r}: peak {peak.bytes} != ledger max {total.max()}"
        assert peak.bytes >= peak.static_bytes


@SETTINGS
@given(scenarios())
def test_every_step_keeps_the_memory_invariants(overrides):
    sc = pipesim.load_scenario(TINY, overrides)    # valid by construction: a refusal is a bug
    res = pipesim.simulate(sc)
    _check(res)
    summary = res.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary_json(pipesim.simulate(sc)) == summary_json(res)


# ZeRO-3 (os+g+params): layer shares of an op once accumulated in floating point, so a layer's
# start could land after its end and its gather be released before allocation; the bounds are
# now prefix sums over the total (pipesim.memory._shares). Hypothesis found it within a few
# hundred examples; the smallest case is kept below.


@SETTINGS
@given(scenarios(zero=st.just("os+g+params")))
def test_zero3_steps_keep_the_memory_invariants(overrides):
    _check(pipesim.simulate(pipesim.load_scenario(TINY, overrides)))


def test_zero3_gather_is_never_negative_smallest_case():
    sc = pipesim.load_scenario(TINY, {
        "schedule.name": "gpipe", "parallel.pp": 1, "training.microbatches": 1, "model.layers": 2,
        "model.dense_layers": 0, "model.mtp_modules": 1, "parallel.tp": 2, "parallel.dp": 4,
        "training.seq_len": 64, "training.recipe": "megatron", "training.recompute": "selective",
        "training.zero": "os+g+params", "overheads.allocator_rounding": 1})
    _check(pipesim.simulate(sc))
