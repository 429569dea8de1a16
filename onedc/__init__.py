"""onedc: the OneDC one-step diffusion image codec (Xue et al., NeurIPS 2025)."""

from .bitstream import ModelIdentity
from .config import ModelConfig, load_model_config
from .errors import BitstreamError, CheckpointError, ConfigError, ImageError, OneDCError, SizeLimitError, WeightsError, WriteError

__version__ = "0.1.0"

__all__ = [
    "BitstreamError",
    "CheckpointError",
    "ConfigError",
    "ImageError",
    "LatentReconstruction",
    "ModelConfig",
    "ModelIdentity",
    "OneDC",
    "OneDCError",
    "SizeLimitError",
    "WeightsError",
    "WriteError",
    "load_model_config",
]


def __getattr__(name: str):
    # The model pulls in diffusers (seconds to import); load it on first use only.
    if name in ("OneDC", "LatentReconstruction"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'onedc' has no attribute {name!r}")
