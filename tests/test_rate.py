"""File size against the rate the entropy model estimates."""

import pytest
import torch

from onedc.bitstream import read
from onedc.model import pad_to_multiple


@pytest.mark.parametrize("name", ["chelsea", "rocket", "astronaut"])
def test_y_stream_is_within_one_percent_of_the_estimated_rate(fitted_model, photos, name):
    image = photos[name]
    x = pad_to_multiple(image[None], 64)
    with torch.no_grad():
        out = fitted_model.codec(x, fitted_model.encode_latent(x))  # eval mode: hard rounding
    estimated = float(-torch.log2(out["likelihoods"]["y"]).sum())
    _, y_stream, z_stream = read(fitted_model.compress(image))
    actual = 8 * len(y_stream)
    assert abs(actual - estimated) <= 0.01 * estimated + 8 * 8, (actual, estimated)
    assert 8 * len(z_stream) == -(-out["indices"].numel() * 14 // 8) * 8
