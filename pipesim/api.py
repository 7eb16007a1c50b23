"""``simulate``: scenario → workload → SimPy run → ledger → ``Result``, in that one direction."""
from __future__ import annotations

from pipesim.memory import build_ledger
from pipesim.results import Result
from pipesim.simulator import run
from pipesim.workload import build_workload, p2p_records


def simulate(scenario, schedule=None) -> Result:
    """Simulate one training step of ``scenario`` (a ``pipesim.Scenario``)."""
    wl = build_workload(scenario, schedule)
    spans = run(wl.schedule, wl.timing)
    ledger = build_ledger(spans, wl.templates, wl.static, p2p_records(spans, wl.boundary_bytes))
    return Result(scenario, wl, spans, ledger)
