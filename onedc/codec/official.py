"""Correspondence between the official OneDC release's files (OFFICIAL_FORMAT.md) and our
`OneDC.state_dict()` keys.

Our modules keep the official structure below the top level, so each file's mapping is a
table of prefix renames (first match wins). The test suite checks, against the published key
manifest, that every official key maps to exactly one of ours with the same shape.
"""

from __future__ import annotations

OFFICIAL_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    # the codec (IntraNoAR)
    "model_1.safetensors": (
        ("enc.trans_coding.", "codec.g_a.trunk."),
        ("enc.", "codec.g_a."),
        ("hyper_enc.", "codec.h_enc."),
        ("hyper_dec.feat_in.", "codec.h_dec.stem."),
        ("hyper_dec.to_entropy.", "codec.h_dec.trunk."),
        ("y_prior_fusion.", "codec.context.prior_fusion."),
        ("y_spatial_prior_reduction.", "codec.context.reduction."),
        ("y_spatial_prior_adaptor_1.", "codec.context.adaptors.0."),
        ("y_spatial_prior_adaptor_2.", "codec.context.adaptors.1."),
        ("y_spatial_prior_adaptor_3.", "codec.context.adaptors.2."),
        ("y_spatial_prior.", "codec.context.trunk."),
        ("semantic_adaptor.to_semantic.", "codec.h_sem.blocks."),
        ("dec.", "codec.g_s."),
    ),
    # the generator: the LoRA-wrapped U-Net (peft names) with vae_reduction attached
    "model.safetensors": (
        ("vae_reduction.", "generator.vae_reduction."),
        ("", "generator.unet."),
    ),
    # the SD2.1 VAE, diffusers layout
    "sd21_vae": (("", "vae."),),
}


def official_key(file: str, key: str) -> str:
    """Our state-dict key for `key` of an official `file`; KeyError if it has no counterpart."""
    for official, ours in OFFICIAL_PREFIXES[file]:
        if key.startswith(official):
            return ours + key[len(official) :]
    raise KeyError(f"{file}: key without a counterpart: {key}")
