"""onedc: the OneDC one-step diffusion image codec (Xue et al., NeurIPS 2025)."""

from .bitstream import ModelIdentity
from .config import ModelConfig, load_model_config
from .errors import BitstreamError, CheckpointError, ConfigError, ImageError, OneDCError
from .model import LatentReconstruction, OneDC

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
    "load_model_config",
]
