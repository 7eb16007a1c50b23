"""The dependency rules between ops, in one place: the validator, the deadlock check and the
simulator (``pipesim.simulator``, the one place that decides when ops run) read them from here.

An atomic op (F, B or W) is identified by its key ``(kind, stage, direction, mb)``: the model
stage and stream it works on and the micro-batch index within that stream. Its data inputs:

    F(s, d, m)  needs  F(s-1, d, m)                      (s > 0: the activation from upstream)
    B(s, d, m)  needs  F(s, d, m)  and  B(s+1, d, m)     (s < S-1: the gradient from downstream)
    W(s, d, m)  needs  B(s, d, m)                        (the weight-gradient needs the B's inputs)

Besides data, each rank runs its ops in list order: an op starts after the previous op of its
rank ends. An FB op's two atoms start together when the FB starts and end together when it
ends, so each atom of an FB waits for the inputs of both.

    from schedules.graph import validate
    validate(s)                                   # ScheduleError names missing ops or a cycle
"""
from __future__ import annotations

from collections import Counter

import networkx as nx

from schedules.ops import Op, Schedule, ScheduleError

__all__ = ["build_graph", "inputs", "key", "label", "validate"]

Key = tuple[str, int, int, int]  # (kind, stage, direction, mb)

_SHOW = 12  # how many offending ops an error message lists before "... and N more"


def key(schedule: Schedule, rank: int, atom: Op) -> Key:
    """The identity ``(kind, stage, direction, mb)`` of atomic op ``atom`` run by ``rank``."""
    return (atom.kind, schedule.placement[rank][atom.chunk], schedule.directions[rank][atom.chunk], atom.mb)


def inputs(schedule: Schedule, k: Key) -> tuple[Key, ...]:
    """The atoms whose outputs atom ``k`` consumes (see the module docstring for the rules)."""
    kind, s, d, m = k
    if kind == "F":
        return (("F", s - 1, d, m),) if s > 0 else ()
    if kind == "B":
        if s < schedule.num_stages - 1:
            return (("F", s, d, m), ("B", s + 1, d, m))
        return (("F", s, d, m),)
    if kind == "W":
        return (("B", s, d, m),)
    raise ScheduleError(f"no dependency rule for kind {kind!r}; atoms are F, B, W")


def label(k: Key, schedule: Schedule | None = None) -> str:
    """A key as people read it, e.g. ``B(stage 3, mb 5)``, with the rank when known."""
    kind, s, d, m = k
    stream = f", dir {d}" if schedule is not None and schedule.num_directions > 1 else ""
    where = ""
    if schedule is not None and (s, d) in schedule._where:
        r, c = schedule.locate(s, d)
        where = f" on rank {r} chunk {c}"
    return f"{kind}(stage {s}{stream}, mb {m}){where}"


def _check_shapes(schedule: Schedule) -> list[str]:
    """Ops that name a chunk the rank lacks or a micro-batch outside its stream."""
    bad = []
    for r, ops in enumerate(schedule.ranks):
        nchunks = len(schedule.placement[r])
        for i, op in enumerate(ops):
            for atom in op.atoms():
                if atom.kind not in ("F", "B", "W"):
                    bad.append(f"rank {r} op #{i} {op}: atom kind {atom.kind!r}, allowed F, B, W")
                elif not 0 <= atom.chunk < nchunks:
                    bad.append(f"rank {r} op #{i} {op}: chunk {atom.chunk}, allowed 0..{nchunks - 1}")
                else:
                    d = schedule.directions[r][atom.chunk]
                    limit = schedule.stream_microbatches[d]
                    if not 0 <= atom.mb < limit:
                        bad.append(f"rank {r} op #{i} {op}: micro-batch {atom.mb}, allowed 0..{limit - 1}")
    return bad


def _check_counts(schedule: Schedule) -> list[str]:
    """Every F and B once per (stage, direction, mb); a W exactly when its B deferred it."""
    seen: Counter = Counter()
    deferred = set()
    for r, ops in enumerate(schedule.ranks):
        for op in ops:
            for atom in op.atoms():
                k = key(schedule, r, atom)
                seen[k] += 1
                if atom.kind == "B" and atom.w_deferred:
                    deferred.add(k[1:])
    problems = [f"duplicate: {label(k, schedule)} appears {n} times" for k, n in seen.items() if n > 1]
    for d, count in enumerate(schedule.stream_microbatches):
        for s in range(schedule.num_stages):
            for m in range(count):
                for kind in ("F", "B"):
                    if (kind, s, d, m) not in seen:
                        problems.append(f"missing: {label((kind, s, d, m), schedule)}")
                if (s, d, m) in deferred and ("W", s, d, m) not in seen:
                    problems.append(f"missing: {label(('W', s, d, m), schedule)} (its B deferred it)")
    for k in seen:
        if k[0] == "W" and k[1:] not in deferred:
            problems.append(f"unexpected: {label(k, schedule)} but its B is a full backward (not '*')")
    return problems


def build_graph(schedule: Schedule) -> nx.DiGraph:
    """Atoms as nodes (keys), with edges of kind ``data`` (producer → consumer) and ``order``
    (each atom of a rank's op → each atom of the rank's next op).

    Node attributes: ``rank``, ``index`` (position in the rank's list), ``op`` (the whole op,
    e.g. the FB holding the atom). An FB's atoms also get each other's data inputs as edges of
    kind ``together``, because both start when the FB starts.
    """
    g = nx.DiGraph()
    for r, ops in enumerate(schedule.ranks):
        for i, op in enumerate(ops):
            for atom in op.atoms():
                g.add_node(key(schedule, r, atom), rank=r, index=i, op=op)
    # An edge that is both data and order keeps the label "data" (the reason people care about).
    for r, ops in enumerate(schedule.ranks):
        previous: tuple[Key, ...] = ()
        for op in ops:
            keys = tuple(key(schedule, r, a) for a in op.atoms())
            for k in keys:
                for dep in inputs(schedule, k):
                    g.add_edge(dep, k, why="data")
            for k in keys:
                for dep in inputs(schedule, k):
                    for other in keys:
                        if other != k and not g.has_edge(dep, other):
                            g.add_edge(dep, other, why="together")
                for p in previous:
                    if not g.has_edge(p, k):
                        g.add_edge(p, k, why="order")
            previous = keys
    return g


def _show_ranks(schedule: Schedule, marked: set[tuple[int, int]]) -> str:
    """The op lists of the ranks holding a marked (rank, index) cell, marked ``>>op<<``."""
    lines = []
    for r in sorted({r for r, _ in marked}):
        tokens = [f">>{op}<<" if (r, i) in marked else str(op) for i, op in enumerate(schedule.ranks[r])]
        lines.append(f"  r{r}: " + " ".join(tokens))
    return "\n".join(lines)


def _listing(title: str, items: list[str]) -> str:
    more = f"\n  ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{title}:\n  " + "\n  ".join(items[:_SHOW]) + more


def validate(schedule: Schedule) -> None:
    """Raise ``ScheduleError`` unless every op is well-formed, every F and B runs exactly once
    per (stage, direction, micro-batch) (and W exactly when its B deferred it), and the ranks'
    orders admit an execution (no cycle of data and order edges). Returns None when fine."""
    where = f"schedule {schedule.name!r} (pp={schedule.pp}, microbatches={schedule.microbatches})"
    bad = _check_shapes(schedule)
    if bad:
        raise ScheduleError(_listing(f"{where} has malformed ops", bad))
    problems = _check_counts(schedule)
    if problems:
        raise ScheduleError(_listing(f"{where} does not run every op exactly once", problems))
    g = build_graph(schedule)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return None
    why = {"data": "data", "order": "rank order", "together": "F and B of one FB start together"}
    steps = [f"{label(u, schedule)} -> {label(v, schedule)} ({why[g.edges[u, v]['why']]})" for u, v in cycle]
    marked = {(g.nodes[u]["rank"], g.nodes[u]["index"]) for u, _ in cycle}
    raise ScheduleError(
        f"{where} deadlocks: these ops wait on each other in a cycle\n  " + "\n  ".join(steps)
        + "\nops on the cycle, marked >>op<< in their ranks' orders:\n" + _show_ranks(schedule, marked)
    )
