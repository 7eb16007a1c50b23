"""pipesim: a discrete-event simulator of GPU memory during pipeline-parallel training.

    import pipesim
    sc = pipesim.load_scenario("scenarios/v3_pp16.toml")
    res = pipesim.simulate(sc)
    res.summary()

Command line: ``python -m pipesim run scenarios/v3_pp16.toml``.
"""
from pipesim.api import simulate
from pipesim.results import Result
from pipesim.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["Result", "Scenario", "ScenarioError", "load_scenario", "simulate"]
