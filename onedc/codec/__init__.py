"""The learned compression front end of OneDC (no diffusion inside)."""

import warnings

with warnings.catch_warnings():
    # compressai calls torch.jit.script at import time, which recent torch deprecates.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import compressai  # noqa: F401

from .latent_codec import LatentCodec  # noqa: E402

__all__ = ["LatentCodec"]
