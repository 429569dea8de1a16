"""Structured model configuration.

The dataclasses below are the schema; the values live in the Hydra YAML tree under
`configs/` (shipped as the `onedc.configs` package). `load_model_config` composes a named
config (e.g. `onedc_sd15`) or reads a YAML file, checks types against this schema and
values with `validate`, and returns a `ModelConfig`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

PADDING_MODES = ("replicate", "reflect")


@dataclass
class BlockConfig:
    norm_groups: int = MISSING
    norm_eps: float = MISSING
    depthwise_slope: float = MISSING
    ffn_expansion: int = MISSING
    ffn_slopes: list[float] = MISSING
    upsample_slopes: list[float] = MISSING
    stem_slope: float = MISSING


@dataclass
class UNetConfig:
    block_out_channels: list[int] = MISSING
    down_block_types: list[str] = MISSING
    up_block_types: list[str] = MISSING
    layers_per_block: int = MISSING
    attention_head_dim: int = MISSING
    norm_num_groups: int = MISSING
    norm_eps: float = MISSING


@dataclass
class AnalysisConfig:
    patch_size: int = MISSING
    pixel_channels: int = MISSING
    latent_channels: int = MISSING
    fused_channels: int = MISSING
    stem_blocks: int = MISSING
    trunk_channels: int = MISSING
    timestep: int = MISSING
    unet: UNetConfig = field(default_factory=UNetConfig)


@dataclass
class HyperEncoderConfig:
    channels: list[int] = MISSING


@dataclass
class FSQConfig:
    levels: list[int] = MISSING
    eps: float = MISSING


@dataclass
class HyperDecoderConfig:
    channels: int = MISSING


@dataclass
class SemanticConfig:
    channels: int = MISSING
    stages: int = MISSING
    attentions_per_stage: int = MISSING


@dataclass
class SynthesisConfig:
    y_channels: list[int] = MISSING
    c_channels: list[int] = MISSING
    res_blocks: int = MISSING
    out_channels: int = MISSING


@dataclass
class ExactConfig:
    frac_bits: int = MISSING
    max_weight_frac_bits: int = MISSING
    act_bound: int = MISSING


@dataclass
class EntropyConfig:
    scale_min: float = MISSING
    scale_max: float = MISSING
    scale_levels: int = MISSING
    official_eval_scale_min: float = MISSING
    tail_mass: float = MISSING
    likelihood_bound: float = MISSING
    rate_eps: float = MISSING
    noise: float = MISSING
    max_symbol: int = MISSING
    exact: ExactConfig = field(default_factory=ExactConfig)


@dataclass
class CodecConfig:
    y_channels: int = MISSING
    z_only: bool = MISSING
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    hyper_encoder: HyperEncoderConfig = field(default_factory=HyperEncoderConfig)
    fsq: FSQConfig = field(default_factory=FSQConfig)
    hyper_decoder: HyperDecoderConfig = field(default_factory=HyperDecoderConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)


@dataclass
class GeneratorUNetConfig:
    """diffusers UNet2DConditionModel arguments (SD1.5 at full size)."""

    sample_size: int = MISSING
    in_channels: int = MISSING
    out_channels: int = MISSING
    block_out_channels: list[int] = MISSING
    down_block_types: list[str] = MISSING
    up_block_types: list[str] = MISSING
    layers_per_block: int = MISSING
    attention_head_dim: int = MISSING
    cross_attention_dim: int = MISSING
    norm_num_groups: int = MISSING
    norm_eps: float = MISSING


@dataclass
class LoraSettings:
    rank: int = MISSING
    alpha: float = MISSING
    target_modules: list[str] = MISSING


@dataclass
class NoiseScheduleConfig:
    num_train_timesteps: int = MISSING
    beta_start: float = MISSING
    beta_end: float = MISSING
    beta_schedule: str = MISSING


@dataclass
class GeneratorConfig:
    unet: GeneratorUNetConfig = field(default_factory=GeneratorUNetConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    timestep: int = MISSING
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    reduction_groups: int = MISSING
    reduction_eps: float = MISSING


@dataclass
class VAEConfig:
    block_out_channels: list[int] = MISSING
    down_block_types: list[str] = MISSING
    up_block_types: list[str] = MISSING
    layers_per_block: int = MISSING
    latent_channels: int = MISSING
    norm_num_groups: int = MISSING
    sample_size: int = MISSING
    scaling_factor: float = MISSING
    attention_window: int = MISSING


@dataclass
class PredictorConfig:
    """The Swin code predictor P_aux (docs/design.md 3.9); its width is codec.semantic.channels."""

    blocks: int = MISSING
    heads: int = MISSING
    head_dim: int = MISSING
    window: int = MISSING
    mlp_ratio: int = MISSING
    position_bias_blocks: int = MISSING
    head_channels: int = MISSING
    head_groups: int = MISSING
    layer_norm_eps: float = MISSING
    head_norm_eps: float = MISSING


@dataclass
class TokenizerConfig:
    """The MaskGIT VQGAN encoder and codebook (docs/design.md 5)."""

    hidden_channels: int = MISSING
    channel_mult: list[int] = MISSING
    res_blocks: int = MISSING
    z_channels: int = MISSING
    codebook_size: int = MISSING
    norm_groups: int = MISSING
    norm_eps: float = MISSING
    input_downsample: int = MISSING


@dataclass
class DistillationConfig:
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mse_weight: float = MISSING


@dataclass
class TextEncoderConfig:
    """CLIP text encoder of the Stage II critics (SD1.5's CLIP-L at full size)."""

    hidden_size: int = MISSING
    layers: int = MISSING
    heads: int = MISSING
    intermediate_size: int = MISSING
    vocab_size: int = MISSING
    max_length: int = MISSING
    hidden_act: str = MISSING


@dataclass
class ExternalConfig:
    """Names of the external weights (see `onedc weights check`) of the frozen parts; null
    keeps the seeded initialisation (tiny configs)."""

    unet: Optional[str] = None
    vae: Optional[str] = None
    tokenizer: Optional[str] = None
    score_unet: Optional[str] = None  # Stage II: real and fake scores start from it
    text_encoder: Optional[str] = None
    text_tokenizer: Optional[str] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    seed: int = MISSING
    image_multiple: int = MISSING
    image_padding: str = MISSING
    blocks: BlockConfig = field(default_factory=BlockConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    external: ExternalConfig = field(default_factory=ExternalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_config_names() -> list[str]:
    """Names of the model configs shipped in `configs/model/`."""
    from importlib.resources import files

    return sorted(p.name[: -len(".yaml")] for p in files("onedc.configs.model").iterdir() if p.name.endswith(".yaml"))


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """Compose the model config `name_or_path` (a name under configs/model/, or a YAML file
    holding a complete model config) and return it checked and validated."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"model config file not found: {path}")
        try:
            raw = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends
            raise ConfigError(f"cannot read model config {path}: {e}") from e
        return model_config_from_dict(raw, source=str(path))
    name = str(name_or_path)
    if name not in model_config_names():
        raise ConfigError(f"unknown model config {name!r}; available: {', '.join(model_config_names())}")
    from hydra import compose, initialize_config_module

    with initialize_config_module("onedc.configs", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"])
    return model_config_from_dict(cfg.model, source=name)


def parse_structured(schema: type, raw: Any, what: str) -> Any:
    """`raw` (dict or DictConfig) checked against the dataclass `schema` (types, unknown and
    missing keys) and returned as an instance of it; ConfigError otherwise."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid {what}: {e}") from e


def model_config_from_dict(raw: Any, source: str = "config") -> ModelConfig:
    """Check `raw` (dict or DictConfig) against the schema and validate its values."""
    cfg = parse_structured(ModelConfig, raw, f"model config ({source})")
    validate(cfg)
    return cfg


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: ModelConfig) -> None:
    """Value checks the type schema cannot express; raises ConfigError naming the key."""
    b, c, a, e = cfg.blocks, cfg.codec, cfg.codec.analysis, cfg.codec.entropy
    positive = {
        "blocks.norm_groups": b.norm_groups,
        "blocks.ffn_expansion": b.ffn_expansion,
        "codec.y_channels": c.y_channels,
        "codec.analysis.pixel_channels": a.pixel_channels,
        "codec.analysis.latent_channels": a.latent_channels,
        "codec.analysis.fused_channels": a.fused_channels,
        "codec.analysis.stem_blocks": a.stem_blocks,
        "codec.analysis.trunk_channels": a.trunk_channels,
        "codec.hyper_decoder.channels": c.hyper_decoder.channels,
        "codec.semantic.channels": c.semantic.channels,
        "codec.semantic.stages": c.semantic.stages,
        "codec.synthesis.res_blocks": c.synthesis.res_blocks,
        "codec.synthesis.out_channels": c.synthesis.out_channels,
        "codec.entropy.scale_levels": e.scale_levels,
        "codec.entropy.max_symbol": e.max_symbol,
    }
    for key, value in positive.items():
        _require(value > 0, f"{key} must be positive, got {value}")
    _require(b.ffn_expansion % 2 == 0, f"blocks.ffn_expansion must be even, got {b.ffn_expansion}")
    _require(len(b.ffn_slopes) == 2, "blocks.ffn_slopes must hold two slopes")
    _require(len(b.upsample_slopes) == 2, "blocks.upsample_slopes must hold two slopes")
    _require(c.y_channels % 4 == 0, f"codec.y_channels must be divisible by 4 (quadtree channel groups), got {c.y_channels}")
    _require(a.patch_size == 8, f"codec.analysis.patch_size must be 8 (g_s and the SD latent are at 1/8), got {a.patch_size}")
    n_blocks = len(a.unet.block_out_channels)
    _require(n_blocks == 3, f"codec.analysis.unet.block_out_channels must have 3 entries (the mid-block sits at 1/64), got {n_blocks}")
    _require(
        len(a.unet.down_block_types) == n_blocks and len(a.unet.up_block_types) == n_blocks,
        "codec.analysis.unet: down_block_types and up_block_types need one entry per block_out_channels entry",
    )
    _require(cfg.image_multiple == 64, f"image_multiple must be 64 (z sits at 1/64), got {cfg.image_multiple}")
    _require(cfg.image_padding in PADDING_MODES, f"image_padding must be one of {', '.join(PADDING_MODES)}, got {cfg.image_padding!r}")
    _require(len(c.hyper_encoder.channels) == 2, "codec.hyper_encoder.channels must hold two widths")
    _require(len(c.synthesis.y_channels) == 2, "codec.synthesis.y_channels must hold two widths")
    _require(len(c.synthesis.c_channels) == 3, "codec.synthesis.c_channels must hold three widths")
    _require(len(c.fsq.levels) >= 1 and all(n >= 2 for n in c.fsq.levels), f"codec.fsq.levels must be integers >= 2, got {c.fsq.levels}")
    _require(0 <= c.fsq.eps < 1, f"codec.fsq.eps must be in [0, 1), got {c.fsq.eps}")
    grouped = {
        "codec.analysis.fused_channels": a.fused_channels,
        "codec.analysis.trunk_channels": a.trunk_channels,
        "codec.semantic.channels": c.semantic.channels,
        **{f"codec.analysis.unet.block_out_channels[{i}]": w for i, w in enumerate(a.unet.block_out_channels)},
        **{f"codec.hyper_encoder.channels[{i}]": w for i, w in enumerate(c.hyper_encoder.channels)},
        **{f"codec.synthesis.y_channels[{i}]": w for i, w in enumerate(c.synthesis.y_channels)},
    }
    for key, width in grouped.items():
        _require(width % b.norm_groups == 0, f"{key}={width} is not divisible by blocks.norm_groups={b.norm_groups}")
    for i, w in enumerate(a.unet.block_out_channels):
        _require(w % a.unet.norm_num_groups == 0, f"codec.analysis.unet.block_out_channels[{i}]={w} is not divisible by norm_num_groups")
    _require(0 < e.scale_min < e.scale_max, f"codec.entropy needs 0 < scale_min < scale_max, got {e.scale_min}, {e.scale_max}")
    _require(0 < e.official_eval_scale_min, "codec.entropy.official_eval_scale_min must be positive")
    _require(e.scale_levels >= 2, "codec.entropy.scale_levels must be at least 2")
    _require(0 < e.tail_mass < 1e-2, f"codec.entropy.tail_mass must be in (0, 0.01), got {e.tail_mass}")
    _require(0 < e.likelihood_bound < 1, "codec.entropy.likelihood_bound must be in (0, 1)")
    _require(0 <= e.rate_eps < 1, "codec.entropy.rate_eps must be in [0, 1)")
    _require(0 <= e.noise <= 0.5, "codec.entropy.noise must be in [0, 0.5]")
    _require(e.max_symbol < 2**30, "codec.entropy.max_symbol must be below 2^30")
    x = e.exact
    _require(x.act_bound > 0 and math.log2(x.act_bound).is_integer(), f"codec.entropy.exact.act_bound must be a power of two, got {x.act_bound}")
    _require(0 < x.frac_bits and 0 <= x.max_weight_frac_bits, "codec.entropy.exact: frac_bits must be positive")
    _require(
        x.frac_bits + math.log2(x.act_bound) < 45,
        "codec.entropy.exact: frac_bits + log2(act_bound) must stay below 45 to leave room for weights in float64",
    )
    _require(
        (e.max_symbol + x.act_bound) * 2**x.frac_bits < 2**53,
        "codec.entropy.exact: max_symbol + act_bound must be representable on the 2^-frac_bits grid in float64",
    )
    v = cfg.vae
    _require(
        len(v.down_block_types) == len(v.block_out_channels) == len(v.up_block_types),
        "vae: down_block_types, up_block_types and block_out_channels must have the same length",
    )
    _require(v.latent_channels == a.latent_channels, "vae.latent_channels must equal codec.analysis.latent_channels")
    _require(2 ** (len(v.block_out_channels) - 1) == a.patch_size, "the VAE must downsample by codec.analysis.patch_size (8)")
    _require(v.attention_window > 0, "vae.attention_window must be positive")
    g, gu = cfg.generator, cfg.generator.unet
    _require(
        gu.cross_attention_dim == c.semantic.channels,
        f"generator.unet.cross_attention_dim ({gu.cross_attention_dim}) must equal codec.semantic.channels "
        f"({c.semantic.channels}): c replaces the text tokens",
    )
    _require(gu.out_channels == v.latent_channels, "generator.unet.out_channels must equal vae.latent_channels")
    _require(
        c.synthesis.out_channels % g.reduction_groups == 0,
        f"codec.synthesis.out_channels ({c.synthesis.out_channels}) must be divisible by generator.reduction_groups",
    )
    _require(0 <= g.timestep < g.noise_schedule.num_train_timesteps, "generator.timestep must lie in [0, num_train_timesteps)")
    _require(g.lora.rank > 0 and g.lora.alpha > 0, "generator.lora: rank and alpha must be positive")
    _require(
        cfg.text_encoder.hidden_size == gu.cross_attention_dim,
        "text_encoder.hidden_size must equal generator.unet.cross_attention_dim (the critics' cross-attention width)",
    )
    p, t = cfg.distillation.predictor, cfg.distillation.tokenizer
    _require(
        p.heads * p.head_dim == c.semantic.channels,
        f"distillation.predictor: heads x head_dim ({p.heads * p.head_dim}) must equal codec.semantic.channels ({c.semantic.channels})",
    )
    _require(p.window % 2 == 0 and p.window > 0, "distillation.predictor.window must be positive and even (shift = window / 2)")
    _require(0 <= p.position_bias_blocks <= p.blocks, "distillation.predictor.position_bias_blocks must be in [0, blocks]")
    _require(p.head_channels % p.head_groups == 0 and c.semantic.channels % p.head_groups == 0,
             "distillation.predictor.head_groups must divide the head widths")
    # tokens sit at 1/32: the predictor upsamples c (1/64) by 2, the tokenizer sees the image
    # downsampled by input_downsample and reduces it by 2^(levels - 1)
    _require(
        t.input_downsample * 2 ** (len(t.channel_mult) - 1) == 32,
        "distillation.tokenizer: input_downsample x 2^(len(channel_mult) - 1) must be 32 to match the code predictor's 1/32 grid",
    )
    _require(all(t.hidden_channels * m % t.norm_groups == 0 for m in t.channel_mult), "distillation.tokenizer: norm_groups must divide every width")
