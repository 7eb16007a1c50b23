"""Configuration of the analytical model: the model's shape, the parallel layout, the training
recipe, and the model presets (one TOML file each in ``presets/``).

All three are frozen dataclasses whose field names are the keys of the scenario file's
``[model]``, ``[parallel]`` and ``[training]`` tables. ``validate`` methods raise ``ModelError``
with a message that starts with the offending field and says what is allowed.

    from pipesim.model import load_preset, ParallelConfig
    v3 = load_preset("deepseek-v3")
    ParallelConfig(tp=2, pp=16, ep=8, dp=32, sp=True).validate(v3)
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources


class ModelError(ValueError):
    """An impossible model, layout or training configuration; the message names the field."""


ATTENTION_KINDS = ("mla", "gqa")


@dataclass(frozen=True)
class ModelConfig:
    """[model]: the shape of a transformer: DeepSeek-style MLA + MoE (symbols of the paper), or
    multi-head / grouped-query attention with a dense or MoE FFN (Llama, Mixtral, Qwen).

    A dense-only model has ``routed_experts = 0`` (every layer uses ``dense_ffn_hidden``); the
    MLA widths (``q_compress``, ``kv_compress``, ``rope_head_dim``) are 0 for ``gqa``.
    """

    name: str                    # label only
    hidden: int                  # h, model width
    heads: int                   # n_h, attention (query) heads
    head_dim: int                # d_h, per-head q/k (no-rope part) and v dimension (gqa: the head dim)
    rope_head_dim: int           # d_hr, per-head q/k rope dimension (k's rope part is shared by heads)
    q_compress: int              # d_cq, query latent width; 0 = plain W_Q [h, n_h*(d_h+d_hr)]
    kv_compress: int             # d_c, key-value latent width
    dense_ffn_hidden: int        # FFN width of the dense (non-MoE) layers
    moe_ffn_hidden: int          # h_E, FFN width of one routed expert
    routed_experts: int          # N, routed experts per MoE layer (0: a dense model)
    shared_experts: int          # N_s, shared experts per MoE layer (run on every token)
    experts_per_token: int       # N_r, routed experts chosen per token (top-k)
    layers: int                  # transformer layers of the main model
    dense_layers: int            # the first dense_layers layers use the dense FFN
    vocab: int                   # vocabulary size
    tied_embeddings: bool = False   # output head shares the embedding matrix
    mtp_modules: int = 0         # multi-token-prediction modules (DeepSeek-V3: 1)
    router: str = "softmax"      # softmax scores, top-k (DeepSeek-V2) | sigmoid scores, top-k
                                 # chosen with a bias, normalised to sum 1 (DeepSeek-V3)
    attention: str = "mla"       # mla | gqa (multi-head when kv_heads = heads)
    kv_heads: int = 0            # gqa: key/value heads (query groups); 0 = heads
    qkv_bias: bool = False       # gqa: biases on the q, k, v projections (Qwen2)
    qk_norm: bool = False        # gqa: RMSNorm of each head's q and k (Qwen3)
    shared_ffn_hidden: int = 0   # the shared experts' total FFN width; 0 = shared_experts·h_E
    shared_expert_gate: bool = False   # a sigmoid gate [h, 1] on the shared output (Qwen2-MoE)
    moe_every: int = 1           # after the dense layers, every moe_every-th layer is MoE
                                 # (Hugging Face's decoder_sparse_step); the others dense
    vocab_multiple: int = 1      # pad the vocabulary to a multiple of vocab_multiple·tp
                                 # (Megatron's --make-vocab-size-divisible-by, default 128)

    def is_moe(self, layer: int) -> bool:
        """Whether global transformer layer ``layer`` has an MoE FFN:
        ``N > 0 and layer >= dense_layers and (layer - dense_layers + 1) % moe_every == 0``."""
        return (self.routed_experts > 0 and layer >= self.dense_layers
                and (layer - self.dense_layers + 1) % self.moe_every == 0)

    @property
    def has_dense(self) -> bool:
        """Whether any layer uses the dense FFN."""
        return any(not self.is_moe(i) for i in range(self.layers))

    @property
    def has_moe(self) -> bool:
        return any(self.is_moe(i) for i in range(self.layers))

    @property
    def shared_width(self) -> int:
        """The shared experts as one SwiGLU on every token: its width ``N_s·h_E`` (or given)."""
        if not self.shared_experts:
            return 0
        return self.shared_ffn_hidden or self.shared_experts * self.moe_ffn_hidden

    def vocab_shard(self, tp: int) -> int:
        """Vocabulary entries per device: V padded up to a multiple of vocab_multiple·tp, / tp
        (Megatron pads to make-vocab-size-divisible-by × tp; with vocab_multiple = 1 this is
        ⌈V/tp⌉)."""
        step = self.vocab_multiple * tp
        return -(-self.vocab // step) * step // tp

    @property
    def kv_groups(self) -> int:
        """gqa: key/value heads (``kv_heads``, or ``heads`` for multi-head attention)."""
        return self.kv_heads or self.heads

    def validate(self) -> None:
        """Raise ``ModelError`` if a dimension is impossible."""
        for f in ("hidden", "heads", "head_dim", "layers", "vocab", "moe_every", "vocab_multiple"):
            if getattr(self, f) < 1:
                raise ModelError(f"model.{f}: must be >= 1, got {getattr(self, f)}")
        for f in ("rope_head_dim", "q_compress", "kv_compress", "shared_experts", "dense_layers",
                  "mtp_modules", "routed_experts", "experts_per_token", "moe_ffn_hidden",
                  "dense_ffn_hidden", "kv_heads", "shared_ffn_hidden"):
            if getattr(self, f) < 0:
                raise ModelError(f"model.{f}: must be >= 0, got {getattr(self, f)}")
        if self.attention not in ATTENTION_KINDS:
            raise ModelError(f"model.attention: one of {', '.join(ATTENTION_KINDS)}; got {self.attention!r}")
        if self.attention == "mla":
            if self.kv_compress < 1:
                raise ModelError(f"model.kv_compress: must be >= 1 with attention = \"mla\", got {self.kv_compress}")
            for f in ("kv_heads", "qkv_bias", "qk_norm"):
                if getattr(self, f):
                    raise ModelError(f"model.{f}: only for attention = \"gqa\"; got {getattr(self, f)!r}")
        else:
            for f in ("q_compress", "kv_compress", "rope_head_dim"):
                if getattr(self, f):
                    raise ModelError(f"model.{f}: an MLA width, must be 0 with attention = \"gqa\"; "
                                     f"got {getattr(self, f)}")
            if self.heads % self.kv_groups:
                raise ModelError(f"model.kv_heads: must divide heads ({self.heads}), got {self.kv_heads}")
        if self.dense_layers > self.layers:
            raise ModelError(f"model.dense_layers: at most layers ({self.layers}), got {self.dense_layers}")
        if self.has_dense and self.dense_ffn_hidden < 1:
            raise ModelError(f"model.dense_ffn_hidden: must be >= 1 when some layer is dense, "
                             f"got {self.dense_ffn_hidden}")
        if self.router not in ROUTER:
            raise ModelError(f"model.router: one of {', '.join(ROUTER)}; got {self.router!r}")
        if self.routed_experts:
            for f in ("experts_per_token", "moe_ffn_hidden"):
                if getattr(self, f) < 1:
                    raise ModelError(f"model.{f}: must be >= 1 with routed experts, got {getattr(self, f)}")
            if self.experts_per_token > self.routed_experts:
                raise ModelError(f"model.experts_per_token: at most routed_experts ({self.routed_experts}), "
                                 f"got {self.experts_per_token}")
        elif self.shared_experts or self.experts_per_token:
            raise ModelError("model.routed_experts: 0 (a dense model) leaves no room for shared_experts "
                             "or experts_per_token; set them to 0")


@dataclass(frozen=True)
class ParallelConfig:
    """[parallel]: how one step is laid out over devices (all are group sizes, >= 1)."""

    tp: int = 1                  # tensor parallelism (MLA heads, dense FFN, vocab)
    pp: int = 1                  # pipeline ranks
    ep: int = 1                  # expert parallelism (routed experts spread over ep devices)
    etp: int = 1                 # expert tensor parallelism (each expert's matrices split etp ways)
    cp: int = 1                  # context parallelism (the sequence split cp ways)
    dp: int = 1                  # data parallelism of the non-MoE parameters
    edp: int | None = None       # expert data parallelism; None = derived, see edp_effective
    sp: bool = False             # sequence parallelism in the TP region's norms and dropouts

    @property
    def edp_effective(self) -> int:
        """EDP: how many devices hold the same routed-expert shard.

        The dp·cp·tp devices of one pipeline stage are regrouped for the experts as
        ep·etp·edp, so ``edp = dp·cp·tp / (ep·etp)`` unless given (Megatron-Core's expert
        data-parallel group spans the context-parallel ranks too). Paper, Table 5:
        DP32 TP2 CP1 EP8 ETP1 → 32·2/8 = 8.
        """
        if self.edp is not None:
            return self.edp
        return (self.dp * self.cp * self.tp) // (self.ep * self.etp)

    @property
    def zero_ways(self) -> int:
        """How many devices share a dense parameter's ZeRO shards: dp·cp (the CP ranks hold the
        same parameters and reduce their gradients together, Megatron's data-parallel group
        with context parallelism)."""
        return self.dp * self.cp

    def validate(self, model: ModelConfig) -> None:
        """Raise ``ModelError`` if this layout cannot hold ``model``."""
        model.validate()
        for f in ("tp", "pp", "ep", "etp", "cp", "dp"):
            if getattr(self, f) < 1:
                raise ModelError(f"{f}: must be >= 1, got {getattr(self, f)}")
        if model.heads % self.tp:
            raise ModelError(f"tp: must divide heads ({model.heads}), got {self.tp}")
        if model.attention == "gqa" and model.kv_groups % self.tp:
            raise ModelError(f"tp: must divide the key/value heads ({model.kv_groups}), got {self.tp}")
        if model.has_dense and model.dense_ffn_hidden % self.tp:
            raise ModelError(f"tp: must divide dense_ffn_hidden ({model.dense_ffn_hidden}), got {self.tp}")
        if model.routed_experts % self.ep:
            raise ModelError(f"ep: must divide routed_experts ({model.routed_experts}), got {self.ep}")
        if model.routed_experts and model.moe_ffn_hidden % self.etp:
            raise ModelError(f"etp: must divide moe_ffn_hidden ({model.moe_ffn_hidden}), got {self.etp}")
        if self.edp is None:
            if (self.dp * self.cp * self.tp) % (self.ep * self.etp):
                raise ModelError(f"ep: ep*etp ({self.ep}*{self.etp}) must divide dp*cp*tp "
                                 f"({self.dp}*{self.cp}*{self.tp}) to derive edp; or give edp")
        elif self.edp < 1:
            raise ModelError(f"edp: must be >= 1 (or left out to derive dp*cp*tp/(ep*etp)), got {self.edp}")


@dataclass(frozen=True)
class DTypes:
    """[training.dtypes]: bytes per stored value (paper, Table 7). ``None`` = from the recipe."""

    weights: int | None = None       # BF16 weights: 2
    activations: int | None = None   # BF16 activations: 2
    grads: int | None = None         # FP32 gradients (Megatron's main grads): 4
    master: int | None = None        # FP32 master copy of the weights; 0 = none (pure BF16 training)
    momentum: int | None = None      # Adam first moment (paper and DeepSeek-V3: BF16, Megatron: FP32)
    variance: int | None = None      # Adam second moment (likewise)

    @property
    def optimizer(self) -> int:
        """Optimizer bytes per parameter: master + momentum + variance."""
        return self.master + self.momentum + self.variance

    def resolved(self, defaults: dict) -> "DTypes":
        """These dtypes with every ``None`` taken from ``defaults`` (a recipe's dtypes)."""
        return DTypes(**{f.name: defaults[f.name] if getattr(self, f.name) is None
                         else getattr(self, f.name) for f in dataclasses.fields(self)})


RECOMPUTE = ("none", "full", "selective")
ZERO = ("none", "os", "os+g", "os+g+params")
EXPERT_TOKENS = ("routed", "paper")
ROUTER = ("softmax", "sigmoid")


@dataclass(frozen=True)
class TrainingConfig:
    """[training]: the per-micro-batch workload and the memory recipe.

    Fields left ``None`` take their value from ``recipe`` (``pipesim.model.recipe``, where each
    option's framework flag is given); a field given explicitly overrides the recipe.
    """

    micro_batch_size: int = 1    # b, sequences per micro-batch
    seq_len: int = 4096          # s, tokens per sequence
    recipe: str | None = None    # paper | megatron | deepseek-v3; None = megatron
    recompute: str | None = None  # none | full | selective
    keep: tuple[str, ...] | None = None  # selective: tensors/modules kept (names in pipesim.model.activations)
    attention: str | None = None  # eager (stores the s^2 softmax) | flash (O(s) statistics)
    fp8_activations: bool | None = None   # store the linear inputs DeepSeek-V3 names in FP8 (1 byte)
    dropout: float | None = None  # attention and hidden dropout probability; 0 = no masks
    recompute_granularity: str | None = None   # full recompute: layer (input only) | sublayer
    cross_entropy: str | None = None   # fp32 (FP32 softmax kept) | fused (gradient in the logits)
    swiglu_fusion: bool | None = None  # SwiGLU keeps only its input
    moe_combine: str | None = None     # output | activation: where routing probabilities apply
    moe_permute_fusion: bool | None = None   # int32 row map instead of int64 gather indices
    shared_placement: str | None = None      # megatron | paper: router and shared-expert layout
    te_wgrad_placeholders: bool | None = None   # TE's weight-shaped placeholder gradients
    inventory: str | None = None       # framework (measured) | paper (the paper's tensor list)
    imbalance: float = 1.0       # expert-load imbalance: multiplies the tokens per routed expert
    expert_tokens: str | None = None   # routed (tokens an expert really receives) | paper (b*s*N_r/N)
    zero: str = "none"           # none | os | os+g | os+g+params
    dtypes: DTypes = dataclasses.field(default_factory=DTypes)   # bytes per value

    def __post_init__(self) -> None:
        from pipesim.model.recipe import DEFAULT_RECIPE, RECIPE_OPTIONS, RECIPES

        name = DEFAULT_RECIPE if self.recipe is None else self.recipe
        object.__setattr__(self, "recipe", name)
        bundle = RECIPES.get(name)
        if bundle is None:        # refused by validate(); fill nothing so the error names recipe
            return
        for f in RECIPE_OPTIONS:
            if getattr(self, f) is None and f != "keep":
                object.__setattr__(self, f, bundle[f])
        if self.keep is None:     # the recipe's keep list goes with its selective recompute only
            object.__setattr__(self, "keep", bundle["keep"] if self.recompute == "selective" else ())
        # a list given for keep becomes a tuple: the config stays immutable and hashable
        object.__setattr__(self, "keep", tuple(self.keep))
        object.__setattr__(self, "dtypes", self.dtypes.resolved(bundle["dtypes"]))

    def validate(self, model: ModelConfig) -> None:
        """Raise ``ModelError`` if the recipe is not understood."""
        from pipesim.model.activations import keep_names   # the tensor names live there
        from pipesim.model.recipe import ALLOWED, RECIPES

        if self.recipe not in RECIPES:
            raise ModelError(f"recipe: one of {', '.join(RECIPES)}; got {self.recipe!r}")
        for f in ("micro_batch_size", "seq_len"):
            if getattr(self, f) < 1:
                raise ModelError(f"{f}: must be >= 1, got {getattr(self, f)}")
        for f, allowed in (("recompute", RECOMPUTE), ("zero", ZERO), ("expert_tokens", EXPERT_TOKENS),
                           *ALLOWED.items()):
            if getattr(self, f) not in allowed:
                raise ModelError(f"{f}: one of {', '.join(allowed)}; got {getattr(self, f)!r}")
        if self.keep and self.recompute != "selective":
            raise ModelError(f"keep: only used with recompute = \"selective\", got recompute = {self.recompute!r}")
        names = keep_names()
        for k in self.keep:
            if k not in names:
                raise ModelError(f"keep: unknown name {k!r}; allowed: {', '.join(names)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout: a probability in [0, 1), got {self.dropout}")
        if self.imbalance < 1.0:
            raise ModelError(f"imbalance: a factor >= 1.0 on the tokens per expert, got {self.imbalance}")
        for f in dataclasses.fields(self.dtypes):
            v, low = getattr(self.dtypes, f.name), 0 if f.name == "master" else 1
            if v < low:
                raise ModelError(f"dtypes.{f.name}: bytes per value, >= {low}; got {v}")

    def validate_layout(self, p: ParallelConfig) -> None:
        """Raise ``ModelError`` if the sequence does not split evenly over the layout: CP cuts
        it into cp chunks (2·cp with Megatron's load-balanced causal split, but cp suffices
        here), and sequence parallelism shards each chunk's tokens over tp. Refused, never
        rounded: a rounded count would describe a run no framework can launch."""
        if self.seq_len % p.cp:
            raise ModelError(f"seq_len: must be divisible by parallel.cp ({p.cp}), got {self.seq_len}")
        tokens = self.micro_batch_size * self.seq_len // p.cp
        if p.sp and p.tp > 1 and tokens % p.tp:
            raise ModelError(f"seq_len: micro_batch_size*seq_len/cp ({tokens}) must be divisible by "
                             f"parallel.tp ({p.tp}) with sequence parallelism (sp = true), got seq_len {self.seq_len}")


# --------------------------------------------------------------------------- presets

def preset_names() -> tuple[str, ...]:
    """The bundled presets: the ``*.toml`` files of ``pipesim/model/presets``."""
    files = resources.files("pipesim.model").joinpath("presets").iterdir()
    return tuple(sorted(f.name[:-5] for f in files if f.name.endswith(".toml")))


def load_preset(name: str, **overrides) -> ModelConfig:
    """The preset ``name`` as a ``ModelConfig``; keyword arguments override its dimensions."""
    if name not in preset_names():
        raise ModelError(f"preset: unknown {name!r}; allowed: {', '.join(preset_names())}")
    text = resources.files("pipesim.model").joinpath("presets", f"{name}.toml").read_text()
    return dataclasses.replace(ModelConfig(**tomllib.loads(text)), **overrides)
