"""Full-size architecture against SPEC.md section 0.1 and the released key manifest."""

import json
from pathlib import Path

import torch

from onedc.cli import main, parameter_table
from onedc.codec import LatentCodec
from onedc.codec.official import official_codec_key
from onedc.config import load_model_config

SPEC_COUNTS = {
    "g_a (analysis)": 299_130_112,
    "h_enc (hyper-encoder)": 14_781_063,
    "hyper-decoder (stem + h_ctx trunk)": 960_128,
    "context model": 4_211_712,
    "h_sem (semantic decoder)": 39_185_792,
    "g_s (synthesis)": 35_878_976,
    "codec total": 394_147_783,
    "SD VAE encoder (frozen)": 34_163_664,
    "SD VAE decoder (frozen)": 49_490_199,
    "SD VAE total (frozen)": 83_653_863,
}


def test_full_size_parameter_counts_match_the_spec_exactly():
    assert dict(parameter_table("onedc_sd15")) == SPEC_COUNTS


def test_context_model_parts_match_the_spec():
    cfg = load_model_config("onedc_sd15")
    with torch.device("meta"):
        context = LatentCodec(cfg.codec, cfg.blocks).context
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(context.prior_fusion) == 1_006_976
    assert count(context.reduction) == 32_896
    assert [count(a) for a in context.adaptors] == [528_640] * 3
    assert count(context.trunk) == 1_585_920


def test_info_command_prints_the_counts(capsys):
    assert main(["info", "--model", "onedc_sd15"]) == 0
    out = capsys.readouterr().out
    assert "394,147,783" in out and "299,130,112" in out and "83,653,863" in out


def test_every_official_codec_key_maps_onto_ours_with_its_shape():
    manifest = json.loads((Path(__file__).parent / "data" / "official_codec_keys.json").read_text())["keys"]
    cfg = load_model_config("onedc_sd15")
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in LatentCodec(cfg.codec, cfg.blocks).state_dict().items()}
    mapped = {official_codec_key(k): shape for k, shape in manifest.items()}
    assert len(mapped) == len(manifest) == 779
    assert mapped == ours
