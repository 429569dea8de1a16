"""External weights: lookup (config path, HF cache, TORCH_HOME), friendly errors, and loading
tiny stand-ins written exactly as the real files are (diffusers layout, DMD2 .bin, MaskGIT .bin)."""

import copy
import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel
from omegaconf import OmegaConf
from PIL import Image

from onedc import OneDC
from onedc.cli import main
from onedc.config import model_config_from_dict
from onedc.model import build_tokenizer
from onedc.state_dicts import dropped, kept, read_state_dict
from onedc.weights import WeightsError, load_frozen_weights, load_tokenizer, load_unet_base, load_vae, locate, require


def plain_unet(cfg):
    """A plain (no LoRA, SD1.5-style conv_in) U-Net of the tiny generator's architecture."""
    u = cfg.generator.unet
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=u.sample_size, in_channels=u.in_channels, out_channels=u.out_channels,
        down_block_types=tuple(u.down_block_types), up_block_types=tuple(u.up_block_types),
        block_out_channels=tuple(u.block_out_channels), layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim, cross_attention_dim=u.cross_attention_dim, norm_num_groups=u.norm_num_groups,
    )


def mapped_from(tensor: torch.Tensor, path) -> bool:
    """Whether `tensor`'s memory lies in a mapping of the file `path` (Linux: /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps").read().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            start, end = (int(v, 16) for v in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


def with_external(cfg, **external):
    raw = OmegaConf.structured(cfg)
    for key, value in external.items():
        OmegaConf.update(raw, f"external.{key}", value)
    return model_config_from_dict(raw)


def test_unet_in_diffusers_layout_loads_into_the_frozen_base(tiny_config, tmp_path):
    source = plain_unet(tiny_config)
    source.save_pretrained(tmp_path / "sd15" / "unet")  # as in the SD1.5 repo: <repo>/unet/
    model = OneDC.untrained(tiny_config)
    lora_before = {n: p.clone() for n, p in model.generator.unet.named_parameters() if ".lora_" in n or n.startswith("conv_in.")}
    path = require("sd15_unet", {"sd15_unet": str(tmp_path / "sd15")})
    assert path == tmp_path / "sd15" / "unet"
    load_unet_base(model.generator.unet, path)
    unet = model.generator.unet.state_dict()
    plain = source.state_dict()
    to_q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert torch.equal(unet[f"{to_q}.base_layer.weight"], plain[f"{to_q}.weight"])
    assert torch.equal(unet["conv_norm_out.weight"], plain["conv_norm_out.weight"])
    assert all(torch.equal(p, lora_before[n]) for n, p in model.generator.unet.named_parameters() if n in lora_before)


def test_dmd2_style_bin_loads_through_the_model_and_misfits_are_clear(tiny_config, tmp_path):
    source = plain_unet(tiny_config)
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, bin_path)  # a DDP-style prefix is tolerated
    model = OneDC.untrained(with_external(tiny_config, unet="dmd2_unet"))
    load_frozen_weights(model, {"dmd2_unet": str(bin_path)})
    assert torch.equal(model.generator.unet.state_dict()["conv_out.weight"], source.state_dict()["conv_out.weight"])
    # torch's zip format is memory-mapped, copy-on-write (the file never changes); the legacy format is read whole
    state = read_state_dict(bin_path)
    assert mapped_from(state["conv_out.weight"], bin_path)
    content = bin_path.read_bytes()
    state["conv_out.weight"].add_(1.0)
    assert bin_path.read_bytes() == content
    torch.save(source.state_dict(), tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(tmp_path / "legacy.bin")["conv_out.weight"], source.state_dict()["conv_out.weight"])
    broken = source.state_dict()
    del broken["mid_block.resnets.0.conv1.weight"]
    broken["conv_out.bias"] = torch.zeros(7)
    torch.save(broken, bin_path)
    with pytest.raises(WeightsError, match=r"does not fit the U-Net base: 1 missing .*1 with other shapes"):
        load_frozen_weights(model, {"dmd2_unet": str(bin_path)})


def test_a_checkpoint_whose_weights_all_come_from_files_is_loaded_without_initialising_them(tiny_config, photos, tmp_path, monkeypatch):
    """As every full-size checkpoint: the trainable weights in the checkpoint, the frozen ones
    external (here the U-Net base in float16, as DMD2's file). The model is built on the meta
    device and takes the loaded tensors (no seeded initialisation: `untrained` is not called),
    and is bit for bit the model that loading onto the seeded initialisation gives."""
    config = with_external(dataclasses.replace(tiny_config, seed=7), unet="dmd2_unet", vae="sd21_vae")
    donor = OneDC.untrained(config)
    donor.lmbda = 4.6
    donor.save_pretrained(tmp_path / "ckpt")
    base = {k.replace(".base_layer.", "."): v.half() for k, v in donor.generator.unet.state_dict().items()
            if ".lora_" not in k and not k.startswith("conv_in.")}
    torch.save(base, tmp_path / "dmd2.bin")
    donor.vae.save_pretrained(tmp_path / "vae")
    weights = {"dmd2_unet": str(tmp_path / "dmd2.bin"), "sd21_vae": str(tmp_path / "vae")}
    expected = OneDC.untrained(config)
    expected.lmbda = 4.6
    load_frozen_weights(expected, weights)

    with monkeypatch.context() as patched:
        patched.setattr(OneDC, "untrained", None)
        loaded = OneDC.from_pretrained(tmp_path / "ckpt", weights)
        decoder = OneDC.from_pretrained(tmp_path / "ckpt", weights, role="decoder")  # g_a, h_enc never loaded
        bf16_decoder = OneDC.from_pretrained(tmp_path / "ckpt", weights, role="decoder", frozen_dtype=torch.bfloat16)
        without_unet = {**weights, "dmd2_unet": str(tmp_path / "absent.bin")}
        encoder = OneDC.from_pretrained(tmp_path / "ckpt", without_unet, role="encoder")  # the U-Net is not looked for
    with pytest.raises(WeightsError, match="missing external weights 'dmd2_unet'"):
        OneDC.from_pretrained(tmp_path / "ckpt", without_unet)
    reference, state = expected.state_dict(), loaded.state_dict()
    assert state.keys() == reference.keys()
    assert all(state[k].dtype == reference[k].dtype and torch.equal(state[k], reference[k]) for k in reference)
    image = photos["chelsea"][:, :128, :192]
    data = loaded.eval().compress(image)
    assert data == expected.eval().compress(image)
    assert torch.equal(loaded.decompress(data), expected.decompress(data))
    assert decoder.decoding_only and torch.equal(decoder.decompress(data), expected.decompress(data))
    assert encoder.encoding_only and encoder.compress(image) == data and encoder.identity == expected.identity
    # the float16 U-Net base cast once, straight to bf16: the model that casting after loading gives
    cast_after = copy.deepcopy(expected).for_decoding(torch.bfloat16).state_dict()
    assert bf16_decoder.state_dict().keys() == cast_after.keys()
    assert all(v.dtype == cast_after[k].dtype and torch.equal(v, cast_after[k]) for k, v in bf16_decoder.state_dict().items())
    assert bf16_decoder.generator.unet.conv_out.weight.dtype == torch.bfloat16
    assert torch.equal(bf16_decoder.decode_latents(data).y_hat, expected.decode_latents(data).y_hat)
    # the weights may be the files' memory maps: training them in place must not write the files
    files = {path: path.read_bytes() for path in (tmp_path / "ckpt" / "model.safetensors", tmp_path / "vae" / "diffusion_pytorch_model.safetensors")}
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)
    assert all(path.read_bytes() == content for path, content in files.items())


def test_the_parts_a_model_dropped_are_told_by_path(tiny_model):
    decoder, encoder = copy.deepcopy(tiny_model).for_decoding(), copy.deepcopy(tiny_model).for_encoding()
    assert dropped(decoder, "vae.encoder") and dropped(decoder, "vae.encoder.conv_in") and dropped(decoder, "codec.g_a")
    assert not dropped(decoder, "vae.decoder") and not dropped(decoder, "vae.decoder.conv_in") and not dropped(decoder, "")
    assert dropped(encoder, "generator.unet.conv_out") and not dropped(encoder, "vae.encoder")
    assert not dropped(decoder, "no.such.part")  # left to the strict key check
    state = {"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_in.weight": torch.zeros(1), "other": torch.zeros(1)}
    assert list(kept(decoder.vae, state)) == ["decoder.conv_in.weight", "other"]


def test_vae_and_tokenizer_files(tiny_config, tmp_path):
    donor = OneDC.untrained(dataclasses.replace(tiny_config, seed=5))
    donor.vae.save_pretrained(tmp_path / "vae")
    model = OneDC.untrained(tiny_config)
    load_vae(model.vae, require("sd21_vae", {"sd21_vae": str(tmp_path / "vae")}))
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), donor.vae.state_dict().values()))

    torch.manual_seed(3)
    teacher = build_tokenizer(tiny_config)
    maskgit = {**teacher.state_dict(), "decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}  # the public file holds a decoder too
    torch.save(maskgit, tmp_path / "maskgit.bin")
    tokenizer = build_tokenizer(tiny_config)
    load_tokenizer(tokenizer, tmp_path / "maskgit.bin")
    assert torch.equal(tokenizer.codebook, teacher.codebook)
    del maskgit["quantize.embedding.weight"]
    torch.save(maskgit, tmp_path / "maskgit.bin")
    with pytest.raises(WeightsError, match="1 missing"):
        load_tokenizer(tokenizer, tmp_path / "maskgit.bin")
    (tmp_path / "maskgit.bin").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_tokenizer(tokenizer, tmp_path / "maskgit.bin")


def test_hf_cache_and_torch_home_lookup(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    snapshot = cache / "models--fun-research--TiTok" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "maskgit-vqgan-imagenet-f16-256.bin").write_bytes(b"x")
    (cache / "models--fun-research--TiTok" / "refs").mkdir()
    (cache / "models--fun-research--TiTok" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert require("maskgit_tokenizer") == snapshot / "maskgit-vqgan-imagenet-f16-256.bin"

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert locate("lpips_alex")[0] is None
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    assert require("lpips_alex") == checkpoints / "alexnet-owt-7be5be79.pth"


def test_missing_weights_fail_early_with_the_check_message(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = (r"missing external weights 'sd21_vae' .*looked in: config path /nowhere; HF cache "
                r".*get it: hf download stabilityai/stable-diffusion-2-1")
    with pytest.raises(WeightsError, match=expected):
        require("sd21_vae", {"sd21_vae": "/nowhere"})
    model = OneDC.untrained(with_external(tiny_config, vae="sd21_vae"))
    model.save_pretrained(tmp_path / "ckpt")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    args = ["compress", str(tmp_path / "x.png"), str(tmp_path / "x.onedc"), "--checkpoint", str(tmp_path / "ckpt"), "--weights", "sd21_vae=/nowhere"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "missing external weights 'sd21_vae'" in err and "Traceback" not in err


def test_weights_check_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "inception.pth").write_bytes(b"x")
    assert main(["weights", "check", "fid_inception", "--weights", f"fid_inception={tmp_path / 'inception.pth'}"]) == 0
    assert "found" in capsys.readouterr().out
    assert main(["weights", "check", "lpips_vgg"]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "https://download.pytorch.org/models/vgg16-397923af.pth" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", "download", "sd21_vae"]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
