import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from onedc import CheckpointError, OneDC


def test_save_and_load_round_trip(fitted_model, tmp_path):
    fitted_model.save_pretrained(tmp_path / "ckpt")
    loaded = OneDC.from_pretrained(tmp_path / "ckpt")
    assert loaded.identity == fitted_model.identity and loaded.lmbda == 4.6
    saved, restored = fitted_model.trainable_state_dict(), loaded.trainable_state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(restored[key], value) for key, value in saved.items())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors", "onedc.json"]


def test_overwrite_is_atomic_and_leaves_no_temporary_folders(fitted_model, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    fitted_model.save_pretrained(tmp_path / "ckpt")
    assert OneDC.from_pretrained(tmp_path / "ckpt").identity == fitted_model.identity
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "ckpt")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("onedc.model.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        tiny_model.save_pretrained(tmp_path / "ckpt")
    assert OneDC.from_pretrained(tmp_path / "ckpt").identity == tiny_model.identity
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_bad_checkpoints_fail_with_clear_messages(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        OneDC.from_pretrained(tmp_path / "nothing")
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    weights = load_file(ckpt / "model.safetensors")
    # a tensor changed after saving: digest mismatch
    tampered = dict(weights)
    tampered["codec.g_s.conv_out.block.0.conv2.bias"] = tampered["codec.g_s.conv_out.block.0.conv2.bias"] + 1
    save_file(tampered, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match the digest"):
        OneDC.from_pretrained(ckpt)
    # a missing and a reshaped tensor
    broken = dict(weights)
    del broken["codec.h_sem.blocks.0.block.1.conv.weight"]
    broken["codec.g_a.pix_emb.bias"] = torch.zeros(3)
    save_file(broken, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model onedc_tiny: 1 missing .* 1 with other shapes"):
        OneDC.from_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        OneDC.from_pretrained(ckpt)
    (ckpt / "onedc.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a onedc checkpoint"):
        OneDC.from_pretrained(ckpt)
    (ckpt / "onedc.json").unlink()
    with pytest.raises(CheckpointError, match="onedc.json is missing"):
        OneDC.from_pretrained(ckpt)


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Not tempfile's private 0600/0700: results and checkpoints are readable as plain writes are."""
    import os
    import stat

    from onedc.atomic import atomic_directory, atomic_file

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "report.md") as tmp:
            tmp.write_text("x")
        with atomic_directory(tmp_path / "ckpt") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755


def test_format_1_checkpoints_load_with_the_values_they_were_built_with(tiny_model, tmp_path):
    """Format 1 did not record the keys added since; an imported official release (it bundles
    frozen weights) gets the official vae_reduction eps, 1e-6, not our former default."""
    tiny_model.save_pretrained(tmp_path / "ours")
    meta = json.loads((tmp_path / "ours" / "onedc.json").read_text())
    config = meta["model_config"]
    meta["format_version"] = 1
    del config["image_padding"], config["codec"]["z_only"], config["generator"]["unet"]["norm_eps"]
    config["generator"]["reduction_eps"] = 1e-5
    (tmp_path / "ours" / "onedc.json").write_text(json.dumps(meta))
    loaded = OneDC.from_pretrained(tmp_path / "ours")
    assert loaded.identity == tiny_model.identity
    assert (loaded.config.image_padding, loaded.config.codec.z_only, loaded.config.generator.unet.norm_eps) == ("replicate", False, 1e-5)
    assert loaded.config.generator.reduction_eps == 1e-5  # trained by us with it: kept
    assert loaded.generator.vae_reduction.blocks[0].eps == 1e-5
    # the same checkpoint as an official import (with bundled frozen weights)
    meta["frozen_digest"] = "x"
    (tmp_path / "ours" / "onedc.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="frozen.safetensors"):  # the bundle is missing here ...
        OneDC.from_pretrained(tmp_path / "ours")
    from onedc.model import upgrade_format_1

    meta["format_version"] = 1
    upgrade_format_1(meta)  # ... but the config is upgraded to the official eps
    assert meta["model_config"]["generator"]["reduction_eps"] == 1e-6 and meta["format_version"] == 2
