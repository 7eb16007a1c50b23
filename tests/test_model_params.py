"""Parameter counts against the paper's Tables 3, 4 and 6 (Zhang & Su, arXiv 2502.07846) and the
published model sizes. Expected values are the paper's integers or hand-worked products."""
import dataclasses

import pytest

from pipesim.model import ParallelConfig, load_preset, preset_names
from pipesim.model.params import (layer_params, model_params, stage_params,
                                  stage_params_per_device)

V3 = load_preset("deepseek-v3")
PAPER = ParallelConfig(tp=2, pp=16, ep=8, etp=1, dp=32, sp=True)      # Table 5
GIB, MIB = 2 ** 30, 2 ** 20
LATENT_NORMS = 1536 + 512      # counted twice by the paper (its MLA and LN rows)
FINAL_NORM = 7168              # the RMSNorm before the head, which the paper leaves out


def close(value, printed, digits):
    """Within half a unit of the printed value's last digit."""
    return abs(value - printed) <= 0.5 * 10 ** -digits


def test_presets_are_listed_and_overridable():
    assert set(preset_names()) >= {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "tiny"}
    assert V3.mtp_modules == 1 and V3.layers == 61 and V3.dense_layers == 3
    assert load_preset("deepseek-v3", layers=8).layers == 8
    assert dataclasses.replace(V3, hidden=1024).hidden == 1024


def test_table3_modules():
    dense, moe = layer_params(V3, 0), layer_params(V3, 3)
    assert dense["mla"] + dense["mla_norms"] == 187_107_328          # Table 3 MLA row
    assert dense["mlp"] == 396_361_728 == 3 * 7168 * 18432
    assert moe["gate"] == 1_835_008 == 256 * 7168
    assert moe["routed_experts"] + moe["shared_experts"] == 11_318_329_344 == 3 * 7168 * 2048 * 257
    assert dense["norms"] + dense["mla_norms"] == 16_384               # Table 3 LN row
    assert 926_679_040 == 129280 * 7168                                # embedding and head rows


def test_table3_layer_totals_count_latent_norms_once():
    # The paper's totals include the 2,048 latent-norm params twice (MLA and LN rows).
    dense = sum(layer_params(V3, 0).values())
    moe = sum(layer_params(V3, 3).values())
    assert dense == 583_485_440 - LATENT_NORMS
    assert moe == 11_507_288_064 - LATENT_NORMS
    last = sum(stage_params(V3, [60], head=True).values())
    assert last == 12_433_967_104 - LATENT_NORMS + FINAL_NORM
    # Printed (BF16): dense 1112 MB, MoE 21950 MB / 21.44 GB, last 23712 MB / 23.16 GB.
    assert close(last * 2 / GIB, 23.16, 2)
    # Paper slips: 1112 MB truncates 1112.9; 21950 MB and 21.44 GB come from its rounded 11.5 B
    # (21950 / 1024 = 21.44) while the exact layer is 21,948.4 MiB = 21.434 GiB; 23712 MB is
    # likewise loose (exact 23,715.9 MiB).
    assert int(dense * 2 / MIB) == 1112
    assert round(moe * 2 / GIB, 2) == 21.43 and abs(moe * 2 / GIB - 21.44) < 0.01
    assert round(moe * 2 / MIB) == 21_948 and abs(moe * 2 / MIB - 21_950) < 2
    assert abs(last * 2 / MIB - 23_712) < 4


def test_model_total_671b():
    # 61 layers counted with the latent norms once, plus the final norm.
    assert model_params(V3) == 671_026_522_112 - 61 * LATENT_NORMS + FINAL_NORM
    assert close(model_params(V3) * 2 / GIB, 1250, 0)                   # printed 1250 GB


def test_table4_stages():
    s0 = sum(stage_params(V3, range(0, 4), embedding=True).values())
    mid = sum(stage_params(V3, range(4, 8)).values())
    s15 = sum(stage_params(V3, [60], head=True).values())
    assert s0 == 14_184_423_424 - 4 * LATENT_NORMS                     # printed 14.16 B (paper rounding)
    assert mid == 46_029_152_256 - 4 * LATENT_NORMS
    assert s15 == 12_433_967_104 - LATENT_NORMS + FINAL_NORM
    assert close(s0 * 2 / GIB, 26.42, 2) and close(mid * 2 / GIB, 85.74, 2)
    assert close(mid * 2 / GIB, 86, 0) and close(s15 * 2 / GIB, 23, 0)


def test_table6_per_device_middle_stage():
    d = stage_params_per_device(V3, PAPER, range(4, 8))
    assert d["norms"] + d["mla_norms"] == 65_536                        # RMSNorm row
    # MLA: replicated W_DQ, W_QR, W_DKV, W_KR + split W_UQ, W_UK, W_UV, W_O over TP2
    replicated = 7168 * 1536 + 1536 * 128 * 64 + 7168 * 512 + 7168 * 64
    split = 1536 * 128 * 128 + 2 * 512 * 128 * 128 + 128 * 128 * 7168
    assert d["mla"] == 4 * (replicated + split // 2) == 429_654_016
    moe = d["gate"] + d["routed_experts"] + d["shared_experts"]
    assert moe == 5_820_645_376 == 4 * (256 * 7168 + (256 // 8 + 1) * 3 * 7168 * 2048)
    total = sum(d.values())
    assert total - moe == 429_719_552                                   # non-MoE part
    assert total == 6_250_364_928 and total * 2 == 12_500_729_856
    assert d["mla"] * 2 == 859_308_032 and moe * 2 == 11_641_290_752
    assert close(d["mla"] * 2 / MIB, 819.5, 1)
    # Paper slip: non-MoE 859,439,104 bytes is 819.625 MiB, printed 819.7 (rounds to 819.6).
    assert (total - moe) * 2 == 859_439_104 and abs((total - moe) * 2 / MIB - 819.7) < 0.1
    assert close(moe * 2 / MIB, 11_102, 0) and close(moe * 2 / GIB, 10.84, 2)
    assert close(total * 2 / MIB, 11_922, 0) and close(total * 2 / GIB, 11.64, 2)


def test_mtp_and_685b():
    # One MTP module: two RMSNorms + [2h, h] projection + one MoE layer + its final norm.
    h = 7168
    moe_layer = 11_507_288_064 - LATENT_NORMS
    mtp = 2 * h + 2 * h * h + moe_layer + h
    assert model_params(V3, mtp=True) == model_params(V3) + mtp
    own = model_params(V3, mtp=True, mtp_own_embedding_head=True)
    assert own == model_params(V3) + mtp + 2 * 926_679_040
    assert abs(own / 685e9 - 1) < 0.005
    assert abs(model_params(V3) / 671e9 - 1) < 0.005


@pytest.mark.parametrize("name, published", [("deepseek-v2", 236e9), ("deepseek-v2-lite", 15.7e9)])
def test_published_sizes(name, published):
    assert abs(model_params(load_preset(name)) / published - 1) < 0.005


def test_v2_lite_plain_query_projection():
    lite = load_preset("deepseek-v2-lite")
    h, nh = 2048, 16
    mla = (h * nh * (128 + 64)            # W_Q
           + h * 512 + 512 * nh * 128 * 2  # W_DKV, W_UK, W_UV
           + h * 64 + nh * 128 * h)        # W_KR, W_O
    p = layer_params(lite, 1)
    assert p["mla"] == mla and p["mla_norms"] == 512
    # W_Q is column-parallel: split by TP; W_DKV, W_KR replicated.
    d = stage_params_per_device(lite, ParallelConfig(tp=2), [1])
    assert d["mla"] == h * 512 + h * 64 + (h * nh * 192 + 512 * nh * 128 * 2 + nh * 128 * h) // 2


def test_tied_embeddings():
    tiny = load_preset("tiny", tied_embeddings=True)
    untied = load_preset("tiny")
    assert model_params(untied) - model_params(tiny) == 1024 * 256
    both = stage_params(tiny, [5], embedding=True, head=True)
    assert both["head"] == 0 and both["embedding"] == 1024 * 256
    assert stage_params(tiny, [5], head=True)["head"] == 1024 * 256    # the last stage's copy


def test_ep_etp_split_routed_experts_only():
    tiny = load_preset("tiny")                       # 8 experts of 3*256*128, 1 shared
    d = stage_params_per_device(tiny, ParallelConfig(tp=2, ep=4, etp=2, dp=4), [3])
    assert d["routed_experts"] == 8 // 4 * 3 * 256 * 128 // 2
    assert d["shared_experts"] == 3 * 256 * 128 and d["gate"] == 8 * 256
    assert d["norms"] == 512
