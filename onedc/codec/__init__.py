"""The learned compression front end of OneDC (no diffusion inside)."""

from .latent_codec import LatentCodec

__all__ = ["LatentCodec"]
