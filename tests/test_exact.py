"""The fixed-point evaluation gives the same bits whatever the summation order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onedc import ConfigError
from onedc.codec.blocks import DepthConvBlock
from onedc.codec.exact import ExactConv2d, exact_copy, to_grid


def test_exact_conv_is_close_to_the_float_conv(tiny_config):
    cfg = tiny_config.codec.entropy.exact
    conv = nn.Conv2d(32, 16, 3, padding=1)
    x = torch.randn(2, 32, 9, 7)
    exact = ExactConv2d(conv, cfg)
    assert 16 <= exact.weight_frac_bits <= cfg.max_weight_frac_bits
    assert torch.allclose(exact(x.double()).float(), conv(x), atol=1e-3)


def test_exact_conv_does_not_depend_on_the_order_of_its_sums(tiny_config):
    """conv2d against an explicit unfold + matmul over reversed input channels: in float64
    fixed point both are exact, so the bits agree; plain float32 convs generally do not."""
    cfg = tiny_config.codec.entropy.exact
    exact = ExactConv2d(nn.Conv2d(64, 8, 3, padding=1), cfg)
    x = to_grid(torch.randn(1, 64, 12, 12).double() * 50, cfg.frac_bits)
    reference = exact(x)
    cols = F.unfold(x.flip(1), 3, padding=1)  # (1, 64*9, 144), channels reversed
    w = exact.weight.flip(1).reshape(8, -1)
    manual = to_grid((w @ cols).reshape(1, 8, 12, 12) + exact.bias.view(1, -1, 1, 1), cfg.frac_bits)
    assert torch.equal(reference, manual)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(exact(x), reference)
    finally:
        torch.set_num_threads(threads)


def test_large_weights_get_a_coarser_grid_instead_of_failing(tiny_config):
    cfg = tiny_config.codec.entropy.exact
    conv = nn.Conv2d(256, 4, 3)
    with torch.no_grad():
        conv.weight.fill_(300.0)
    exact = ExactConv2d(conv, cfg)
    assert exact.weight_frac_bits < cfg.max_weight_frac_bits
    assert float(exact.weight.abs().sum(dim=(1, 2, 3)).max()) * cfg.act_bound * 2**cfg.frac_bits * 2**exact.weight_frac_bits < 2**53


def test_exact_copy_keeps_the_forward_code_and_rejects_normalisation(tiny_config):
    cfg = tiny_config.codec.entropy.exact
    block = DepthConvBlock(8, 8, tiny_config.blocks)
    copy = exact_copy(block, cfg)
    x = torch.randn(1, 8, 5, 5)
    assert copy(x.double()).dtype == torch.float64
    assert torch.allclose(copy(x.double()).float(), block(x), atol=1e-3)
    with pytest.raises(ConfigError, match="GroupNorm"):
        exact_copy(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4)), cfg)


@pytest.mark.parametrize("kind", ["pointwise", "depthwise", "strided"])
def test_fast_conv_paths_give_the_bits_of_the_reference_conv(tiny_config, kind):
    """1x1 convs run as GEMMs and CPU depthwise convs as sums over their taps; both must give
    exactly what F.conv2d (im2col + GEMM) gives on the same fixed-point weights."""
    cfg = tiny_config.codec.entropy.exact
    conv = {
        "pointwise": nn.Conv2d(48, 96, 1),
        "depthwise": nn.Conv2d(48, 48, 3, padding=1, groups=48),
        "strided": nn.Conv2d(48, 48, 3, stride=2, padding=1, groups=48),
    }[kind]
    exact = ExactConv2d(conv, cfg)
    assert (exact.pointwise, exact.depthwise) == {"pointwise": (True, False), "depthwise": (False, True), "strided": (False, False)}[kind]
    x = to_grid(torch.randn(2, 48, 9, 13).double() * 300, cfg.frac_bits)
    reference = to_grid(F.conv2d(x, exact.weight, exact.bias, exact.stride, exact.padding, exact.dilation, exact.groups), cfg.frac_bits)
    assert torch.equal(exact(x), reference)
    assert torch.equal(exact(x[1:]), reference[1:])  # batch size does not matter either
