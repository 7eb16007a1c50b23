"""Fidelity of pipesim's activation model, layer by layer: for a grid of cases, the bytes the
PyTorch harness measures (``measure``) beside those ``pipesim.model.activations`` predicts, per
module, in total, and for the forward and backward peaks.

Compared (tolerance): stored bytes per module (5%) and per layer (2%); forward_peak against
predicted stored + forward_transient, backward_peak against predicted recompute +
backward_transient (10%). Error % = (predicted − measured) / measured.

The grid: a base case (tiny preset, bf16, b=1, s=128, flash attention, no dropout, no
recompute, fused SwiGLU, combine "output", unfused permutation, sigmoid router, FP32
cross-entropy, no gradient-accumulation fusion) and one variation at a time, each for the layer kinds it applies to;
then grouped-query attention cases on a Llama-shaped dense layer and a Mixtral-shaped MoE one
(``LLAMA``, ``MIXTRAL``): MHA, Qwen2's q/k/v biases, Qwen3's q/k norms, recompute policies.

    python benchmarks/fidelity/layers.py [--tensors] [--cross-check] [--sdpa] [--only NAME ...]

writes benchmarks/results/fidelity_layers.csv and .md. --tensors prints every saved tensor of
every case first; --cross-check adds the profiler's live bytes beside the tracker's; --sdpa
measures flash attention through ``F.scaled_dot_product_attention`` instead of the harness's
kernel (on CPU that is the math fallback for MLA's head dims).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # benchmarks/, for ``fidelity``

import torch                                                    # noqa: E402

from fidelity import measure as harness                         # noqa: E402
from fidelity.torch_model import MODULES                        # noqa: E402
from pipesim.model import load_preset                           # noqa: E402
from pipesim.model.config import DTypes, ModelConfig, ParallelConfig, TrainingConfig   # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
TOLERANCE_PCT = {"module": 5.0, "stored": 2.0, "forward_peak": 10.0, "backward_peak": 10.0}
DTYPES = {"bf16": (torch.bfloat16, 2), "fp32": (torch.float32, 4)}

# te_wgrad_placeholders=False: the harness does not fuse weight-gradient accumulation, so
# autograd materialises every weight gradient before adding it to .grad (see README.md)
BASE_TRAINING = dict(micro_batch_size=1, seq_len=128, attention="flash", dropout=0.0,
                     recompute="none", recompute_granularity="layer", swiglu_fusion=True,
                     moe_combine="output", moe_permute_fusion=False, cross_entropy="fp32",
                     te_wgrad_placeholders=False)
BASE_MODEL = dict(router="sigmoid")
LAYERS = ("dense", "moe")
ALL = ("dense", "moe", "head", "embedding")
# Grouped-query attention on the tiny preset's width: a Llama-shaped dense-only model (8 query
# heads in 2 kv groups of d = 32, no experts) and a Mixtral-shaped MoE one (top-2 of 8 routed
# experts, softmax router, no shared expert)
LLAMA = dict(attention="gqa", q_compress=0, kv_compress=0, rope_head_dim=0, heads=8, kv_heads=2,
             head_dim=32, routed_experts=0, shared_experts=0, experts_per_token=0, dense_layers=6)
MIXTRAL = {**LLAMA, "routed_experts": 8, "experts_per_token": 2, "dense_layers": 0, "router": "softmax"}
SELECTIVE = {"recompute": "selective", "keep": ("deepseek-v3",)}
# name, layer kinds, TrainingConfig overrides, ModelConfig overrides, dtype
VARIANTS = (
    ("base", ALL, {}, {}, "bf16"),
    ("eager", LAYERS, {"attention": "eager"}, {}, "bf16"),
    ("dropout", LAYERS, {"attention": "eager", "dropout": 0.1}, {}, "bf16"),
    # s = 256: the s×s scores and probabilities set the forward peak (the scale and mask in place)
    ("eager-s256", ("dense",), {"attention": "eager", "seq_len": 256}, {}, "bf16"),
    ("fp32", ALL, {}, {}, "fp32"),
    ("b2", ALL, {"micro_batch_size": 2}, {}, "bf16"),
    ("s256", ALL, {"seq_len": 256}, {}, "bf16"),
    ("full-layer", LAYERS, {"recompute": "full"}, {}, "bf16"),
    ("full-sublayer", LAYERS, {"recompute": "full", "recompute_granularity": "sublayer"}, {}, "bf16"),
    ("selective", LAYERS, SELECTIVE, {}, "bf16"),
    ("swiglu-eager", LAYERS, {"swiglu_fusion": False}, {}, "bf16"),
    ("combine-activation", ("moe",), {"moe_combine": "activation"}, {}, "bf16"),
    ("permute-fusion", ("moe",), {"moe_permute_fusion": True}, {}, "bf16"),
    ("router-softmax", ("moe",), {}, {"router": "softmax"}, "bf16"),
    ("q-compress-0", LAYERS, {}, {"q_compress": 0}, "bf16"),
    ("shared-0", ("moe",), {}, {"shared_experts": 0}, "bf16"),
    ("ce-fused", ("head",), {"cross_entropy": "fused"}, {}, "bf16"),
    ("gqa", ("dense",), {}, LLAMA, "bf16"),
    ("gqa-eager", ("dense",), {"attention": "eager"}, LLAMA, "bf16"),
    ("gqa-dropout", ("dense",), {"attention": "eager", "dropout": 0.1}, LLAMA, "bf16"),
    ("gqa-eager-s256", ("dense",), {"attention": "eager", "seq_len": 256}, LLAMA, "bf16"),
    ("gqa-fp32", ("dense",), {}, LLAMA, "fp32"),
    ("gqa-full-layer", ("dense",), {"recompute": "full"}, LLAMA, "bf16"),
    ("gqa-full-sublayer", ("dense",), {"recompute": "full", "recompute_granularity": "sublayer"}, LLAMA, "bf16"),
    ("gqa-selective", ("dense",), SELECTIVE, LLAMA, "bf16"),
    ("mha", ("dense",), {}, {**LLAMA, "kv_heads": 8}, "bf16"),
    ("mha-eager", ("dense",), {"attention": "eager"}, {**LLAMA, "kv_heads": 8}, "bf16"),
    ("qwen2-qkv-bias", ("dense",), {}, {**LLAMA, "qkv_bias": True}, "bf16"),
    ("qwen3-qk-norm", ("dense",), {}, {**LLAMA, "qk_norm": True}, "bf16"),
    ("qwen3-selective", ("dense",), SELECTIVE, {**LLAMA, "qk_norm": True}, "bf16"),
    # s = 512 and a narrow FFN: the attention kernel's backward (FlashAttention-2's dK, dV per
    # query head) is the layer's backward peak
    ("gqa-attn-peak", ("dense",), {"seq_len": 512}, {**LLAMA, "dense_ffn_hidden": 64}, "bf16"),
    # 16 heads of 64 (n_h·d = 4h) and a narrow FFN: rope's q, k (fused kernel) set the forward
    # peak, FlashAttention-2's per-query-head dK, dV the backward one
    ("gqa-wide", ("dense",), {"seq_len": 256}, {**LLAMA, "heads": 16, "head_dim": 64, "dense_ffn_hidden": 64}, "bf16"),
    ("mixtral", ("moe",), {}, MIXTRAL, "bf16"),
    ("mixtral-selective", ("moe",), SELECTIVE, MIXTRAL, "bf16"),
)


@dataclass(frozen=True, eq=False)
class Case:
    """One measured layer: a grid variant for one layer kind."""

    name: str
    kind: str
    model: ModelConfig
    training: TrainingConfig        # what pipesim predicts from
    harness: object                 # what the harness reads (the same fields; see _training)
    dtype: str                      # bf16 | fp32

    @property
    def label(self) -> str:
        return f"{self.name}/{self.kind}"


def _training(overrides: dict, width: int) -> tuple[TrainingConfig, object]:
    """pipesim's TrainingConfig for the case, and the object the harness reads: the same config,
    or, while pipesim lacks one of the fields, a namespace holding all of them."""
    kw = {**BASE_TRAINING, **overrides}
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    t = TrainingConfig(**{k: v for k, v in kw.items() if k in known},
                       dtypes=DTypes(weights=width, activations=width))
    return t, (t if set(kw) <= known else types.SimpleNamespace(**kw))


def cases(names=None) -> list[Case]:
    """The grid, in VARIANTS order (only the variants in ``names`` when given)."""
    out = []
    known_model = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, kinds, t_over, m_over, dtype in VARIANTS:
        if names and name not in names:
            continue
        m = load_preset("tiny", **{k: v for k, v in {**BASE_MODEL, **m_over}.items() if k in known_model})
        t, h = _training(t_over, DTYPES[dtype][1])
        out += [Case(name, kind, m, t, h, dtype) for kind in kinds]
    return out


_MEASURED: dict[tuple[str, bool, str], harness.Measurement] = {}


def measured(case: Case, profiler: bool = False, attention_impl: str = "kernel") -> harness.Measurement:
    """The harness's measurement of ``case`` (cached by label: tests and the table share it)."""
    key = (case.label, profiler, attention_impl)
    if key not in _MEASURED:
        _MEASURED[key] = harness.measure(case.kind, case.model, case.harness, DTYPES[case.dtype][0],
                                         profiler=profiler, attention_impl=attention_impl)
    return _MEASURED[key]


@dataclass(frozen=True)
class Prediction:
    by_module: dict[str, int]
    stored: int
    forward_peak: int               # stored + forward_transient
    backward_peak: int              # recompute + backward_transient


def predicted(case: Case) -> Prediction | str:
    """pipesim's prediction for ``case``, or the error it raised (the model is being rewritten)."""
    try:
        from pipesim.model.activations import layer_activations
        la = layer_activations(case.model, ParallelConfig(), case.training, case.kind)
    except Exception as e:                              # noqa: BLE001 - reported in the table
        return f"{type(e).__name__}: {e}"
    return Prediction(dict(la.stored_by_module), la.stored, la.stored + la.forward_transient,
                      la.recompute + la.backward_transient)


@dataclass(frozen=True)
class Row:
    case: str
    kind: str
    module: str                     # a pipesim module, or stored | forward_peak | backward_peak
    measured: int
    predicted: int | None
    tolerance_pct: float

    @property
    def error_pct(self) -> float | None:
        if self.predicted is None:
            return None
        if self.measured == 0:
            return 0.0 if self.predicted == 0 else math.inf
        return 100.0 * (self.predicted - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        e = self.error_pct
        return e is not None and abs(e) <= self.tolerance_pct


def rows(case: Case, m: harness.Measurement, p: Prediction | str) -> list[Row]:
    """The compared quantities of one case: each module, the layer total, the two peaks."""
    p = p if isinstance(p, Prediction) else None
    modules = [x for x in MODULES if x in m.by_module or (p and x in p.by_module)]
    modules += sorted(set(m.by_module) - set(modules))
    out = [Row(case.name, case.kind, x, m.by_module.get(x, 0), p and p.by_module.get(x, 0),
               TOLERANCE_PCT["module"]) for x in modules]
    for q, value in (("stored", m.stored), ("forward_peak", m.live.forward_peak),
                     ("backward_peak", m.live.backward_peak)):
        out.append(Row(case.name, case.kind, q, value, p and getattr(p, q), TOLERANCE_PCT[q]))
    return out


HEADER = ("case", "kind", "module", "measured_bytes", "predicted_bytes", "error_pct", "tolerance_pct", "ok")


def _cells(r: Row) -> tuple[str, ...]:
    e = r.error_pct
    return (r.case, r.kind, r.module, str(r.measured), "n/a" if r.predicted is None else str(r.predicted),
            "n/a" if e is None else f"{e:+.1f}", f"{r.tolerance_pct:g}", "yes" if r.ok else "NO")


def table(all_rows: list[Row]) -> str:
    cells = [HEADER] + [_cells(r) for r in all_rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells)


def markdown(all_rows: list[Row], errors: dict[str, str]) -> str:
    lines = ["# Fidelity of the activation model, per layer", "",
             "Measured by `benchmarks/fidelity` (PyTorch autograd on CPU), predicted by "
             "`pipesim.model.activations.layer_activations`. Error % = (predicted − measured) / measured.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in all_rows]
    if errors:
        lines += ["", "Prediction errors:", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def tensor_listing(case: Case, m: harness.Measurement) -> str:
    """Every saved storage of ``case``: module, op, shape, dtype, bytes, and notes."""
    t = case.harness
    head = (f"== {case.label}: {case.dtype}, b={t.micro_batch_size}, s={t.seq_len}, "
            f"router={getattr(case.model, 'router', '?')}, d_cq={case.model.q_compress}, "
            f"N_s={case.model.shared_experts}, " +
            ", ".join(f"{k}={getattr(t, k, None)}" for k in BASE_TRAINING if k not in ("micro_batch_size", "seq_len")))
    lines = [head, f"   {'module':9s} {'op':26s} {'shape':18s} {'dtype':6s} {'bytes':>9s}  notes"]
    for x in m.tensors:
        notes = []
        if x.preexisting:
            notes.append("layer input (allocated before F)")
        if x.view_nbytes != x.nbytes:
            notes.append(f"saved as a view of {x.view_nbytes} B; storage counted")
        if x.also:
            notes.append("also saved by " + ", ".join(x.also))
        lines.append(f"   {x.module:9s} {x.op:26s} {str(list(x.shape)):18s} {x.dtype:6s} {x.nbytes:9d}  {'; '.join(notes)}")
    for x in m.unreachable:
        lines.append(f"   (freed in F) {x.module} {x.op} {list(x.shape)} {x.dtype} {x.nbytes}")
    lines.append("   by module: " + ", ".join(f"{k} {v}" for k, v in m.by_module.items())
                 + f"; stored {m.stored} (allocated in F {m.stored_new}); output {m.output_bytes}")
    lv = m.live
    lines.append(f"   live: forward_peak {lv.forward_peak} (at {lv.forward_peak_op}), forward_end {lv.forward_end}"
                 f" (saved in F + output = {m.stored_new + m.output_bytes}), backward_peak {lv.backward_peak}"
                 f" (at {lv.backward_peak_op}), backward_end {lv.backward_end}")
    if lv.backward_peak_new:
        alive = sum(x[3] for x in lv.backward_peak_new)
        wgrad = sum(x[3] for x in lv.backward_peak_new if x[4])
        lines.append(f"   backward peak = {alive} allocated in B and alive (of which weight gradients: {wgrad})"
                     f" - {alive - lv.backward_peak} of F's tensors already freed; largest allocated in B:")
        for op, shp, dt, n, w in sorted(lv.backward_peak_new, key=lambda x: -x[3])[:6]:
            note = "  weight gradient (before AccumulateGrad adds it to .grad)" if w else ""
            lines.append(f"      {op:34s} {str(list(shp)):18s} {dt:6s} {n:9d}{note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", action="store_true", help="print every saved tensor of every case")
    ap.add_argument("--cross-check", action="store_true", help="also measure live bytes with torch.profiler")
    ap.add_argument("--sdpa", action="store_true", help="flash attention through F.scaled_dot_product_attention")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = ap.parse_args(argv)
    impl = "sdpa" if args.sdpa else "kernel"
    all_rows, errors, checks = [], {}, []
    for case in cases(args.only):
        m = measured(case, args.cross_check, impl)
        p = predicted(case)
        if isinstance(p, str):
            errors[case.label] = p
        if args.tensors:
            print(tensor_listing(case, m), end="\n\n")
        all_rows += rows(case, m, p)
        if args.cross_check:
            checks.append((case.label, m.live, m.profiler))
    print(table(all_rows))
    if errors:
        print("\nprediction errors:\n" + "\n".join(f"  {k}: {v}" for k, v in errors.items()))
    if checks:
        print("\nlive bytes, tracker vs profiler:")
        for label, a, b in checks:
            cells = [f"{q} {getattr(a, q)} / {getattr(b, q)}" for q in ("forward_peak", "forward_end", "backward_peak", "backward_end")]
            print(f"  {label:28s} " + "  ".join(cells))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(_cells(r) for r in all_rows)
    write_atomic(RESULTS / "fidelity_layers.csv", buf.getvalue())
    write_atomic(RESULTS / "fidelity_layers.md", markdown(all_rows, errors))
    print(f"\nwrote {RESULTS / 'fidelity_layers.csv'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
