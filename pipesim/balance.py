"""Stage imbalance: is the step set by one rank working longer than the others, and which layer
split would even it out.

Every pipeline schedule advances, in its steady phase, at the pace of its slowest rank: each
micro-batch waits once for that rank's F and B. A rank busy ``max`` seconds against a mean of
``mean`` therefore stretches the step by up to ``max / mean`` over a perfectly balanced split,
and ``1 - mean / max`` is the most a re-split can save.

Warning threshold ``IMBALANCE_THRESHOLD = 0.10`` (max busy over mean busy above 1.10): below it
a re-split saves at most 1 - 1/1.1 ≈ 9% of the step, the size of what the op times leave out
(one efficiency for every op, no communication time yet) and about what one layer moves on a
stage of eight or more layers (one layer of ten is 10%); above it, the imbalance is larger than
the model's uncertainty and larger than the granularity a user can act on.

The balancing split: per transformer layer j, its work per micro-batch is
``c_j = (flops_f + flops_b + flops_w + recompute_j) / R + a2a_j`` (``pipesim.workload``'s
durations, R = peak_tflops·1e12·efficiency, a2a_j the layer's all-to-all and TP
collectives from ``pipesim.comm``); the embedding, MTP and head are fixed on their stages
(``[placement]``) and add ``e_s`` to stage s. A linear-partition DP over the layers

    T[s][j] = min over i < j of max(T[s-1][i], e_{s-1} + Σ_{i<=k<j} c_k),   T[0][0] = 0

gives the contiguous split into S stages (each >= 1 layer) minimising the largest stage time.
Ranks that hold several stages (interleaved, V shapes, DualPipe) then hold several balanced
stages. The suggested split is simulated, so its step time and peaks are measured, not guessed.
"""
from __future__ import annotations

import dataclasses

from pipesim.comm import moe_layer_a2a_seconds, tp_layer_seconds
from pipesim.model import stage_costs
from pipesim.placement import split_text
from pipesim.workload import _recompute_flops

IMBALANCE_THRESHOLD = 0.10


def layer_seconds(sc) -> tuple[list[float], list[float]]:
    """``(per_layer, fixed)``: each transformer layer's F + B work (seconds, per micro-batch) and
    each stage's fixed work from the embedding, MTP and head it holds (``[placement]``)."""
    m = sc.model
    stages = len(sc.layers_per_stage)
    rate = sc.hardware.peak_tflops * 1e12 * sc.hardware.efficiency
    c = stage_costs(m, sc.parallel, sc.training, range(m.layers), embedding=True, head=True,
                    mtp=m.mtp_modules > 0)
    work = [(L.flops_f + L.flops_b + L.flops_w + rc) / rate
            for L, rc in zip(c.layers, _recompute_flops(sc, c))]
    # each layer's communication, F and B: a MoE layer's all-to-all, every layer's TP collectives
    comm = {True: sum(moe_layer_a2a_seconds(sc)) + sum(tp_layer_seconds(sc, moe=True)),
            False: sum(tp_layer_seconds(sc, moe=False))}
    per_layer, fixed = [], [0.0] * stages
    home = {"embedding": sc.placement.embedding_stage, "head": sc.placement.head_stage,
            "mtp": sc.placement.mtp_stage}
    for L, t in zip(c.layers, work):
        if L.name.startswith("layer "):
            per_layer.append(t + comm[m.is_moe(int(L.name.split()[1]))])
        else:
            fixed[home[L.name.split()[0]] % stages] += t
    return per_layer, fixed


def stage_seconds(per_layer, fixed, counts) -> list[float]:
    """Each stage's work for the split ``counts``."""
    out, first = [], 0
    for s, n in enumerate(counts):
        out.append(fixed[s] + sum(per_layer[first:first + n]))
        first += n
    return out


def balanced_split(per_layer, fixed) -> tuple[int, ...]:
    """The contiguous split minimising the largest stage time (the DP of the module docstring);
    among equal optima, the first found scanning cut points left to right."""
    n, stages = len(per_layer), len(fixed)
    prefix = [0.0]
    for t in per_layer:
        prefix.append(prefix[-1] + t)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        # stage s-1 takes layers i..j-1; leave at least one layer for each later stage
        for j in range(s, n - (stages - s) + 1):
            for i in range(s - 1, j):
                v = max(best[s - 1][i], fixed[s - 1] + prefix[j] - prefix[i])
                if v < best[s][j] - 1e-12 * max(v, 1e-30):
                    best[s][j], cut[s][j] = v, i
    counts, j = [], n
    for s in range(stages, 0, -1):
        i = cut[s][j]
        counts.append(j - i)
        j = i
    return tuple(reversed(counts))


def imbalance(result) -> dict | None:
    """The warning, or None when the busiest rank is within ``IMBALANCE_THRESHOLD`` of the mean.

    Keys: ``rank`` (the busiest), ``busy_ms``, ``mean_busy_ms``, ``ratio`` (max / mean),
    ``threshold``; ``suggested`` (the balanced ``layers_per_stage`` list, or None when no split
    improves on the current one or ``[timing]`` fixes the op times), its ``suggested_text`` as
    the scenario's TOML line, ``stage_ms`` now and ``suggested_stage_ms`` (the model's per-stage
    work), and the suggested split's measured ``suggested_makespan_ms``, ``suggested_busy_ms``
    (busiest rank), ``suggested_peak_bytes`` and ``suggested_verdict``.
    """
    busy = [result.busy(r) for r in range(result.ranks)]
    mean = sum(busy) / len(busy) if busy else 0.0
    if mean <= 0:
        return None
    worst = max(range(len(busy)), key=busy.__getitem__)
    ratio = busy[worst] / mean
    if ratio <= 1 + IMBALANCE_THRESHOLD:
        return None
    out = {"rank": worst, "busy_ms": round(busy[worst] * 1e3, 6), "mean_busy_ms": round(mean * 1e3, 6),
           "ratio": round(ratio, 6), "threshold": IMBALANCE_THRESHOLD, "suggested": None,
           "reason": None}
    sc = result.scenario
    tm = sc.timing
    if any(v is not None for v in (tm.forward_ms, tm.backward_ms, tm.weight_ms, tm.fb_ms)):
        out["reason"] = "[timing] fixes the op times per stage; a layer split cannot change them"
        return out
    per_layer, fixed = layer_seconds(sc)
    now = tuple(sc.layers_per_stage)
    split = balanced_split(per_layer, fixed)
    before, after = stage_seconds(per_layer, fixed, now), stage_seconds(per_layer, fixed, split)
    out["stage_ms"] = [round(t * 1e3, 6) for t in before]
    if max(after) >= max(before) * (1 - 1e-9):
        out["reason"] = ("no layer split lowers the slowest stage (its fixed embedding, head or "
                         "MTP work, or the layer granularity, decides it)")
        return out
    from pipesim.api import simulate   # the suggestion is measured, one more step simulated
    placement = dataclasses.replace(sc.placement, layers_per_stage=split)
    res = simulate(dataclasses.replace(sc, placement=placement, layers_per_stage=split))
    out.update({
        "suggested": list(split),
        "suggested_text": f"layers_per_stage = {list(split)}   # {split_text(split)}",
        "suggested_stage_ms": [round(t * 1e3, 6) for t in after],
        "makespan_ms": round(result.makespan * 1e3, 6),
        "suggested_makespan_ms": round(res.makespan * 1e3, 6),
        "suggested_busy_ms": round(max(res.busy(r) for r in range(res.ranks)) * 1e3, 6),
        "peak_bytes": result.peaks[result.peak_rank].bytes,
        "suggested_peak_bytes": res.peaks[res.peak_rank].bytes,
        "suggested_verdict": res.verdict(),
    })
    return out


def _ms(x: float) -> str:
    """Milliseconds as the run table prints them: one decimal, or 3 significant digits below 100."""
    return f"{x:.1f}" if x >= 100 else f"{x:.3g}"


def warning_lines(info: dict | None) -> list[str]:
    """The run table's lines for the warning (none when ``info`` is None)."""
    if info is None:
        return []
    head = (f"WARNING stage imbalance: rank {info['rank']} is busy {_ms(info['busy_ms'])} ms, "
            f"{info['ratio']:.2f}x the mean {_ms(info['mean_busy_ms'])} ms "
            f"(warns above {1 + info['threshold']:.2f}x); the step waits for it every micro-batch")
    if info["suggested"] is None:
        return [head, f"  {info['reason']}"]
    gib = 2 ** 30
    return [head,
            f"  balanced split ([placement]): {info['suggested_text']}",
            f"  simulated with it: step {_ms(info['makespan_ms'])} -> {_ms(info['suggested_makespan_ms'])} ms "
            f"({info['suggested_makespan_ms'] / info['makespan_ms'] - 1:+.1%}), busiest rank "
            f"{_ms(info['busy_ms'])} -> {_ms(info['suggested_busy_ms'])} ms, peak "
            f"{info['peak_bytes'] / gib:.2f} -> {info['suggested_peak_bytes'] / gib:.2f} GiB "
            f"({info['suggested_verdict']})"]
