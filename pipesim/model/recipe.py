"""Training recipes: the framework conventions that decide which tensors a real run keeps.

Two runs of the same model and layout can store very different activations: one trains with
dropout and keeps its masks, another fuses its SwiGLU and keeps only the activation's input;
one computes the loss on an FP32 copy of the logits, another writes the gradient into the BF16
logits buffer. These choices are options of ``TrainingConfig``; a *recipe* is a named bundle of
them. A scenario names a recipe (``[training] recipe = "megatron"``) and may override any single
option; options it leaves out come from the recipe. With no recipe named, ``megatron`` applies:
Megatron-Core with Transformer Engine is what most large MoE pretraining runs use.

Options (the framework flag and its default that each one follows):
    inventory             "framework": the tensors PyTorch autograd keeps for the framework's
                          kernels, measured by ``benchmarks/fidelity``; "paper": the paper's
                          Korthikanti-style list (Zhang & Su, section 5), kept so its tables
                          reproduce exactly (see ``pipesim.model.activations``)
    attention             "flash" (fused attention keeps FP32 log-sum-exp statistics; TE's
                          ``DotProductAttention``) or "eager" (the s² softmax output is kept)
    dropout               probability of attention and hidden dropout; 0 keeps no masks.
                          Megatron's argparse default is 0.1 (``--attention-dropout``,
                          ``--hidden-dropout``) but LLM pretraining scripts set both to 0
    recompute_granularity "layer": ``recompute = "full"`` checkpoints each layer's input only
                          (Megatron ``--recompute-granularity full --recompute-method uniform
                          --recompute-num-layers 1``); "sublayer": each sublayer's input (the
                          paper's Table 10, which also keeps the router's top-k output)
    cross_entropy         "fp32": the loss runs on an FP32 copy of the logits and keeps its
                          FP32 softmax (Megatron unless ``--fp16-lm-cross-entropy``); "fused":
                          the gradient is written into the logits buffer in their own dtype
                          (``--cross-entropy-loss-fusion``, TE's ``parallel_cross_entropy``)
    swiglu_fusion         the SwiGLU keeps only its input and recomputes SiLU in backward
                          (Megatron ``--bias-swiglu-fusion``, on by default); off: eager
                          ``silu(gate) * up`` also keeps SiLU's output
    moe_combine           "output": the routing probabilities multiply the experts' output at
                          the unpermute, which keeps that output for the probabilities' gradient
                          (Megatron's default); "activation": they multiply the activation
                          inside the expert, before its down-projection
                          (``--moe-apply-probs-on-input`` family of fused kernels)
    moe_permute_fusion    TE's fused permute/unpermute keep an int32 row map per routed token
                          copy instead of int64 gather indices (``--moe-permute-fusion``)
    shared_placement      "megatron": the shared experts are an ordinary TP-split MLP and the
                          router and shared experts are dense parameters, their ZeRO states
                          sharded over DP; "paper": both replicated over TP and sharded over EDP
    te_wgrad_placeholders with gradient-accumulation fusion (``--gradient-accumulation-fusion``,
                          default on with TE) the weight gradient goes straight into the FP32
                          main-grad buffer and TE hands autograd a placeholder tensor of the
                          weight's shape; TE caches one per distinct shape and dtype
    expert_tokens, fp8_activations, recompute, keep, dtypes: see ``TrainingConfig``.
"""
from __future__ import annotations

RECIPE_OPTIONS = ("inventory", "attention", "dropout", "recompute", "keep",
                  "recompute_granularity", "cross_entropy", "swiglu_fusion", "moe_combine",
                  "moe_permute_fusion", "shared_placement", "te_wgrad_placeholders",
                  "expert_tokens", "fp8_activations")

# bytes per value; ``master = 0`` is an optimizer without an FP32 master copy
_PAPER_DTYPES = {"weights": 2, "activations": 2, "grads": 4, "master": 4, "momentum": 2, "variance": 2}

RECIPES: dict[str, dict] = {
    # Zhang & Su, arXiv 2502.07846: Korthikanti-style formulas with dropout masks, eager
    # attention, Table 10's per-sublayer checkpoints, Table 7's dtypes (BF16 moments).
    "paper": {
        "inventory": "paper", "attention": "eager", "dropout": 0.1, "recompute": "none",
        "keep": (), "recompute_granularity": "sublayer", "cross_entropy": "fp32",
        "swiglu_fusion": False, "moe_combine": "output", "moe_permute_fusion": False,
        "shared_placement": "paper", "te_wgrad_placeholders": False, "expert_tokens": "paper",
        "fp8_activations": False, "dtypes": dict(_PAPER_DTYPES),
    },
    # Megatron-Core + Transformer Engine as a pretraining script runs them: no dropout, TE fused
    # attention, fused SwiGLU, FP32 loss, gradient-accumulation fusion, distributed optimizer
    # with FP32 Adam moments (``--exp-avg-dtype``/``--exp-avg-sq-dtype`` default fp32).
    "megatron": {
        "inventory": "framework", "attention": "flash", "dropout": 0.0, "recompute": "none",
        "keep": (), "recompute_granularity": "layer", "cross_entropy": "fp32",
        "swiglu_fusion": True, "moe_combine": "output", "moe_permute_fusion": False,
        "shared_placement": "megatron", "te_wgrad_placeholders": True,
        "expert_tokens": "routed", "fp8_activations": False,
        "dtypes": {**_PAPER_DTYPES, "momentum": 4, "variance": 4},
    },
    # DeepSeek-V3's own recipe (arXiv 2412.19437, sections 3.2.3 and 3.3): no dropout, fused
    # attention, FP8 caching of the linear inputs, recomputation of the RMSNorms and MLA
    # up-projections (SwiGLU input cached, output recomputed), BF16 AdamW moments with FP32
    # master weights and gradients. Its framework (HAI-LLM) is not public; the loss is taken as
    # fused, the probabilities as applied inside the expert (the combine then keeps no expert
    # output, as DeepEP-style fused SwiGLU-with-probabilities kernels do), the router and shared
    # experts as the paper places them.
    "deepseek-v3": {
        "inventory": "framework", "attention": "flash", "dropout": 0.0, "recompute": "selective",
        "keep": ("deepseek-v3",), "recompute_granularity": "layer", "cross_entropy": "fused",
        "swiglu_fusion": True, "moe_combine": "activation", "moe_permute_fusion": True,
        "shared_placement": "paper", "te_wgrad_placeholders": False, "expert_tokens": "routed",
        "fp8_activations": True, "dtypes": dict(_PAPER_DTYPES),
    },
}
DEFAULT_RECIPE = "megatron"

ALLOWED = {
    "inventory": ("framework", "paper"),
    "attention": ("eager", "flash"),
    "recompute_granularity": ("layer", "sublayer"),
    "cross_entropy": ("fp32", "fused"),
    "moe_combine": ("output", "activation"),
    "shared_placement": ("megatron", "paper"),
}
