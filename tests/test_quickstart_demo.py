"""The quickstart demo's config: Stage I of experiment=quickstart_demo trains through the VAE the
quickstart pretrains (`quickstart_vae`), which loads from where the demo writes it, and whose
absence is explained with the command that makes it."""

import pytest
import torch
from safetensors.torch import save_file

from onedc import OneDC
from onedc.errors import WeightsError
from onedc.train.config import compose_config, run_config
from onedc.weights import load_frozen_weights, load_weight_paths


def demo_config(*overrides):
    return compose_config(["experiment=quickstart_demo", *overrides])


def test_demo_trains_through_the_quickstart_vae(tmp_path):
    config = demo_config()
    run = run_config(config)
    assert run.model.name == "onedc_tiny" and run.model.external.vae == "quickstart_vae" and run.model.external.unet is None
    assert run.weights["quickstart_vae"] == load_weight_paths()["quickstart_vae"] == "outputs/quickstart/vae/model.safetensors"
    assert config.demo_vae.steps > 0 and not {"chelsea", "camera"} & set(config.demo_vae.photos)  # held out

    model = OneDC.untrained(run.model)
    with pytest.raises(WeightsError, match=r"quickstart_vae.*bash scripts/quickstart.sh"):
        load_frozen_weights(model, {"quickstart_vae": str(tmp_path / "nowhere.safetensors")})
    pretrained = OneDC.untrained(run.model).vae
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(0.01)
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, tmp_path / "vae.safetensors")
    load_frozen_weights(model, {"quickstart_vae": str(tmp_path / "vae.safetensors")})
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), pretrained.state_dict().values()))
