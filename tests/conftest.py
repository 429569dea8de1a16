"""Shared fixtures: the tiny config and model, scikit-image sample photos, and a tiny model
whose entropy model is fitted to its own latents (an untrained model's scales are noise), and
a stand-in for torch.compile."""

import time

import pytest

from helpers import COMPILE_SECONDS, PHOTOS, fit_entropy_model, photo
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


@pytest.fixture
def stub_compile(monkeypatch):
    """OneDC.compile_decoder replaced by a stand-in for torch.compile (whose CPU build takes
    minutes): it marks the model compiled, and each model's first render of a latent shape
    sleeps COMPILE_SECONDS, as a compile would. Returns the identities of the models compiled."""
    from onedc import OneDC

    compiled = []

    def compile_decoder(model):
        seen, render = set(), model.render

        def render_compiling_new_shapes(rec):
            if rec.y_hat.shape not in seen:
                seen.add(rec.y_hat.shape)
                time.sleep(COMPILE_SECONDS)
            return render(rec)

        model.render = render_compiling_new_shapes
        model.decoder_compiled = True
        compiled.append(model.identity.describe())
        return model

    monkeypatch.setattr(OneDC, "compile_decoder", compile_decoder)
    return compiled
