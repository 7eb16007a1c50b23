"""What a scenario may ask for: the range of every number, and how much work one step may be.

``pipesim.scenario`` applies these at the edge, before any schedule is built, so a NaN, an
integer that 64-bit arithmetic would wrap, or a step too large to simulate is refused at once
with the key at fault and what to reduce, instead of a wrong answer or a hang.

- Every float must be finite (TOML allows ``nan`` and ``inf``) and every integer within
  ``±INT_LIMIT`` (2**53: exact in int64 and float64 alike); then each field has its own range
  (``RANGES``; the model's and the training recipe's own ranges are checked by
  ``pipesim.model``'s ``validate`` methods).
- Work: at most ``schedules.MAX_ATOMS`` atoms (F, B, W) and ``MAX_RECORDS`` memory-ledger
  records, both estimated from above from pp, micro-batches, chunks and layers
  (``records_estimate``).
- Results: one rank's memory, bounded from above (``bytes_estimate``), below ``MAX_BYTES``, and
  the step, bounded from above (``step_estimate``), below ``MAX_STEP_S`` simulated seconds.

    python -m pipesim validate scenarios/tiny.toml --set training.microbatches=1000000000
"""
from __future__ import annotations

import math

INT_LIMIT = 2 ** 53          # |integer| at most this: exact in int64 and in float64
MAX_RECORDS = 5_000_000      # memory-ledger records of one step (minutes to write timeline.csv and the plots)
MAX_BYTES = 2 ** 53          # one rank's memory, bytes (8 PiB), estimated from above
MAX_STEP_S = 1e9             # one step, simulated seconds (about 31 years), estimated from above

# Ledger records, from above: per layer and micro-batch, F adds at most 8 (activations, logits,
# workspace, a2a and gather in and out), B 11, W 3; per atom, p2p send and receive buffers in
# and out and an FB half's overlapped transient in and out (6); 4 static records per rank.
RECORDS_PER_LAYER = 8 + 11 + 3
RECORDS_PER_ATOM = 6

# key -> (low, high, low included, high included, unit): each field's documented range.
RANGES = {
    "hardware.memory_gib": (0, 2 ** 20, False, True, " GiB (up to 1 PiB)"),
    "hardware.peak_tflops": (0, 1e6, False, True, " TFLOP/s"),
    "hardware.efficiency": (0, 1, False, True, " (a fraction of peak)"),
    "hardware.p2p_bandwidth_gbps": (0, 1e6, False, True, " GB/s"),
    "hardware.p2p_latency_us": (0, 1e9, True, True, " microseconds"),
    "hardware.nvlink_bandwidth_gbps": (0, 1e6, False, True, " GB/s"),
    "hardware.node_size": (1, 2 ** 20, True, True, " devices"),
    "hardware.reserve_gib": (0, 2 ** 20, True, True, " GiB"),
    "overheads.fragmentation": (0, 1, True, False, " (a fraction of the allocated total)"),
    "overheads.comm_buffer_gib": (0, 2 ** 20, True, True, " GiB"),
    "overheads.allocator_rounding": (1, 2 ** 30, True, True, " bytes (up to 1 GiB)"),
    "overheads.tight_fraction": (0, 1, True, False, " (a fraction of the usable memory)"),
    "training.microbatches": (1, INT_LIMIT, True, True, ""),
    "timing.forward_ms": (0, 1e9, True, True, " ms"),
    "timing.backward_ms": (0, 1e9, True, True, " ms"),
    "timing.weight_ms": (0, 1e9, True, True, " ms"),
    "timing.fb_ms": (0, 1e9, True, True, " ms"),
    "timing.a2a_overlap": (0, 1, True, True, " (a share of a lone op's all-to-all)"),
}


class LimitError(ValueError):
    """A number out of range or a step too large; the message starts with the key at fault."""


def show(value) -> str:
    """``value`` for a message: its repr, shortened when long (a 5,000-digit integer stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 30:
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def check_number(value, where: str) -> None:
    """Refuse NaN, infinities and integers beyond ``±INT_LIMIT`` (bools and strings pass)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(f"{where}: must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        raise LimitError(f"{where}: {show(value)} is beyond the integers pipesim computes with exactly "
                         f"(at most 2**53 = {INT_LIMIT} in magnitude)")


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def interval(key: str) -> str:
    """``RANGES[key]`` as people write it: ``(0, 1]``, ``[1, 1073741824] bytes (up to 1 GiB)``."""
    low, high, lo_in, hi_in, unit = RANGES[key]
    return f"{'[' if lo_in else '('}{_num(low)}, {_num(high)}{']' if hi_in else ')'}{unit}"


def check_range(key: str, value) -> None:
    """``LimitError`` unless ``value`` (a number or a tuple of them) lies in ``RANGES[key]``."""
    low, high, lo_in, hi_in, _ = RANGES[key]
    for v in value if isinstance(value, tuple) else (value,):
        if v is None:
            continue
        if not ((low <= v if lo_in else low < v) and (v <= high if hi_in else v < high)):
            raise LimitError(f"{key}: must be in {interval(key)}, got {show(v)}")


def records_estimate(model, microbatches: int, atoms: int, pp: int) -> int:
    """Ledger records of one step, from above: every micro-batch passes every layer (the
    embedding and the head count as one each, MTP modules too) once per F, B and W."""
    layers = model.layers + model.mtp_modules + 2
    return microbatches * layers * RECORDS_PER_LAYER + atoms * RECORDS_PER_ATOM + 4 * pp


def check_records(model, microbatches: int, atoms: int, pp: int) -> None:
    records = records_estimate(model, microbatches, atoms, pp)
    if records <= MAX_RECORDS:
        return
    key = "model.layers" if model.layers > microbatches else "training.microbatches"
    raise LimitError(f"{key}: {microbatches} micro-batches through {model.layers} layers is up to {records:,} "
                     f"memory records, more than the {MAX_RECORDS:,} pipesim holds "
                     f"(pipesim.limits.MAX_RECORDS); reduce training.microbatches or model.layers")


def _kind_counts(model) -> list[tuple[int, list[int]]]:
    """(how many, one representative layer index) for the dense and the MoE layers."""
    out = []
    if model.dense_layers:
        out.append((model.dense_layers, [0]))
    if model.layers > model.dense_layers:
        out.append((model.layers - model.dense_layers, [model.dense_layers]))
    return out


def bytes_estimate(model, parallel, training, overheads, microbatches: int, records: int) -> tuple[int, int]:
    """``(static, dynamic)``: one rank's memory, from above, in bytes.

    static: the whole model's states on one device (weights, gradients, optimizer; twice, to
    cover Transformer Engine's placeholder gradients), the communication buffers and each
    record's rounding; dynamic: every micro-batch's stored activations of every layer at once,
    four boundary buffers per micro-batch, and the largest transient twice (an FB's halves)."""
    from pipesim.model import stage_costs

    m, p, t = model, parallel, training
    parts = [(n, stage_costs(m, p, t, layer)) for n, layer in _kind_counts(m)]
    parts.append((1, stage_costs(m, p, t, [], embedding=True, head=True, mtp=True)))
    static, per_mb, transient = 0, 0, 0
    for n, c in parts:
        static += n * 2 * (c.weights_bytes + c.grads_bytes + c.optimizer_bytes + c.gather_bytes)
        per_mb += n * sum(L.stored_bytes + L.w_grad_outputs_bytes + L.logits_bytes for L in c.layers)
        per_mb += 4 * c.boundary_bytes
        transient = max([transient, *(L.forward_transient_bytes + L.backward_transient_bytes + L.recompute_bytes
                                      + L.w_recompute_bytes + L.a2a_bytes + 2 * c.gather_bytes for L in c.layers)])
    static += math.ceil(overheads.comm_buffer_gib * 2 ** 30) + records * overheads.allocator_rounding
    return static, microbatches * per_mb + 2 * transient


def check_bytes(model, parallel, training, overheads, microbatches: int, records: int) -> None:
    static, dynamic = bytes_estimate(model, parallel, training, overheads, microbatches, records)
    total = (static + dynamic) * 2     # fragmentation adds less than the allocated total again
    if total <= MAX_BYTES:
        return
    key, what = (("model", "the model's dimensions") if static >= dynamic else
                 ("training", "training.microbatches, micro_batch_size or seq_len"))
    raise LimitError(f"{key}: one rank's memory could reach {total / 2 ** 50:.3g} PiB (estimated from above), "
                     f"beyond the 2**53 bytes (8 PiB) pipesim computes exactly (pipesim.limits.MAX_BYTES); "
                     f"reduce {what}")


def step_estimate(model, parallel, training, hardware, timing, atoms: int) -> float:
    """One step in simulated seconds, from above: every atom run one after another, each as
    long as the whole model's forward, backward, weight gradient and recomputation (or the
    longest explicit ``[timing]``), followed by a p2p hop."""
    from pipesim.model import stage_costs

    m, p, t = model, parallel, training
    rate = hardware.peak_tflops * 1e12 * hardware.efficiency
    flops, boundary = 0, 0
    for n, layer in [*_kind_counts(m), (1, [])]:
        c = stage_costs(m, p, t, layer, embedding=not layer, head=not layer, mtp=not layer)
        flops += n * sum(2 * L.flops_f + L.flops_b + L.flops_w for L in c.layers)
        boundary = max(boundary, c.boundary_bytes)
    given = [v for f in ("forward_ms", "backward_ms", "weight_ms", "fb_ms")
             for v in (lambda x: x if isinstance(x, tuple) else (x,))(getattr(timing, f)) if v is not None]
    op = max([flops / rate, *(g / 1e3 for g in given)])
    hop = hardware.p2p_latency_us * 1e-6 + boundary / (hardware.p2p_bandwidth_gbps * 1e9)
    return atoms * (op + hop)


def check_step(model, parallel, training, hardware, timing, atoms: int) -> None:
    seconds = step_estimate(model, parallel, training, hardware, timing, atoms)
    if seconds <= MAX_STEP_S:
        return
    raise LimitError(f"hardware: one step could last {seconds:.3g} simulated seconds (estimated from above), "
                     f"beyond the {MAX_STEP_S:g} s pipesim simulates (pipesim.limits.MAX_STEP_S); check "
                     f"hardware.peak_tflops, efficiency, p2p_bandwidth_gbps and p2p_latency_us, or [timing]")
