"""Diffusion-side modules: the one-step U-Net generator, the frozen SD VAE, and the MaskGIT
tokenizer of semantic distillation (training only)."""
