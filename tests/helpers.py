"""Helpers shared by tests: sample photos, fitting a tiny model's entropy model, launching
Python in fresh (possibly several) processes."""

from __future__ import annotations

import os
import subprocess
import sys

import skimage.data
import torch

from onedc import OneDC
from onedc.codec.context_model import gaussian_likelihood
from onedc.model import pad_to_multiple

# torchrun-style launch of 2 processes; train.cpu=true (the quickstarts) makes them CPU ranks on gloo
ACCELERATE_2_PROCESSES = ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no")


def run_python(*args: str) -> str:
    """`python *args` in a fresh process (one thread each): its stdout; fails the test with the
    end of stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # 512x512, 400x600, 300x451, 427x640
COMPILE_SECONDS = 1.0  # what the conftest's stand-in for torch.compile takes per new shape


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as (3, H, W) in [-1, 1]."""
    return torch.tensor(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 127.5 - 1.0


def fit_entropy_model(model: OneDC, images: list[torch.Tensor], steps: int = 200, crop: int = 384) -> OneDC:
    """Maximum-likelihood fit of the hyper-decoder and context model to the latents of
    `images` (g_a and h_enc stay as they are): realistic entropy parameters in seconds."""
    codec = model.codec
    cached = []
    with torch.no_grad():
        for image in images:
            x = pad_to_multiple(image[None, :, :crop, :crop], model.config.image_multiple)
            y, sem = codec.g_a(x, model.encode_latent(x))
            cached.append((y, codec.fsq(codec.h_enc(y, sem))[0]))
    params = list(codec.h_dec.parameters()) + list(codec.context.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    codec.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for step in range(steps):
            y, z_hat = cached[step % len(cached)]
            _, features = codec.h_dec(z_hat)
            _, residuals, scales = codec.context(y, features, codec.cfg.entropy.noise)
            likelihoods = gaussian_likelihood(residuals, scales, codec.cfg.entropy.scale_min, codec.cfg.entropy)
            loss = -torch.log2(likelihoods).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
