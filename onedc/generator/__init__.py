"""Diffusion-side modules: the frozen SD VAE (and, later, the one-step U-Net)."""
