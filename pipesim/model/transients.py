"""Transient working sets of one layer: the bytes its forward and backward hold beyond the
tensors it stores, never kept from F to B.

    working_sets(m, p, t, g, kind, tensors, status) -> (forward, backward)   # for activations
    peaks(m, p, t, g, kind, tensors, status) -> Peaks(forward, backward, recomputed)

Framework inventory: one mechanism, two walks over the layer's ops (``_ops``), each op given
by what it creates, what the code holds while it runs, what its backward allocates and frees.
Forward, at op k:   live_F(k) = S(k) + H(k)
    S(k) the stored tensors created by ops 1..k, H(k) what the code holds at op k (inputs still
    needed, outputs) and does not store: transients, and tensors recomputed or never saved.
Backward, from the last op:   live_B(k) = Σ_{j>k} net_j + peak_k + R(k) − D(k)
    net_j the gradient bytes op j's backward leaves (input gradients made less output
    gradients consumed), peak_k what op k's backward allocates (gradients, a kernel's buffers,
    weight gradients before they reach .grad: none with ``te_wgrad_placeholders``, TE's fused
    accumulation), D(k) the stored tensors freed so far (after the backward of the earliest op
    saving each), R(k) the recomputed ones re-materialised and not yet freed: a region is re-run
    when B reaches its last op (full: the layer, or each sublayer; selective: DeepSeek-V3's
    regions as the harness checkpoints them, R1 attention norm + the linears reading it, R2
    latent norms, up-projections, rope, q/k/v and the attention core, R3 FFN norm + the linears
    reading it, R4 SwiGLU + fc2 of each MLP).
    Peaks.forward = max(max live_F − Σ stored, 0) (the layer input is stored but made before
    F), Peaks.backward = max live_B, Peaks.recomputed = R at that peak.
``activations`` takes F's working set from ``Peaks.forward`` (the recomputed tensors included
as they live: they never all coexist) and B's from ``working_sets``: (Peaks.forward −
recompute, Peaks.backward − recompute), recompute = Σ recomputed, which the ledger holds
through B; both floored at 0, since a ledger category cannot go negative (B's floor binds when
the recomputed tensors do not all coexist in B either: sublayer regions, selective).

Sizes (bytes per device, symbols of ``pipesim.model.tensors``; n = n_h/tp, d = d_h + d_hr;
W·(r×c) = w·r·c with w the weight bytes, 0 with te_wgrad_placeholders):
    X = a·T_sp·h; X̄ = a·T·h (row-parallel outputs, column-parallel input gradients); G = X̄
    if SP all-gathers a linear's input, else 0; Q = a·T·n·d, V = a·T·n·d_h (K = Q for MLA,
    a·T·g/tp·d_h for GQA); P = a·b·n·(s/cp)·s; Q32 = 4·T·n·d and D_fa = 4·b·n·s/cp
    (FlashAttention-2's FP32 dq accumulator and softmax_d); an MLP on t tokens of width c:
    F = a·t·c, H = 2F (dense: T, f/tp; expert: n_e = R/N_loc, h_E/etp, N_loc = N/ep; shared:
    T, N_s·h_E/tp'); router Lr = a·T_sp·N; logits L = a·T·V_loc, L32 = 4·T·V_loc.
Ops: F holds | B peak | B net [frees after B]  (x_n's gradient pieces after the first are
summed into it: +X̄ at their peak, −X̄ on their net)
    norm        input, x_n, 1/rms | 2X (dx, residual sum; head X) | X − X̄ [input, 1/rms]
    MLA down    x_n, latents, k_rope, G | 2X̄ + max(X̄, W·h·max(d_cq, d_c, d_hr)) + G |
                X̄ − a·T(d_cq + d_c + d_hr) [x_n]; no q latent: W_Q here, Q held and consumed
    lat. norms  latents, k_rope, normed latents | a·T(d_cq+d_c) | 0 [latents, 1/rms]
    up + rope   those, raw q Q, kv 2V, roped q Q, k Q | 2V + max(0, W·max(d_cq·n·d,
                d_c·2n·d_h) + a·T(d_cq+d_c) − Q − V) | a·T(d_cq+d_c+d_hr) − 2Q − V [normed latents]
    GQA qkv     x_n, QKV = a·T(n + 2g/tp)d_h | W + X̄ + G | X̄ − QKV [x_n];  q/k norms +
                rope: QKV, Q, K | QKV | QKV − Q − 2K
    heads       the pre-copies and contiguous q, k, v | 0 | 0
    core flash  q, k, v, context, lse | Q + Q32 + K + V + D_fa | Q + K [q, k, v, lse, context]
    core eager  scores q,k,v + 2P | max(P, Q+K) | Q+K−P [q, k]; softmax + P | P | 0 [probs];
                dropout | P | 0 [mask]; P·V + V + context | P + V | P [v, dropped]
    W_O, fc2    input, X̄ | W + input gradient + G | input gradient − dropout's X [eager ctx]
    SwiGLU      H, F | H | H − F [h1]; eager: chunk | H | H − 2F; SiLU F | F | 0 [h1];
                multiply F | 2F | F [SiLU out]
    fc1         x_n, H, G | W·2c·h + a·t·h + G | a·t·h − H [x_n]
    dropout     out X, dropped X, mask | X | X [mask];  add: out, dropped, result | 0 | 0
    router      Lr, G | W·N·h + 2X̄ + G | −Lr [x_n];  route: Lr, FP32 scores 4·T_sp·N,
                choices | 8·T_sp·N + Lr | Lr [router tensors]
    dispatch    indices, a·R·h tokens, probabilities | a·R·h + 2X̄ | X̄ − a·R·h − a·S [indices]
    experts     expert e: the MLP ops on n_e tokens, holding the e·a·n_e·h outputs made so far
    combine     cat: outputs a·R·h + y_perm | 0; weight (combine "output"): y_perm, a·S·h |
                2a·S·h + a·S | a·S [output, probabilities]; unpermute: a·S·h, X̄ | a·S·h |
                a·S·h − dropout's X (expert 0's fc2 frees dy_perm, a·S·h)
    shared      the MLP ops on T tokens, holding the routed output X̄ (fc1 in R3, first in
                F, under selective recompute); add: 3X̄
    head        output: x_n, L, G | W·V_loc·h + X̄ + G | X̄ − L [x_n]; to FP32 (a < 4): L, L32 |
                L | L − L32; log-softmax: + its output | L32 | 0 [softmax]; NLL | L32 | L32;
                fused: L, gradient | the output layer's, consuming the gradient [gradient]
    embedding   X̄ | w·V_loc·h (not a TE module: always) | 0 [ids]
Source: ``benchmarks/fidelity`` (``layers.py --tensors`` prints each measured peak's make-up);
every grid case is within 1%, but for the floor's +5% on selective MoE B and the MoE
router's small tensors under full recompute, −1.3% (``tests/test_fidelity.py``). Not
modelled: what a region's re-run holds beyond the tensors it saves.

Paper inventory: ``_paper_working_sets``, the paper's per-sublayer estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipesim.model.config import ModelConfig, ParallelConfig, TrainingConfig
from pipesim.model.tensors import Shape, Tensor, vocab_shard

FP32 = 4                        # bytes of an FP32 value (scores, softmax, kernel accumulators)


@dataclass(frozen=True)
class Op:
    """One op of a layer's forward. Entries of ``creates``, ``holds`` and ``frees`` are tensor
    names, (name, fraction) for a share of a tensor (one routed expert's rows), or, in
    ``holds``, a byte count of a transient that no inventory names."""

    name: str
    creates: tuple = ()       # inventory tensors the op allocates in F
    holds: tuple = ()         # what the code holds while it runs (inputs still needed, outputs)
    peak: int = 0             # what its backward allocates, alive at its peak
    net: int = 0              # gradient bytes its backward leaves alive (may be negative)
    frees: tuple = ()         # saved tensors freed after its backward
    region: str = ""          # the selective-recompute region it belongs to


@dataclass(frozen=True)
class Peaks:
    """A layer's working sets (module docstring): F beyond the stored tensors, B beyond B's
    start, and the recomputed bytes alive at B's peak."""

    forward: int
    backward: int
    recomputed: int


def peaks(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape, kind: str,
          tensors: list[Tensor], status: list[str]) -> Peaks:
    """The framework inventory's working sets of a layer of ``kind`` (module docstring)."""
    state = {x.name: s for x, s in zip(tensors, status)}
    size = {x.name: x.nbytes for x in tensors}
    ops, sublayer = [], []
    for i, part in enumerate(_ops(m, p, t, g, kind)):
        ops += part
        sublayer += [i] * len(part)
    live_f, live_b, recomputed = _walk(ops, sublayer, t, state, size)
    stored = sum(n for x, n in size.items() if state[x] == "stored")
    return Peaks(max(live_f - stored, 0), live_b, recomputed)


def working_sets(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape, kind: str,
                 tensors: list[Tensor], status: list[str]) -> tuple[int, int]:
    """(forward, backward) working sets of a layer of ``kind`` beyond the recomputed bytes that
    ``activations`` adds to both, never negative (see the module docstring)."""
    if t.inventory == "paper":
        return _paper_working_sets(m, g, kind, p.sp and p.tp > 1)
    w = peaks(m, p, t, g, kind, tensors, status)
    recompute = sum(x.nbytes for x, s in zip(tensors, status) if s == "recomputed")
    return max(w.forward - recompute, 0), max(w.backward - recompute, 0)


def _name(entry) -> str:
    return entry if isinstance(entry, str) else entry[0]


def _bytes(entry, size: dict, state: dict, wanted: tuple) -> int:
    """Bytes of an Op entry (a byte count, a name or (name, share)) if its status is wanted."""
    if isinstance(entry, int):
        return entry
    share = 1.0 if isinstance(entry, str) else entry[1]
    return int(size.get(_name(entry), 0) * share) if state.get(_name(entry)) in wanted else 0


def _walk(ops: list[Op], sublayer: list[int], t: TrainingConfig, state: dict,
          size: dict) -> tuple[int, int, int]:
    """(max live_F, max live_B, R at that backward peak): the two walks of the docstring."""
    def amount(entry, *wanted):
        return _bytes(entry, size, state, wanted)

    live_f, s = 0, 0
    for op in ops:
        s += sum(amount(x, "stored") for x in op.creates)
        live_f = max(live_f, s + sum(amount(x, "recomputed", "absent", None) for x in op.holds))
    # the op whose backward re-runs each op's recompute region: the region's last op (an op in
    # no region: the backward that first needs the tensor, i.e. the last op that frees it)
    if t.recompute == "full":
        key = sublayer if t.recompute_granularity == "sublayer" else [0] * len(ops)
    else:
        key = [(sub, op.region or i) for i, (sub, op) in enumerate(zip(sublayer, ops))]
    last = {k: i for i, k in enumerate(key)}
    freed_by = {_name(x): i for i, op in enumerate(ops) for x in op.frees}
    rerun: dict[int, int] = {}
    for i, op in enumerate(ops):
        for x in op.creates:
            j = last[key[i]] if key[i] != i or t.recompute == "full" else freed_by.get(_name(x), i)
            rerun[j] = rerun.get(j, 0) + amount(x, "recomputed")
    live_b = at_peak = grads = freed = alive = 0          # alive: R(k), freed: D(k)
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        alive += rerun.get(i, 0)
        if grads + op.peak + alive - freed > live_b:
            live_b, at_peak = grads + op.peak + alive - freed, alive
        grads += op.net
        freed += sum(amount(x, "stored") for x in op.frees)
        alive -= sum(amount(x, "recomputed") for x in op.frees)
    return live_f, live_b, at_peak


# --------------------------------------------------------------------------- the ops

def _ops(m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape, kind: str) -> list[list[Op]]:
    """The ops of a layer of ``kind``, one list per sublayer, in forward order."""
    z = _Sizes(m, p, t, g)
    if kind == "embedding":
        # the lookup's output X̄ (before TP's reduction); B: the dense [V_loc, h] weight gradient
        return [[Op("lookup", holds=(z.XT,), peak=z.w * z.V * m.hidden, frees=("embedding.ids",))]]
    if kind == "head":
        return [_head_ops(m, t, z)]
    if kind == "dense":
        return [_attention_ops(m, z, "mlp.input"), _dense_ops(m, t, z)]
    if kind == "moe":
        return [_attention_ops(m, z, "moe.input"), _moe_ops(m, t, z, "")]
    if kind == "mtp":
        return [_mtp_ops(m, z), _attention_ops(m, z, "moe.input"), _moe_ops(m, t, z, "head.input"),
                _head_ops(m, t, z)]
    raise ValueError(f"layer kind: one of dense, moe, embedding, head, mtp; got {kind!r}")


class _Sizes:
    """The byte counts the ops share (module docstring, "Sizes")."""

    def __init__(self, m: ModelConfig, p: ParallelConfig, t: TrainingConfig, g: Shape):
        a, h = g.a, m.hidden
        self.a, self.g = a, g
        self.w = t.dtypes.weights                              # a weight gradient's bytes
        self.W = 0 if t.te_wgrad_placeholders else self.w      # ... while autograd holds it
        self.X = a * g.T_sp * h                                # hidden state, this rank's tokens
        self.XT = a * g.T * h                                  # hidden state, all T tokens
        self.G = self.XT if p.sp and p.tp > 1 else 0           # SP's all-gathered linear input
        self.V = vocab_shard(m, p)
        self.drop = self.X if g.dropout else 0                 # hidden dropout's gradient

    def linear(self, rows: int, cols: int, dx: int) -> int:
        """B peak of a linear [rows, cols]: its weight gradient, input gradient ``dx`` and G."""
        return self.W * rows * cols + dx + self.G


def _op(op: Op, **change) -> Op:
    return Op(**{**op.__dict__, **change})


def _norm(pre: str, z: _Sizes, region: str, residual: bool = True, out: str = "") -> Op:
    """A fused RMSNorm of ``pre``.input into ``out`` (``pre``.normed). B: dx (X) and, in a
    residual stream, its sum with the stream's gradient (X); it consumes its output's gradient
    (X̄)."""
    out = out or f"{pre}.normed"
    return Op("norm", (f"{pre}.rstd", out), (f"{pre}.input", out, f"{pre}.rstd"),
              2 * z.X if residual else z.X, z.X - z.XT, (f"{pre}.input", f"{pre}.rstd"), region)


def _tail(pre: str, z: _Sizes, holds: tuple, creates: str) -> list[Op]:
    """Hidden dropout (its mask kept) and the residual add of the sublayer's output X, which
    stays alive through both (Megatron's bias-dropout-add); the add creates ``creates`` (the
    next sublayer's input, when an inventory names it)."""
    ops, dropped = [], ()
    if z.g.dropout:
        dropped = (z.X,)
        ops.append(Op("dropout", (f"{pre}.mask",), holds + (z.X, z.X, f"{pre}.mask"), z.X, z.X,
                      (f"{pre}.mask",)))
    return ops + [Op("add", (creates,) if creates else (), holds + (z.X, *dropped, creates or z.X))]


def _attention_ops(m: ModelConfig, z: _Sizes, out: str) -> list[Op]:
    """MLA or GQA: norm, projections, q/k/v for the kernel, the core, W_O, dropout, add."""
    g, a, h = z.g, z.a, m.hidden
    T, n = g.T, m.heads // g.tp
    mla = m.attention == "mla"
    pre = "mla" if mla else "attn"
    qkv_ = (f"{pre}.q", f"{pre}.k", f"{pre}.v")
    d = m.head_dim + (m.rope_head_dim if mla else 0)
    Q, V = a * T * n * d, a * T * n * m.head_dim
    K = Q if mla else a * T * (m.kv_groups // g.tp) * m.head_dim
    ops = [_norm(pre, z, "R1")]
    if mla:
        lat = (f"{pre}.latents", f"{pre}.k_rope")
        Lat, Kr = a * T * (m.q_compress + m.kv_compress), a * T * m.rope_head_dim
        Qd = 0 if m.q_compress else Q                  # W_Q's output when there is no q latent
        # three linears read x_n: each weight gradient and input-gradient piece, then their sum
        down = z.W * h * max(m.q_compress or n * d, m.kv_compress, m.rope_head_dim)
        ops.append(Op("down", lat, (f"{pre}.normed", *lat, Qd, z.G), max(down, z.XT) + 2 * z.XT + z.G,
                      z.XT - Lat - Kr - Qd, (f"{pre}.normed",), "R1"))
        lat_n = (f"{pre}.latent_rstd", f"{pre}.latents_normed")
        ops.append(Op("latent norms", lat_n, (*lat, *lat_n), Lat, 0,
                      (f"{pre}.latents", f"{pre}.latent_rstd"), "R2"))
        up = z.W * max(m.q_compress * n * d, m.kv_compress * n * 2 * m.head_dim)
        # up-projections, rope, concatenations: raw q, kv = [k_nope | v], roped q and k; B: the
        # kv gradient 2V while dq, dk, dv live, then the latents' gradients
        ops.append(Op("up + rope", (), (*lat, f"{pre}.latents_normed", Q, 2 * V, Q, K),
                      2 * V + max(0, up + Lat - K - V), Lat + Kr + Qd - Q - K - V,
                      (f"{pre}.latents_normed",), "R2"))
        copies = (*lat, Q, K, 2 * V)                   # what the contiguous copies read
    else:
        qkv = a * T * (n + 2 * (m.kv_groups // g.tp)) * m.head_dim
        ops.append(Op("qkv", (), (f"{pre}.normed", qkv, z.G), z.linear(h, qkv // (a * T), z.XT),
                      z.XT - qkv, (f"{pre}.normed",), "R1"))
        norms = (f"{pre}.q_pre", f"{pre}.k_pre", f"{pre}.qk_rstd")
        ops.append(Op("q/k norms + rope", norms, (qkv, *norms, Q, K), qkv, qkv - Q - 2 * K, (), "R2"))
        copies = (qkv, Q, K)
    ops.append(Op("heads", qkv_, copies + qkv_, region="R2"))
    # the value the kernel reads: MLA's per head (V), GQA's at the kv heads (K's size)
    ops += _core_ops(z, pre, Q, K, V, n, V if mla else K)
    context = f"{pre}.context"
    ops.append(Op("W_O", (), (*qkv_, context, z.XT), z.linear(n * m.head_dim, h, V), V - z.drop,
                  () if g.flash else (context,)))
    return ops + _tail(pre, z, (), out)


def _core_ops(z: _Sizes, pre: str, Q: int, K: int, V: int, n: int, Vk: int) -> list[Op]:
    """The attention core (V: its output, Vk: the value it reads). Flash: one kernel, whose
    backward holds dq, dk, dv, FlashAttention-2's FP32 dq accumulator Q32 and softmax_d D_fa,
    and with fewer kv heads than query heads (GQA: K < Q) dk and dv per query head, E = Q + V,
    summed over each group into dk, dv (flash-attn ``mha_bwd``'s dk_expanded, dv_expanded); it
    consumes the output's gradient: net dq + dk + dv − dO = Q + K + Vk − V. Eager: the score
    chain, two P-sized tensors at a time in F; in B P·V's, dropout's, softmax's gradients
    (P each), then dq, dk."""
    g, a = z.g, z.a
    q, k, v, ctx = (f"{pre}.{x}" for x in ("q", "k", "v", "context"))
    if g.flash:
        lse = f"{pre}.lse"
        Q32, D = FP32 * Q // a, FP32 * g.b * n * (g.s // g.cp)
        E = Q + V if K < Q else 0
        return [Op("core", (lse, ctx), (q, k, v, ctx, lse), Q + Q32 + K + Vk + D + E, Q + K + Vk - V,
                   (q, k, v, lse, ctx), "R2")]
    P = a * g.b * n * (g.s // g.cp) * g.s
    probs, mask, dropped = f"{pre}.probs", f"{pre}.probs_mask", f"{pre}.probs_dropped"
    ops = [Op("scores", (), (q, k, v, 2 * P), max(P, Q + K), Q + K - P, (q, k), "R2"),
           Op("softmax", (probs,), (q, k, v, probs, P), P, 0, (probs,), "R2")]
    if g.dropout:
        ops.append(Op("attention dropout", (mask, dropped), (q, k, v, probs, mask, dropped), P, 0,
                      (mask,), "R2"))
    # P·V, then its output made contiguous: the context, W_O's input
    ops.append(Op("P·V", (ctx,), (q, k, v, dropped if g.dropout else probs, V, ctx), P + V, P,
                  (dropped, v) if g.dropout else (v,), "R2"))
    return ops


def _mlp_ops(z: _Sizes, pre: str, tokens: float, width: int, rows_in: int, fused: bool,
             keep: tuple, share: float = 1.0, tag: str = "") -> list[Op]:
    """fc1, SwiGLU, fc2 of one SwiGLU MLP of ``width`` on ``tokens`` tokens; ``keep`` is what the
    code holds meanwhile, ``share`` the part of ``pre``'s tensors that are this MLP's rows."""
    a = z.a
    F, H, dX = int(a * tokens * width), int(2 * a * tokens * width), int(a * tokens * rows_in)
    hid, silu, prod = ((f"{pre}.{x}", share) for x in ("hidden", "silu", "product"))
    r4 = "R4" + tag
    if fused:
        act = [Op("SwiGLU", (prod,), keep + (hid, prod), H, H - F, (hid,), r4)]
    else:   # gate, up = chunk(h1); silu(gate)·up: B runs the multiply, SiLU, the concatenation
        act = [Op("chunk", (), keep + (hid,), H, H - 2 * F, (), r4),
               Op("SiLU", (silu,), keep + (hid, silu), F, 0, (hid,), r4),
               Op("multiply", (prod,), keep + (hid, silu, prod), 2 * F, F, (silu,), r4)]
    return ([Op("fc1", (hid,), keep + (hid,), z.linear(2 * width, rows_in, dX), dX - H)] + act
            + [Op("fc2", (), keep + (prod, dX), z.linear(rows_in, width, F), F, (prod,), r4)])


def _dense_ops(m: ModelConfig, t: TrainingConfig, z: _Sizes) -> list[Op]:
    """Dense FFN: norm and fc1 (region R3), SwiGLU and fc2 (R4), dropout, add."""
    keep = ("mlp.input",)
    ops = _mlp_ops(z, "mlp", z.g.T, m.dense_ffn_hidden // z.g.tp, m.hidden, t.swiglu_fusion, keep)
    fc1 = ops[0]
    ops[0] = _op(fc1, holds=fc1.holds + ("mlp.normed", z.G), frees=("mlp.normed",), region="R3")
    ops[-1] = _op(ops[-1], net=ops[-1].net - z.drop)          # fc2 consumes dropout's gradient
    return [_norm("mlp", z, "R3")] + ops + _tail("mlp", z, keep, "")


def _moe_ops(m: ModelConfig, t: TrainingConfig, z: _Sizes, nxt: str) -> list[Op]:
    """MoE FFN: norm and router (R3), dispatch, the routed experts one after the other (fc1,
    then SwiGLU and fc2 in R4), combine, shared experts (after the routed ones, as Megatron runs
    them; their fc1 in R3 under selective recompute, as the harness groups the linears reading
    the norm output), dropout, add. x_n's gradient: the first piece B makes stays, each later
    one is summed into it (a piece, the old and the new sum alive at once)."""
    g, a, h = z.g, z.a, m.hidden
    N, local = m.routed_experts, max(1, m.routed_experts // g.ep)
    keep = ("moe.input", "router.input")
    shared = m.shared_width // (g.tp if t.shared_placement == "megatron" else 1)
    early = t.recompute == "selective"
    routed, weighted = a * g.R * h, a * g.S * h
    output = t.moe_combine == "output"
    # the x_n-gradient pieces in B order: late shared fc1, dispatch, (early shared fc1), router
    first = "shared" if shared and not early else "dispatch"

    def piece(name: str) -> int:
        return z.XT if name == first else 0

    logits, scores = a * g.T_sp * N, FP32 * g.T_sp * N
    router = ("router.probs", "router.indices", "router.weights")
    ops = [_norm("moe", z, "R3", out="router.input"),
           Op("router", (), keep + (logits, z.G), z.linear(N, h, z.XT) + z.XT, -logits,
              ("router.input",), "R3")]
    # the shared MLP runs while the routed output y (X̄) waits for it; its fc1 earlier if early
    sh = _mlp_ops(z, "shared", g.T, shared, h, t.swiglu_fusion, keep + (z.XT,), tag="s") if shared else []
    if sh:
        sh[0] = _op(sh[0], holds=keep + ("shared.hidden", z.G) if early else sh[0].holds + (z.G,),
                    peak=sh[0].peak + z.XT - piece("shared"), net=sh[0].net - z.XT + piece("shared"),
                    region="R3" if early else "")
    ops += sh[:1] if early else []
    # FP32 scores, top-k, the chosen weights; B: the scores' FP32 gradients, the logits'
    ops.append(Op("route", router, keep + (logits, scores) + router, 2 * scores + logits, logits,
                  router))
    dw = a * g.S if output else 0                            # the probabilities' gradient
    ops.append(Op("dispatch", ("experts.indices", "experts.input", "experts.probs"),
                  keep + ("experts.indices", "experts.input", "experts.probs"),
                  routed + 2 * z.XT, piece("dispatch") - routed - dw,
                  ("experts.indices",)))
    n_e = g.R / local                                       # tokens per routed expert
    for e in range(local):
        # expert e reads its rows of experts.input; the outputs of the experts before it wait
        mlp = _mlp_ops(z, "experts", n_e, m.moe_ffn_hidden // g.etp, h, t.swiglu_fusion,
                       keep + ("experts.input", int(e * a * n_e * h)), 1 / local, f"e{e}")
        if e == 0:      # the first expert's backward runs last: it frees the inputs and dy_perm
            mlp[0] = _op(mlp[0], frees=("experts.input",))
            mlp[-1] = _op(mlp[-1], net=mlp[-1].net - weighted)
        ops += mlp
    ops.append(Op("cat", ("experts.output",) if output else (),
                  keep + ("experts.input", routed, "experts.output" if output else routed)))
    if output:      # the probabilities weight the output (the multiply keeps both)
        ops.append(Op("weight", (), keep + ("experts.input", "experts.output", weighted),
                      2 * weighted + dw, dw, ("experts.output", "experts.probs")))
    # unpermute: scatter-add (or TE's fused unpermute) into a zero [T, h]; B gathers dy
    ops.append(Op("unpermute", (), keep + ("experts.input", weighted, z.XT), weighted,
                  weighted - z.drop))
    if sh:
        ops += (sh[1:] if early else sh) + [Op("shared add", (), keep + (z.XT, z.XT, z.XT))]
    return ops + _tail("moe", z, keep, nxt)


def _head_ops(m: ModelConfig, t: TrainingConfig, z: _Sizes) -> list[Op]:
    """Final norm, output layer, loss: FP32 (a cast of the logits to FP32 unless they are,
    log-softmax, NLL) or fused (the gradient written in forward, handed on in B)."""
    g, h = z.g, m.hidden
    L, L32 = z.a * g.T * z.V, FP32 * g.T * z.V
    norm = _norm("head", z, "", residual=False)                  # no residual stream here
    out = Op("output", (), ("head.normed", L, z.G), z.linear(z.V, h, z.XT), z.XT, ("head.normed",))
    if t.cross_entropy == "fused":
        return [norm, _op(out, frees=("head.normed", "loss.grad")),
                Op("cross-entropy", ("loss.grad",), (L, "loss.grad"))]
    copy = L32 if z.a != FP32 else 0                          # .float() of FP32 logits: no copy
    ops = [norm, _op(out, net=z.XT - L)]
    if copy:
        ops.append(Op("to FP32", (), (L, copy), L, L - L32))
    return ops + [Op("log-softmax", ("loss.softmax",), (L, copy, "loss.softmax"), L32, 0,
                     ("loss.softmax",)),
                  Op("nll", (), (L, copy), L32, L32)]


def _mtp_ops(m: ModelConfig, z: _Sizes) -> list[Op]:
    """The MTP module's input (DeepSeek-V3 section 2.2): its embedding lookup, the two norms,
    their concatenation and the projection 2h → h that makes the attention's input."""
    h, X = m.hidden, z.X
    first = "mla.input" if m.attention == "mla" else "attn.input"
    return [Op("embedding", ("mtp.embed",), ("mtp.embed",), z.w * z.V * h, 0, ("mtp.ids",)),
            Op("norms", ("mtp.rstd",), ("mtp.input", "mtp.embed", 2 * X, "mtp.rstd"), 2 * X, 0,
               ("mtp.input", "mtp.embed", "mtp.rstd")),
            Op("concat", ("mtp.normed",), (2 * X, "mtp.normed"), 2 * X, 0),
            Op("projection", (first,), ("mtp.normed", z.XT, z.G), z.linear(h, 2 * h, 2 * z.XT),
               z.XT, ("mtp.normed",))]


def _paper_working_sets(m: ModelConfig, g: Shape, kind: str, sp_gather: bool) -> tuple[int, int]:
    """(forward extra, backward) working sets of the largest sublayer, never stored.

    forward, per sublayer: the all-gathered normalised input a·T·h when SP gathers it; MLA eager
        also the pre-softmax scores a·b·n_h/tp·(s/cp)·s; the FFN its output before the combine /
        reduce-scatter a·T·h.
    backward, per sublayer: the input gradient before its reduce-scatter a·T·h plus the
        gradients of the sublayer's largest tensors: MLA dQ, dK, dV (+ eager dP and dS, two
        score-sized tensors); FFN the gradients of hidden and product, a·3·tokens·width (routed
        experts also their dispatched inputs a·R·h, the router 2a·T·N).
    A layer's F and B run its sublayers one after the other, so the layer's value is the max.
    """
    a, T, h = g.a, g.T, m.hidden
    gather = a * T * h if sp_gather else 0
    heads = m.heads // g.tp
    qk = m.heads * (m.head_dim + m.rope_head_dim) // g.tp
    hv = m.heads * m.head_dim // g.tp
    s_loc = g.s // g.cp
    pre_scores = 0 if g.flash else a * g.b * heads * s_loc * g.s
    fwd_mla = gather + pre_scores
    bwd_mla = a * T * h + a * T * (2 * qk + hv) + 2 * pre_scores
    if kind in ("dense", "moe", "mtp"):
        if kind == "dense":
            width = m.dense_ffn_hidden // g.tp
            fwd_ffn = gather + a * T * h
            bwd_ffn = a * T * h + 3 * a * T * width
        else:
            shared = m.shared_width
            fwd_ffn = gather + a * g.R * h + a * T * h
            bwd_ffn = (a * T * h + a * g.R * h + 3 * a * g.R * (m.moe_ffn_hidden // g.etp)
                       + 3 * a * T * shared + 2 * a * T * m.routed_experts)
        return max(fwd_mla, fwd_ffn), max(bwd_mla, bwd_ffn)
    if kind == "head":
        return gather, a * T * h
    return 0, 0                                                    # embedding: a lookup
