"""The z-only model (the official release's "exlow" rate point): files carry z alone, and y_hat
is what the context model predicts from z with every residual zero."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from onedc import BitstreamError, OneDC, load_model_config
from onedc.bitstream import read
from onedc.codec.exact import exact_copy
from onedc.model import pad_to_multiple


@pytest.fixture(scope="module")
def zonly_model():
    return OneDC.untrained(load_model_config("onedc_tiny_zonly")).eval()


def test_a_z_only_file_holds_the_container_and_z_alone(zonly_model, photos):
    image = photos["coffee"][:, :130, :200]  # 3 x 4 z positions
    data, rec = zonly_model.encode(image)
    header, y, z = read(data)
    assert header.z_only and y is None and len(z) == math.ceil(12 * 14 / 8)
    name = len("onedc_tiny_zonly")
    assert len(data) == 4 + 3 + name + 4 + 4 + 2 + 2 + len(z) + 4
    decoded = zonly_model.decode_latents(data)
    assert torch.equal(decoded.y_hat, rec.y_hat) and torch.equal(decoded.c, rec.c)
    assert zonly_model.estimate_bits(image)["y"] == 0.0


def test_y_hat_is_what_a_stream_of_zero_residuals_decodes_to(zonly_model, photos):
    """Coding the z-only prediction as y with the full 4-step coder gives zero residuals at every
    step and decodes to the same y_hat: the prediction is the sum of each step's means, each
    predicted from the prior and the means decoded so far."""
    image = photos["astronaut"][:, :128, :192]
    data, rec = zonly_model.encode(image)
    codec = zonly_model.codec
    exact = exact_copy(torch.nn.ModuleDict({"h_dec": codec.h_dec, "context": codec.context}), codec.cfg.entropy.exact)
    indices = codec.fsq(codec.h_enc(*codec.g_a(zonly_model.pad(image[None]), zonly_model.encode_latent(zonly_model.pad(image[None])))))[1]
    _, features = exact["h_dec"](codec.fsq.codes(indices).double())
    strings, y_hat = exact["context"].compress(rec.y_hat.double(), features, codec.coder, codec.cfg.entropy.max_symbol)
    assert torch.equal(y_hat.float(), rec.y_hat)
    decoded = exact["context"].decompress(strings, features, codec.coder, codec.cfg.entropy.max_symbol)
    assert torch.equal(decoded.float(), rec.y_hat)
    # and the prediction is not trivially zero: the context steps refine the prior's means
    assert float(rec.y_hat.abs().max()) > 0


def test_z_only_and_full_files_are_never_mistaken(zonly_model, tiny_config, photos):
    image = photos["chelsea"][:, :64, :64]
    full = OneDC.untrained(dataclasses.replace(tiny_config, name="onedc_tiny_zonly"))  # same name and weights, codes y
    full.lmbda = zonly_model.lmbda
    assert full.identity == zonly_model.identity
    with pytest.raises(BitstreamError, match="a z-only file \\(no y stream\\), but onedc_tiny_zonly is not a z-only model"):
        full.decode_latents(zonly_model.compress(image))
    with pytest.raises(BitstreamError, match="a file with a y stream, but onedc_tiny_zonly is a z-only model"):
        zonly_model.decode_latents(full.compress(image))


def test_reflect_padding_mirrors_as_often_as_needed():
    x = torch.arange(2 * 40 * 3, dtype=torch.float32).view(1, 2, 40, 3)
    padded = pad_to_multiple(x, 64, "reflect")
    assert padded.shape == (1, 2, 64, 64)
    assert torch.equal(padded[..., :, :3][..., :40, :], x)
    # one mirror image is F.pad's reflect
    assert torch.equal(pad_to_multiple(x[..., :40, :], 64, "reflect")[..., :64, :3][..., :, :], F.pad(x, (0, 0, 0, 24), mode="reflect"))
    # a 3-pixel side mirrors with period 4: 0 1 2 1 0 1 2 1 ...
    assert padded[0, 0, 0, :8].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    # a 1-pixel side repeats
    assert torch.equal(pad_to_multiple(torch.ones(1, 1, 1, 1) * 7, 64, "reflect"), torch.full((1, 1, 64, 64), 7.0))


def test_command_line_round_trip(tmp_path, photos, capsys):
    from PIL import Image

    from onedc.cli import main

    png = tmp_path / "coffee.png"
    Image.fromarray(((photos["coffee"][:, :100, :150] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(png)
    assert main(["compress", str(png), str(tmp_path / "c.onedc"), "--model", "onedc_tiny_zonly"]) == 0
    assert main(["decompress", str(tmp_path / "c.onedc"), str(tmp_path / "c.png")]) == 0
    assert "onedc_tiny_zonly (no lambda" in capsys.readouterr().out
    assert Image.open(tmp_path / "c.png").size == (150, 100)
    assert read((tmp_path / "c.onedc").read_bytes())[0].z_only


def test_evaluation_of_the_z_only_model(tmp_path, photos):
    """onedc-eval on the z-only model: its records' bpp is the real file's, whose y part is
    nothing, and its rate estimate is the z bits alone (14 per 1/64 position)."""
    import json

    from PIL import Image

    from onedc.eval.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in {"coffee": (100, 150), "chelsea": (128, 64)}.items():
        Image.fromarray(((photos[name][:, :h, :w] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(images / f"{name}.png")
    assert main(["run", "--model", "onedc_tiny_zonly", "--dataset", "folder", "--root", str(images), "--metrics", "psnr",
                 "--out", str(tmp_path / "eval"), "--device", "cpu", "--workers", "0"]) == 0
    rate_point = next(p for p in (tmp_path / "eval" / "folder" / "onedc_ours").iterdir() if p.is_dir())
    for name, (h, w) in {"coffee": (100, 150), "chelsea": (128, 64)}.items():
        record = json.loads((rate_point / "per_image" / f"{name}.json").read_text())
        data = (rate_point / "files" / f"{name}.onedc").read_bytes()
        assert read(data)[0].z_only and record["bytes"] == len(data) and record["bpp"] == 8 * len(data) / (h * w)
        z_bits = 14 * math.ceil(h / 64) * math.ceil(w / 64)
        assert record["bpp_y_estimated"] == 0 and record["bpp_estimated"] == record["bpp_estimated_official"] == z_bits / (h * w)
