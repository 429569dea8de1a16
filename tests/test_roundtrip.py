"""Image -> file -> latent reconstruction with the tiny model."""

import pytest
import torch

from helpers import PHOTOS
from onedc import ImageError
from onedc.bitstream import read
from onedc.model import pad_to_multiple


@pytest.mark.parametrize("name", PHOTOS)
def test_decoder_reconstructs_the_encoders_y_hat_exactly(tiny_model, photos, name):
    image = photos[name]
    data, encoder_side = tiny_model.encode(image)
    rec = tiny_model.decode_latents(data)
    assert torch.equal(rec.y_hat, encoder_side.y_hat)
    assert torch.equal(rec.c, encoder_side.c)
    assert (rec.height, rec.width) == tuple(image.shape[-2:])
    padded = pad_to_multiple(image[None], 64)
    assert rec.y_hat.shape[-2:] == (padded.shape[-2] // 16, padded.shape[-1] // 16)


def test_full_pipeline_image_to_bytes_to_image(tiny_model, photos):
    image = photos["rocket"]  # 427 x 640
    data = tiny_model.compress(image)
    decoded = tiny_model.decompress(data)
    assert decoded.shape == image.shape and decoded.dtype == torch.float32
    assert float(decoded.min()) >= -1 and float(decoded.max()) <= 1
    assert torch.equal(tiny_model.decompress(data), decoded)  # no randomness at inference


def test_encoding_is_deterministic(tiny_model, photos):
    assert tiny_model.compress(photos["chelsea"]) == tiny_model.compress(photos["chelsea"])


@pytest.mark.parametrize("size", [(1, 1), (1, 130), (65, 63), (64, 64)])
def test_any_size_down_to_one_pixel(tiny_model, size):
    image = torch.rand(3, *size) * 2 - 1
    data = tiny_model.compress(image)
    header, _, z = read(data)
    assert (header.height, header.width) == size
    rec = tiny_model.decode_latents(data)
    assert rec.y_hat.shape[-2:] == (-(-size[0] // 64) * 4, -(-size[1] // 64) * 4)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(4, 8, 8), torch.zeros(2, 3, 8, 8), torch.full((3, 8, 8), 2.0), torch.full((3, 8, 8), float("nan")),
     torch.zeros(3, 8, 8, dtype=torch.uint8)],
)
def test_bad_image_tensors_are_rejected(tiny_model, bad):
    with pytest.raises(ImageError):
        tiny_model.compress(bad)
