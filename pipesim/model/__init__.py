"""The analytical model: parameters, model states, activations and FLOPs of a DeepSeek-style
MLA + MoE transformer, per layer, per pipeline stage and per device.

    from pipesim.model import load_preset, ParallelConfig, TrainingConfig, stage_costs
    v3 = load_preset("deepseek-v3")
    costs = stage_costs(v3, ParallelConfig(tp=2, pp=16, ep=8, dp=32, sp=True),
                        TrainingConfig(recompute="full", zero="os"), range(4, 8))

Paper-style tables: ``python -m pipesim model scenarios/v3_pp16.toml`` (``pipesim.model.report``).
Every formula is in the docstring of the function that evaluates it.
"""
from pipesim.model.config import (DTypes, ModelConfig, ModelError, ParallelConfig, TrainingConfig,
                                  load_preset, preset_names)
from pipesim.model.costs import LayerCosts, StageCosts, stage_costs

__all__ = ["DTypes", "LayerCosts", "ModelConfig", "ModelError", "ParallelConfig", "StageCosts",
           "TrainingConfig", "load_preset", "preset_names", "stage_costs"]
