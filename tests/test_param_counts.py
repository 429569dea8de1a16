"""Full-size architecture against docs/design.md 4 and the released key manifest."""

import json
import math
from pathlib import Path

import torch

from onedc import OneDC
from onedc.cli import main
from onedc.codec import LatentCodec
from onedc.config import load_model_config
from onedc.model import build_code_predictor, build_tokenizer, parameter_table
from onedc.official import official_key

EXPECTED_COUNTS = {
    "g_a (analysis)": 299_130_112,
    "h_enc (hyper-encoder)": 14_781_063,
    "hyper-decoder (stem + h_ctx trunk)": 960_128,
    "context model": 4_211_712,
    "h_sem (semantic decoder)": 39_185_792,
    "g_s (synthesis)": 35_878_976,
    "codec total": 394_147_783,
    "U-Net base (frozen, without SD1.5's conv_in)": 859_509_124,
    "LoRA (rank 64)": 67_252_224,
    "new conv_in": 921_920,
    "vae_reduction": 936_008,
    "generator trainable (LoRA + conv_in + vae_reduction)": 69_110_152,
    "SD VAE encoder (frozen)": 34_163_664,
    "SD VAE decoder (frozen)": 49_490_199,
    "SD VAE total (frozen)": 83_653_863,
    "total for inference": 1_406_420_922,
    "code predictor (Stage I training only)": 59_922_176,  # the 6 fixed shift masks are computed, not stored
    "MaskGIT tokenizer encoder + codebook (frozen, training only)": 23_775_104 + 262_144,
}
MASKGIT_DECODER = 30_478_339  # in the public .bin, never built: 54,515,587 in all


def test_full_size_parameter_counts_match_the_spec_exactly():
    assert dict(parameter_table(load_model_config("onedc_sd15"))) == EXPECTED_COUNTS


def test_the_tokenizer_file_holds_our_encoder_and_codebook_plus_a_decoder():
    manifest = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())["files"]
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in build_tokenizer(load_model_config("onedc_sd15")).state_dict().items()}
    maskgit = manifest["maskgit_vqgan"]
    assert {k: v for k, v in maskgit.items() if not k.startswith("decoder.")} == ours
    assert sum(math.prod(v) for k, v in maskgit.items() if k.startswith("decoder.")) == MASKGIT_DECODER
    assert EXPECTED_COUNTS["MaskGIT tokenizer encoder + codebook (frozen, training only)"] + MASKGIT_DECODER == 54_515_587


def test_the_code_predictor_matches_the_released_keys():
    manifest = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())["files"]
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in build_code_predictor(load_model_config("onedc_sd15")).state_dict().items()}
    released = manifest["code_predictor"]
    masks = {k for k in released if k.endswith(("left_right_mask", "upper_lower_mask"))}
    assert len(masks) == 6 and sum(math.prod(released[k]) for k in masks) == 60_315_392 - 59_922_176
    assert {k: v for k, v in released.items() if k not in masks} == ours


def test_lora_wraps_the_spec_layers():
    with torch.device("meta"):
        unet = OneDC(load_model_config("onedc_sd15")).generator.unet
    names = [n for n, _ in unet.named_parameters()]
    assert len([n for n in names if ".lora_A." in n]) == 278
    assert sum(p.numel() for n, p in unet.named_parameters() if ".lora_A." in n) == 47_058_944
    assert not any(n.startswith(("conv_in.", "conv_out.", "time_embedding.")) and "lora" in n for n in names)


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


def test_every_official_key_maps_onto_ours_with_its_shape():
    """The released codec and generator files and the SD2.1 VAE cover our full-size state dict
    exactly, through prefix renames."""
    manifest = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())["files"]
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in OneDC(load_model_config("onedc_sd15")).state_dict().items()}
    mapped = {}
    for file in ("model_1.safetensors", "model.safetensors", "sd21_vae"):
        keys = manifest[file]
        for key, shape in keys.items():
            mapped[official_key(file, key)] = shape
    assert len(mapped) == 779 + 1252 + 248
    assert mapped == ours
