"""Parameter counts: per module, per layer, per pipeline stage and per device.

Symbols (paper, Table 1): h hidden, n_h heads, d_h head dim, d_hr rope head dim, d_cq query
latent, d_c key-value latent, f dense FFN width, h_E expert FFN width, N routed experts,
N_s shared experts, V vocabulary.

Module names used everywhere (one dict key each):
    mla             the MLA projection matrices (Table 2)
    mla_norms       the RMSNorms of the two latents, d_cq + d_c (the paper counts these twice:
                    in its MLA row and in its LN row, Table 3)
    norms           the layer's two RMSNorms, 2h
    mlp             dense FFN (SwiGLU), 3·h·f
    gate            MoE router, [N, h]
    routed_experts  N experts of 3·h·h_E
    shared_experts  N_s experts of 3·h·h_E
    embedding       [V, h]
    head            [h, V] (absent when tied to the embedding on the same stage)
    final_norm      RMSNorm before the head, h (the paper leaves it out)
    mtp_norms       MTP: RMSNorms of the hidden state and of the next token's embedding, 2h
    mtp_proj        MTP: projection of their concatenation, [2h, h]

Per device (Megatron-LM layout, reference notes to Table 6): TP splits W_UQ, W_UK, W_UV, W_O
(and W_Q when there is no query compression: a column-parallel linear), the dense FFN and the
vocabulary of embedding and head (padded up to a multiple of tp); it replicates W_DQ, W_DKV,
W_KR, W_QR, every norm, the gate and the MTP projection. The shared experts are replicated as
the paper places them (``shared_placement = "paper"``) or TP-split like the dense FFN as
Megatron-Core's SharedExpertMLP does ("megatron"). EP spreads the routed experts (N/ep per
device); ETP splits each routed expert's matrices.
"""
from __future__ import annotations

from pipesim.model.config import ModelConfig, ParallelConfig

# The MoE block's modules (the paper's "MoE" rows of Tables 6 and 8).
MOE_MODULES = ("gate", "routed_experts", "shared_experts", "shared_gate")


def expert_modules(shared_placement: str = "paper") -> tuple[str, ...]:
    """Modules whose ZeRO states shard over EDP (see states.py): the whole MoE block as the
    paper places it, or only the routed experts as Megatron-Core does."""
    return MOE_MODULES if shared_placement == "paper" else ("routed_experts",)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def attention_matrices(m: ModelConfig) -> dict[str, tuple[int, int, str | None]]:
    """The attention matrices as ``name: (in_features, out_features, tp)``, tp = "col"
    (column-parallel: out split), "row" (row-parallel: in split) or None (replicated).

    MLA with query compression (d_cq > 0):
        W_DQ [h, d_cq], W_UQ [d_cq, n_h·d_h] col, W_QR [d_cq, n_h·d_hr]
    MLA without (DeepSeek-V2-Lite):
        W_Q [h, n_h·(d_h + d_hr)] col
    MLA always:
        W_DKV [h, d_c], W_UK [d_c, n_h·d_h] col, W_UV [d_c, n_h·d_h] col, W_KR [h, d_hr],
        W_O [n_h·d_h, h] row
    DeepSeek-V3: 11,010,048 + 25,165,824 + 12,582,912 + 3,670,016 + 2·8,388,608 + 458,752
    + 117,440,512 = 187,105,280 (+ 2,048 latent norms = Table 3's 187,107,328).
    GQA (g = kv_heads, d = head_dim): W_Q [h, n_h·d], W_K [h, g·d], W_V [h, g·d] col,
        W_O [n_h·d, h] row (Llama-3 8B: 4096·4096 + 2·4096·1024 + 4096·4096 = 41,943,040).
    """
    h, nh, dh = m.hidden, m.heads, m.head_dim
    if m.attention == "gqa":
        g = m.kv_groups
        return {"W_Q": (h, nh * dh, "col"), "W_K": (h, g * dh, "col"), "W_V": (h, g * dh, "col"),
                "W_O": (nh * dh, h, "row")}
    dhr, dcq, dc = m.rope_head_dim, m.q_compress, m.kv_compress
    mats = {}
    if dcq:
        mats["W_DQ"] = (h, dcq, None)              # query down-projection, replicated
        mats["W_UQ"] = (dcq, nh * dh, "col")       # query up-projection (no-rope part), split
        mats["W_QR"] = (dcq, nh * dhr, None)       # query rope up-projection, replicated
    else:
        mats["W_Q"] = (h, nh * (dh + dhr), "col")  # plain query projection, column-parallel
    mats["W_DKV"] = (h, dc, None)                  # key-value down-projection, replicated
    mats["W_UK"] = (dc, nh * dh, "col")            # key up-projection, split
    mats["W_UV"] = (dc, nh * dh, "col")            # value up-projection, split
    mats["W_KR"] = (h, dhr, None)                  # shared key rope projection, replicated
    mats["W_O"] = (nh * dh, h, "row")              # output projection, row-parallel
    return mats


def mla_matrices(m: ModelConfig) -> dict[str, tuple[int, bool]]:
    """``attention_matrices`` as ``name: (params, split_by_tp)``."""
    return {k: (i * o, tp is not None) for k, (i, o, tp) in attention_matrices(m).items()}


def attention_key(m: ModelConfig) -> str:
    """The module name of a layer's attention matrices: "mla" or "attention" (GQA/MHA)."""
    return "mla" if m.attention == "mla" else "attention"


def layer_params(m: ModelConfig, layer: int) -> dict[str, int]:
    """Parameters of global transformer layer ``layer`` by module (whole model, no parallelism).

    dense layer:  mla + mla_norms + norms + mlp                 = 583,483,392 (V3)
    MoE layer:    mla + mla_norms + norms + gate + experts      = 11,507,286,016 (V3)
    GQA models: attention (+ attention_bias n_h·d + 2g·d with qkv_bias, qk_norms 2d with
    qk_norm) + norms + mlp or gate + experts (+ shared_gate h with a gated shared expert).
    """
    h = m.hidden
    out = {attention_key(m): sum(p for p, _ in mla_matrices(m).values())}
    if m.attention == "mla":
        out["mla_norms"] = m.q_compress + m.kv_compress     # RMSNorm weights of the two latents
    else:
        if m.qkv_bias:
            out["attention_bias"] = (m.heads + 2 * m.kv_groups) * m.head_dim
        if m.qk_norm:
            out["qk_norms"] = 2 * m.head_dim
    out["norms"] = 2 * h                                    # attention and FFN input RMSNorms
    if m.is_moe(layer):
        out["gate"] = m.routed_experts * h                                   # router [N, h]
        out["routed_experts"] = m.routed_experts * 3 * h * m.moe_ffn_hidden  # gate, up, down each
        if m.shared_experts:
            out["shared_experts"] = 3 * h * m.shared_width
            if m.shared_expert_gate:
                out["shared_gate"] = h                                       # [1, h], Qwen2-MoE
    else:
        out["mlp"] = 3 * h * m.dense_ffn_hidden                              # gate, up, down
    return out


def embedding_params(m: ModelConfig) -> dict[str, int]:
    """Input embedding [V, h]."""
    return {"embedding": m.vocab * m.hidden}


def head_params(m: ModelConfig, with_matrix: bool = True) -> dict[str, int]:
    """Final RMSNorm (h) and output head [h, V]; ``with_matrix=False`` when tied and shared."""
    return {"final_norm": m.hidden, "head": m.vocab * m.hidden if with_matrix else 0}


def mtp_params(m: ModelConfig) -> dict[str, int]:
    """One MTP module, DeepSeek-V3 section 2.2: norms 2h + projection [2h, h] + one MoE layer
    + its own final RMSNorm h; the embedding and output head are shared with the main model."""
    out = {"mtp_norms": 2 * m.hidden, "mtp_proj": 2 * m.hidden * m.hidden}
    for k, v in layer_params(m, m.layers).items():      # an MoE transformer layer
        out[k] = out.get(k, 0) + v
    out["final_norm"] = m.hidden
    return out


def model_params(m: ModelConfig, *, mtp: bool = False, mtp_own_embedding_head: bool = False) -> int:
    """All parameters of the model.

    main = embedding + Σ_layers + final_norm + head (head 0 when tied);
    with ``mtp``: + mtp_modules · mtp_params, and with ``mtp_own_embedding_head`` also each MTP
    module's copy of embedding and head (how the published 685B for DeepSeek-V3 counts them).
    """
    total = sum(embedding_params(m).values()) + sum(head_params(m, not m.tied_embeddings).values())
    total += sum(sum(layer_params(m, i).values()) for i in range(m.layers))
    if mtp:
        per = sum(mtp_params(m).values())
        if mtp_own_embedding_head:
            per += 2 * m.vocab * m.hidden                # its own embedding + head copies
        total += m.mtp_modules * per
    return total


def _add(acc: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        acc[k] = acc.get(k, 0) + v


def stage_params(m: ModelConfig, layers, *, embedding: bool = False, head: bool = False,
                 mtp: bool = False) -> dict[str, int]:
    """Parameters of one pipeline stage by module (no TP/EP sharding).

    A tied head on a stage without the embedding holds its own copy of the matrix (Megatron
    keeps one on the last stage and all-reduces the two gradients); with the embedding on the
    same stage it is counted once.
    """
    out: dict[str, int] = {}
    if embedding:
        _add(out, embedding_params(m))
    for i in layers:
        _add(out, layer_params(m, i))
    if mtp:
        for _ in range(m.mtp_modules):
            _add(out, mtp_params(m))
    if head:
        _add(out, head_params(m, with_matrix=not (m.tied_embeddings and embedding)))
    return out


def per_device(m: ModelConfig, p: ParallelConfig, module: str, count: int,
               shared_placement: str = "paper") -> int:
    """Per-device share of ``count`` parameters of ``module`` under TP / EP / ETP.

    The MLA row needs the matrix split, so it is handled by ``mla_per_device``; here: mlp /tp
    (and shared_experts /tp with the "megatron" placement); embedding, head: ⌈V/tp⌉·h;
    routed_experts /(ep·etp); the rest replicated.
    """
    if module in ("mlp", "attention_bias") or (module == "shared_experts" and shared_placement == "megatron"):
        return count // p.tp
    if module in ("embedding", "head"):
        return m.vocab_shard(p.tp) * m.hidden if count else 0
    if module == "routed_experts":
        return count // (p.ep * p.etp)
    return count


def attention_per_device(m: ModelConfig, p: ParallelConfig) -> int:
    """MLA matrices on one device: replicated + split/tp.

    V3, TP2: (11,010,048 + 12,582,912 + 3,670,016 + 458,752)
    + (25,165,824 + 2·8,388,608 + 117,440,512)/2 = 107,413,504 (Table 6: ×4 = 429,654,016).
    """
    return sum(n // p.tp if split else n for n, split in mla_matrices(m).values())


def device_params(m: ModelConfig, p: ParallelConfig, modules: dict[str, int],
                  n_mla: int, shared_placement: str = "paper") -> dict[str, int]:
    """Per-device counts of a module dict holding ``n_mla`` layers' worth of MLA."""
    out = {}
    for k, v in modules.items():
        out[k] = (n_mla * attention_per_device(m, p) if k in ("mla", "attention")
                  else per_device(m, p, k, v, shared_placement))
    return out


def stage_params_per_device(m: ModelConfig, p: ParallelConfig, layers, *, embedding: bool = False,
                            head: bool = False, mtp: bool = False,
                            shared_placement: str = "paper") -> dict[str, int]:
    """``stage_params`` on one device of the stage, by module."""
    layers = list(layers)
    glob = stage_params(m, layers, embedding=embedding, head=head, mtp=mtp)
    n_mla = len(layers) + (m.mtp_modules if mtp else 0)
    return device_params(m, p, glob, n_mla, shared_placement)


def rank_matrix_adjustment(m: ModelConfig, p: ParallelConfig, plans) -> dict[str, int]:
    """Per-device parameters a rank holding the stages ``plans`` adds (+) or shares (−) on top
    of its stages' own counts, for the matrices that several stages use.

    Stage counts are made one stage at a time (``stage_params``); what they cannot see is the
    rank: on V-shaped schedules (zb-v, dualpipev) and DualPipe one rank holds the first and the
    last stage. Per rank:
    - tied embeddings with the embedding and the head on two stages of this rank: one matrix,
      not two: −⌈V/tp⌉·h (head);
    - an MTP module needs the embedding (of the next tokens) and the output head (DeepSeek-V3
      section 2.2): on a rank without the embedding it keeps its own copy, +⌈V/tp⌉·h
      (embedding), and on a rank without the head +⌈V/tp⌉·h (head); DeepSeek-V3 places the
      MTP module with the embedding and the head, so both are shared.
    """
    emb = any(x.embedding for x in plans)
    head = any(x.head for x in plans)
    mtp = any(x.mtp for x in plans)
    matrix = m.vocab_shard(p.tp) * m.hidden
    out = {"embedding": 0, "head": 0}
    if m.tied_embeddings and emb and head and not any(x.embedding and x.head for x in plans):
        out["head"] -= matrix
    if mtp and not emb:
        out["embedding"] += matrix
    if mtp and not head:
        out["head"] += matrix
    return out
