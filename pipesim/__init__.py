"""pipesim: a discrete-event simulator of GPU memory during pipeline-parallel training.

    import pipesim
    sc = pipesim.load_scenario("scenarios/v3_pp16.toml")
    res = pipesim.simulate(sc)
    res.summary()

Command line: ``python -m pipesim run scenarios/v3_pp16.toml``.
"""
__version__ = "0.2.0"     # the one source of the version (setup.cfg reads it)

from pipesim.api import simulate  # noqa: E402
from pipesim.results import Result  # noqa: E402
from pipesim.scenario import Scenario, ScenarioError, load_scenario  # noqa: E402

__all__ = ["Result", "Scenario", "ScenarioError", "load_scenario", "simulate"]
