"""Correspondence between the released codec checkpoint (`model_1.safetensors` of the
official OneDC release, see OFFICIAL_FORMAT.md) and our `LatentCodec` state dict.

Our modules keep the official structure below the top level, so the mapping is a table of
prefix renames (longest prefix first). Every official key maps to exactly one of ours with
the same shape; the test suite checks this against the published key manifest.
"""

from __future__ import annotations

OFFICIAL_CODEC_PREFIXES: tuple[tuple[str, str], ...] = (
    ("enc.trans_coding.", "g_a.trunk."),
    ("enc.", "g_a."),
    ("hyper_enc.", "h_enc."),
    ("hyper_dec.feat_in.", "h_dec.stem."),
    ("hyper_dec.to_entropy.", "h_dec.trunk."),
    ("y_prior_fusion.", "context.prior_fusion."),
    ("y_spatial_prior_reduction.", "context.reduction."),
    ("y_spatial_prior_adaptor_1.", "context.adaptors.0."),
    ("y_spatial_prior_adaptor_2.", "context.adaptors.1."),
    ("y_spatial_prior_adaptor_3.", "context.adaptors.2."),
    ("y_spatial_prior.", "context.trunk."),
    ("semantic_adaptor.to_semantic.", "h_sem.blocks."),
    ("dec.", "g_s."),
)


def official_codec_key(key: str) -> str:
    """Our LatentCodec key for an official codec key; KeyError if it has no counterpart."""
    for official, ours in OFFICIAL_CODEC_PREFIXES:
        if key.startswith(official):
            return ours + key[len(official) :]
    raise KeyError(f"official codec key without a counterpart: {key}")
