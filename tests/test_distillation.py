"""Semantic distillation modules: the MaskGIT tokenizer, the Swin code predictor, L_aux."""

import pytest
import torch
import torch.nn.functional as F

from onedc import OneDC
from onedc.codec.code_predictor import WindowAttention, code_prediction_loss, shifted_window_mask
from onedc.model import build_code_predictor, build_tokenizer


def test_tokens_sit_on_the_predictors_1_32_grid(tiny_config):
    tokenizer, predictor = build_tokenizer(tiny_config), build_code_predictor(tiny_config)
    x = torch.rand(2, 3, 256, 192) * 2 - 1
    codes, z_q = tokenizer.tokenize(x)
    assert codes.shape == (2, 8, 6) and z_q.shape == (2, 16, 8, 6)
    c = torch.randn(2, tiny_config.codec.semantic.channels, 4, 3)  # c of the same image, at 1/64
    with pytest.raises(ValueError, match="multiple of its window"):
        predictor(c)  # 8 x 6 is not a multiple of the 4 x 4 window
    assert predictor(torch.randn(2, 32, 4, 4)).shape == (2, 64, 8, 8)


def test_codebook_picks_the_nearest_entry_and_is_frozen(tiny_config):
    tokenizer = build_tokenizer(tiny_config)
    z = torch.randn(1, 16, 3, 5)
    codes, z_q = tokenizer.quantize(z)
    e = tokenizer.codebook
    brute = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 16), e).argmin(1).view(1, 3, 5)
    assert torch.equal(codes, brute) and torch.equal(z_q, e[codes].permute(0, 3, 1, 2))
    assert not any(p.requires_grad for p in tokenizer.parameters())


def test_loss_on_known_inputs():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    codes = torch.tensor([[[0, 2]]])
    z_q = codebook[codes].permute(0, 3, 1, 2)
    confident = F.one_hot(codes, 3).permute(0, 3, 1, 2).float() * 50
    out = code_prediction_loss(confident, codes, codebook, z_q, 0.01)
    assert out["ce"] < 1e-6 and out["mse"] < 1e-6
    uniform = torch.zeros(1, 3, 1, 2)
    out = code_prediction_loss(uniform, codes, codebook, z_q, 0.01)
    # CE = log 3; soft code = mean entry (2/3, 2/3): squared errors (1/9, 4/9) and (1/9, 1/9)
    assert out["ce"] == pytest.approx(torch.log(torch.tensor(3.0)).item())
    assert out["mse"] == pytest.approx((1 / 9 + 4 / 9 + 1 / 9 + 1 / 9) / 4)
    assert out["loss"] == pytest.approx(out["ce"].item() + 0.01 * out["mse"].item())


def test_shifted_windows_connect_neighbours_across_window_borders_but_not_across_the_wrap():
    attn = WindowAttention(dim=8, heads=2, head_dim=4, window=4, shifted=True, position_bias=False)
    x = torch.randn(1, 8, 8, 8)

    def influence(src, dst):
        x2 = x.clone()
        x2[0, src[0], src[1]] += 1
        return not torch.allclose(attn(x)[0, dst[0], dst[1]], attn(x2)[0, dst[0], dst[1]])

    assert influence((3, 3), (4, 4))  # different plain windows, one shifted window
    assert not influence((0, 0), (7, 7))  # same shifted window only through the cyclic wrap: masked
    assert not influence((0, 0), (3, 3))  # shifted apart
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and not mask[0].any() and mask[3].any()


def test_the_loss_trains_h_sem_through_c(tiny_config):
    model = OneDC.untrained(tiny_config)
    predictor, tokenizer = build_code_predictor(tiny_config), build_tokenizer(tiny_config)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    codes, z_q = tokenizer.tokenize(x)
    out = model.codec(x, model.encode_latent(x))
    loss = code_prediction_loss(predictor(out["c"]), codes, tokenizer.codebook, z_q, tiny_config.distillation.mse_weight)
    loss["loss"].backward()
    assert model.codec.h_sem.blocks[0].block[0].conv2.weight.grad.abs().sum() > 0
    assert model.codec.g_a.unet.mid_block.resnets[0].conv1.weight.grad.abs().sum() > 0  # sem path
    assert predictor.blocks[0].block_w.attention_block.pos_embedding.grad is not None


def test_inference_model_holds_no_training_only_modules(tiny_model):
    names = {type(m).__name__ for m in tiny_model.modules()}
    assert not names & {"CodePredictor", "MaskGITTokenizer"}
