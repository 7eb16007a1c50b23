"""Measurement of one layer of ``torch_model``: the tensors autograd saves for backward, and the
bytes live during its forward and its backward. It measures; it predicts nothing.

Saved tensors (``saved_tensors``): the forward runs inside ``saved_tensors_hooks``; the pack hook
records every tensor autograd saves, with the pipesim module whose code is running
(``torch_model.current_module``) and the autograd node that saves it (its grad_fn name: the
node's sequence number is the thread's autograd counter minus one at pack time, resolved by a
walk of the finished graph; tensors a non-reentrant checkpoint keeps as its region's inputs are
labelled "checkpoint"). Under a checkpoint the inner saves go to the checkpoint's own hooks, so
only what the checkpoint really keeps is seen. Storages are deduplicated by
(data_ptr, nbytes); each counts once, in the module that saved it first, at its storage's full
size; parameters and buffers are excluded; the layer's own inputs (x, ids, targets) count, as
they are kept for backward.

Live bytes (``LiveBytes``): a TorchDispatchMode that records, after every aten op, each output
storage that is new (not an input's storage, not a parameter or gradient) with a weak
reference, and sweeps expired ones before every op; live bytes are the sum of tracked storages
still alive, the peak is taken after each op with its inputs still alive. Kernel-internal
scratch buffers (allocated inside one op and freed before it returns) are not seen, and the
harness's fused kernels (custom Functions, ``torch_model.kernel``) count as one op each: the
peak is taken when they return (and where they name a moment at which their global buffers
all live, ``torch_model.kernel_moment``), so their CPU scratch, which a GPU kernel keeps in
registers and shared memory, is not counted. The profiler cross-check
(``profiler_live_bytes``, torch.profiler with profile_memory=True, which sees every allocation
of PyTorch's CPU allocator) shows how much that is.

    from fidelity.measure import measure
    r = measure("moe", load_preset("tiny"), TrainingConfig(seq_len=128))
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fidelity import torch_model

__all__ = ["LiveBytes", "Live", "Measurement", "Saved", "live_bytes", "measure",
           "profiler_live_bytes", "saved_tensors"]

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
               torch.float64: "fp64", torch.int64: "int64", torch.int32: "int32",
               torch.bool: "bool", torch.uint8: "uint8"}


@dataclass(frozen=True)
class Saved:
    """One storage autograd keeps for backward."""

    module: str              # pipesim module that saved it first
    op: str                  # autograd node that saved it first (grad_fn name), or "checkpoint"
    shape: tuple[int, ...]   # shape of the tensor as saved (may be a view of the storage)
    dtype: str
    nbytes: int              # bytes of the whole storage (what it costs)
    view_nbytes: int         # bytes of the saved view itself
    preexisting: bool        # allocated before the forward (the layer's inputs)
    also: tuple[str, ...] = ()   # other "module:op" that save the same storage


@dataclass(frozen=True)
class Live:
    """Live bytes of one forward + backward (parameters and their gradients excluded)."""

    forward_peak: int        # max during F of bytes allocated since F began and still live
    forward_end: int         # of those, still live when F ends
    backward_peak: int       # max during B of live bytes minus those at B's start
    backward_end: int        # live bytes when B ends minus those at B's start
    forward_peak_op: str = ""
    backward_peak_op: str = ""
    # (op, shape, dtype, bytes, is a weight gradient) of the storages allocated in B alive at its peak
    backward_peak_new: tuple[tuple, ...] = ()


@dataclass(frozen=True)
class Measurement:
    kind: str
    tensors: tuple[Saved, ...]
    by_module: dict[str, int]
    stored: int              # Σ saved storages (incl. the layer's inputs)
    stored_new: int          # Σ saved storages allocated during F
    output_bytes: int        # the layer output's storage
    live: Live
    profiler: Live | None = None
    unreachable: tuple[Saved, ...] = field(default=())   # packed by nodes no longer in the graph


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


def _fixed_ptrs(layer: torch.nn.Module) -> set[int]:
    """Data pointers of the parameters, their gradients and the buffers."""
    out = set()
    for t in list(layer.parameters()) + list(layer.buffers()):
        out.add(t.untyped_storage().data_ptr())
        if t.grad is not None:
            out.add(t.grad.untyped_storage().data_ptr())
    return out


def _fixed_cdata(layer: torch.nn.Module) -> set[int]:
    out = set()
    for t in list(layer.parameters()) + list(layer.buffers()):
        out.add(t.untyped_storage()._cdata)
        if t.grad is not None:
            out.add(t.grad.untyped_storage()._cdata)
    return out


def _node_names(roots) -> dict[int, str]:
    """sequence number → name of every autograd node reachable from ``roots``."""
    names, seen, stack = {}, set(), [r for r in roots if r is not None]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        names[n._sequence_nr()] = n.name()
        stack.extend(f for f, _ in n.next_functions if f is not None)
    return names


def _in_checkpoint_save() -> bool:
    """Whether the pack hook was called by a non-reentrant checkpoint saving its inputs."""
    f = sys._getframe(2)
    for _ in range(3):
        if f is None:
            return False
        if f.f_code.co_name == "save_inputs" and "checkpoint" in f.f_code.co_filename:
            return True
        f = f.f_back
    return False


def saved_tensors(layer: torch.nn.Module, inputs, seed: int = 0) -> tuple[list[Saved], list[Saved], torch.Tensor]:
    """(saved storages, those saved by nodes the finished graph no longer holds, output) of one
    forward of ``layer`` on ``inputs``."""
    fixed = _fixed_ptrs(layer)
    pre = {t.untyped_storage().data_ptr() for t in inputs}
    packs = []

    def pack(t):
        op = "checkpoint" if _in_checkpoint_save() else torch._C._autograd._get_sequence_nr() - 1
        packs.append((t, op, torch_model.current_module() or "?"))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.manual_seed(seed)
        out = layer(*inputs)
    names = _node_names([out.grad_fn])
    first: dict[tuple[int, int], dict] = {}
    lost: dict[tuple[int, int], dict] = {}
    for t, op, module in packs:
        key = _storage_key(t)
        if key[0] in fixed or key[1] == 0:
            continue
        reachable = op == "checkpoint" or op in names
        label = op if op == "checkpoint" else names.get(op, f"node#{op}")
        target = first if reachable else lost
        if key in target:
            target[key]["also"].append(f"{module}:{label}")
            continue
        target[key] = dict(module=module, op=label, shape=tuple(t.shape), dtype=DTYPE_NAMES.get(t.dtype, str(t.dtype)),
                           nbytes=key[1], view_nbytes=t.numel() * t.element_size(),
                           preexisting=key[0] in pre, also=[])
    packs.clear()

    def freeze(d):
        return [Saved(**{**r, "also": tuple(r["also"])}) for r in d.values()]

    return freeze(first), freeze(lost), out


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages allocated by aten ops while the mode is active and still alive.

    ``bytes`` is the current total, ``peak`` its maximum since the last ``reset_peak`` (taken
    after each op, its inputs still alive), ``peak_op`` the op at that moment and, after a
    ``reset_peak``, ``peak_new`` the storages allocated since the reset that were alive then, as (op, shape, dtype, bytes,
    allocation number; see ``allocation``).
    Inside a fused kernel (``torch_model.in_kernel``) no peak is taken: the kernel's scratch lives
    in registers and shared memory on a GPU; the peak is taken when the kernel returns, with its
    outputs and its inputs alive (the op is then named by the kernel, e.g. "SwiGLU.backward").
    Outputs that share an input's storage (views, in-place ops, gradient accumulation into
    ``.grad``) and storages in ``exclude`` (``_cdata`` of parameters and gradients) are not new
    allocations and are not counted.
    """

    def __init__(self, exclude=()):
        super().__init__()
        self.exclude = set(exclude)
        self._live: dict[int, tuple[StorageWeakRef, int, tuple, int]] = {}
        self._count = self._mark = 0
        self.bytes = self.peak = 0
        self.peak_op = ""
        self.peak_new: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.sweep()
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            c, n = st._cdata, st.nbytes()
            if n == 0 or c in inputs or c in self.exclude or c in self._live:
                continue
            info = (str(func), tuple(t.shape), DTYPE_NAMES.get(t.dtype, str(t.dtype)), n, self._count)
            self._live[c] = (StorageWeakRef(st), n, info, self._count)
            self._count += 1
            self.bytes += n
        if not torch_model.in_kernel():     # inside a fused kernel: at the kernel's return
            self._update_peak(str(func))
        return out

    def _update_peak(self, op: str) -> None:
        if self.bytes > self.peak:
            self.peak, self.peak_op = self.bytes, op
            if self._mark:                  # composition only after a reset (the backward's)
                self.peak_new = [info for _, _, info, i in self._live.values() if i >= self._mark]

    def _kernel_returned(self, name: str) -> None:
        """A fused kernel returned: its scratch is freed, its outputs and inputs alive."""
        self.sweep()
        self._update_peak(name)

    def __enter__(self):
        torch_model.kernel_listeners.append(self._kernel_returned)
        return super().__enter__()

    def __exit__(self, *exc):
        torch_model.kernel_listeners.remove(self._kernel_returned)
        return super().__exit__(*exc)

    def allocation(self, t: torch.Tensor) -> int | None:
        """The allocation number of t's storage while it is tracked (unique within the mode)."""
        entry = self._live.get(t.untyped_storage()._cdata)
        return None if entry is None else entry[3]

    def sweep(self) -> int:
        """Forget the storages that have been freed; the live bytes."""
        dead = [c for c, (ref, *_) in self._live.items() if ref.expired()]
        for c in dead:
            self.bytes -= self._live.pop(c)[1]
        return self.bytes

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.sweep()
        self.peak, self.peak_op, self.peak_new, self._mark = self.bytes, "", [], self._count


def _grad_output(out: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    return torch.randn(out.shape, generator=g).to(out.dtype)


def live_bytes(layer: torch.nn.Module, inputs, seed: int = 0) -> Live:
    """Live bytes of one forward and backward of ``layer`` by ``LiveBytes``."""
    gc.collect()
    tracker = LiveBytes(_fixed_cdata(layer))
    with tracker:
        torch.manual_seed(seed)
        out = layer(*inputs)
        fwd_end, fwd_peak, fwd_op = tracker.sweep(), tracker.peak, tracker.peak_op
        grad = _grad_output(out, seed)
        tracker.reset_peak()
        start = tracker.bytes
        wgrads: set[int] = set()        # the weight gradients autograd hands to AccumulateGrad
        hooks = [p.register_hook(lambda g: wgrads.add(tracker.allocation(g))) for p in layer.parameters()]
        try:
            out.backward(grad)
        finally:
            for h in hooks:
                h.remove()
        end = tracker.sweep()
    new = tuple((*x[:4], x[4] in wgrads) for x in tracker.peak_new)
    return Live(fwd_peak, fwd_end, tracker.peak - start, end - start, fwd_op, tracker.peak_op, new)


def profiler_live_bytes(layer: torch.nn.Module, inputs, seed: int = 0) -> Live:
    """The same quantities from torch.profiler's memory events (every allocation and free of
    PyTorch's CPU allocator, in time order) inside record_function ranges around F and B."""
    from torch.profiler import ProfilerActivity, profile, record_function

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("fidelity.forward"):
            torch.manual_seed(seed)
            out = layer(*inputs)
        grad = _grad_output(out, seed)
        with record_function("fidelity.backward"):
            out.backward(grad)
    events = prof.profiler.kineto_results.events()
    spans = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("fidelity.")}
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    result = {}
    for name, (a, b) in spans.items():
        cum = peak = 0
        for t, n in mem:
            if a <= t <= b:
                cum += n
                peak = max(peak, cum)
        result[name] = (peak, cum)
    (fp, fe), (bp, be) = result["fidelity.forward"], result["fidelity.backward"]
    return Live(fp, fe, bp, be)


def _warm_up(layer: torch.nn.Module, seed: int) -> None:
    """One forward and backward so that every parameter's .grad exists (measured steps then
    accumulate into them in place, as gradient accumulation does)."""
    inputs = torch_model.make_inputs(layer, seed)
    torch.manual_seed(seed)
    out = layer(*inputs)
    out.backward(_grad_output(out, seed))
    for p in layer.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def measure(kind: str, m, t, dtype: torch.dtype = torch.bfloat16, seed: int = 0, *,
            profiler: bool = False, attention_impl: str = "kernel") -> Measurement:
    """Saved tensors and live bytes of one layer of ``kind`` (batch and sequence from ``t``)."""
    layer = torch_model.build_layer(kind, m, t, dtype, seed, attention_impl)
    _warm_up(layer, seed)
    tensors, lost, out = saved_tensors(layer, torch_model.make_inputs(layer, seed), seed)
    output_bytes = out.untyped_storage().nbytes()
    del out
    by_module: dict[str, int] = {}
    for x in tensors:
        by_module[x.module] = by_module.get(x.module, 0) + x.nbytes
    live = live_bytes(layer, torch_model.make_inputs(layer, seed), seed)
    prof = profiler_live_bytes(layer, torch_model.make_inputs(layer, seed), seed) if profiler else None
    return Measurement(kind, tuple(tensors), by_module, sum(x.nbytes for x in tensors),
                       sum(x.nbytes for x in tensors if not x.preexisting), output_bytes, live, prof,
                       tuple(lost))
