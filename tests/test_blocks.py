import torch

from onedc.codec.blocks import DepthConvBlock, ResBlock, ResidualBlockUpsample, SpatialAttention


def test_block_shapes(tiny_config):
    bc = tiny_config.blocks
    x = torch.randn(2, 16, 6, 10)
    assert DepthConvBlock(16, 24, bc)(x).shape == (2, 24, 6, 10)
    assert ResidualBlockUpsample(16, 8, bc)(x).shape == (2, 8, 12, 20)
    assert ResBlock(16, 16, bc)(x).shape == (2, 16, 6, 10)
    assert SpatialAttention(16, bc)(x).shape == (2, 16, 6, 10)


def test_resblock_shortcut_quirk_applies_the_projection_to_the_output(tiny_config):
    """With cin != cout the released block returns h + nin_shortcut(h): no input skip. So when
    the residual branch outputs zero, the block outputs zero whatever the input."""
    block = ResBlock(8, 16, tiny_config.blocks)
    assert block.nin_shortcut.weight.shape == (16, 16, 1, 1)
    with torch.no_grad():
        block.conv2.weight.zero_()
    assert torch.count_nonzero(block(torch.randn(1, 8, 4, 4))) == 0


def test_resblock_with_equal_widths_adds_its_input(tiny_config):
    block = ResBlock(16, 16, tiny_config.blocks)
    with torch.no_grad():
        block.conv2.weight.zero_()
    x = torch.randn(1, 16, 4, 4)
    assert torch.equal(block(x), x)


def test_attention_is_global(tiny_config):
    """Changing one position changes the output everywhere (attention spans all positions)."""
    attn = SpatialAttention(16, tiny_config.blocks)
    x = torch.randn(1, 16, 8, 8)
    x2 = x.clone()
    x2[..., 0, 0] += 5
    diff = (attn(x) - attn(x2)).abs().sum(dim=1)
    assert bool((diff[0, 4:, 4:] > 0).all())
