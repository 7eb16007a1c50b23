"""What one pipeline rank records over a step: the bytes autograd holds for backward, level by
level, and the pipeline action (F, B, I, W of a micro-batch on a stage) running at each moment.

Saved bytes (``SavedBytes``): inside ``saved_tensors_hooks``, every tensor autograd saves is
wrapped in a small ``_Held`` handle; the handle counts its storage in while it lives and out
when autograd drops it (a node's saved variables are released after the node runs in a
backward without ``retain_graph``, or when the graph is freed). A storage counts once, at its
full size, while any handle holds it (views of one storage are one allocation); parameters and
buffers are not activations and are not counted. The step's own input batch (token ids,
targets) is split by torch into micro-batch *views* of one tensor: for those storages a saved
view counts its own bytes, so a micro-batch's ids cost what they would as their own tensor.

Counting handles rather than storages matters in a pipeline: torch.distributed.pipelining
receives a stage's input into a buffer it keeps for the whole step, so the storage outlives the
activations; it is an activation exactly while autograd holds it.

Gradients kept for W: a split backward (torch's I, ``backward_one_chunk(full_backward=False)``)
keeps, until its W, the output gradient of every node where a weight joins the graph
(``stage.backward_state[mb]``'s parameter groups). pipesim counts the matmuls' share of these in
``activations`` (``w_grad_outputs``), so they are counted here too, from the I's end to the W's
end (``SavedBytes.hold`` / ``drop``), storages not already counted.

Actions (``Recorder``): the stage's ``forward_one_chunk`` / ``backward_one_chunk`` /
``backward_weight_one_chunk`` are wrapped on the stage objects, so every schedule (the
single-stage ones drive the stage directly, the runtime ones through ``_perform_action``) is
seen the same way; the schedule's ``loss_fn`` runs right after the last stage's forward and is
folded into that F. Each action keeps its start and end (``time.perf_counter_ns``, one
monotonic clock for all processes of the machine), and the saved bytes before, at its highest
and after.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

__all__ = ["Action", "Recorder", "SavedBytes"]


class _Held:
    """One saved tensor as autograd keeps it; counts its bytes out when autograd drops it."""

    __slots__ = ("tensor", "key", "owner")

    def __init__(self, tensor, key, owner):
        self.tensor, self.key, self.owner = tensor, key, owner

    def __del__(self):
        self.owner._release(self.key)


class SavedBytes:
    """Bytes of the storages autograd holds for backward, with a log of every change.

    ``exclude``: storages never counted (parameters, buffers); ``view_only``: storages whose
    saved views count their own bytes (the step's input batch, split into micro-batch views).
    ``level`` is the current total, ``high`` the highest since ``reset_high``; ``log`` holds
    ``(perf_counter_ns, level)`` after every change while ``logging`` is on.
    """

    def __init__(self, exclude=(), view_only=()):
        self.exclude = {_cdata(t) for t in exclude}
        self.view_only = {_cdata(t) for t in view_only}
        self._count: dict = {}       # key -> [handles, bytes]
        self.level = self.high = 0
        self.log: list[tuple[int, int]] = []
        self.logging = False

    @contextmanager
    def hooks(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield self

    def _pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        c, n = st._cdata, st.nbytes()
        if n == 0 or c in self.exclude:
            return t
        if c in self.view_only:
            key, n = (c, t.storage_offset(), tuple(t.shape)), t.numel() * t.element_size()
        else:
            key = c
        entry = self._count.get(key)
        if entry is None:
            self._count[key] = [1, n]
            self._change(n)
        else:
            entry[0] += 1
        # detached: a saved output holding its own grad_fn would make node → handle → tensor →
        # node a cycle of C++ nodes that nothing frees (autograd itself saves outputs without it)
        return _Held(t.detach(), key, self)

    def _release(self, key) -> None:
        entry = self._count[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._count[key]
            self._change(-entry[1])

    def _change(self, delta: int) -> None:
        self.level += delta
        self.high = max(self.high, self.level)
        if self.logging:
            self.log.append((time.perf_counter_ns(), self.level))

    def reset_high(self) -> None:
        self.high = self.level

    def hold(self, key, tensors) -> int:
        """Count ``tensors`` (storages once, not already counted) under ``key`` until ``drop``;
        their bytes."""
        seen, n = set(), 0
        for t in tensors:
            st = t.untyped_storage()
            c = st._cdata
            if c in seen or c in self.exclude or c in self._count:
                continue
            seen.add(c)
            n += st.nbytes()
        self._count[("held", key)] = [1, n]
        self._change(n)
        return n

    def drop(self, key) -> None:
        entry = self._count.pop(("held", key), None)
        if entry is not None:
            self._change(-entry[1])


def _unpack(packed):
    return packed.tensor if isinstance(packed, _Held) else packed


def _cdata(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@dataclass
class Action:
    """One pipeline action as it ran: kind F, B (full backward), I (input-gradient backward) or
    W (weight-gradient backward), its micro-batch and model stage, times in ns, and the saved
    bytes before it, at its highest and after it."""

    kind: str
    mb: int
    stage: int
    start_ns: int
    end_ns: int
    before: int
    high: int
    after: int

    def token(self) -> str:
        """Torch's action token: stage, kind, micro-batch (``3F0``, ``7I2``)."""
        return f"{self.stage}{self.kind}{self.mb}"


def _pending_grads(stage, mb: int) -> list:
    """The gradients an input-gradient backward keeps for the weight-gradient one: torch's
    ``stage_backward_input`` stores, per parameter group, the output gradients of the nodes
    where the weights join (``param_groups[i]["grads"]``) in ``stage.backward_state[mb]``."""
    state = getattr(stage, "backward_state", {}).get(mb)
    if state is None or state[1] is None:
        return []
    out = []
    for group in state[1]:
        for grads in group.get("grads") or ():
            out.extend(g for g in (grads or ()) if isinstance(g, torch.Tensor))
    return out


class Recorder:
    """The actions of one rank, recorded by wrapping its stages' entry points."""

    def __init__(self, saved: SavedBytes):
        self.saved = saved
        self.actions: list[Action] = []
        self.recording = False

    @contextmanager
    def _action(self, kind: str, mb: int, stage: int, resume: bool = False):
        if not self.recording:
            yield
            return
        s = self.saved
        prev = self.actions[-1] if resume else None
        if resume and (prev is None or prev.kind != "F" or prev.stage != stage):
            raise RuntimeError(f"loss of stage {stage} outside its forward (last action {prev})")
        start, before = time.perf_counter_ns(), s.level
        s.reset_high()
        try:
            yield
        finally:
            end = time.perf_counter_ns()
            if prev is None:
                self.actions.append(Action(kind, mb, stage, start, end, before, s.high, s.level))
            else:
                prev.end_ns, prev.high, prev.after = end, max(prev.high, s.high), s.level

    def wrap(self, stage) -> None:
        """Record every forward, backward and weight-gradient call of a ``PipelineStage``."""
        idx = stage.stage_index
        fwd, bwd, bww = stage.forward_one_chunk, stage.backward_one_chunk, stage.backward_weight_one_chunk

        def forward_one_chunk(fwd_chunk_id, *args, **kwargs):
            with self._action("F", fwd_chunk_id, idx):
                return fwd(fwd_chunk_id, *args, **kwargs)

        def backward_one_chunk(bwd_chunk_id, loss=None, full_backward=True, last_backward=False):
            with self._action("B" if full_backward else "I", bwd_chunk_id, idx):
                out = bwd(bwd_chunk_id, loss=loss, full_backward=full_backward, last_backward=last_backward)
                if not full_backward and self.recording:
                    self.saved.hold((idx, bwd_chunk_id), _pending_grads(stage, bwd_chunk_id))
                return out

        def backward_weight_one_chunk(bwd_chunk_id, last_backward=False):
            with self._action("W", bwd_chunk_id, idx):
                out = bww(bwd_chunk_id, last_backward=last_backward)
                self.saved.drop((idx, bwd_chunk_id))
                return out

        stage.forward_one_chunk = forward_one_chunk
        stage.backward_one_chunk = backward_one_chunk
        stage.backward_weight_one_chunk = backward_weight_one_chunk

    def loss_fn(self, stage_index: int, fn):
        """``fn(output, target)`` as part of the F that produced ``output`` on ``stage_index``."""
        def loss(output, target):
            with self._action("F", -1, stage_index, resume=True):
                return fn(output, target)
        return loss

    def as_dicts(self) -> list[dict]:
        return [asdict(a) for a in self.actions]
