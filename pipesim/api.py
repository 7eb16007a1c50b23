"""``simulate``: scenario → workload → SimPy run → memory → ``Result``, in that one direction."""
from __future__ import annotations

from pipesim.memory import p2p_buffers
from pipesim.results import Result
from pipesim.simulator import run
from pipesim.workload import build_workload


def simulate(scenario, schedule=None) -> Result:
    """Simulate one training step of ``scenario`` (a ``pipesim.Scenario``)."""
    wl = build_workload(scenario, schedule)
    spans = run(wl.schedule, wl.timing)
    result = Result(scenario, wl, spans, p2p_buffers(spans, wl.boundary_bytes))
    result.peaks           # the answer every caller wants
    return result
