"""Named devices and the memory reserve: a preset fills [hardware], keys beside it override, and
the reserve (CUDA context, NCCL) comes off what the peak is compared against."""
from pathlib import Path

import pytest

import pipesim
from pipesim.hardware import PRESETS
from pipesim.scenario import ScenarioError

TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml"
GIB = 2 ** 30


def test_preset_fills_and_keys_override():
    sc = pipesim.load_scenario(TINY, {"hardware.preset": "h100-sxm", "hardware.memory_gib": None,
                                      "hardware.peak_tflops": None, "hardware.p2p_bandwidth_gbps": None})
    assert (sc.hardware.memory_gib, sc.hardware.peak_tflops) == (80.0, 989.4)   # datasheet
    sc2 = pipesim.load_scenario(TINY, {"hardware.preset": "mi300x", "hardware.memory_gib": None})
    assert sc2.hardware.memory_gib == 192.0 and sc2.hardware.peak_tflops == 100.0   # tiny's own wins


def test_unknown_preset_lists_the_devices():
    with pytest.raises(ScenarioError, match="hardware.preset: unknown device 'v100'; allowed: h100-sxm"):
        pipesim.load_scenario(TINY, {"hardware.preset": "v100"})
    assert {"h100-sxm", "h800", "h200", "b200", "a100-40gb", "a100-80gb", "mi300x"} <= set(PRESETS)


def test_reserve_comes_off_the_capacity():
    none = pipesim.simulate(pipesim.load_scenario(TINY))
    held = pipesim.simulate(pipesim.load_scenario(TINY, {"hardware.reserve_gib": 0.25}))
    assert none.capacity_bytes == GIB and held.capacity_bytes == GIB - GIB // 4
    assert held.device_bytes == GIB and held.reserve_bytes == GIB // 4
    p = held.peaks[0].bytes
    assert held.summary()["ranks"][0]["headroom_bytes"] == GIB - GIB // 4 - p
    assert none.peaks[0].bytes == p                          # the prediction itself is unchanged


def test_reserve_must_leave_memory():
    with pytest.raises(ScenarioError, match="hardware.reserve_gib: must be below memory_gib"):
        pipesim.load_scenario(TINY, {"hardware.reserve_gib": 1.0})
