import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from onedc import OneDC
from onedc.codec.code_predictor import code_prediction_loss
from onedc.generator.vae import WindowedAttnProcessor
from onedc.model import build_code_predictor, build_tokenizer, pad_to_multiple


@pytest.fixture()
def model(tiny_config):
    return OneDC.untrained(tiny_config)


def test_only_lora_conv_in_vae_reduction_and_the_codec_train(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    generator = {n for n in trainable if n.startswith("generator.")}
    assert generator and all(".lora_" in n or n.startswith(("generator.unet.conv_in.", "generator.vae_reduction.")) for n in generator)
    assert {n for n in trainable if n.startswith("codec.")} == {f"codec.{n}" for n, _ in model.codec.named_parameters()}
    assert not any(n.startswith("vae.") for n in trainable)
    assert set(model.trainable_state_dict()) == trainable


def test_an_optimizer_step_leaves_the_frozen_weights_unchanged(model, tiny_config, photos):
    predictor, tokenizer = build_code_predictor(tiny_config), build_tokenizer(tiny_config)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    frozen_tokenizer = {n: p.detach().clone() for n, p in tokenizer.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    trainable = [p for p in [*model.parameters(), *predictor.parameters(), *tokenizer.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    x = pad_to_multiple(photos["chelsea"][None, :, :128, :128], 64)
    out = model(x)
    codes, z_q = tokenizer.tokenize(x)
    aux = code_prediction_loss(predictor(out["c"]), codes, tokenizer.codebook, z_q, 0.01)["loss"]
    ((out["x_hat"] - x).abs().mean() + 1e-4 * out["bits"]["y"].mean() + 1e-3 * aux).backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(torch.equal(p, frozen_tokenizer[n]) for n, p in tokenizer.named_parameters())
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any(".lora_B." in n for n in changed)  # B starts at zero: LoRA is the identity at first
    assert "generator.unet.conv_in.weight" in changed and "generator.vae_reduction.short_cut.weight" in changed


def test_lora_starts_as_the_identity(model):
    assert all(torch.count_nonzero(p) == 0 for n, p in model.generator.named_parameters() if ".lora_B." in n)


def test_x0_formula_in_float64_at_t_999(model):
    gen = model.generator
    alpha = gen.alphas_cumprod[999]
    assert gen.alphas_cumprod.dtype == torch.float64 and float(alpha) == pytest.approx(0.0046601, rel=1e-4)
    y_in = torch.randn(1, 32, 8, 8)
    c = torch.randn(1, 4, 32)
    seen = []
    handle = gen.unet.time_proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    eps = gen.unet(y_in, 999, encoder_hidden_states=c).sample
    y_out = gen(y_in, c)
    handle.remove()
    assert [t.tolist() for t in seen] == [[999], [999]]
    expected = (gen.vae_reduction(y_in).double() - (1 - alpha).sqrt() * eps.double()) / alpha.sqrt()
    assert y_out.dtype == torch.float32 and torch.allclose(y_out, expected.float())


def test_cross_attention_reads_the_c_tokens(model):
    gen = model.generator
    y_in = torch.randn(1, 32, 8, 16)
    c = torch.randn(1, 2, 32)
    assert not torch.equal(gen(y_in, c), gen(y_in, c + 1))


@pytest.mark.parametrize("size, same", [((16, 16), True), ((8, 12), True), ((32, 16), False), ((24, 40), False)])
def test_windowed_vae_attention(model, size, same):
    """Equal to global attention up to 16x16 latents, different (as intended) above."""
    attn = model.vae.decoder.mid_block.attentions[0]
    assert isinstance(attn.processor, WindowedAttnProcessor) and attn.processor.window == 16
    x = torch.randn(1, attn.to_q.in_features, *size)
    windowed = attn(x)
    attn.set_processor(AttnProcessor2_0())
    global_ = attn(x)
    assert windowed.shape == x.shape
    assert torch.allclose(windowed, global_, atol=1e-5) == same


def test_gradients_flow_through_the_frozen_vae(model):
    latent = torch.randn(1, 4, 24, 24, requires_grad=True)  # 24 > 16: several windows
    model.vae.decode(latent).sample.square().mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
