"""One layer of a DeepSeek-style MLA + MoE transformer, or of a grouped-query / multi-head
attention one (Llama, Mistral, Qwen2, Qwen3, Mixtral; dense-only or MoE), in plain PyTorch,
built from pipesim's ``ModelConfig`` and ``TrainingConfig``, written so that what autograd saves for backward is what
Megatron-Core / Transformer Engine kernels save. ``measure`` runs it and records those tensors;
nothing here predicts.

Single device (no TP/EP/CP), no biases, parameters and activations in one dtype (bfloat16 or
float32), tokens laid out [b, s, h] (GQA: q/k/v biases with ``qkv_bias``). Layer kinds:
"dense" (attention + dense SwiGLU FFN), "moe" (attention + MoE FFN), "embedding", "head"
(final RMSNorm, output matmul, cross-entropy); the attention is ``MLA`` or, with
``attention = "gqa"``, ``GQA``.

Every piece of code runs inside ``scope(name)``, a pipesim module name ("mla", "attn", "mlp", "moe",
"router", "experts", "shared", "embedding", "head", "loss"), so that a saved tensor can be
attributed to the module that saved it (``current_module``).

Implementation choices (each decides what autograd keeps):
- RMSNorm: ``RMSNorm``, a custom Function saving its input, one FP32 1/rms per token and the
  weight, as Apex's and TE's fused norms do; the output is in the input's dtype.
- Linear: ``F.linear`` (saves its input; the weight is a parameter).
- Dropout: ``torch.native_dropout``, which keeps a bool mask. It is what ``F.dropout`` runs on
  CUDA; on CPU ``F.dropout`` instead multiplies by a noise tensor of the input's dtype and
  keeps that, which no GPU run does.
- Flash attention: ``FlashAttention``, a custom Function computing causal attention tile by
  tile as FlashAttention-2 does (no s×s tensor) and saving what PyTorch's flash node saves:
  q, k, v, the output and the FP32 log-sum-exp. ``F.scaled_dot_product_attention`` cannot be
  used as is: on CPU it refuses its flash kernel when v's head dim (d_h) differs from q/k's
  (d_h + d_hr), as in MLA, and falls back to the math path, which keeps FP32 copies of q, k, v
  and the FP32 s×s probabilities. The output is laid out in memory as [b, s, n_h, d_h], as
  CUDA's flash kernels allocate it (CPU's kernel returns [b, n_h, s, d] contiguous), so the W_O
  input is a view of it. ``attention_impl="sdpa"`` calls
  ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` instead, to measure that path.
- Fused kernels (RMSNorm, SwiGLU, permutation, cross-entropy, flash attention) work in row
  blocks or tiles, and each forward or backward runs as one ``kernel`` call: a memory tracker
  takes its peak when the call returns (with its inputs and outputs alive) and at the
  ``kernel_moment`` where a kernel's global buffers all live (FlashAttention-2's FP32 dq
  accumulator and softmax_d), never inside the block loop, whose FP32 temporaries stand for a
  GPU kernel's registers and shared memory. A backward unpacks its saved tensors before the
  kernel starts (``ctx.unpacked``), so a recompute region re-run by the unpacking is counted.
- Lifetimes follow Megatron-Core's code: fc1's output is dropped once the activation has read
  it (``intermediate_parallel`` is reassigned), the latents and pre-copy q, k, v die when the
  q/k/v function returns, q, k, v live on through W_O, the attention output lives through the
  dropout and residual add (bias-dropout-add), the routed experts' outputs are one buffer
  before the unpermute (SequentialMLP concatenates and returns), the router's logits die once
  routed, and the shared experts run after the routed ones (their fc1 with the router, in
  region R3, under selective recompute). A tensor that autograd saves lives on regardless.
- MoE combine without permute fusion: ``zeros.scatter_add_(0, tok.unsqueeze(1).expand(-1, h),
  y_perm)``, as Megatron-Core's unfused ``unpermute`` (``moe_utils.py``) writes it; its backward
  (a gather of the output gradient) needs only the index, which is the dispatch's token index
  already kept. (``index_add`` would also save its source, the weighted expert outputs.)
- Recompute "full": ``torch.utils.checkpoint`` (non-reentrant) around the layer
  (granularity "layer") or around each sublayer ("sublayer"); "selective": DeepSeek-V3's
  regions R1 attention norm + the linears reading it, R2 q/kv latent norms + up-projections +
  rope + concatenation + the attention core (recomputing the up-projections pays only if the
  kernel's q, k, v go too: R2 keeps c_q, c_kv and k_pe, and W_O, outside it, the attention
  output), R3 FFN norm + the linears reading it (dense fc1; or router + shared fc1), R4
  SwiGLU + fc2 of the dense FFN, of every routed expert and of the shared expert.
The other choices are given where they are made.

    from fidelity.torch_model import build_layer, make_inputs
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["KINDS", "MODULES", "Layer", "Options", "build_layer", "current_module", "in_kernel", "kernel",
           "kernel_listeners", "kernel_moment", "make_inputs", "scope"]

KINDS = ("dense", "moe", "embedding", "head")
MODULES = ("embedding", "mla", "attn", "mlp", "moe", "router", "experts", "shared", "head", "loss")
EPS = 1e-6

# --------------------------------------------------------------------------- module scopes

_SCOPES: list[str] = []


@contextlib.contextmanager
def scope(name: str):
    """Run the enclosed code as pipesim module ``name`` (see ``current_module``)."""
    _SCOPES.append(name)
    try:
        yield
    finally:
        _SCOPES.pop()


def current_module() -> str | None:
    """The pipesim module whose code is running, or None outside a layer."""
    return _SCOPES[-1] if _SCOPES else None


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class Options:
    """The TrainingConfig fields the layer reads (defaults for fields pipesim may lack)."""

    b: int
    s: int
    recompute: str = "none"          # none | full | selective
    granularity: str = "layer"       # full recompute: layer | sublayer
    attention: str = "flash"         # flash | eager
    dropout: float = 0.0
    cross_entropy: str = "fp32"      # fp32 | fused
    swiglu_fusion: bool = True
    moe_combine: str = "output"      # output | activation
    permute_fusion: bool = False

    @classmethod
    def from_training(cls, t) -> "Options":
        o = cls(b=t.micro_batch_size, s=t.seq_len,
                recompute=getattr(t, "recompute", None) or "none",
                granularity=getattr(t, "recompute_granularity", None) or "layer",
                attention=getattr(t, "attention", None) or "flash",
                dropout=float(getattr(t, "dropout", None) or 0.0),
                cross_entropy=getattr(t, "cross_entropy", None) or "fp32",
                swiglu_fusion=bool(getattr(t, "swiglu_fusion", True)),
                moe_combine=getattr(t, "moe_combine", None) or "output",
                permute_fusion=bool(getattr(t, "moe_permute_fusion", False)))
        allowed = {"recompute": ("none", "full", "selective"), "granularity": ("layer", "sublayer"),
                   "attention": ("flash", "eager"), "cross_entropy": ("fp32", "fused"),
                   "moe_combine": ("output", "activation")}
        for f, values in allowed.items():
            if getattr(o, f) not in values:
                raise ValueError(f"{f}: one of {', '.join(values)}; got {getattr(o, f)!r}")
        if o.dropout > 0 and o.attention == "flash":
            raise ValueError(f"dropout: the flash attention kernel here has no dropout; "
                             f"use attention = 'eager' or dropout = 0, got {o.dropout}")
        return o


def _ckpt(fn, *args):
    return checkpoint(fn, *args, use_reentrant=False)


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.native_dropout(x, p, True)[0] if p > 0 else x


# --------------------------------------------------------------------------- fused kernels
# The custom Functions stand for fused GPU kernels: they save what those kernels save, and they
# compute in row blocks (``_blocks``) so that their CPU scratch stays a fraction of the tensors
# they read and write; their outputs are allocated once, in the activation dtype. Each forward
# and backward runs as one ``kernel`` call: a GPU kernel keeps its temporaries in registers and
# shared memory, so a memory tracker counts only what survives the call (``in_kernel``,
# ``kernel_listeners``).

BLOCKS = 16          # row blocks per fused-kernel call: scratch ≈ 1/BLOCKS of one FP32 operand
TILE = 32            # query and key tile of the flash-attention kernel

_KERNEL_DEPTH = [0]
kernel_listeners: list = []     # called with the kernel's name when a kernel call returns


def in_kernel() -> bool:
    """Whether a fused kernel (a custom Function's forward or backward) is running."""
    return _KERNEL_DEPTH[0] > 0


def _tell(name: str) -> None:
    for listener in list(kernel_listeners):
        listener(name)


def kernel(fn):
    """Mark a custom Function's forward or backward as one fused kernel call (see above). A
    backward finds its saved tensors in ``ctx.unpacked``, unpacked before the kernel starts:
    a recompute region that the unpacking re-runs is ordinary ops, not the kernel's scratch."""
    name = fn.__qualname__

    @functools.wraps(fn)
    def call(ctx, *args):
        if fn.__name__ == "backward":
            ctx.unpacked = ctx.saved_tensors
        _KERNEL_DEPTH[0] += 1
        try:
            out = fn(ctx, *args)
        finally:
            _KERNEL_DEPTH[0] -= 1
            ctx.unpacked = None     # the node outlives its backward: let go of the tensors
        if not _KERNEL_DEPTH[0]:
            _tell(name)
        return out
    return call


def kernel_moment(name: str) -> None:
    """Inside a kernel: its global buffers (not scratch) are all allocated now; a tracker takes
    its peak here too."""
    _tell(name)


def _blocks(n: int, parts: int = BLOCKS):
    step = max(1, -(-n // parts))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: FP32 (FP64 stays FP64, for gradient checks)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(x: torch.Tensor) -> torch.Tensor:
    """x in the accumulation dtype."""
    return x.to(_acc_dtype(x.dtype))


class RMSNorm(torch.autograd.Function):
    """y = x / rms(x) · w in FP32, written in x's dtype; saves x, 1/rms (FP32) and w."""

    @staticmethod
    @kernel
    def forward(ctx, x, weight, eps):
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.empty_like(x2)
        rstd = torch.empty(x2.shape[0], dtype=_acc_dtype(x.dtype))
        w = _acc(weight)
        for a, b in _blocks(x2.shape[0]):
            xf = _acc(x2[a:b])
            r = torch.rsqrt(xf.pow(2).mean(-1) + eps)
            rstd[a:b] = r
            y[a:b] = xf * r.unsqueeze(-1) * w
        rstd = rstd.view(x.shape[:-1])
        ctx.save_for_backward(x, rstd, weight)
        return y.view(x.shape)

    @staticmethod
    @kernel
    def backward(ctx, dy):
        x, rstd, weight = ctx.unpacked
        x2, dy2, r2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, x.shape[-1]), rstd.reshape(-1)
        dx = torch.empty_like(x2)
        dw = torch.zeros(x.shape[-1], dtype=rstd.dtype)
        w = _acc(weight)
        for a, b in _blocks(x2.shape[0]):
            r = r2[a:b].unsqueeze(-1)
            xhat = _acc(x2[a:b]) * r
            g = _acc(dy2[a:b]) * w
            dx[a:b] = r * (g - xhat * (g * xhat).mean(-1, keepdim=True))
            dw += (_acc(dy2[a:b]) * xhat).sum(0)
        return dx.view(x.shape), dw.to(weight.dtype), None


def _swiglu_block(h1, g, w):
    """(d h1, d w) of silu(gate)·up·w for one row block (w None: unweighted)."""
    gate, up = _acc(h1).chunk(2, -1)
    sig = torch.sigmoid(gate)
    silu = gate * sig
    gw = g if w is None else g * _acc(w).unsqueeze(-1)
    dh1 = torch.cat([gw * up * sig * (1 + gate * (1 - sig)), gw * silu], -1)
    return dh1, None if w is None else (g * silu * up).sum(-1)


class SwiGLU(torch.autograd.Function):
    """silu(gate) · up of h1 = [gate | up] (per row, times w when given); saves h1 (and w) only
    and recomputes SiLU in backward (Megatron's fused bias-SwiGLU; with w, the fused
    SwiGLU-with-probabilities kernels)."""

    @staticmethod
    @kernel
    def forward(ctx, h1, w=None):
        ctx.save_for_backward(h1, w)
        width = h1.shape[-1] // 2
        h2 = h1.reshape(-1, 2 * width)
        out = h1.new_empty(h2.shape[0], width)
        for a, b in _blocks(h2.shape[0]):
            gate, up = _acc(h2[a:b]).chunk(2, -1)
            v = F.silu(gate) * up
            out[a:b] = v if w is None else v * _acc(w[a:b]).unsqueeze(-1)
        return out.view(*h1.shape[:-1], width)

    @staticmethod
    @kernel
    def backward(ctx, g):
        h1, w = ctx.unpacked
        h2, g2 = h1.reshape(-1, h1.shape[-1]), g.reshape(-1, g.shape[-1])
        dh1 = torch.empty_like(h2)
        dw = None if w is None else torch.empty_like(w)
        for a, b in _blocks(h2.shape[0]):
            d, dwb = _swiglu_block(h2[a:b], _acc(g2[a:b]), None if w is None else w[a:b])
            dh1[a:b] = d
            if dw is not None:
                dw[a:b] = dwb
        return dh1.view(h1.shape), dw


class Permute(torch.autograd.Function):
    """Fused dispatch (TE's moe_permute with probabilities): pair i of the expert-sorted order
    is row_map[i] = token·k + slot; returns the tokens and probabilities in that order and
    saves only the int32 row map."""

    @staticmethod
    @kernel
    def forward(ctx, x, w_flat, row_map, k):
        ctx.save_for_backward(row_map)
        ctx.k, ctx.tokens = k, x.shape[0]
        return x.index_select(0, torch.div(row_map, k, rounding_mode="floor")), w_flat.index_select(0, row_map)

    @staticmethod
    @kernel
    def backward(ctx, dx_perm, dw_perm):
        (row_map,) = ctx.unpacked
        tok = torch.div(row_map, ctx.k, rounding_mode="floor")
        dx = dx_perm.new_zeros(ctx.tokens, dx_perm.shape[1]).index_add_(0, tok, dx_perm)
        dw = None if dw_perm is None else dw_perm.new_zeros(ctx.tokens * ctx.k).index_add_(0, row_map, dw_perm)
        return dx, dw, None, None


class Unpermute(torch.autograd.Function):
    """Fused combine (TE's moe_unpermute): sums each token's expert rows; saves the row map."""

    @staticmethod
    @kernel
    def forward(ctx, y_perm, row_map, tokens, k):
        ctx.save_for_backward(row_map)
        ctx.k = k
        tok = torch.div(row_map, k, rounding_mode="floor")
        return y_perm.new_zeros(tokens, y_perm.shape[1]).index_add_(0, tok, y_perm)

    @staticmethod
    @kernel
    def backward(ctx, dy):
        (row_map,) = ctx.unpacked
        return dy.index_select(0, torch.div(row_map, ctx.k, rounding_mode="floor")), None, None, None


class FusedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [T, V] against targets [T] that writes its gradient
    (softmax − one-hot)/T in the logits' dtype already in forward and saves only that (as
    TE's and Megatron's fused cross-entropy write it into the logits buffer); backward scales
    it in place by the loss gradient and hands it on (no new tensor)."""

    @staticmethod
    @kernel
    def forward(ctx, logits, targets):
        T = logits.shape[0]
        grad = torch.empty_like(logits)
        loss = torch.zeros((), dtype=_acc_dtype(logits.dtype))
        for a, b in _blocks(T):
            lf, tg = _acc(logits[a:b]), targets[a:b]
            loss += (torch.logsumexp(lf, -1) - lf.gather(-1, tg.unsqueeze(-1)).squeeze(-1)).sum()
            p = torch.softmax(lf, -1)
            p[torch.arange(b - a), tg] -= 1.0
            grad[a:b] = p / T
        ctx.save_for_backward(grad)
        return loss / T

    @staticmethod
    @kernel
    def backward(ctx, dloss):
        (grad,) = ctx.unpacked
        if dloss.item() != 1.0:           # a loss gradient of 1 (loss.backward()) leaves it as is
            grad.mul_(dloss.to(grad.dtype))
        return grad, None


class FlashAttention(torch.autograd.Function):
    """Causal attention of q, k [b, n_h, s, d_qk] and v [b, n_h, s, d_v] computed as
    FlashAttention-2 does, tile by tile (TILE queries × TILE keys, FP32 online softmax), so no
    s×s tensor exists; saves q, k, v, the output and the FP32 log-sum-exp [b, n_h, s], as
    PyTorch's flash node does. The output is laid out in memory as [b, s, n_h, d_v] (CUDA
    kernels' layout). Backward allocates, as FlashAttention-2's does, the FP32 row sums
    D = rowsum(dO·O) and an FP32 dQ accumulator besides dQ, dK, dV: global buffers, so the
    memory tracker sees them (``kernel_moment``) while the tiles' scratch stays hidden."""

    @staticmethod
    @kernel
    def forward(ctx, q, k, v, scale):
        b, nh, s, _ = q.shape
        o = q.new_empty(b, s, nh, v.shape[-1]).transpose(1, 2)
        lse = torch.empty(b, nh, s, dtype=_acc_dtype(q.dtype))
        ctx.save_for_backward(q, k, v, o, lse)
        k, v = _expand_kv(k, nh), _expand_kv(v, nh)       # kernel scratch: heads share their group's k, v
        for i0 in range(0, s, TILE):
            i1 = min(i0 + TILE, s)
            qi = _acc(q[:, :, i0:i1])
            m = torch.full(qi.shape[:-1], float("-inf"), dtype=qi.dtype)
            l = torch.zeros_like(m)
            acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=qi.dtype)
            for j0 in range(0, i1, TILE):
                j1 = min(j0 + TILE, s)
                sij = _tile_scores(qi, k, i0, j0, j1, scale)
                m_new = torch.maximum(m, sij.amax(-1))
                p = torch.exp(sij - m_new.unsqueeze(-1))
                corr = torch.exp(m - m_new)
                l = l * corr + p.sum(-1)
                acc = acc * corr.unsqueeze(-1) + p @ _acc(v[:, :, j0:j1])
                m = m_new
            o[:, :, i0:i1] = acc / l.unsqueeze(-1)
            lse[:, :, i0:i1] = m + torch.log(l)
        ctx.scale = scale
        return o

    @staticmethod
    @kernel
    def backward(ctx, do):
        q, k, v, o, lse = ctx.unpacked
        scale, s = ctx.scale, q.shape[2]
        rows = torch.empty_like(lse)                      # D = rowsum(dO · O)
        for i0 in range(0, s, TILE):
            rows[:, :, i0:i0 + TILE] = (_acc(do[:, :, i0:i0 + TILE]) * _acc(o[:, :, i0:i0 + TILE])).sum(-1)
        dq = torch.zeros(q.shape, dtype=lse.dtype)        # FP32 accumulator (dq_accum)
        nh, g = q.shape[1], k.shape[1]
        dk_kv, dv_kv = torch.empty_like(k), torch.empty_like(v)
        if g != nh:
            # FlashAttention-2's mha_bwd with fewer kv heads: dk, dv written per query head
            # (dk_expanded, dv_expanded, activation dtype), then summed over each group
            dk, dv = q.new_empty(q.shape[:3] + k.shape[3:]), q.new_empty(q.shape[:3] + v.shape[3:])
        else:
            dk, dv = dk_kv, dv_kv
        dq_out = torch.empty_like(q)
        kernel_moment("FlashAttention.backward")          # dq, dk, dv, the FP32 dq and D all live
        k, v = _expand_kv(k, nh), _expand_kv(v, nh)       # scratch: the kernel indexes the groups
        for j0 in range(0, s, TILE):
            j1 = min(j0 + TILE, s)
            kj, vj = _acc(k[:, :, j0:j1]), _acc(v[:, :, j0:j1])
            dkj, dvj = torch.zeros_like(kj), torch.zeros_like(vj)
            for i0 in range(j0, s, TILE):
                i1 = min(i0 + TILE, s)
                qi, doi = _acc(q[:, :, i0:i1]), _acc(do[:, :, i0:i1])
                p = torch.exp(_tile_scores(qi, k, i0, j0, j1, scale) - lse[:, :, i0:i1].unsqueeze(-1))
                dvj += p.transpose(-1, -2) @ doi
                ds = p * (doi @ vj.transpose(-1, -2) - rows[:, :, i0:i1].unsqueeze(-1))
                dq[:, :, i0:i1] += (ds @ kj) * scale
                dkj += (ds.transpose(-1, -2) @ qi) * scale
            dk[:, :, j0:j1], dv[:, :, j0:j1] = dkj, dvj
        dq_out.copy_(dq)
        if g != nh:
            dk_kv.copy_(dk.unflatten(1, (g, nh // g)).sum(2))
            dv_kv.copy_(dv.unflatten(1, (g, nh // g)).sum(2))
        return dq_out, dk_kv, dv_kv, None


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """k or v [b, g, s, d] repeated to [b, heads, s, d]: query head i reads group i // (heads/g)
    (Megatron's repeat_interleave, Hugging Face's repeat_kv)."""
    g = x.shape[1]
    return x if g == heads else x.repeat_interleave(heads // g, dim=1)


def _tile_scores(qi, k, i0, j0, j1, scale):
    """Scaled scores of a query tile starting at i0 against keys j0:j1, causally masked."""
    sij = (qi @ _acc(k[:, :, j0:j1]).transpose(-1, -2)) * scale
    if j1 > i0:                                            # the tile reaches the diagonal
        qpos = torch.arange(i0, i0 + qi.shape[2]).unsqueeze(-1)
        sij = sij.masked_fill(torch.arange(j0, j1) > qpos, float("-inf"))
    return sij


def swiglu(h1: torch.Tensor, fused: bool, w: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU of h1 = [gate | up], times the per-row probabilities w when given. Fused:
    ``SwiGLU`` (saves h1, and w). Eager: ``silu(gate) * up`` (keeps gate and up, views of h1,
    and SiLU's output), then ``* w`` (keeps the product and w)."""
    if fused:
        return SwiGLU.apply(h1, w)
    gate, up = h1.chunk(2, -1)
    a = F.silu(gate) * up
    return a if w is None else a * w.unsqueeze(-1)


# --------------------------------------------------------------------------- modules

class _Part(nn.Module):
    """Shared helpers: seeded parameters in the layer's dtype."""

    def __init__(self, dtype: torch.dtype, gen: torch.Generator):
        super().__init__()
        self._dtype, self._gen = dtype, gen

    def matrix(self, rows: int, cols: int) -> nn.Parameter:
        w = torch.randn(rows, cols, generator=self._gen) / math.sqrt(cols)
        return nn.Parameter(w.to(self._dtype))

    def norm_weight(self, n: int) -> nn.Parameter:
        return nn.Parameter(torch.ones(n, dtype=self._dtype))


def _norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return RMSNorm.apply(x, w, EPS)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, causal: torch.Tensor) -> torch.Tensor:
    """Eager attention's causally masked, scaled scores q·kᵀ·scale as one s×s tensor, as
    Megatron-Core's DotProductAttention makes them (``baddbmm`` with alpha = scale, then
    FusedScaleMaskSoftmax, one kernel): the scale and the mask are applied in place (the
    matmul saves q and k, not its output), so F holds the scores and the probabilities, two
    s×s tensors, at the softmax; out of place it would hold three."""
    return torch.matmul(q, k.transpose(-2, -1)).mul_(scale).masked_fill_(causal, float("-inf"))


class Rope(torch.autograd.Function):
    """Rotary embedding of x [b, s, heads, d] as one fused kernel, as Megatron-Core runs it by
    default (``apply_rope_fusion``; Megatron-LM's ``--no-rope-fusion`` turns it off): y =
    x·cos + rotate_half(x)·sin written once in x's dtype, computed in row blocks; saves nothing
    of x (cos and sin are buffers). Backward: dx = dy·cos + rotate_halfᵀ(dy·sin), rotate_halfᵀ
    [t1 | t2] = [t2 | −t1]. The same products and sums as the unfused formula, so the values are
    equal; only the temporaries (x·cos, the rotated copy, its product) are the kernel's."""

    @staticmethod
    @kernel
    def forward(ctx, x, cos, sin):
        y = torch.empty(x.shape, dtype=x.dtype)
        for a, b in _blocks(x.shape[1]):
            xb = x[:, a:b]
            y[:, a:b] = xb * cos[a:b] + _rotate_half(xb) * sin[a:b]
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    @kernel
    def backward(ctx, dy):
        cos, sin = ctx.unpacked
        dx = torch.empty(dy.shape, dtype=dy.dtype)
        for a, b in _blocks(dy.shape[1]):
            t1, t2 = (dy[:, a:b] * sin[a:b]).chunk(2, -1)
            dx[:, a:b] = dy[:, a:b] * cos[a:b] + torch.cat([t2, -t1], -1)
        return dx, None, None


class MLA(_Part):
    """Multi-head latent attention (module "mla"). x_n = norm(x); c_q = W_DQ x_n and
    q = W_UQR q_norm(c_q) (or q = W_Q x_n); c_kv = W_DKV x_n; k_pe = W_KR x_n (one rope key
    shared by the heads); kv = W_UKV kv_norm(c_kv) split per head into k_nope and v; rope
    x·cos + rotate_half(x)·sin (cos, sin are buffers) on the rope parts; q = [q_nope | rope(q_pe)],
    k = [k_nope | rope(k_pe) expanded over heads]; q, k, v made contiguous [b, n_h, s, d]
    (``.transpose(1, 2).contiguous()``), as Megatron hands them to the kernel. Eager attention:
    (q·kᵀ)·scale and masked_fill with a causal bool buffer in place (``_scores``), softmax in the activation dtype,
    dropout, ·v. The context goes through ``.transpose(1, 2).reshape(b·s, n_h·d_h)`` (a copy
    unless the kernel's output is laid out [b, s, n_h, d_h]) into W_O; hidden dropout; residual.
    """

    def __init__(self, m, o: Options, dtype, gen, attention_impl: str):
        super().__init__(dtype, gen)
        self.o, self.impl = o, attention_impl
        h, nh, dh, dr = m.hidden, m.heads, m.head_dim, m.rope_head_dim
        self.nh, self.dh, self.dr, self.dcq = nh, dh, dr, m.q_compress
        self.scale = 1.0 / math.sqrt(dh + dr)
        self.norm = self.norm_weight(h)
        if m.q_compress:
            self.w_dq = self.matrix(m.q_compress, h)
            self.q_norm = self.norm_weight(m.q_compress)
            self.w_uqr = self.matrix(nh * (dh + dr), m.q_compress)
        else:
            self.w_q = self.matrix(nh * (dh + dr), h)
        self.w_dkv = self.matrix(m.kv_compress, h)
        self.w_kr = self.matrix(dr, h)
        self.kv_norm = self.norm_weight(m.kv_compress)
        self.w_ukv = self.matrix(nh * 2 * dh, m.kv_compress)
        self.w_o = self.matrix(h, nh * dh)
        pos = torch.arange(o.s, dtype=torch.float64)
        inv = 1.0 / 10000 ** (torch.arange(0, dr, 2, dtype=torch.float64) / max(dr, 1))
        ang = torch.cat([torch.outer(pos, inv)] * 2, -1)          # [s, d_hr]
        self.register_buffer("cos", ang.cos().to(dtype).unsqueeze(1), persistent=False)   # [s, 1, d_hr]
        self.register_buffer("sin", ang.sin().to(dtype).unsqueeze(1), persistent=False)
        if o.attention == "eager":
            self.register_buffer("causal", torch.ones(o.s, o.s, dtype=torch.bool).triu(1), persistent=False)

    def _rope(self, x):                     # x [b, s, heads, d_hr]
        return x * self.cos + _rotate_half(x) * self.sin

    def down(self, x):
        """R1: the attention norm and the linears that read its output."""
        x_n = _norm(x, self.norm)
        first = F.linear(x_n, self.w_dq if self.dcq else self.w_q)
        return first, F.linear(x_n, self.w_dkv), F.linear(x_n, self.w_kr)

    def up(self, first, c_kv, k_pe):
        """The latent norms, the up-projections, rope and the concatenations."""
        b, s = first.shape[:2]
        nh, dh, dr = self.nh, self.dh, self.dr
        q = F.linear(_norm(first, self.q_norm), self.w_uqr) if self.dcq else first
        q_nope, q_pe = q.view(b, s, nh, dh + dr).split([dh, dr], -1)
        q = torch.cat([q_nope, self._rope(q_pe)], -1)
        kv = F.linear(_norm(c_kv, self.kv_norm), self.w_ukv).view(b, s, nh, 2 * dh)
        k_nope, v = kv.split([dh, dh], -1)
        k = torch.cat([k_nope, self._rope(k_pe.unsqueeze(2)).expand(b, s, nh, dr)], -1)
        return q, k, v

    def qkv(self, first, c_kv, k_pe):
        """``up``, then q, k, v made contiguous [b, n_h, s, d] for the kernel; the intermediates
        die on return, as the locals of Megatron's ``get_query_key_value_tensors`` do."""
        q, k, v = self.up(first, c_kv, k_pe)
        return tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))

    def context(self, out):
        """The attention output [b, n_h, s, d_h] as W_O's input [b·s, n_h·d_h]."""
        b, _, s, _ = out.shape
        return out.transpose(1, 2).reshape(b * s, self.nh * self.dh)

    def attend(self, first, c_kv, k_pe):
        """R2: ``qkv`` and the attention core; returns W_O's input."""
        return self.context(self.core(*self.qkv(first, c_kv, k_pe)))

    def core(self, q, k, v):
        if self.o.attention == "flash":
            if self.impl == "sdpa":
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            return FlashAttention.apply(q, k, v, self.scale)
        probs = torch.softmax(_scores(q, k, self.scale, self.causal), -1)
        return torch.matmul(_dropout(probs, self.o.dropout), v)

    def attention(self, x):
        """Everything but the dropout and residual add (Megatron's attention module)."""
        b, s, h = x.shape
        if self.o.recompute == "selective":
            context = _ckpt(self.attend, *_ckpt(self.down, x))
        else:
            q, k, v = self.qkv(*self.down(x))       # the latents die here
            # q, k, v live on through W_O, as in Megatron's attention forward
            context = self.context(self.core(q, k, v))
        return F.linear(context, self.w_o).view(b, s, h)

    def forward(self, x):
        with scope("mla"):
            # the residual add runs once the attention's locals are gone; its output lives on
            # through the dropout and the add (Megatron's layer and bias-dropout-add)
            out = self.attention(x)
            return x + _dropout(out, self.o.dropout)


class GQA(_Part):
    """Grouped-query attention (multi-head when kv_heads = heads; module "attn"), as Hugging
    Face's Llama / Mistral / Qwen2 / Qwen3 attention computes it and Megatron-Core's keeps it:
    x_n = norm(x); q = W_Q x_n [b, s, n_h, d], k = W_K x_n and v = W_V x_n [b, s, g, d] (three
    linears reading x_n, which is saved once; with ``qkv_bias`` each adds a bias, which saves
    nothing more); ``qk_norm`` (Qwen3): an RMSNorm over d of each head's q and k (keeps the
    projections' outputs and one FP32 1/rms per token and head); rope on q and k as one fused
    kernel (``Rope``, Megatron's default; saves nothing, and its full-width temporaries are the
    kernel's, not live tensors as the unfused x·cos + rotate_half(x)·sin would be); q, k, v made contiguous
    [b, heads, s, d] for the kernel. Flash: ``FlashAttention`` takes k, v at the g kv heads.
    Eager: k, v repeated to the n_h query heads (``repeat_interleave``, Megatron's
    DotProductAttention; HF's repeat_kv), kept by the two matmuls. The context goes into W_O,
    hidden dropout, residual, as in ``MLA``. Selective recompute ("deepseek-v3": recompute the
    RMSNorms; GQA has no up-projections): R1 the attention norm + the q, k, v projections (their
    outputs leave the region, x_n is rebuilt), R2 each q/k norm (keeps its input, rebuilds
    1/rms); rope, the copies and the core are not recomputed, so the kernel keeps q, k, v."""

    def __init__(self, m, o: Options, dtype, gen, attention_impl: str):
        super().__init__(dtype, gen)
        self.o, self.impl = o, attention_impl
        h, nh, d, g = m.hidden, m.heads, m.head_dim, m.kv_groups
        self.nh, self.g, self.dh = nh, g, d
        self.scale = 1.0 / math.sqrt(d)
        self.norm = self.norm_weight(h)
        self.w_q, self.w_k, self.w_v = self.matrix(nh * d, h), self.matrix(g * d, h), self.matrix(g * d, h)
        self.w_o = self.matrix(h, nh * d)
        bias = getattr(m, "qkv_bias", False)
        self.b_q, self.b_k, self.b_v = ((self.bias(nh * d), self.bias(g * d), self.bias(g * d)) if bias
                                        else (None, None, None))
        self.qk_norm = getattr(m, "qk_norm", False)
        if self.qk_norm:
            self.q_norm, self.k_norm = self.norm_weight(d), self.norm_weight(d)
        pos = torch.arange(o.s, dtype=torch.float64)
        inv = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.cat([torch.outer(pos, inv)] * 2, -1)          # [s, d]
        self.register_buffer("cos", ang.cos().to(dtype).unsqueeze(1), persistent=False)   # [s, 1, d]
        self.register_buffer("sin", ang.sin().to(dtype).unsqueeze(1), persistent=False)
        if o.attention == "eager":
            self.register_buffer("causal", torch.ones(o.s, o.s, dtype=torch.bool).triu(1), persistent=False)

    def bias(self, n: int) -> nn.Parameter:
        return nn.Parameter((0.02 * torch.randn(n, generator=self._gen)).to(self._dtype))

    def project(self, x):
        """R1: the attention norm and the q, k, v projections that read its output."""
        x_n = _norm(x, self.norm)
        return (F.linear(x_n, self.w_q, self.b_q), F.linear(x_n, self.w_k, self.b_k),
                F.linear(x_n, self.w_v, self.b_v))

    def qkv(self, q, k, v):
        """The q/k norms and rope, then q, k, v contiguous [b, heads, s, d] for the kernel; the
        intermediates die on return (Megatron's ``get_query_key_value_tensors``)."""
        b, s = q.shape[:2]
        q, k, v = q.view(b, s, self.nh, self.dh), k.view(b, s, self.g, self.dh), v.view(b, s, self.g, self.dh)
        if self.qk_norm and self.o.recompute == "selective":     # R2: the q/k norms alone
            q, k = _ckpt(_norm, q, self.q_norm), _ckpt(_norm, k, self.k_norm)
        elif self.qk_norm:
            q, k = _norm(q, self.q_norm), _norm(k, self.k_norm)
        q, k = self._rope(q), self._rope(k)
        return tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))

    def _rope(self, x):                     # x [b, s, heads, d]: the fused kernel (``Rope``)
        return Rope.apply(x, self.cos, self.sin)

    def context(self, out):
        b, _, s, _ = out.shape
        return out.transpose(1, 2).reshape(b * s, self.nh * self.dh)

    def core(self, q, k, v):
        if self.o.attention == "flash":
            if self.impl == "sdpa":
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                      enable_gqa=self.g != self.nh)
            return FlashAttention.apply(q, k, v, self.scale)
        k, v = _expand_kv(k, self.nh), _expand_kv(v, self.nh)
        probs = torch.softmax(_scores(q, k, self.scale, self.causal), -1)
        return torch.matmul(_dropout(probs, self.o.dropout), v)

    def attention(self, x):
        b, s, h = x.shape
        projected = _ckpt(self.project, x) if self.o.recompute == "selective" else self.project(x)
        q, k, v = self.qkv(*projected)              # the projections' outputs die here
        del projected
        context = self.context(self.core(q, k, v))
        return F.linear(context, self.w_o).view(b, s, h)

    def forward(self, x):
        with scope("attn"):
            out = self.attention(x)
            return x + _dropout(out, self.o.dropout)


class DenseFFN(_Part):
    """Dense SwiGLU FFN (module "mlp"): x_n = norm(x); fc1 h → 2f ([gate | up]); SwiGLU;
    fc2 f → h; dropout; residual."""

    def __init__(self, m, o: Options, dtype, gen):
        super().__init__(dtype, gen)
        self.o = o
        self.norm = self.norm_weight(m.hidden)
        self.fc1 = self.matrix(2 * m.dense_ffn_hidden, m.hidden)
        self.fc2 = self.matrix(m.hidden, m.dense_ffn_hidden)

    def inner(self, x):
        """R3: the FFN norm and fc1."""
        return F.linear(_norm(x, self.norm), self.fc1)

    def outer(self, h1):
        """R4: SwiGLU and fc2. fc1's output h1 is dropped once the activation has read it
        (Megatron's MLP reassigns it): outside a checkpoint it lives on only if saved. The
        callers pass it as a temporary, so this frame holds the last reference."""
        act = swiglu(h1, self.o.swiglu_fusion)
        del h1
        return F.linear(act, self.fc2)

    def forward(self, x):
        with scope("mlp"):
            if self.o.recompute == "selective":
                y = _ckpt(self.outer, _ckpt(self.inner, x))
            else:
                y = self.outer(self.inner(x))
            return x + _dropout(y, self.o.dropout)


class MoEFFN(_Part):
    """MoE FFN. "moe": x_n = norm(x). "router": logits = W_r x_n (activation dtype), FP32
    softmax or sigmoid scores; top-k on the scores (sigmoid: plus a no-grad bias buffer, for the
    choice only); weights = scores.gather(idx) (sigmoid: divided by their sum), cast to the
    activation dtype. "experts": the T·k (token, slot) pairs stably sorted by expert;
    x_perm = x_n[token of pair], w_perm = weights[pair] by plain indexing (int64 indices kept)
    or by ``Permute`` (int32 row map kept); each expert fc1 → SwiGLU → fc2 on its contiguous
    slice, outputs concatenated in pair order; combine "output": y_perm·w_perm then summed per
    token (``scatter_add_`` or ``Unpermute``); "activation": w_perm multiplies the SwiGLU output
    before fc2 and the sum is unweighted. "shared": one SwiGLU MLP of width N_s·h_E on x_n,
    added. "moe": dropout, residual."""

    def __init__(self, m, o: Options, dtype, gen):
        super().__init__(dtype, gen)
        self.o, self.dtype = o, dtype
        h, he, n = m.hidden, m.moe_ffn_hidden, m.routed_experts
        self.k, self.n = m.experts_per_token, n
        self.sigmoid = getattr(m, "router", "softmax") == "sigmoid"
        self.norm = self.norm_weight(h)
        self.router = self.matrix(n, h)
        self.register_buffer("bias", 0.01 * torch.randn(n, generator=gen), persistent=False)
        self.fc1 = nn.ParameterList([self.matrix(2 * he, h) for _ in range(n)])
        self.fc2 = nn.ParameterList([self.matrix(h, he) for _ in range(n)])
        self.shared = m.shared_experts > 0
        if self.shared:
            self.sh_fc1 = self.matrix(2 * m.shared_experts * he, h)
            self.sh_fc2 = self.matrix(h, m.shared_experts * he)

    def inner(self, x, shared_fc1: bool):
        """R3: the MoE norm and the linears that read its output (the router; with
        ``shared_fc1`` the shared expert's fc1 too, as selective recompute groups them); returns
        the normed tensor too, for the dispatch."""
        with scope("moe"):
            x_n = _norm(x, self.norm)
        with scope("router"):
            logits = F.linear(x_n, self.router)
        if not (self.shared and shared_fc1):
            return x_n, logits
        with scope("shared"):
            return x_n, logits, F.linear(x_n, self.sh_fc1)

    def route(self, logits):
        scores = logits.float()
        scores = torch.sigmoid(scores) if self.sigmoid else torch.softmax(scores, -1)
        with torch.no_grad():
            choice = scores + self.bias if self.sigmoid else scores
            idx = torch.topk(choice, self.k, dim=-1).indices
        w = scores.gather(-1, idx)
        if self.sigmoid:
            w = w / w.sum(-1, keepdim=True)
        return w.to(self.dtype), idx

    def expert(self, e, h1, w):
        """R4 of routed expert e: SwiGLU (weighted with combine "activation") and fc2; h1
        dropped as in ``DenseFFN.outer``."""
        act = swiglu(h1, self.o.swiglu_fusion, w)
        del h1
        return F.linear(act, self.fc2[e])

    def shared_out(self, h1):
        """R4 of the shared expert; h1 dropped as in ``DenseFFN.outer``."""
        act = swiglu(h1, self.o.swiglu_fusion)
        del h1
        return F.linear(act, self.sh_fc2)

    def dispatch_combine(self, x_n, w, idx):
        b, s, h = x_n.shape
        T, k, o = b * s, self.k, self.o
        sel = o.recompute == "selective"
        x_flat, pairs = x_n.reshape(T, h), idx.reshape(-1)          # pair p = token·k + slot
        order = torch.argsort(pairs, stable=True)
        counts = torch.bincount(pairs, minlength=self.n).tolist()
        if o.permute_fusion:
            row_map = order.to(torch.int32)
            x_perm, w_perm = Permute.apply(x_flat, w.reshape(-1), row_map, k)
        else:
            tok = torch.div(order, k, rounding_mode="floor")
            x_perm, w_perm = x_flat[tok], w.reshape(-1)[order]
        outs = []
        for e, (xe, we) in enumerate(zip(x_perm.split(counts), w_perm.split(counts))):
            we = we if o.moe_combine == "activation" else None
            if sel:
                outs.append(_ckpt(self.expert, e, F.linear(xe, self.fc1[e]), we))
            else:
                outs.append(self.expert(e, F.linear(xe, self.fc1[e]), we))
        # one buffer of expert outputs, as a grouped GEMM writes it (Megatron's SequentialMLP
        # concatenates and returns, freeing the per-expert outputs before the unpermute)
        y_perm = torch.cat(outs)
        del outs
        if o.moe_combine == "output":
            y_perm = y_perm * w_perm.unsqueeze(-1)
        if o.permute_fusion:
            y = Unpermute.apply(y_perm, row_map, T, k)
        else:
            # Megatron-Core's unfused unpermute: backward gathers dy with the index alone
            y = y_perm.new_zeros(T, h).scatter_add_(0, tok.unsqueeze(1).expand(-1, h), y_perm)
        return y.view(b, s, h)

    def forward(self, x):
        sel = self.o.recompute == "selective"
        with scope("moe"):
            parts = _ckpt(self.inner, x, True) if sel else self.inner(x, False)
        x_n, shared_h1 = parts[0], parts[2] if len(parts) > 2 else None
        with scope("router"):
            w, idx = self.route(parts[1])
        del parts                           # the router's logits are dropped once routed
        with scope("experts"):
            y = self.dispatch_combine(x_n, w, idx)
        if self.shared:                     # after the routed experts, as Megatron's MoE layer runs it
            with scope("shared"):
                if sel:
                    y = y + _ckpt(self.shared_out, shared_h1)
                else:
                    y = y + self.shared_out(F.linear(x_n, self.sh_fc1))
        with scope("moe"):
            return x + _dropout(y, self.o.dropout)


class Embedding(_Part):
    """Token embedding (module "embedding"): ``F.embedding`` of int64 ids [b, s]."""

    def __init__(self, m, dtype, gen):
        super().__init__(dtype, gen)
        self.weight = nn.Parameter(torch.randn(m.vocab, m.hidden, generator=gen).to(dtype))

    def forward(self, ids):
        with scope("embedding"):
            return F.embedding(ids, self.weight)


class Head(_Part):
    """"head": final norm and output matmul h → V; "loss": cross-entropy on int64 targets,
    "fp32" ``F.cross_entropy(logits.float(), targets)`` or "fused" (``FusedCrossEntropy``)."""

    def __init__(self, m, o: Options, dtype, gen):
        super().__init__(dtype, gen)
        self.o = o
        self.norm = self.norm_weight(m.hidden)
        self.w_out = self.matrix(m.vocab, m.hidden)

    def forward(self, x, targets):
        b, s, _ = x.shape
        with scope("head"):
            logits = F.linear(_norm(x, self.norm), self.w_out)
        with scope("loss"):
            logits, targets = logits.reshape(b * s, -1), targets.reshape(b * s)
            if self.o.cross_entropy == "fused":
                return FusedCrossEntropy.apply(logits, targets)
            return F.cross_entropy(logits.float(), targets)


class Layer(nn.Module):
    """One layer of ``kind``, with the recompute policy applied."""

    def __init__(self, kind: str, m, t, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                 attention_impl: str = "kernel"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind: one of {', '.join(KINDS)}; got {kind!r}")
        if attention_impl not in ("kernel", "sdpa"):
            raise ValueError(f"attention_impl: kernel or sdpa; got {attention_impl!r}")
        if dtype not in (torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"dtype: bfloat16 or float32 (float64 for gradient checks); got {dtype}")
        self.kind, self.model, self.dtype = kind, m, dtype
        self.o = o = Options.from_training(t)
        gen = torch.Generator().manual_seed(seed)
        if kind in ("dense", "moe"):
            gqa = getattr(m, "attention", "mla") == "gqa"
            self.attention = (GQA if gqa else MLA)(m, o, dtype, gen, attention_impl)
            self.attn_scope = "attn" if gqa else "mla"
            self.ffn = DenseFFN(m, o, dtype, gen) if kind == "dense" else MoEFFN(m, o, dtype, gen)
        elif kind == "embedding":
            self.embedding = Embedding(m, dtype, gen)
        else:
            self.head = Head(m, o, dtype, gen)

    def block(self, x):
        return self.ffn(self.attention(x))

    def forward(self, *inputs):
        if self.kind == "embedding":
            return self.embedding(*inputs)
        if self.kind == "head":
            return self.head(*inputs)
        (x,) = inputs
        if self.o.recompute != "full":
            return self.block(x)
        with scope(self.attn_scope):             # the checkpoint keeps its input: the layer input
            if self.o.granularity == "layer":
                return _ckpt(self.block, x)
            x = _ckpt(self.attention, x)
        with scope("mlp" if self.kind == "dense" else "moe"):
            return _ckpt(self.ffn, x)


def build_layer(kind: str, m, t, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                attention_impl: str = "kernel") -> Layer:
    """A ``Layer`` of ``kind`` for ``ModelConfig`` m and ``TrainingConfig`` t, seeded."""
    return Layer(kind, m, t, dtype, seed, attention_impl)


def make_inputs(layer: Layer, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The layer's inputs: ids [b, s] (embedding); x [b, s, h] requiring grad, and int64
    targets [b, s] for the head."""
    m, o = layer.model, layer.o
    g = torch.Generator().manual_seed(seed + 1)
    if layer.kind == "embedding":
        return (torch.randint(0, m.vocab, (o.b, o.s), generator=g),)
    x = torch.randn(o.b, o.s, m.hidden, generator=g).to(layer.dtype).requires_grad_()
    if layer.kind == "head":
        return x, torch.randint(0, m.vocab, (o.b, o.s), generator=g)
    return (x,)
