"""Reading state dicts from files and checking them strictly against a module's keys."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import OneDCError, WeightsError

DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_ABSENT = object()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors or torch pickle state dict (tensors only, `weights_only`), with any
    leading `module.` prefix removed. A diffusers or transformers folder reads its weights file.
    Safetensors files and torch's zip-format pickles are memory-mapped: a tensor is read from
    disk when first used (and never if its part is dropped unused)."""
    if path.is_dir():
        names = DIFFUSERS_WEIGHT_FILES + TRANSFORMERS_WEIGHT_FILES
        path = next((path / f for f in names if (path / f).is_file()), path / names[0])
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as e:  # unreadable, truncated or not a state dict: one clear message
            raise WeightsError(f"cannot read weights {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_safetensors(path: Path, error: type[OneDCError] = WeightsError) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or `error` naming the file and the check that failed
    (missing, unreadable, or its header inconsistent with the file: truncated or corrupt)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as e:
        raise error(f"{path}: safetensors header check failed ({e}): the file is truncated or corrupt") from e
    except OSError as e:
        raise error(f"cannot read {path}: {e}") from e


def check_keys(
    expected: dict[str, torch.Size], state: dict[str, torch.Tensor], source: str, what: str, error: type[OneDCError] = WeightsError
) -> None:
    """Strict check: every expected key present with its shape, nothing else in `state`;
    otherwise `error` saying how many keys are missing, unexpected or of another shape."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k] != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with other shapes (e.g. {wrong[:3]})" if wrong else ""]
        raise error(f"{source} does not fit the {what}: " + "; ".join(p for p in parts if p))


def load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state`, whose keys and shapes were checked against `module`, into it. A tensor on
    the meta device (of a model built without initialising its weights) is replaced by the
    loaded one cast to its dtype; any other is copied into in place."""
    current = module.state_dict(keep_vars=True)
    empty = {k for k in state if current[k].is_meta}
    if empty:
        module.load_state_dict({k: state[k].to(current[k].dtype) for k in empty}, strict=False, assign=True)
    if len(empty) < len(state):
        module.load_state_dict({k: v for k, v in state.items() if k not in empty}, strict=False)


def dropped(module: nn.Module, path: str) -> bool:
    """Whether the submodule at dotted `path` in `module`, or one above it, was set to None:
    a part the model dropped (e.g. the VAE encoder of a decoding-only OneDC). A path that does
    not exist is not dropped (a strict key check then reports it)."""
    part = module
    for name in filter(None, path.split(".")):
        if not isinstance(part, nn.Module):
            return False
        part = getattr(part, name, _ABSENT)
        if part is None:
            return True
    return False


def kept(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the keys that lie in parts of `module` it dropped (`dropped`)."""
    return {k: v for k, v in state.items() if not dropped(module, k.rpartition(".")[0])}


def shapes(state: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in state.items()}


def load_torchvision_features(stages: list[nn.Module], path: Path, what: str) -> None:
    """Copy the `features.N.*` weights of a torchvision classifier file (AlexNet, VGG16) into
    `stages`: Sequentials whose children are named by their index N in torchvision's `features`
    (the layout of lpips' and DISTS' trunks). Strict: every parameter of `stages` is filled."""
    features = {k[len("features."):]: v for k, v in read_state_dict(path).items() if k.startswith("features.")}
    params = {f"{index}.{name}": p for stage in stages for index, layer in stage.named_children()
              for name, p in layer.named_parameters()}
    check_keys({k: p.shape for k, p in params.items()}, features, str(path), what)
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(features[key])
