"""What decoding guarantees across processes and thread counts: the latent (y_hat, c) is
bit-exact; the pixels, which come from float networks (U-Net, VAE), are reproducible on one
machine and thread count and otherwise within one 8-bit step."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_python

DECODE = """
import sys, torch
torch.set_num_threads(1)
from onedc.cli import main
sys.exit(main(["decompress", sys.argv[1], sys.argv[2], "--checkpoint", sys.argv[3], "--device", "cpu"]))
"""


def test_fresh_process_with_one_thread_decodes_identically(fitted_model, photos, tmp_path):
    image = photos["rocket"]  # 427 x 640: odd height
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data, expected = fitted_model.encode(image)
    finally:
        torch.set_num_threads(threads)
    checkpoint, file, out = tmp_path / "ckpt", tmp_path / "rocket.onedc", tmp_path / "rocket.safetensors"
    fitted_model.save_pretrained(checkpoint)
    file.write_bytes(data)
    run_python("-c", DECODE, str(file), str(out), str(checkpoint))
    decoded = load_file(out)
    assert torch.equal(decoded["y_hat"], expected.y_hat) and torch.equal(decoded["c"], expected.c)


def test_pixels_across_thread_counts_differ_by_at_most_one_step(fitted_model, photos, tmp_path):
    """The same file decoded to PNG with 2 threads here and with 1 thread in a fresh process:
    identical pixels are not guaranteed (float summation order differs), one 8-bit step is."""
    import numpy as np
    from PIL import Image

    from onedc.image_io import to_uint8

    data = fitted_model.compress(photos["coffee"][:, :256, :320])
    checkpoint, file, out = tmp_path / "ckpt", tmp_path / "coffee.onedc", tmp_path / "coffee.png"
    fitted_model.save_pretrained(checkpoint)
    file.write_bytes(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = to_uint8(fitted_model.decompress(data)).astype(np.int16)
        again = to_uint8(fitted_model.decompress(data)).astype(np.int16)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(here, again)  # same process, same thread count: the same pixels
    run_python("-c", DECODE, str(file), str(out), str(checkpoint))
    there = np.asarray(Image.open(out)).astype(np.int16)
    assert here.shape == there.shape and int(np.abs(here - there).max()) <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_file_encoded_on_the_cpu_decodes_identically_on_the_gpu(fitted_model, photos):
    data, expected = fitted_model.encode(photos["chelsea"])
    gpu_model = copy.deepcopy(fitted_model).to("cuda")
    try:
        assert gpu_model.identity == fitted_model.identity
        assert torch.equal(gpu_model.decode_latents(data).y_hat.cpu(), expected.y_hat)
        # and the other way round: encoded on the GPU, decoded on the CPU
        data_gpu, expected_gpu = gpu_model.encode(photos["rocket"].cuda())
        assert torch.equal(fitted_model.decode_latents(data_gpu).y_hat, expected_gpu.y_hat.cpu())
    finally:
        del gpu_model


def test_a_file_encoded_under_bf16_autocast_decodes_identically_without_it(tiny_model, photos):
    """The official inference runs under bf16 autocast; our entropy path is float64 fixed point,
    which autocast leaves alone, so the decoder's setting does not matter."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        data, expected = tiny_model.encode(photos["chelsea"][:, :128, :192])
    assert torch.equal(tiny_model.decode_latents(data).y_hat, expected.y_hat)
