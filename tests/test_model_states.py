"""Model states by ZeRO level against the paper's Table 8 (middle stage, DP32 TP2 EP8 EDP8)."""
import pytest

from pipesim.model import DTypes, ModelError, ParallelConfig, TrainingConfig, load_preset, stage_costs

V3 = load_preset("deepseek-v3")
PAPER = ParallelConfig(tp=2, pp=16, ep=8, etp=1, dp=32, sp=True)
GIB = 2 ** 30
NON_MOE, MOE = 429_719_552, 5_820_645_376          # Table 6 per-device params


def close(value, printed, digits):
    return abs(value - printed) <= 0.5 * 10 ** -digits


def states(zero):
    c = stage_costs(V3, PAPER, TrainingConfig(recipe="paper", zero=zero), range(4, 8))
    return c.weights_bytes, c.grads_bytes, c.optimizer_bytes


def test_edp_rule():
    assert PAPER.edp_effective == 8                   # 32*2/(8*1), Table 5
    assert ParallelConfig(dp=16, tp=1, ep=8).edp_effective == 2
    assert ParallelConfig(dp=4, edp=3).edp_effective == 3


def test_table8_exact_bytes():
    w, g, o = states("none")
    assert (w, g, o) == ((NON_MOE + MOE) * 2, (NON_MOE + MOE) * 4, (NON_MOE + MOE) * 8)
    assert states("os")[2] == 5_928_075_264 == NON_MOE * 8 // 32 + MOE * 8 // 8
    assert states("os+g")[1] == 2_964_037_632 == NON_MOE * 4 // 32 + MOE * 4 // 8
    assert states("os+g+params")[0] == 1_482_018_816 == NON_MOE * 2 // 32 + MOE * 2 // 8


@pytest.mark.parametrize("zero, printed", [
    ("none", [11.64, 23.3, 46.6, 81.54]),
    ("os", [11.64, 23.3, 5.52, 40.46]),
    ("os+g", [11.64, 2.76, 5.52, 19.92]),
    ("os+g+params", [1.38, 2.76, 5.52, 9.66]),
])
def test_table8_printed_gib(zero, printed):
    w, g, o = states(zero)
    for value, p in zip((w, g, o), printed[:3]):
        assert close(value / GIB, p, len(str(p).split(".")[1]))
    total = (w + g + o) / GIB
    if zero in ("none", "os"):
        # Paper slip: it adds its rounded columns (11.64 + 23.3 + 46.6 = 81.54,
        # 11.64 + 23.3 + 5.52 = 40.46); the exact totals are 81.50 and 40.45 GiB.
        assert close(total, sum(printed[:3]), 1) and not close(total, printed[3], 2)
        assert round(total, 2) == {"none": 81.50, "os": 40.45}[zero]
    else:
        assert close(total, printed[3], 2)


def test_dtypes_are_configurable():
    t = TrainingConfig(recipe="paper", dtypes=DTypes(weights=4, grads=2, master=0 + 4, momentum=4, variance=4))
    c = stage_costs(V3, PAPER, t, range(4, 8))
    n = NON_MOE + MOE
    assert (c.weights_bytes, c.grads_bytes, c.optimizer_bytes) == (4 * n, 2 * n, 12 * n)


def test_gather_bytes_only_with_params_sharding():
    assert stage_costs(V3, PAPER, TrainingConfig(recipe="paper", zero="os+g"), range(4, 8)).gather_bytes == 0
    c = stage_costs(V3, PAPER, TrainingConfig(recipe="paper", zero="os+g+params"), range(4, 8))
    assert c.gather_bytes == (NON_MOE + MOE) // 4 * 2     # one of the four identical layers


def test_bad_zero_names_the_field():
    with pytest.raises(ModelError, match="zero.*os\\+g"):
        TrainingConfig(zero="3").validate(V3)
