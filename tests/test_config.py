import pytest
from omegaconf import OmegaConf

from onedc import ConfigError, load_model_config
from onedc.config import model_config_from_dict, model_config_names


def test_shipped_configs_compose_and_validate():
    assert {"onedc_sd15", "onedc_tiny"} <= set(model_config_names())
    full, tiny = load_model_config("onedc_sd15"), load_model_config("onedc_tiny")
    assert full.codec.y_channels == 128 and full.codec.fsq.levels == [4] * 7
    assert full.codec.analysis.unet.block_out_channels == [512, 768, 768]
    assert full.codec.entropy.scale_levels == 256 and full.codec.entropy.scale_max == 64.0
    # the tiny config inherits everything it does not shrink
    assert tiny.name == "onedc_tiny" and tiny.codec.y_channels == 16
    assert tiny.codec.entropy == full.codec.entropy and tiny.codec.fsq == full.codec.fsq
    assert tiny.codec.analysis.unet.down_block_types == full.codec.analysis.unet.down_block_types


def test_unknown_name_lists_the_available_configs():
    with pytest.raises(ConfigError, match="available: onedc_sd15, onedc_sd15_zonly, onedc_tiny, onedc_tiny_zonly"):
        load_model_config("onedc_huge")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("codec.y_channels", 30, "divisible by 4"),
        ("codec.y_channels", -4, "must be positive"),
        ("blocks.norm_groups", 7, "not divisible by blocks.norm_groups"),
        ("codec.entropy.scale_min", 100.0, "scale_min < scale_max"),
        ("codec.entropy.exact.act_bound", 1000, "power of two"),
        ("codec.fsq.levels", [4, 1], "integers >= 2"),
        ("codec.analysis.unet.block_out_channels", [32, 48], "3 entries"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(key, value, message):
    cfg = OmegaConf.structured(load_model_config("onedc_tiny"))
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(cfg)


def test_wrong_types_and_unknown_keys_are_config_errors():
    raw = OmegaConf.to_container(OmegaConf.structured(load_model_config("onedc_tiny")))
    with pytest.raises(ConfigError):
        model_config_from_dict({**raw, "codec": {**raw["codec"], "y_channels": "many"}})
    with pytest.raises(ConfigError):
        model_config_from_dict({**raw, "colour": "blue"})
    incomplete = dict(raw)
    del incomplete["seed"]
    with pytest.raises(ConfigError, match="seed"):
        model_config_from_dict(incomplete)


def test_yaml_file_config(tmp_path):
    path = tmp_path / "mine.yaml"
    OmegaConf.save(OmegaConf.structured(load_model_config("onedc_tiny")), path)
    assert load_model_config(path) == load_model_config("onedc_tiny")
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "missing.yaml")
