"""The PyTorch fidelity harness (benchmarks/fidelity): its own checks, then pipesim's activation
model against it over the grid of ``fidelity.layers`` (stored bytes per layer within 2%, per
module within 5%, transient peaks within 10%).

    python -m pytest tests/test_fidelity.py -q
"""
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the fidelity harness needs torch: pip install -e '.[fidelity]'")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import torch.nn.functional as F                              # noqa: E402

from fidelity import layers, measure, torch_model          # noqa: E402
from pipesim.model import load_preset                      # noqa: E402
from pipesim.model.config import TrainingConfig            # noqa: E402

f64 = torch.float64


def _rand(*shape, gen, dtype=f64):
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()


def _same_grads(custom, plain, inputs, gen):
    """The custom Function and the plain formula agree in value and in every input gradient,
    for a random output gradient; and the custom one passes gradcheck."""
    out_c, out_p = custom(*inputs), plain(*inputs)
    torch.testing.assert_close(out_c, out_p)
    g = torch.randn(out_p.shape, generator=gen, dtype=out_p.dtype)
    diff = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    grads_c = torch.autograd.grad(custom(*inputs), diff, g)
    grads_p = torch.autograd.grad(plain(*inputs), diff, g)
    for a, b in zip(grads_c, grads_p):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(custom, inputs)


# --------------------------------------------------------------------------- custom Functions

def test_rmsnorm_gradients():
    gen = torch.Generator().manual_seed(0)
    x, w = _rand(2, 5, 8, gen=gen), _rand(8, gen=gen)

    def plain(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch_model.EPS) * w

    _same_grads(lambda x, w: torch_model.RMSNorm.apply(x, w, torch_model.EPS), plain, (x, w), gen)


def test_swiglu_gradients():
    gen = torch.Generator().manual_seed(1)
    h1 = _rand(7, 10, gen=gen)

    def plain(h1):
        gate, up = h1.chunk(2, -1)
        return F.silu(gate) * up

    _same_grads(lambda h1: torch_model.SwiGLU.apply(h1), plain, (h1,), gen)


def test_weighted_swiglu_gradients():
    gen = torch.Generator().manual_seed(2)
    h1, w = _rand(7, 10, gen=gen), _rand(7, gen=gen)

    def plain(h1, w):
        gate, up = h1.chunk(2, -1)
        return F.silu(gate) * up * w.unsqueeze(-1)

    _same_grads(torch_model.SwiGLU.apply, plain, (h1, w), gen)


def _routing(T=5, k=2, n=3, seed=3):
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, n, (T * k,), generator=gen)
    return gen, T, k, torch.argsort(pairs, stable=True)


def test_permute_gradients():
    gen, T, k, order = _routing()
    x, w = _rand(T, 4, gen=gen), _rand(T * k, gen=gen)

    def custom(x, w):
        xp, wp = torch_model.Permute.apply(x, w, order.to(torch.int32), k)
        return torch.cat([xp, wp.unsqueeze(-1)], -1)

    def plain(x, w):
        return torch.cat([x[order // k], w[order].unsqueeze(-1)], -1)

    _same_grads(custom, plain, (x, w), gen)


def test_unpermute_gradients():
    gen, T, k, order = _routing()
    y = _rand(T * k, 4, gen=gen)
    _same_grads(lambda y: torch_model.Unpermute.apply(y, order.to(torch.int32), T, k),
                lambda y: torch.zeros(T, 4, dtype=f64).index_add(0, order // k, y), (y,), gen)


def test_fused_cross_entropy_gradients():
    gen = torch.Generator().manual_seed(4)
    logits, targets = _rand(6, 5, gen=gen), torch.randint(0, 5, (6,), generator=gen)
    _same_grads(lambda z: torch_model.FusedCrossEntropy.apply(z, targets),
                lambda z: F.cross_entropy(z, targets), (logits,), gen)


def test_flash_attention_gradients(monkeypatch):
    monkeypatch.setattr(torch_model, "TILE", 4)       # several tiles, the last one partial
    gen = torch.Generator().manual_seed(5)
    b, nh, s, d, dv = 1, 2, 10, 4, 3
    q, k, v = _rand(b, nh, s, d, gen=gen), _rand(b, nh, s, d, gen=gen), _rand(b, nh, s, dv, gen=gen)
    scale = d ** -0.5

    def plain(q, k, v):
        scores = (q @ k.transpose(-1, -2)) * scale
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)
        return torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v

    _same_grads(lambda q, k, v: torch_model.FlashAttention.apply(q, k, v, scale), plain, (q, k, v), gen)


def test_flash_attention_with_fewer_kv_heads_gradients(monkeypatch):
    """GQA: k, v at 2 groups for 6 query heads give the same values and gradients (dk, dv
    summed over each group's heads) as plain attention with k, v repeated per head."""
    monkeypatch.setattr(torch_model, "TILE", 4)
    gen = torch.Generator().manual_seed(6)
    b, nh, g, s, d = 1, 6, 2, 9, 4
    q, k, v = _rand(b, nh, s, d, gen=gen), _rand(b, g, s, d, gen=gen), _rand(b, g, s, d, gen=gen)
    scale = d ** -0.5

    def plain(q, k, v):
        k, v = k.repeat_interleave(nh // g, 1), v.repeat_interleave(nh // g, 1)
        scores = (q @ k.transpose(-1, -2)) * scale
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)
        return torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v

    _same_grads(lambda q, k, v: torch_model.FlashAttention.apply(q, k, v, scale), plain, (q, k, v), gen)


def test_rope_kernel_gradients():
    """The fused rope kernel gives the unfused formula's values and input gradient."""
    gen = torch.Generator().manual_seed(7)
    b, s, heads, d = 2, 9, 3, 6
    x = _rand(b, s, heads, d, gen=gen)
    ang = torch.rand(s, 1, d, generator=gen, dtype=f64)
    cos, sin = ang.cos(), ang.sin()

    def plain(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    _same_grads(lambda x: torch_model.Rope.apply(x, cos, sin), plain, (x,), gen)


def test_flash_attention_refuses_dropout():
    t = TrainingConfig(seq_len=16, attention="flash", dropout=0.1)
    with pytest.raises(ValueError, match="dropout"):
        torch_model.build_layer("dense", load_preset("tiny"), t)


# --------------------------------------------------------------------------- recompute

POLICIES = [("full", "layer"), ("full", "sublayer"), ("selective", "layer")]


def _step(kind, t, dtype=torch.bfloat16, model=None):
    layer = torch_model.build_layer(kind, model or load_preset("tiny", router="sigmoid"), t, dtype)
    (x,) = torch_model.make_inputs(layer)
    torch.manual_seed(0)
    out = layer(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype))
    return out.detach(), x.grad, [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("attention,dropout", [("flash", 0.0), ("eager", 0.1)])
@pytest.mark.parametrize("recompute,granularity", POLICIES)
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_recompute_gives_the_same_step(kind, recompute, granularity, attention, dropout):
    base = dict(micro_batch_size=1, seq_len=64, attention=attention, dropout=dropout)
    ref = _step(kind, TrainingConfig(**base, recompute="none"))
    got = _step(kind, TrainingConfig(**base, recompute=recompute, recompute_granularity=granularity))
    assert torch.equal(ref[0], got[0]), "forward output differs"
    assert torch.equal(ref[1], got[1]), "input gradient differs"
    for a, b in zip(ref[2], got[2]):
        assert (a is None and b is None) or torch.equal(a, b), "a weight gradient differs"


GQA_MODELS = {"qwen3": {**layers.LLAMA, "qk_norm": True, "qkv_bias": True}, "mixtral": layers.MIXTRAL}


@pytest.mark.parametrize("attention,dropout", [("flash", 0.0), ("eager", 0.1)])
@pytest.mark.parametrize("recompute,granularity", POLICIES)
@pytest.mark.parametrize("name", sorted(GQA_MODELS))
def test_gqa_recompute_gives_the_same_step(name, recompute, granularity, attention, dropout):
    m = load_preset("tiny", **GQA_MODELS[name])
    kind = "moe" if m.routed_experts else "dense"
    base = dict(micro_batch_size=1, seq_len=32, attention=attention, dropout=dropout)
    ref = _step(kind, TrainingConfig(**base, recompute="none"), model=m)
    got = _step(kind, TrainingConfig(**base, recompute=recompute, recompute_granularity=granularity), model=m)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    for a, b in zip(ref[2], got[2]):
        assert (a is None and b is None) or torch.equal(a, b), "a weight gradient differs"


@pytest.mark.parametrize("name", ["mla", "llama", "mha", "qwen3", "mixtral"])
def test_layer_parameters_match_pipesim(name):
    """The harness layer's parameters (counted by torch) equal pipesim's layer_params: MLA + MoE
    (tiny), GQA and MHA dense, qkv biases and q/k norms, Mixtral-shaped MoE."""
    from pipesim.model.params import layer_params
    over = {"mla": {}, "llama": layers.LLAMA, "mha": {**layers.LLAMA, "kv_heads": 8}, **GQA_MODELS}[name]
    m = load_preset("tiny", **over)
    last = m.layers - 1
    layer = torch_model.build_layer("moe" if m.is_moe(last) else "dense", m, TrainingConfig(seq_len=16))
    assert sum(x.numel() for x in layer.parameters()) == sum(layer_params(m, last).values())


def test_gqa_layer_matches_plain_attention():
    """The harness's GQA sublayer (flash kernel, qk-norm, biases) computes what the textbook
    formula does: norm, projections with bias, per-head RMSNorm of q and k, rope, causal softmax
    over k, v repeated per group, W_O, residual (FP64)."""
    m = load_preset("tiny", **GQA_MODELS["qwen3"])
    t = TrainingConfig(micro_batch_size=2, seq_len=16, attention="flash")
    layer = torch_model.build_layer("dense", m, t, f64)
    a = layer.attention
    (x,) = torch_model.make_inputs(layer)

    def rms(z, w):
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + torch_model.EPS) * w

    def rope(z):
        z1, z2 = z.chunk(2, -1)
        return z * a.cos + torch.cat([-z2, z1], -1) * a.sin

    b, s, h = x.shape
    xn = rms(x, a.norm)
    q = rms((xn @ a.w_q.T + a.b_q).view(b, s, m.heads, m.head_dim), a.q_norm)
    k = rms((xn @ a.w_k.T + a.b_k).view(b, s, m.kv_heads, m.head_dim), a.k_norm)
    v = (xn @ a.w_v.T + a.b_v).view(b, s, m.kv_heads, m.head_dim)
    q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
    rep = m.heads // m.kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) / m.head_dim ** 0.5
    p = torch.softmax(scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")), -1)
    ctx = (p @ v).transpose(1, 2).reshape(b, s, -1)
    torch.testing.assert_close(a(x), x + ctx @ a.w_o.T)


# --------------------------------------------------------------------------- closed forms

class _Linear(torch.nn.Module):
    def __init__(self, k, dtype):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, k, dtype=dtype))

    def forward(self, x):
        return F.linear(x * 2, self.w)          # x·2 is allocated in F; the scalar product saves nothing


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,k", [(7, 5), (128, 256)])
def test_linear_saves_its_input(n, k, dtype):
    layer = _Linear(k, dtype)
    tensors, lost, _ = measure.saved_tensors(layer, (torch.randn(n, k, dtype=dtype),))
    assert not lost
    assert [(x.op, x.shape, x.nbytes) for x in tensors] == [("MmBackward0", (n, k), n * k * dtype.itemsize)]


def test_live_bytes_of_a_hand_built_sequence():
    u8 = torch.uint8
    with measure.LiveBytes() as t:
        a = torch.empty(1000, dtype=u8)           # live 1000
        b = torch.empty(3000, dtype=u8)           # 4000: the peak
        del a
        c = torch.empty(500, dtype=u8)            # 3500 (a swept before c is counted)
        view = b[:10]                             # a view: no new storage
        b.add_(1)                                 # in place: none
        d = c + 1                                 # 4000 again, with its input c alive
        del b, view
        e = torch.empty(2000, dtype=u8)           # 500 + 500 + 2000 = 3000
        assert (t.sweep(), t.peak) == (3000, 4000)
        del c, d, e
        assert t.sweep() == 0


class _Kernel(torch.autograd.Function):
    """A fused kernel with 4000 B of scratch and a 2000 B global buffer, returning 1000 B."""

    @staticmethod
    @torch_model.kernel
    def forward(ctx, x):
        scratch = torch.empty(4000, dtype=torch.uint8)
        del scratch
        buffer = torch.empty(2000, dtype=torch.uint8)
        torch_model.kernel_moment("_Kernel.forward")
        del buffer
        return torch.empty(1000, dtype=torch.uint8)


def test_live_bytes_count_a_fused_kernel_as_one_op():
    """Inside a kernel no peak is taken (its scratch stands for registers and shared memory),
    only at its kernel_moment and at its return."""
    x = torch.zeros(1)
    with measure.LiveBytes() as t:
        y = _Kernel.apply(x)
        assert (t.sweep(), t.peak, t.peak_op) == (1000, 2000, "_Kernel.forward")
    del y
    assert not torch_model.kernel_listeners


def test_live_bytes_exclude_given_storages():
    w = torch.zeros(100)
    with measure.LiveBytes(exclude={w.untyped_storage()._cdata}) as t:
        w.add_(1)
        y = torch.ones(10)
        assert t.sweep() == 40
    del y


@pytest.mark.parametrize("kind", ["dense", "moe", "head"])
def test_tracker_agrees_with_the_profiler(kind):
    """In FP32 without checkpoints every allocation is an op output, so the dispatch-mode
    tracker and the profiler's allocator events must give the same four numbers (bf16 GEMMs on
    CPU add packing scratch inside aten::mm that only the profiler sees)."""
    t = TrainingConfig(micro_batch_size=1, seq_len=64, attention="flash", recompute="none")
    r = measure.measure(kind, load_preset("tiny"), t, torch.float32, profiler=True)
    four = ("forward_peak", "forward_end", "backward_peak", "backward_end")
    assert [getattr(r.live, q) for q in four] == [getattr(r.profiler, q) for q in four]


CASES = layers.cases()


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_forward_end_is_saved_plus_output(case):
    """What is still live after F is exactly what autograd saved during F and the output."""
    m = layers.measured(case)
    assert not m.unreachable
    assert m.live.forward_end == m.stored_new + m.output_bytes


# --------------------------------------------------------------------------- pipesim against the harness

def _prediction(case):
    p = layers.predicted(case)
    if isinstance(p, str):
        pytest.fail(f"pipesim could not predict {case.label}: {p}")
    return p


def _within(measured, predicted, pct):
    return abs(predicted - measured) <= pct / 100 * measured


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_stored_per_layer(case):
    m, p = layers.measured(case), _prediction(case)
    assert _within(m.stored, p.stored, 2), f"measured {m.stored}, predicted {p.stored}"


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_stored_per_module(case):
    m, p = layers.measured(case), _prediction(case)
    bad = {x: (m.by_module.get(x, 0), p.by_module.get(x, 0)) for x in set(m.by_module) | set(p.by_module)
           if not _within(m.by_module.get(x, 0), p.by_module.get(x, 0), 5)}
    assert not bad, f"module: (measured, predicted) {bad}"


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_forward_peak(case):
    m, p = layers.measured(case), _prediction(case)
    assert _within(m.live.forward_peak, p.forward_peak, 10), \
        f"measured {m.live.forward_peak}, predicted stored + forward_transient {p.forward_peak}"


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_backward_peak(case):
    m, p = layers.measured(case), _prediction(case)
    assert _within(m.live.backward_peak, p.backward_peak, 10), \
        f"measured {m.live.backward_peak}, predicted recompute + backward_transient {p.backward_peak}"
