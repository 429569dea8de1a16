"""Importing the official release: tiny stand-ins written exactly as official files are, and the
full-size key manifest."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onedc import CheckpointError, OneDC, load_model_config
from onedc.cli import main
from onedc.model import build_code_predictor
from onedc.official import OFFICIAL_PREFIXES, import_official, load_code_predictor

MANIFEST = json.loads((Path(__file__).parent / "data" / "official_keys.json").read_text())["files"]


def to_official(state: dict) -> dict[str, dict]:
    """Our state dict -> {official file: state dict}: the prefix tables run backwards."""
    pairs = sorted(((ours, official, file) for file, table in OFFICIAL_PREFIXES.items() for official, ours in table), key=lambda p: -len(p[0]))
    files: dict[str, dict] = {}
    for key, value in state.items():
        ours, official, file = next(p for p in pairs if key.startswith(p[0]))
        files.setdefault(file, {})[official + key[len(ours):]] = value
    return files


def write_release(model: OneDC, folder: Path) -> None:
    files = to_official({k: v for k, v in model.state_dict().items() if not k.startswith("vae.")})
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "model_1.safetensors"):
        save_file({k: v.contiguous() for k, v in files[name].items()}, folder / name, metadata={"format": "pt"})


@pytest.fixture()
def source_model(tiny_config):
    model = OneDC.untrained(tiny_config)
    with torch.no_grad():  # a "trained" release: LoRA B and everything else non-trivial
        for p in model.generator.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_tiny_release_imports_round_trips_and_codes_identically(source_model, tiny_config, tmp_path, photos):
    write_release(source_model, tmp_path / "lambda2.9")
    report = import_official(tmp_path / "lambda2.9", tmp_path / "ours", tiny_config)
    assert report.lmbda == 2.9 and [f.file for f in report.files] == ["model.safetensors", "model_1.safetensors"]
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["frozen.safetensors", "model.safetensors", "onedc.json"]
    imported = OneDC.from_pretrained(tmp_path / "ours")
    original = {k: v for k, v in source_model.state_dict().items() if not k.startswith("vae.")}
    loaded = imported.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.items())
    assert imported.config.external.unet is None  # the U-Net base came with the checkpoint
    # import -> save -> load keeps every tensor
    imported.save_pretrained(tmp_path / "again")
    again = OneDC.from_pretrained(tmp_path / "again")
    assert all(torch.equal(again.trainable_state_dict()[k], v) for k, v in imported.trainable_state_dict().items())
    # and it codes like the model it came from
    image = photos["chelsea"][:, :96, :128]
    source_model.lmbda = 2.9
    assert imported.compress(image) == source_model.compress(image)
    assert torch.equal(imported.decompress(imported.compress(image)), source_model.decompress(source_model.compress(image)))
    # an encoder or decoder loads only the bundled weights of the parts it keeps (an encoder: none of the U-Net's)
    data = OneDC.from_pretrained(tmp_path / "ours", role="encoder").compress(image)
    assert data == imported.compress(image)
    assert torch.equal(OneDC.from_pretrained(tmp_path / "ours", role="decoder").decompress(data), imported.decompress(data))


def test_bad_release_folders(source_model, tiny_config, tmp_path):
    release = tmp_path / "lambda1.0"
    write_release(source_model, release)
    (release / "optimizer.bin").write_bytes(b"x")  # training state: ignored with a note
    report = import_official(release, tmp_path / "a", tiny_config)
    assert report.ignored == [("optimizer.bin", "optimizer state")]
    (release / "notes.json").write_text("{}")
    with pytest.raises(CheckpointError, match="unexpected file notes.json"):
        import_official(release, tmp_path / "b", tiny_config)
    (release / "notes.json").unlink()
    codec = load_file(release / "model_1.safetensors")
    codec["dec.conv_out.block.0.conv2.bias"] = torch.zeros(3)
    save_file(codec, release / "model_1.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the OneDC model: 1 with other shapes"):
        import_official(release, tmp_path / "c", tiny_config)
    (release / "model_1.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model_1.safetensors missing"):
        import_official(release, tmp_path / "d", tiny_config)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    write_release(source_model, tmp_path / "release")
    with pytest.raises(CheckpointError, match="pass --lmbda"):
        import_official(tmp_path / "release", tmp_path / "e", tiny_config)


def test_import_command(source_model, tmp_path, capsys):
    write_release(source_model, tmp_path / "release")
    assert main(["import-official", str(tmp_path / "release"), str(tmp_path / "ours"), "--lmbda", "4.6", "--model", "onedc_tiny"]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "model_1.safetensors" in out and "(lambda 4.6)" in out


def test_code_predictor_of_a_training_checkpoint(tiny_config, tmp_path):
    torch.manual_seed(0)
    source = build_code_predictor(tiny_config)
    state = dict(source.state_dict())
    state["blocks.0.block_sw.attention_block.left_right_mask"] = torch.zeros(16, 16)  # stored by the official code
    state["blocks.0.block_sw.attention_block.upper_lower_mask"] = torch.zeros(16, 16)
    save_file(state, tmp_path / "model_2.safetensors")
    target = build_code_predictor(tiny_config)
    load_code_predictor(target, tmp_path / "model_2.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def fake_file(keys: dict, dtype=torch.float16) -> dict:
    """Tensors with exactly the manifest's keys and shapes (uninitialised memory, half size)."""
    return {k: torch.empty(shape, dtype=dtype) for k, shape in keys.items()}


@pytest.mark.slow
def test_full_size_release_covers_our_model(tmp_path):
    """Every key of the released generator and codec files is consumed and every codec and
    generator weight of our full-size model is filled (the converted tensors are then loaded
    into a meta-device model with strict key and shape checks)."""
    release = tmp_path / "lambda4.6"
    release.mkdir()
    for name in ("model.safetensors", "model_1.safetensors"):
        save_file(fake_file(MANIFEST[name]), release / name)
    config = load_model_config("onedc_sd15")
    report = import_official(release, tmp_path / "ours", config)
    assert {f.file: (f.keys, f.parameters) for f in report.files} == {
        "model.safetensors": (1252, 928_619_276), "model_1.safetensors": (779, 394_147_783)}
    assert {f.file: f.trainable for f in report.files} == {"model.safetensors": 69_110_152, "model_1.safetensors": 394_147_783}
    trainable = load_file(tmp_path / "ours" / "model.safetensors")
    frozen = load_file(tmp_path / "ours" / "frozen.safetensors")
    with torch.device("meta"):
        model = OneDC(config)
    model_keys = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("vae.")}
    assert set(trainable) | set(frozen) == set(model_keys) and not set(trainable) & set(frozen)
    assert all(model_keys[k] == v.shape for k, v in {**trainable, **frozen}.items())
    assert sum(v.numel() for v in frozen.values()) == 859_509_124
    missing, unexpected = model.load_state_dict({**trainable, **frozen}, strict=False, assign=True)
    assert unexpected == [] and all(k.startswith("vae.") for k in missing)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*meta parameter.*:UserWarning")  # meta-device model: copies are no-ops
def test_full_size_external_files_load_strictly(tmp_path):
    """The DMD2 .bin, the SD2.1 VAE and the MaskGIT .bin as the manifest lists them."""
    from onedc.model import build_tokenizer
    from onedc.weights import load_tokenizer, load_unet_base, load_vae

    config = load_model_config("onedc_sd15")
    with torch.device("meta"):
        model = OneDC(config)
    assert len(MANIFEST["dmd2_unet"]) == 686
    torch.save(fake_file(MANIFEST["dmd2_unet"]), tmp_path / "pytorch_model.bin")
    load_unet_base(model.generator.unet, tmp_path / "pytorch_model.bin")
    (tmp_path / "vae").mkdir()
    save_file(fake_file(MANIFEST["sd21_vae"]), tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    load_vae(model.vae, tmp_path / "vae")
    torch.save(fake_file(MANIFEST["maskgit_vqgan"], torch.float32), tmp_path / "maskgit.bin")
    load_tokenizer(build_tokenizer(config), tmp_path / "maskgit.bin")
    assert math.prod(MANIFEST["maskgit_vqgan"]["quantize.embedding.weight"]) == 1024 * 256


def official_guidance_file(guidance, path: Path) -> None:
    """A Stage II training checkpoint's model_2.safetensors as the official code writes it: the
    real score in bf16, DMD2's placeholder network, the noise schedule in float32."""
    state = {k: (v.bfloat16() if k.startswith("real_unet.") else v).contiguous() for k, v in guidance.state_dict().items()}
    state["dummy_network.fc.weight"], state["dummy_network.fc.bias"] = torch.zeros(1, 32), torch.zeros(1)
    state["alphas_cumprod"] = guidance.alphas_cumprod.float()
    save_file(state, path, metadata={"format": "pt"})


def test_stage2_guidance_of_a_training_checkpoint(tiny_config, tmp_path):
    from onedc.official import load_guidance
    from onedc.train.config import compose
    from onedc.train.dmd import Guidance

    dmd = compose(["experiment=quickstart_stage2"]).dmd
    torch.manual_seed(0)
    source = Guidance(tiny_config.generator, dmd)
    (tmp_path / "checkpoint_model_041000").mkdir()
    official_guidance_file(source, tmp_path / "checkpoint_model_041000" / "model_2.safetensors")
    torch.manual_seed(1)
    target = Guidance(tiny_config.generator, dmd)
    load_guidance(target, tmp_path / "checkpoint_model_041000")
    for key, value in source.state_dict().items():
        expected = value.bfloat16().float() if key.startswith("real_unet.") else value
        assert torch.equal(target.state_dict()[key], expected), key
    # a code predictor file, a wrong schedule and a missing key are refused with the reason
    state = load_file(tmp_path / "checkpoint_model_041000" / "model_2.safetensors")
    for name, broken, message in [
        ("no_schedule", {k: v for k, v in state.items() if k != "alphas_cumprod"}, "no alphas_cumprod"),
        ("schedule", {**state, "alphas_cumprod": state["alphas_cumprod"] * 0.5}, "noise schedule"),
        ("missing", {k: v for k, v in state.items() if not k.startswith("cls_pred_branch.6.")}, "cls_pred_branch.6"),
    ]:
        save_file(broken, tmp_path / f"{name}.safetensors")
        with pytest.raises(CheckpointError, match=message):
            load_guidance(target, tmp_path / f"{name}.safetensors")


def test_full_size_stage2_guidance_covers_ours():
    """The official Stage II guidance file's 1,385 keys: 1,382 are exactly our full-size
    Guidance's names and shapes, plus DMD2's 2 placeholder keys and the schedule (the loader
    itself is tested above)."""
    from onedc.train.config import compose
    from onedc.train.dmd import Guidance

    keys = MANIFEST["dmd2_guidance"]
    assert len(keys) == 1385
    config = load_model_config("onedc_sd15")
    with torch.device("meta"):
        guidance = Guidance(config.generator, compose(["experiment=quickstart_stage2"]).dmd)
    ours = {k: tuple(v.shape) for k, v in guidance.state_dict().items()}
    loaded = {k: tuple(s) for k, s in keys.items() if not k.startswith("dummy_network.") and k != "alphas_cumprod"}
    assert ours == loaded
    assert sum(math.prod(s) for k, s in loaded.items() if k.startswith("cls_pred_branch.")) == 52_437_761
