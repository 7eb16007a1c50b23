"""The public API of pipesim.model: names, validation messages, the report tables."""
import dataclasses
import json

import pytest

import pipesim.model as model
from pipesim.model import (LayerCosts, ModelError, ParallelConfig, StageCosts, TrainingConfig,
                           load_preset, stage_costs)
from pipesim.model.report import format_tables, tables

V3 = load_preset("deepseek-v3")
PAPER = ParallelConfig(tp=2, pp=16, ep=8, etp=1, dp=32, sp=True)


def test_all_lists_the_api():
    assert sorted(model.__all__) == sorted([
        "DTypes", "LayerCosts", "ModelConfig", "ModelError", "ParallelConfig", "StageCosts",
        "TrainingConfig", "load_preset", "preset_names", "stage_costs"])
    assert {f.name for f in dataclasses.fields(LayerCosts)} >= {
        "name", "stored_bytes", "stored_by_module", "w_bytes", "forward_transient_bytes",
        "recompute_bytes", "backward_transient_bytes", "a2a_bytes", "flops_f", "flops_b", "flops_w"}
    assert {f.name for f in dataclasses.fields(StageCosts)} == {
        "params", "weights_bytes", "grads_bytes", "optimizer_bytes", "gather_bytes",
        "boundary_bytes", "logits_bytes", "layers"}


@pytest.mark.parametrize("kw, field, allowed", [
    ({"tp": 3}, "tp", "heads (128)"),
    ({"ep": 3}, "ep", "routed_experts (256)"),
    ({"etp": 3}, "etp", "moe_ffn_hidden (2048)"),
    ({"dp": 3, "ep": 8}, "ep", "dp*cp*tp"),
    ({"cp": 0}, "cp", ">= 1"),
])
def test_parallel_validation_names_field(kw, field, allowed):
    with pytest.raises(ModelError) as e:
        ParallelConfig(**kw).validate(V3)
    assert str(e.value).startswith(field) and allowed in str(e.value)


def test_unknown_preset():
    with pytest.raises(ModelError, match="deepseek-v3"):
        load_preset("llama")


def test_model_validation():
    with pytest.raises(ModelError, match="model.experts_per_token"):
        ParallelConfig().validate(load_preset("tiny", experts_per_token=99))


def test_tiny_runs_fast_and_is_consistent():
    tiny = load_preset("tiny")
    t = TrainingConfig(micro_batch_size=1, seq_len=256, recompute="full", zero="os+g+params")
    c = stage_costs(tiny, ParallelConfig(pp=2), t, range(3), embedding=True)
    assert c.layers[0].name == "embedding" and c.layers[1].name == "layer 0 (dense)"
    assert c.logits_bytes == 0 and c.gather_bytes > 0
    assert all(isinstance(v, int) for L in c.layers for v in
               (L.stored_bytes, L.flops_f, L.flops_b, L.flops_w, L.a2a_bytes))


def test_report_tables_are_json_and_reproduce_the_paper():
    t = TrainingConfig(micro_batch_size=1, seq_len=4096, recipe="paper")
    tab = tables(dataclasses.replace(V3, mtp_modules=0), PAPER, t, [4] * 15 + [1])
    json.dumps(tab)
    rows6 = {r[0]: r for r in tab["table6"]["rows"]}
    assert rows6[1][7] == 6_250_364_928 and rows6[1][8] == 12_500_729_856
    rows8 = {r[0]: r for r in tab["table8"]["rows"]}
    assert rows8["os"][3] == 5_928_075_264 and rows8["os+g+params"][1] == 1_482_018_816
    rows10 = [r for r in tab["table10"]["rows"] if r[0] == 1]
    assert [r[6] for r in rows10[:2]] == [24_671_158_272, 235_143_168]
    assert tab["table4"]["rows"][-1][3] == 671_026_522_112 - 61 * 2048 + 7168
    text = format_tables(tab)
    assert "Table 8" in text and "24,671,158,272" in text and "81.50" in text


def test_keep_given_as_a_list_is_held_as_a_tuple_and_costs_the_same():
    keep = ["deepseek-v3"]
    as_list = TrainingConfig(recompute="selective", keep=keep)
    as_tuple = TrainingConfig(recompute="selective", keep=tuple(keep))
    assert as_list == as_tuple and isinstance(as_list.keep, tuple)
    assert stage_costs(V3, PAPER, as_list, range(4, 8)) == stage_costs(V3, PAPER, as_tuple, range(4, 8))
