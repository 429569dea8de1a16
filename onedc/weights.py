"""External weights: where each one is looked for, how to get it, and loading it into our
modules with strict key checking.

Each weight is found, in this order, at
  1. a local path given in the weights config (`configs/weights/default.yaml`), or on the
     command line: `--weights sd21_vae=/data/sd21-vae` (onedc, onedc-eval and onedc-train alike),
  2. the Hugging Face cache (HF_HOME / HF_HUB_CACHE; looked up without network access),
  3. TORCH_HOME (`torch.hub.get_dir()/checkpoints`) for torchvision-style backbone files.
A missing weight raises `WeightsError` with the places searched and the exact command or URL
to get it, the same text `onedc weights check` prints. `onedc weights download` fetches them
(refused when HF_HUB_OFFLINE is set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, WeightsError
from .state_dicts import DIFFUSERS_WEIGHT_FILES, TRANSFORMERS_WEIGHT_FILES, check_keys, dropped, kept, load_into, read_state_dict, shapes

DMD2_FILE = (
    "model/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_diffusion1000_gan1e-3_"
    "resume_fid8.35_checkpoint_model_041000/pytorch_model.bin"
)
@dataclass(frozen=True)
class ExternalWeight:
    description: str
    hf_repo: str | None = None
    hf_file: str | None = None  # a single file in the repo
    hf_folder: str | None = None  # a model folder in the repo (diffusers or transformers layout)
    folder_files: tuple[tuple[str, ...], ...] = (("config.json",), DIFFUSERS_WEIGHT_FILES)  # one of each group
    torch_hub_file: str | None = None
    url: str | None = None
    made_by: str | None = None  # a weight we make ourselves: the command that writes it

    def how_to_get(self, name: str) -> str:
        if self.made_by:
            return self.made_by
        if self.hf_repo and self.hf_file:
            return f"hf download {self.hf_repo} {self.hf_file}   (or: onedc weights download {name})"
        if self.hf_repo:
            return f'hf download {self.hf_repo} --include "{self.hf_folder}/*"   (or: onedc weights download {name})'
        return f"{self.url} into {torch_hub_checkpoints()}/   (or: onedc weights download {name})"


EXTERNAL_WEIGHTS: dict[str, ExternalWeight] = {
    "dmd2_unet": ExternalWeight(
        "DMD2 one-step SD1.5 U-Net (the generator's frozen base)", hf_repo="tianweiy/DMD2", hf_file=DMD2_FILE
    ),
    "sd15_unet": ExternalWeight(
        "SD1.5 U-Net, diffusers layout (Stage II real and fake scores)",
        hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        hf_folder="unet",
    ),
    "sd15_text_encoder": ExternalWeight(
        "SD1.5 CLIP text encoder (Stage II critics' captions)",
        hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        hf_folder="text_encoder",
        folder_files=(("config.json",), TRANSFORMERS_WEIGHT_FILES),
    ),
    "sd15_tokenizer": ExternalWeight(
        "SD1.5 CLIP tokenizer (Stage II critics' captions)",
        hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        hf_folder="tokenizer",
        folder_files=(("vocab.json",), ("merges.txt",)),
    ),
    "sd21_vae": ExternalWeight(
        "SD2.1 VAE, diffusers layout (frozen encoder and decoder)", hf_repo="stabilityai/stable-diffusion-2-1", hf_folder="vae"
    ),
    "maskgit_tokenizer": ExternalWeight(
        "MaskGIT VQGAN f16 tokenizer (Stage I distillation)",
        hf_repo="fun-research/TiTok",
        hf_file="maskgit-vqgan-imagenet-f16-256.bin",
    ),
    "lpips_alex": ExternalWeight(
        "AlexNet backbone of LPIPS-Alex (evaluation)",
        torch_hub_file="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
    "lpips_vgg": ExternalWeight(
        "VGG16 backbone of LPIPS-VGG (training loss)",
        torch_hub_file="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    "dists_vgg16": ExternalWeight(
        "VGG16 backbone of DISTS (evaluation)",
        torch_hub_file="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    "fid_inception": ExternalWeight(
        "Inception-v3 of FID/KID (pytorch-fid weights)",
        torch_hub_file="pt_inception-2015-12-05-6726825d.pth",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    ),
    "quickstart_vae": ExternalWeight(
        "the tiny model's VAE pretrained on the sample photos (the quickstart demo's checkpoints only)",
        made_by="bash scripts/quickstart.sh (its first step writes it where configs/weights/default.yaml points)",
    ),
}


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_weight_paths(overrides: list[str] | None = None) -> dict[str, str | None]:
    """Local paths from the weights config, with `name=path` overrides applied."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    paths = OmegaConf.to_container(OmegaConf.load(files("onedc.configs.weights") / "default.yaml"))
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep or name not in EXTERNAL_WEIGHTS:
            raise ConfigError(f"weights override must be NAME=PATH with NAME one of {', '.join(EXTERNAL_WEIGHTS)}; got {item!r}")
        paths[name] = value or None
    return paths


def _valid(weight: ExternalWeight, path: Path) -> Path | None:
    """The usable path at `path` (a file, or a diffusers folder or its repo root), or None."""
    if weight.hf_folder:
        for folder in (path, path / weight.hf_folder):
            if all(any((folder / f).is_file() for f in group) for group in weight.folder_files):
                return folder
        return None
    return path if path.is_file() else None


def locate(name: str, paths: dict[str, str | None] | None = None) -> tuple[Path | None, list[str]]:
    """(path or None, the places searched, in order)."""
    from huggingface_hub import constants, try_to_load_from_cache

    weight = EXTERNAL_WEIGHTS[name]
    searched: list[str] = []
    local = (paths or {}).get(name)
    if local:
        searched.append(f"config path {local}")
        found = _valid(weight, Path(local).expanduser())
        if found:
            return found, searched
    if weight.hf_repo:
        searched.append(f"HF cache {constants.HF_HUB_CACHE} ({weight.hf_repo})")
        if weight.hf_file:
            cached = try_to_load_from_cache(weight.hf_repo, weight.hf_file)
            if isinstance(cached, str):
                return Path(cached), searched
        else:
            first = try_to_load_from_cache(weight.hf_repo, f"{weight.hf_folder}/{weight.folder_files[0][0]}")
            if isinstance(first, str) and _valid(weight, Path(first).parent):
                return Path(first).parent, searched
    if weight.torch_hub_file:
        candidate = torch_hub_checkpoints() / weight.torch_hub_file
        searched.append(f"TORCH_HOME {candidate}")
        if candidate.is_file():
            return candidate, searched
    return None, searched


def missing_message(name: str, searched: list[str]) -> str:
    weight = EXTERNAL_WEIGHTS[name]
    return f"missing external weights '{name}' ({weight.description}); looked in: {'; '.join(searched)}; get it: {weight.how_to_get(name)}"


def require(name: str, paths: dict[str, str | None] | None = None) -> Path:
    """The path of weight `name`, or WeightsError saying where it was looked for and how to get it."""
    found, searched = locate(name, paths)
    if found is None:
        raise WeightsError(missing_message(name, searched))
    return found


def download(name: str) -> Path:
    """Fetch weight `name` into the HF cache or TORCH_HOME; refused when HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    weight = EXTERNAL_WEIGHTS[name]
    if weight.made_by:
        raise WeightsError(f"'{name}' is not downloaded but made: {weight.made_by}")
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise WeightsError(f"HF_HUB_OFFLINE is set: not downloading '{name}'; get it on a connected machine: {weight.how_to_get(name)}")
    try:
        if weight.hf_repo and weight.hf_file:
            return Path(hf_hub_download(weight.hf_repo, weight.hf_file))
        if weight.hf_repo:
            root = snapshot_download(weight.hf_repo, allow_patterns=[f"{weight.hf_folder}/{group[0]}" for group in weight.folder_files])
            return Path(root) / weight.hf_folder
        target = torch_hub_checkpoints() / weight.torch_hub_file
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weight.url, str(target))
        return target
    except OSError as e:  # network errors, HTTP errors (huggingface_hub raises OSError subclasses)
        raise WeightsError(f"downloading '{name}' failed: {e}; get it by hand: {weight.how_to_get(name)}") from e


# ----------------------------------------------------------------------------------- loading
def load_unet_base(unet: nn.Module, path: Path) -> None:
    """Plain UNet2DConditionModel weights (SD1.5 diffusers layout, or the DMD2 .bin) into the
    frozen base of our LoRA-wrapped U-Net: `X.weight` -> `X.base_layer.weight` for wrapped
    layers. LoRA and our new conv_in are not touched; SD1.5's own conv_in (4 -> 320) has no
    counterpart (ours is a new 320 -> 320 conv fed by g_s) and is dropped."""
    base = {k: v for k, v in unet.state_dict().items() if ".lora_" not in k and not k.startswith("conv_in.")}
    rename = {k.replace(".base_layer.", "."): k for k in base}
    state = {rename.get(k, k): v for k, v in read_state_dict(path).items() if not k.startswith("conv_in.")}
    check_keys(shapes(base), state, str(path), "U-Net base")
    load_into(unet, state)


def load_module(module: nn.Module, path: Path, what: str, skip: tuple[str, ...] = ()) -> None:
    """Strictly load a state-dict file (or model folder) into `module`; keys ending in one of
    `skip` are left out first (for known, harmless extras), and so are those of parts the
    module dropped (the VAE encoder of a decoding-only OneDC: `state_dicts.dropped`)."""
    state = {k: v for k, v in kept(module, read_state_dict(path)).items() if not (skip and k.endswith(skip))}
    check_keys(shapes(module.state_dict()), state, str(path), what)
    load_into(module, state)


def load_vae(vae: nn.Module, path: Path) -> None:
    load_module(vae, path, "SD VAE")


def load_text_encoder(encoder: nn.Module, path: Path) -> None:
    """CLIPTextModel weights; older files also store the constant position ids, which are skipped."""
    load_module(encoder, path, "CLIP text encoder", skip=("embeddings.position_ids",))


def load_clip_tokenizer(path: Path):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read the CLIP tokenizer in {path}: {e}") from e


def load_tokenizer(tokenizer: nn.Module, path: Path) -> None:
    """The public MaskGIT file also holds the VQGAN decoder, which distillation never uses:
    its `decoder.*` keys are skipped."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("decoder.")}
    check_keys(shapes(tokenizer.state_dict()), state, str(path), "MaskGIT tokenizer")
    load_into(tokenizer, state)


# The frozen parts of a OneDC that external weights replace: the key of config.external naming
# them -> (the submodule they load into, its loader).
EXTERNAL_FROZEN_PARTS = {"unet": ("generator.unet", load_unet_base), "vae": ("vae", load_vae)}


def externally_loaded_parts(external) -> list[str]:
    """The OneDC submodules (`generator.unet`, `vae`) whose frozen weights come from external
    files under the model config's `external` section; the others keep their seeded values."""
    return [part for key, (part, _) in EXTERNAL_FROZEN_PARTS.items() if getattr(external, key) is not None]


def load_frozen_weights(model, weight_paths: dict[str, str | None] | None = None) -> None:
    """Load the frozen U-Net base and VAE of a OneDC named in `model.config.external`; null
    entries keep their seeded initialisation. WeightsError if one is missing or misfits. A
    part the model dropped is neither looked for nor read (an encoding-only OneDC needs no
    U-Net weights; `state_dicts.dropped`)."""
    for key, (part, load) in EXTERNAL_FROZEN_PARTS.items():
        name = getattr(model.config.external, key)
        if name is None or dropped(model, part):
            continue
        if name not in EXTERNAL_WEIGHTS:
            raise ConfigError(f"external.{key}: unknown weights {name!r}; known: {', '.join(EXTERNAL_WEIGHTS)}")
        load(model.get_submodule(part), require(name, weight_paths))
