"""Paper-style tables of the analytical model (Zhang & Su, arXiv 2502.07846, Tables 3-10).

    python -m pipesim model scenarios/v3_pp16.toml [--json]

``tables`` returns a JSON-able dict: one entry per table, each
``{"title", "columns", "rows", "notes"}``, every byte count an exact integer next to its GiB
(or MiB) value. ``format_tables`` renders that dict as aligned text. The embedding sits on the
first stage, the output head and the MTP modules on the last.
"""
from __future__ import annotations

import dataclasses

from pipesim.model import params as P
from pipesim.model.activations import layer_activations, tensor_listing
from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.states import SHARDED, states_bytes

GIB, MIB = 2 ** 30, 2 ** 20
_NORMS = ("norms", "mla_norms", "qk_norms", "final_norm", "mtp_norms")


def _gib(n: int) -> float:
    return round(n / GIB, 4)


def _mib(n: int) -> float:
    return round(n / MIB, 2)


def _stages(m: ModelConfig, layers_per_stage, placement=None) -> list[dict]:
    """Each stage's layers and whether it holds the embedding, head and MTP: by ``placement``
    (a ``[placement]`` table: its embedding_stage, head_stage, mtp_stage), else first / last."""
    n = len(layers_per_stage)
    emb, head, mtp = ((getattr(placement, k) % n for k in ("embedding_stage", "head_stage", "mtp_stage"))
                      if placement is not None else (0, n - 1, n - 1))
    out, first = [], 0
    for s, c in enumerate(layers_per_stage):
        out.append({"layers": range(first, first + c), "embedding": s == emb, "head": s == head,
                    "mtp": s == mtp and m.mtp_modules > 0})
        first += c
    return out


def _span(r: range) -> str:
    return f"{r.start}" if len(r) == 1 else f"{r.start}-{r.stop - 1}"


def _table3(m: ModelConfig, wb: int) -> dict:
    kinds = [("embedding", P.embedding_params(m))]
    if m.dense_layers:
        kinds.append(("dense layer", P.layer_params(m, 0)))
    if m.dense_layers < m.layers:
        kinds.append(("moe layer", P.layer_params(m, m.dense_layers)))
    kinds.append(("head", P.head_params(m, not m.tied_embeddings)))
    if m.mtp_modules:
        kinds.append(("mtp module", P.mtp_params(m)))
    rows = []
    for kind, mods in kinds:
        for mod, n in mods.items():
            rows.append([kind, mod, n, n * wb, _mib(n * wb), _gib(n * wb)])
        tot = sum(mods.values())
        rows.append([kind, "total", tot, tot * wb, _mib(tot * wb), _gib(tot * wb)])
    totals = [("model (main)", P.model_params(m))]
    if m.mtp_modules:
        totals += [("model + MTP", P.model_params(m, mtp=True)),
                   ("model + MTP with its own embedding and head",
                    P.model_params(m, mtp=True, mtp_own_embedding_head=True))]
    for label, n in totals:
        rows.append([label, "total", n, n * wb, _mib(n * wb), _gib(n * wb)])
    return {"title": "Table 3: parameters per layer and module",
            "columns": ["layer", "module", "params", "bytes", "MiB", "GiB"], "rows": rows,
            "notes": ["mla = projection matrices; mla_norms = the two latent RMSNorms (the paper "
                      "counts them in both its MLA and LN rows); norms = the layer's two RMSNorms",
                      "final_norm (h) precedes the head; the paper leaves it out"]}


def _table4(m: ModelConfig, stages: list[dict], wb: int) -> dict:
    rows, total = [], 0
    for s, st in enumerate(stages):
        n = sum(P.stage_params(m, st["layers"], embedding=st["embedding"], head=st["head"],
                               mtp=st["mtp"]).values())
        total += n
        rows.append([s, _span(st["layers"]), len(st["layers"]), n, _gib(n * wb)])
    rows.append(["sum", "", sum(len(st["layers"]) for st in stages), total, _gib(total * wb)])
    return {"title": "Table 4: parameters per pipeline stage",
            "columns": ["stage", "layers", "n_layers", "params", "GiB"], "rows": rows,
            "notes": ["embedding on stage " + ", ".join(str(i) for i, st in enumerate(stages) if st["embedding"])
                      + "; head on stage " + ", ".join(str(i) for i, st in enumerate(stages) if st["head"])
                      + ("; MTP on stage " + ", ".join(str(i) for i, st in enumerate(stages) if st["mtp"])
                         if m.mtp_modules else "")]}


def _device(m, p, t, st) -> dict[str, int]:
    return P.stage_params_per_device(m, p, st["layers"], embedding=st["embedding"],
                                     head=st["head"], mtp=st["mtp"],
                                     shared_placement=t.shared_placement)


def _table6(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, stages: list[dict], wb: int) -> dict:
    rows = []
    for s, st in enumerate(stages):
        d = _device(m, p, t, st)
        norms = sum(d.get(k, 0) for k in _NORMS)
        moe = sum(d.get(k, 0) for k in P.MOE_MODULES)
        total = sum(d.values())
        rows.append([s, norms, d.get("mla", 0) + d.get("attention", 0) + d.get("attention_bias", 0),
                     d.get("embedding", 0) + d.get("head", 0),
                     d.get("mlp", 0) + d.get("mtp_proj", 0), total - moe, moe, total,
                     total * wb, _mib(total * wb), _gib(total * wb)])
    return {"title": "Table 6: parameters per device",
            "columns": ["stage", "rmsnorm", "attention", "emb+head", "mlp+proj", "non-moe", "moe",
                        "total", "bytes", "MiB", "GiB"], "rows": rows,
            "notes": [f"TP{p.tp} EP{p.ep} ETP{p.etp}: W_UQ/W_UK/W_UV/W_O, dense FFN, vocab"
                      + (", shared experts" if t.shared_placement == "megatron" else "")
                      + " split by TP; W_DQ/W_DKV/W_KR/W_QR, norms, gate"
                      + (", shared experts" if t.shared_placement != "megatron" else "")
                      + f" replicated (shared_placement = {t.shared_placement})"]}


def _table8(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, stages: list[dict]) -> dict:
    devs = [_device(m, p, t, st) for st in stages]
    s = max(range(len(devs)), key=lambda i: sum(devs[i].values()))
    rows = []
    for zero in SHARDED:
        st = states_bytes(devs[s], p, t.dtypes, zero, t.shared_placement)
        rows.append([zero, st.weights, st.grads, st.optimizer, st.total, _gib(st.weights),
                     _gib(st.grads), _gib(st.optimizer), _gib(st.total)])
    return {"title": f"Table 8: model states per device by ZeRO level (stage {s}, the largest)",
            "columns": ["zero", "weights", "grads", "optimizer", "total", "w GiB", "g GiB",
                        "o GiB", "total GiB"], "rows": rows,
            "notes": [f"dense states sharded over DP*CP={p.zero_ways}, "
                      + ("MoE (gate, routed and shared experts)" if t.shared_placement == "paper"
                         else "routed experts")
                      + f" over EDP={p.edp_effective}; bytes per value {dataclasses.asdict(t.dtypes)}"]}


def _table10(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, stages: list[dict]) -> dict:
    policies = [("none", ()), ("full", ())]
    policies.append(("selective", t.keep or ("deepseek-v3",)))
    rows = []
    for s, st in enumerate(stages):
        kinds = (["embedding"] if st["embedding"] else []) + [
            "moe" if m.is_moe(i) else "dense" for i in st["layers"]] + (
            ["mtp"] * m.mtp_modules if st["mtp"] else []) + (["head"] if st["head"] else [])
        for policy, keep in policies:
            tt = dataclasses.replace(t, recompute=policy, keep=keep)
            by: dict[str, int] = {}
            for k in kinds:
                for mod, n in layer_activations(m, p, tt, k).stored_by_module.items():
                    by[mod] = by.get(mod, 0) + n
            mla = by.get("mla", 0) + by.get("attn", 0)
            moe = sum(by.get(k, 0) for k in ("moe", "router", "experts", "shared"))
            mlp = by.get("mlp", 0)
            total = sum(by.values())
            label = policy if policy != "selective" else f"selective ({', '.join(keep)})"
            rows.append([s, label, mla, moe, mlp, total - mla - moe - mlp, total, _mib(total),
                         _gib(total)])
    return {"title": (f"Table 10: stored activations per stage and device, per micro-batch "
                      f"(b={t.micro_batch_size}, s={t.seq_len}, {t.attention} attention)"),
            "columns": ["stage", "recompute", "attention", "moe", "mlp", "other", "total", "MiB", "GiB"],
            "rows": rows,
            "notes": [f"TP{p.tp} SP{'on' if p.sp else 'off'} CP{p.cp} EP{p.ep} ETP{p.etp}, "
                      f"expert tokens: {t.expert_tokens}, fp8 activations: {t.fp8_activations}",
                      "expert_tokens = \"paper\" reproduces the paper's Table 10 (R = b*s*N_r/ep); "
                      "\"routed\" counts the tokens a device's experts receive (T_sp*N_r)",
                      "moe = norm + router + routed + shared experts; other = embedding ids, "
                      "head and MTP inputs, and the loss's kept tensor (FP32 softmax or fused gradient)",
                      f"recipe {t.recipe}: {t.inventory} inventory, dropout {t.dropout}, "
                      f"recompute granularity {t.recompute_granularity}, cross-entropy {t.cross_entropy}"]}


def tables(model: ModelConfig, parallel: ParallelConfig, training: TrainingConfig,
           layers_per_stage, placement=None) -> dict:
    """The paper's Tables 3, 4, 6, 8 and 10 for this model, layout and recipe (JSON-able);
    ``placement`` (the scenario's ``[placement]``) says where embedding, head and MTP sit."""
    stages = _stages(model, list(layers_per_stage), placement)
    wb = training.dtypes.weights
    return {"model": model.name,
            "table3": _table3(model, wb),
            "table4": _table4(model, stages, wb),
            "table6": _table6(model, parallel, training, stages, wb),
            "table8": _table8(model, parallel, training, stages),
            "table10": _table10(model, parallel, training, stages)}


def tensor_tables(model: ModelConfig, parallel: ParallelConfig, training: TrainingConfig) -> dict:
    """One table per layer kind of the model: every activation tensor a device keeps per
    micro-batch, with its shape, dtype, bytes, status under the recipe and the reason."""
    m, t = model, training
    kinds = ["embedding"]
    kinds += ["dense"] if m.dense_layers else []
    kinds += ["moe"] if m.dense_layers < m.layers else []
    kinds += (["mtp"] if m.mtp_modules else []) + ["head"]
    out: dict = {"model": m.name}
    for kind in kinds:
        rows = tensor_listing(m, parallel, t, kind)
        stored = sum(r["bytes"] for r in rows if r["status"] == "stored")
        out[kind] = {
            "title": f"{kind} layer: activation tensors per device and micro-batch "
                     f"(recipe {t.recipe}, recompute {t.recompute}; stored {stored:,} bytes, {_mib(stored)} MiB)",
            "columns": ["tensor", "status", "shape", "dtype", "bytes", "MiB", "why"],
            "rows": [[r["name"], r["status"], "x".join(map(str, r["shape"])) or "-", r["dtype"] or "-",
                      r["bytes"], _mib(r["bytes"]), r["why"]] for r in rows],
            "notes": [f"TP{parallel.tp} SP{'on' if parallel.sp else 'off'} CP{parallel.cp} "
                      f"EP{parallel.ep} ETP{parallel.etp}, b={t.micro_batch_size}, s={t.seq_len}, "
                      f"{t.inventory} inventory (pipesim.model.inventory_{t.inventory})"],
        }
    return out


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


def format_tables(tables_dict: dict) -> str:
    """Aligned text of every table in ``tables_dict`` (as returned by ``tables``)."""
    out = [f"model: {tables_dict.get('model', '')}  (GiB = 2**30 bytes, MiB = 2**20 bytes)"]
    for key, tab in tables_dict.items():
        if not isinstance(tab, dict):
            continue
        cells = [[_cell(v) for v in row] for row in tab["rows"]]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(tab["columns"])]
        line = lambda row: "  ".join(  # noqa: E731
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        out += ["", tab["title"], line(tab["columns"]), line(["-" * w for w in widths])]
        out += [line(r) for r in cells]
        out += [f"  note: {n}" for n in tab.get("notes", [])]
    return "\n".join(out)
