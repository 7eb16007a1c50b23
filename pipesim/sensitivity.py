"""Sensitivity: for each knob, how every rank's peak and the step time move when the knob takes
one step down and one step up from the scenario's value, each step simulated.

    python -m pipesim sensitivity scenarios/v3_pp16.toml

A step is the neighbouring value of an ordered choice (recompute none < selective < full, ZeRO
none < os < os+g < os+g+params) or a factor of two for a size (micro-batch size, micro-batches,
sequence length, pp, tp). One knob moves at a time, the rest stay as the scenario has them; a
pp with another stage count gets the automatic layer split (``pipesim.grid``). A step the
scenario cannot take (past the end of a choice, a size below 1, a constraint it breaks) is left
out with the reason. ``sensitivity.png`` is the tornado chart of the worst-rank peak.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipesim import grid  # noqa: E402
from pipesim.memory import GIB  # noqa: E402
from pipesim.model.config import RECOMPUTE, ZERO  # noqa: E402
from pipesim.plots import save  # noqa: E402

# knob -> (scenario key, ordered choices or None for a size doubled / halved)
KNOBS = {
    "recompute": ("training.recompute", ("none", "selective", "full")),
    "zero": ("training.zero", ZERO),
    "micro_batch_size": ("training.micro_batch_size", None),
    "microbatches": ("training.microbatches", None),
    "seq_len": ("training.seq_len", None),
    "pp": ("parallel.pp", None),
    "tp": ("parallel.tp", None),
}
assert set(KNOBS["recompute"][1]) == set(RECOMPUTE)


def current(sc, knob: str):
    t, p = sc.training, sc.parallel
    return {"recompute": t.recompute or "none", "zero": t.zero, "micro_batch_size": t.micro_batch_size,
            "microbatches": sc.microbatches, "seq_len": t.seq_len, "pp": p.pp, "tp": p.tp}[knob]


def steps(sc, knob: str) -> tuple[object, object]:
    """``(down, up)``: the knob's neighbouring values (None past the end of a choice or below 1)."""
    _, choices = KNOBS[knob]
    now = current(sc, knob)
    if choices is None:
        return (now // 2 if now % 2 == 0 and now >= 2 else None), now * 2
    i = choices.index(now)
    return (choices[i - 1] if i > 0 else None), (choices[i + 1] if i + 1 < len(choices) else None)


@dataclass(frozen=True)
class Move:
    knob: str
    direction: str          # "down" or "up"
    value: object
    now: object             # the knob's value in the scenario
    row: dict | None        # grid row (None when the step does not exist)

    @property
    def ok(self) -> bool:
        return self.row is not None and self.row["status"] == "ok"


def sensitivity(path, sets: dict | None = None, knobs=None, workers: int | None = 1):
    """``(base_row, moves)``: the scenario's own row and one ``Move`` per knob and direction."""
    knobs = list(knobs or KNOBS)
    from pipesim.scenario import load_scenario

    sc = load_scenario(path, sets or {})
    plan, pts = [], [{}]
    for k in knobs:
        down, up = steps(sc, k)
        for direction, v in (("down", down), ("up", up)):
            plan.append((k, direction, v, current(sc, k)))
            if v is not None:
                pts.append({KNOBS[k][0]: v})
    rows = grid.run(path, pts, base=sets, workers=workers)
    base, it = rows[0], iter(rows[1:])
    return base, [Move(k, d, v, now, next(it) if v is not None else None) for k, d, v, now in plan]


def table(name, base, moves) -> str:
    """One line per knob: the values a step down and up, the worst-rank peak and step time each gives."""
    from pipesim.report import aligned
    from pipesim.sweep import value_text

    def cell(m: Move, field: str, scale: float, fmt: str) -> str:
        if m.row is None:
            return "-"
        if not m.ok:
            return "invalid"
        return fmt.format((m.row[field] - base[field]) / scale)

    by = {}
    for m in moves:
        by.setdefault(m.knob, {})[m.direction] = m
    rows = []
    for k, d in by.items():
        dn, up = d["down"], d["up"]
        rows.append([k, value_text(dn.now),
                     "-" if dn.value is None else value_text(dn.value), cell(dn, "max_peak_bytes", GIB, "{:+.2f}"),
                     cell(dn, "step_ms", 1, "{:+.1f}"),
                     "-" if up.value is None else value_text(up.value), cell(up, "max_peak_bytes", GIB, "{:+.2f}"),
                     cell(up, "step_ms", 1, "{:+.1f}")])
    lines = [f"{name}: one step down and up per knob; worst-rank peak {base['max_peak_bytes'] / GIB:.2f} GiB "
             f"(rank {base['peak_rank']}), step {base['step_ms']:.1f} ms"]
    lines += aligned(["knob", "now", "down", "peak GiB", "step ms", "up", "peak GiB", "step ms"], rows, left=3)
    lines.append("(changes of the worst-rank peak and the step time; each rank's peak in sensitivity.csv; "
                 "- = no such step; invalid = the scenario refuses it, reason in sensitivity.csv)")
    for m in moves:
        if m.row is not None and not m.ok:
            lines.append(f"{m.knob} {m.direction} ({m.value}): {m.row['reason']}")
    return "\n".join(lines)


def csv_text(base, moves) -> str:
    """``sensitivity.csv``: the base and each step: knob, direction, value, status, step, each rank's peak."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ranks = max([len(base["peaks_bytes"])] + [len(m.row["peaks_bytes"]) for m in moves if m.ok])
    w.writerow(["knob", "direction", "value", "status", "reason", "step_ms", "max_peak_bytes", "peak_rank",
                *[f"peak_bytes_rank{i}" for i in range(ranks)]])
    w.writerow(["", "base", "", "ok", "", f"{base['step_ms']:.4f}", base["max_peak_bytes"], base["peak_rank"],
                *base["peaks_bytes"]])
    for m in moves:
        if m.row is None:
            continue
        if not m.ok:
            w.writerow([m.knob, m.direction, m.value, "invalid", m.row["reason"]])
            continue
        r = m.row
        w.writerow([m.knob, m.direction, m.value, "ok", "", f"{r['step_ms']:.4f}", r["max_peak_bytes"],
                    r["peak_rank"], *r["peaks_bytes"]])
    return buf.getvalue()


def png(name, base, moves, path) -> None:
    """``sensitivity.png``: tornado chart, the worst-rank peak's change for a step down and up per
    knob (GiB), knobs with the largest swing on top."""
    swing = {}
    for m in moves:
        d = (m.row["max_peak_bytes"] - base["max_peak_bytes"]) / GIB if m.ok else 0.0
        swing.setdefault(m.knob, {"down": 0.0, "up": 0.0})[m.direction] = d
    order = sorted(swing, key=lambda k: abs(swing[k]["down"]) + abs(swing[k]["up"]))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(order) + 1.5))
    y = range(len(order))
    ax.barh(y, [swing[k]["down"] for k in order], color="tab:blue", label="one step down")
    ax.barh(y, [swing[k]["up"] for k in order], color="tab:orange", alpha=0.7, label="one step up")
    ax.set_yticks(list(y), order)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel(f"change of the worst-rank peak (GiB; now {base['max_peak_bytes'] / GIB:.2f} GiB)")
    ax.set_title(f"{name}: peak sensitivity, one knob at a time")
    ax.legend(fontsize=8)
    save(fig, path)
