import torch

from onedc.codec.hyperprior import FSQ


def fsq(tiny_config):
    return FSQ(tiny_config.codec.fsq)


def test_codebook_and_bits(tiny_config):
    q = fsq(tiny_config)
    assert (q.dim, q.codebook_size, q.bits) == (7, 16384, 14)


def test_values_indices_and_digit_order(tiny_config):
    q = fsq(tiny_config)
    z = torch.zeros(1, 7, 1, 3)
    z[0, 0, 0, 1] = 100.0  # channel 0 saturates high: digit 3
    z[0, :, 0, 2] = -100.0  # all channels saturate low: digit 0
    z_hat, idx = q(z)
    # z = 0 sits on the level 0 (digit 2) thanks to the half-level shift of even level counts
    assert idx.tolist() == [[[sum(2 * 4**c for c in range(7)), 3 + sum(2 * 4**c for c in range(1, 7)), 0]]]
    assert set(z_hat.unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5}
    assert z_hat[0, 0, 0, 1] == 0.5 and bool((z_hat[0, :, 0, 2] == -1).all())


def test_bound_uses_the_fsq_half_width(tiny_config):
    q = fsq(tiny_config)
    # tanh bound: (L - 1)(1 + eps)/2 = 1.5015 half-width, offset 0.5 for even L
    bounded = torch.tanh(torch.tensor(50.0) + q._shift) * q._half_l - q._offset
    assert torch.allclose(bounded.flatten(), torch.full((7,), 1.0015))


def test_codes_from_indices_equal_forward_values(tiny_config):
    q = fsq(tiny_config)
    z = torch.randn(3, 7, 5, 4) * 2
    z_hat, idx = q(z)
    assert idx.dtype == torch.int64 and int(idx.max()) < 16384
    assert torch.equal(q.codes(idx), z_hat)


def test_straight_through_gradient(tiny_config):
    z = torch.randn(1, 7, 2, 2, requires_grad=True)
    z_hat, _ = fsq(tiny_config)(z)
    z_hat.sum().backward()
    assert z.grad is not None and bool((z.grad > 0).all())
