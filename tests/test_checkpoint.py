import copy
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onedc import CheckpointError, OneDC, WriteError
from onedc.checksums import json_checksum
from onedc.model import CHECKPOINT_VERSION, read_metadata


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
    with pytest.raises(WriteError, match=r"cannot write .*ckpt: OSError: disk full; .* MB free on the filesystem of .* is unchanged"):
        tiny_model.save_pretrained(tmp_path / "ckpt")
    assert OneDC.from_pretrained(tmp_path / "ckpt").identity == tiny_model.identity
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_rename_puts_the_previous_checkpoint_back(tiny_model, fitted_model, tmp_path, monkeypatch):
    import os

    tiny_model.save_pretrained(tmp_path / "ckpt")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".ckpt.tmp-"):  # the new folder onto the final name
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError, match="No space left on device"):
        fitted_model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.undo()
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
    with pytest.raises(CheckpointError, match="model.safetensors: digest mismatch with onedc.json"):
        OneDC.from_pretrained(ckpt)
    # a missing and a reshaped tensor
    broken = dict(weights)
    del broken["codec.h_sem.blocks.0.block.1.conv.weight"]
    broken["codec.g_a.pix_emb.bias"] = torch.zeros(3)
    save_file(broken, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model onedc_tiny: 1 missing .* 1 with other shapes"):
        OneDC.from_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: safetensors header check failed"):
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


def test_what_killed_writes_leave_is_swept_and_nothing_else(tmp_path):
    """The temporaries of writes killed outright go; finished files, user files and the folder a
    replacement moved aside (possibly the only complete version) stay."""
    import tempfile

    from onedc.atomic import atomic_file, remove_interrupted_writes, temporary_folder
    from onedc.train.checkpoints import step_folder

    (tmp_path / "recon").mkdir()
    kept = [tmp_path / "recon" / "a.png", tmp_path / ".gitignore", tmp_path / ".c.json.tmp",
            Path(tempfile.mkdtemp(prefix=".ckpt.old-", dir=tmp_path))]
    for path in kept[:3]:
        path.write_bytes(b"x")
    writing = atomic_file(tmp_path / "recon" / "a.png")  # entered and never finished, as if killed
    killed = [writing.__enter__(), temporary_folder(tmp_path / "ckpt"), temporary_folder(step_folder(tmp_path, 4))]
    (killed[1] / "model.safetensors").write_bytes(b"half")
    assert remove_interrupted_writes(tmp_path) == 3
    assert not any(p.exists() for p in killed) and all(p.exists() for p in kept)
    assert remove_interrupted_writes(tmp_path / "absent") == 0


def test_format_1_checkpoints_load_with_the_values_they_were_built_with(tiny_model, tmp_path):
    """Format 1 did not record the keys added since; an imported official release (it bundles
    frozen weights) gets the official vae_reduction eps, 1e-6, not our former default."""
    tiny_model.save_pretrained(tmp_path / "ours")
    meta = json.loads((tmp_path / "ours" / "onedc.json").read_text())
    config = meta["model_config"]
    meta["format_version"] = 1
    del meta["checksum"], meta["decoder_digest"]  # format 1 carried neither
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
    assert meta["model_config"]["generator"]["reduction_eps"] == 1e-6 and meta["format_version"] == CHECKPOINT_VERSION

def test_truncated_or_bit_flipped_checkpoint_files_are_named(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    weights, meta = (ckpt / "model.safetensors").read_bytes(), (ckpt / "onedc.json").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: safetensors header check failed .* truncated or corrupt"):
        OneDC.from_pretrained(ckpt)
    flipped = bytearray(weights)
    flipped[-100] ^= 0x10  # inside the last tensor's bytes
    (ckpt / "model.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="model.safetensors: digest mismatch with onedc.json: the file is corrupt"):
        OneDC.from_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(weights)
    # every bit flip of onedc.json is caught (JSON, unknown entry, checksum), or changes nothing it holds
    original, rng = json.loads(meta), random.Random(0)
    for bit in rng.sample(range(8 * len(meta)), 400):
        corrupt = bytearray(meta)
        corrupt[bit // 8] ^= 1 << (bit % 8)
        (ckpt / "onedc.json").write_bytes(bytes(corrupt))
        try:
            assert read_metadata(ckpt / "onedc.json") == original
        except CheckpointError as e:
            assert str(e).startswith(str(ckpt / "onedc.json")) and any(
                check in str(e) for check in ("not valid JSON", "checksum mismatch", "unexpected entries"))
    # a checkpoint written before onedc.json carried its checksum still loads
    del original["checksum"]
    (ckpt / "onedc.json").write_text(json.dumps(original))
    assert OneDC.from_pretrained(ckpt).identity == tiny_model.identity


def test_corrupt_checkpoints_are_one_line_errors_in_the_commands(tiny_model, tmp_path, capsys):
    from PIL import Image

    from onedc.cli import main as onedc
    from onedc.eval.cli import main as onedc_eval

    ckpt, images = tmp_path / "ckpt", tmp_path / "images"
    tiny_model.save_pretrained(ckpt)
    weights = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[:-7])
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    assert onedc(["compress", str(images / "a.png"), str(tmp_path / "a.onedc"), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.safetensors: safetensors header check failed" in err
    assert onedc_eval(["run", "--checkpoint", str(ckpt), "--dataset", "folder", "--root", str(images), "--metrics", "psnr",
                       "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err.strip()  # after the progress bar, which starts before the first model loads
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("onedc-eval: error: ") and "model.safetensors: safetensors header check failed" in last


def flip_a_byte_of(path: Path, key: str) -> None:
    """Flip the middle byte of tensor `key`'s data in the safetensors file `path`."""
    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8:8 + header_size])[key]["data_offsets"]
    data[8 + header_size + (start + end) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_decoding_load_leaves_the_encoders_weights_unread(fitted_model, photos, tmp_path):
    """OneDC.from_pretrained(role="decoder"): g_a's and h_enc's weights are neither loaded nor
    verified (a flipped byte in g_a, which a full load refuses, goes unnoticed, and the decoder
    decodes exactly as the full model does), while those decoding uses are (a flipped byte in
    g_s is refused)."""
    data = fitted_model.compress(photos["coffee"][:, :128, :192])
    ckpt = tmp_path / "ckpt"
    fitted_model.save_pretrained(ckpt)
    weights = ckpt / "model.safetensors"
    original, keys = weights.read_bytes(), list(load_file(weights))
    flip_a_byte_of(weights, next(k for k in keys if k.startswith("codec.g_a.")))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        OneDC.from_pretrained(ckpt)
    decoder = OneDC.from_pretrained(ckpt, role="decoder")
    assert decoder.decoding_only and decoder.vae.encoder is None and decoder.identity == fitted_model.identity
    reference = copy.deepcopy(fitted_model).for_decoding()
    assert torch.equal(decoder.decode_latents(data).y_hat, reference.decode_latents(data).y_hat)
    assert torch.equal(decoder.decompress(data), reference.decompress(data))
    weights.write_bytes(original)
    flip_a_byte_of(weights, next(k for k in keys if k.startswith("codec.g_s.")))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        OneDC.from_pretrained(ckpt, role="decoder")


def test_a_decoding_load_of_a_format_2_checkpoint_verifies_every_weight(fitted_model, tmp_path):
    """Format 2 recorded no decoder digest: the decoding load reads and verifies every trainable
    weight, then drops the encoder's. A decoder digest that is not one is refused by name."""
    ckpt = tmp_path / "ckpt"
    fitted_model.save_pretrained(ckpt)
    meta = json.loads((ckpt / "onedc.json").read_text())
    del meta["decoder_digest"], meta["checksum"]
    meta["format_version"] = 2

    def write(meta):
        (ckpt / "onedc.json").write_text(json.dumps({**meta, "checksum": json_checksum(meta)}))

    write(meta)
    decoder = OneDC.from_pretrained(ckpt, role="decoder")
    assert decoder.decoding_only and decoder.identity == fitted_model.identity
    flip_a_byte_of(ckpt / "model.safetensors", next(k for k in load_file(ckpt / "model.safetensors") if k.startswith("codec.g_a.")))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        OneDC.from_pretrained(ckpt, role="decoder")
    write({**meta, "format_version": 3, "decoder_digest": "not a digest"})
    with pytest.raises(CheckpointError, match="decoder_digest is not a digest"):
        OneDC.from_pretrained(ckpt, role="decoder")
