"""Every numerical constant of the full-size generator and codec, pinned to the value the
released model expects (docs/design.md, "Constants"). A change of a config value or of a
library default that moves one of them fails here."""

import math
import re
from collections import defaultdict

import pytest
import torch
from torch import nn

from onedc import OneDC, load_model_config
from onedc.codec.entropy_coding import GaussianCoder
from onedc.generator.one_step_unet import alphas_cumprod
from onedc.model import build_code_predictor, build_tokenizer


@pytest.fixture(scope="module")
def sd15():
    return load_model_config("onedc_sd15")


@pytest.fixture(scope="module")
def model(sd15):
    with torch.device("meta"):
        return OneDC(sd15)


def norm_eps(module: nn.Module) -> dict[str, set[float]]:
    """{norm kind and place (digits folded): eps values} over every GroupNorm and LayerNorm."""
    found = defaultdict(set)
    for name, m in module.named_modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            found[f"{type(m).__name__} {re.sub(r'[0-9]+', 'N', name)}"].add(m.eps)
    return found


def eps_where(found: dict[str, set[float]], pattern: str) -> set[float]:
    return set().union(*(v for k, v in found.items() if re.search(pattern, k)))


def test_codec_norms(model):
    found = norm_eps(model.codec)
    # VQGAN-style ResBlk / Attn of the official codec (g_a stem and trunk, h_enc, h_sem, g_s)
    assert eps_where(found, r"^GroupNorm (?!g_a\.unet\.(?!conv_in))") == {1e-6}
    # the diffusers UNet2DModel inside g_a keeps diffusers' default, as the official model
    assert eps_where(found, r"^GroupNorm g_a\.unet\.(?!conv_in)") == {1e-5}
    assert eps_where(found, r"LayerNorm") == set()


def test_generator_norms(model):
    found = norm_eps(model.generator)
    assert eps_where(found, r"^GroupNorm vae_reduction") == {1e-6}
    # SD1.5: resnets and conv_norm_out 1e-5; the transformers' GroupNorm 1e-6, LayerNorms 1e-5
    assert eps_where(found, r"^GroupNorm unet\.(?!.*attentions)") == {1e-5}
    assert eps_where(found, r"^GroupNorm unet\..*attentions\.N\.norm$") == {1e-6}
    assert eps_where(found, r"^LayerNorm unet\..*transformer_blocks") == {1e-5}
    assert sum(len(v) for v in found.values()) == len(found)  # one eps per place


def test_vae_and_training_only_norms(model, sd15):
    assert eps_where(norm_eps(model.vae), ".") == {1e-6}
    with torch.device("meta"):
        predictor, tokenizer = build_code_predictor(sd15), build_tokenizer(sd15)
    assert eps_where(norm_eps(predictor), "LayerNorm") == {1e-5}
    assert eps_where(norm_eps(predictor), "GroupNorm") == {1e-5}
    assert eps_where(norm_eps(tokenizer), ".") == {1e-6}
    from onedc.train.config import compose

    assert compose(["experiment=stage2", "train.init_from=x"]).dmd.head_norm_eps == 1e-5  # DMD2's GAN head


def test_noise_schedule_and_the_t999_conversion(model, sd15):
    g = sd15.generator
    assert g.timestep == 999 and (g.noise_schedule.beta_start, g.noise_schedule.beta_end) == (0.00085, 0.012)
    a = alphas_cumprod(g.noise_schedule)
    assert a.dtype == torch.float64 and a.shape == (1000,)
    # scaled_linear: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, in float32 as diffusers
    # computes them (and the official code takes them from diffusers)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    assert torch.equal(a, torch.cumprod(1 - betas, 0).double())
    assert float(a[999]) == 0.00466009508818388
    # y_out = (x_t - sqrt(1 - a) eps) / sqrt(a) = 14.649 x_t - 14.615 eps
    assert (1 / math.sqrt(float(a[999])), math.sqrt(1 - float(a[999])) / math.sqrt(float(a[999]))) == pytest.approx((14.649, 14.615), abs=1e-3)


def test_fsq(model):
    fsq = model.codec.fsq.to_empty(device="cpu")
    fresh = type(fsq)(load_model_config("onedc_sd15").codec.fsq)  # the non-persistent buffers, on the CPU
    assert (fresh.dim, fresh.codebook_size, fresh.bits) == (7, 16384, 14)
    assert fresh._half_l.flatten().tolist() == pytest.approx([1.5015] * 7)
    assert fresh._offset.flatten().tolist() == [0.5] * 7
    assert fresh._shift.flatten().tolist() == pytest.approx([math.atanh(0.5 / 1.5015)] * 7)
    assert sorted(set(fresh.codes(torch.arange(16384).view(1, 128, 128)).flatten().tolist())) == [-1.0, -0.5, 0.0, 0.5]


def test_entropy_and_vae_constants(sd15):
    e = sd15.codec.entropy
    assert (e.scale_min, e.scale_max, e.scale_levels, e.official_eval_scale_min) == (0.11, 64.0, 256, 1e-5)
    assert (e.likelihood_bound, e.rate_eps, e.noise, e.tail_mass) == (1e-9, 1e-5, 0.5, 1e-9)
    table = GaussianCoder(e).tables.scales
    assert len(table) == 256 and table[0] == pytest.approx(0.11) and table[-1] == pytest.approx(64.0)
    assert (sd15.vae.scaling_factor, sd15.vae.attention_window) == (0.18215, 16)
    assert (sd15.generator.lora.rank, sd15.generator.lora.alpha) == (64, 8.0)  # scale 0.125
    assert (sd15.image_multiple, sd15.image_padding) == (64, "replicate")
    assert load_model_config("onedc_sd15_zonly").image_padding == "reflect"
    assert sd15.codec.analysis.timestep == 999 and sd15.blocks.norm_groups == 32
