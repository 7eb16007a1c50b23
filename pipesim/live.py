"""Why a rank's peak is what it is: the micro-batches whose activations it holds at that moment.

At time t, a rank holds the activations of every (stage, direction, micro-batch) whose forward
has started and whose backward has not finished — or, when the schedule split B and W, whose
W has not finished (then only the weight-gradient inputs and output gradients, ``w_bytes`` +
``w_grad_outputs_bytes`` of each layer, are left). Each entry says what it waits for:

    "F"  its forward is running (its activations are still being stored)
    "B"  its backward (the activations are complete)
    "W"  its deferred weight gradient (B has run)

Closed forms to read the count against (``CLOSED_FORMS``, in stage-activations of one chunk):
GPipe holds every micro-batch at the end of its forwards; 1F1B and ZB-H1 hold pp − r on rank r
at the end of warm-up (Narayanan et al. 2021; Qi et al. 2024); interleaved 1F1B with V chunks
holds its warm-up forwards plus the first steady one, 2(pp − r − 1) + (V − 1)·pp + 1 (Megatron's
warm-up count, Narayanan et al. 2021 section 2.2); ZB-V 2·pp half-stage chunks on every rank
(Qi et al. 2024: the memory of pp whole stages, the same on every rank); DualPipe's middle
ranks pp + 1 stage-activations at its overlapped step (the DualPipe README).
"""
from __future__ import annotations

import numpy as np

from pipesim.memory import KIND_B, KIND_BI, KIND_F, KIND_W

CLOSED_FORMS = {           # how many wait for F or B at the peak (W-waiters come on top); f(pp, r, m, V)
    "gpipe": ("M, every micro-batch", lambda pp, r, m, v: m),
    "1f1b": ("pp - r", lambda pp, r, m, v: min(pp - r, m)),
    "zb-h1": ("pp - r", lambda pp, r, m, v: min(pp - r, m)),
    "interleaved": ("2(pp - r - 1) + (V - 1)pp + 1", lambda pp, r, m, v: min(2 * (pp - r - 1) + (v - 1) * pp + 1, m * v)),
    "zb-v": ("2pp chunks", lambda pp, r, m, v: min(2 * pp, 2 * m)),
    "dualpipe": ("pp + 1", lambda pp, r, m, v: pp + 1),
}


def live_set(result, rank: int, t: float) -> list[dict]:
    """The (micro-batch, stage, chunk, direction) entries resident on ``rank`` at time ``t``."""
    sp, costs = result.spans, result.workload.costs
    sel = np.nonzero(sp.rank == rank)[0]
    by_key: dict[tuple, dict] = {}
    for i in sel.tolist():
        key = (int(sp.stage[i]), int(sp.direction[i]), int(sp.mb[i]))
        by_key.setdefault(key, {})[int(sp.kind[i])] = i
    out = []
    eps = 1e-15
    for (stage, direction, mb), atoms in sorted(by_key.items(), key=lambda kv: kv[1].get(KIND_F, -1)):
        f = atoms.get(KIND_F)
        if f is None or sp.start[f] > t + eps:
            continue
        b = atoms.get(KIND_B, atoms.get(KIND_BI))
        w = atoms.get(KIND_W)
        layers = costs[stage].layers
        stored = sum(L.stored_bytes for L in layers)
        if sp.end[f] > t + eps:
            waits, nbytes = "F", stored
        elif b is not None and sp.end[b] > t + eps:
            waits, nbytes = "B", stored
        elif w is not None and sp.end[w] > t + eps:
            waits = "W"
            nbytes = sum(L.w_bytes + L.w_grad_outputs_bytes for L in layers)
        else:
            continue
        out.append({"mb": mb, "stage": stage, "chunk": int(sp.chunk[f]), "direction": direction,
                    "bytes": int(nbytes), "waits_for": waits})
    return out


def closed_form(result, rank: int) -> str | None:
    """The schedule's closed-form resident count at the peak for ``rank``, as text, or None."""
    sch = result.workload.schedule
    entry = CLOSED_FORMS.get(sch.name)
    if entry is None:
        return None
    text, f = entry
    v = len(sch.placement[rank])
    return f"{f(sch.pp, rank, result.scenario.microbatches, v)} = {text} ({sch.name}, awaiting F or B)"


def column(entries: list[dict]) -> str:
    """The table's form: micro-batches awaiting F or B, and ``+kW`` awaiting W."""
    w = sum(e["waits_for"] == "W" for e in entries)
    return f"{len(entries) - w}" + (f"+{w}W" if w else "")


def short(entries: list[dict]) -> str:
    """``5 resident (4 wait for B, 1 in F)`` — the plots' form."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["waits_for"]] = counts.get(e["waits_for"], 0) + 1
    parts = [f"{n} {'in F' if k == 'F' else 'wait for ' + k}" for k, n in sorted(counts.items())]
    return f"{len(entries)} resident" + (f" ({', '.join(parts)})" if parts else "")


def by_module(result, entries: list[dict]) -> dict[str, int]:
    """The resident activations at a moment by model module (attention, experts, router, ...):
    each entry awaiting F or B holds its stage's stored tensors (``stored_by_module`` of the
    model's tensor list); one awaiting W holds the weight-gradient inputs and output gradients,
    counted as "awaiting W". An entry still in F is counted whole (an upper bound)."""
    out: dict[str, int] = {}
    costs = result.workload.costs
    for e in entries:
        if e["waits_for"] == "W":
            out["awaiting W"] = out.get("awaiting W", 0) + e["bytes"]
            continue
        for L in costs[e["stage"]].layers:
            for mod, n in L.stored_by_module.items():
                out[mod] = out.get(mod, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
