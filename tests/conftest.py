"""Shared fixtures: the tiny config and model, scikit-image sample photos, and a tiny model
whose entropy model is fitted to its own latents (an untrained model's scales are noise)."""

import pytest

from helpers import PHOTOS, fit_entropy_model, photo
from onedc import OneDC, load_model_config


@pytest.fixture(scope="session")
def tiny_config():
    return load_model_config("onedc_tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    return OneDC.untrained(tiny_config).eval()


@pytest.fixture(scope="session")
def photos():
    return {name: photo(name) for name in PHOTOS}


@pytest.fixture(scope="session")
def fitted_model(tiny_config, photos):
    model = OneDC.untrained(tiny_config)
    model.lmbda = 4.6
    return fit_entropy_model(model, list(photos.values()))
