"""OneDC at the image level: the frozen SD VAE encoder and the latent codec, image -> bytes ->
latent reconstruction, and checkpoint folders. The one-step generator joins in the
generator issue, after which `decompress` returns pixels.

Checkpoint folder (written atomically by `save_pretrained`):
    model.safetensors   trainable weights (the latent codec), keys as in OneDC.state_dict()
    onedc.json          {"format", "format_version", "model_config", "lmbda", "weights_digest"}
Frozen parts (the VAE) are not stored: they come from their own source (the seeded
initialisation of an untrained config here; the SD2.1 VAE once external weights load).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import bitstream
from .bitstream import DIGEST_BYTES, MAX_SIDE, Header, ModelIdentity
from .codec import LatentCodec
from .config import ModelConfig, model_config_from_dict
from .errors import BitstreamError, CheckpointError, ConfigError, ImageError
from .generator.vae import build_vae, encode_latent

CHECKPOINT_FORMAT = "onedc-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "onedc.json"


@dataclass
class LatentReconstruction:
    """What a file decodes to before the generator: y_hat (1, Cy, Hp/16, Wp/16) and
    c (1, Cc, Hp/64, Wp/64) for the padded size Hp x Wp, and the original size."""

    y_hat: torch.Tensor
    c: torch.Tensor
    height: int
    width: int
    model: ModelIdentity


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom and right to multiples of `multiple`."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


class OneDC(nn.Module):
    def __init__(self, config: ModelConfig, lmbda: float | None = None):
        super().__init__()
        self.config = config
        self.lmbda = lmbda
        self.vae = build_vae(config.vae)
        self.codec = LatentCodec(config.codec, config.blocks)
        self._digest: tuple[tuple, bytes] | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def untrained(cls, config: ModelConfig) -> "OneDC":
        """Randomly initialised from `config.seed`: the same weights on every machine."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return cls(config)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "OneDC":
        """Load a checkpoint folder written by `save_pretrained`."""
        path = Path(path)
        meta_path, weights_path = path / METADATA_FILE, path / WEIGHTS_FILE
        if not path.is_dir():
            raise CheckpointError(f"checkpoint folder not found: {path}")
        for required in (meta_path, weights_path):
            if not required.is_file():
                raise CheckpointError(f"incomplete checkpoint {path}: {required.name} is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {meta_path}: {e}") from e
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{meta_path} is not a onedc checkpoint (format version {CHECKPOINT_VERSION})")
        try:
            config = model_config_from_dict(meta["model_config"], source=str(meta_path))
        except (KeyError, ConfigError) as e:
            raise CheckpointError(f"{meta_path} holds no valid model config: {e}") from e
        model = cls.untrained(config)
        model.lmbda = meta.get("lmbda")
        try:
            state = load_file(weights_path)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {weights_path}: {e}") from e
        model.load_trainable_state_dict(state, source=str(weights_path))
        if model.weights_digest().hex() != meta.get("weights_digest"):
            raise CheckpointError(f"{weights_path} does not match the digest recorded in {meta_path.name} (corrupt or replaced file)")
        return model

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint stores (those not frozen), keys as in `state_dict()`."""
        return {f"codec.{k}": v for k, v in self.codec.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict: every trainable key must be present with its shape, nothing else."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                     f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                     f"{len(wrong)} with wrong shapes (e.g. {wrong[:3]})" if wrong else ""]
            raise CheckpointError(f"{source} does not fit model {self.config.name}: " + "; ".join(p for p in parts if p))
        self.codec.load_state_dict({k[len("codec.") :]: v for k, v in state.items()})

    def save_pretrained(self, path: str | Path) -> None:
        """Write a checkpoint folder atomically: into a temporary folder, then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
            save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
            meta = {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_VERSION,
                "model_config": self.config.to_dict(),
                "lmbda": self.lmbda,
                "weights_digest": self.weights_digest().hex(),
            }
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
            for f in tmp.iterdir():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ----------------------------------------------------------------- identity
    @property
    def device(self) -> torch.device:
        return next(self.codec.parameters()).device

    def weights_digest(self) -> bytes:
        """First DIGEST_BYTES of SHA-256 over the latent codec's tensors (key, dtype, shape,
        bytes), cached until `codec.weights_fingerprint()` changes."""
        fingerprint = self.codec.weights_fingerprint()
        if self._digest is None or self._digest[0] != fingerprint:
            h = hashlib.sha256()
            for key, t in self.codec.state_dict().items():
                t = t.detach().cpu().contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.view(-1).view(torch.uint8).numpy())
            self._digest = (fingerprint, h.digest()[:DIGEST_BYTES])
        return self._digest[1]

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.config.name, self.lmbda, self.weights_digest())

    # ----------------------------------------------------------------- coding
    @torch.no_grad()
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """SD VAE latent of x (B, 3, H, W) in [-1, 1]: (B, 4, H/8, W/8), posterior mode."""
        return encode_latent(self.vae, x)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> tuple[bytes, LatentReconstruction]:
        """One image (3, H, W) or (1, 3, H, W) in [-1, 1] -> (the bytes of a onedc file, the
        reconstruction `decompress` will produce from them)."""
        x = _check_image(image).to(self.device)
        height, width = x.shape[-2:]
        if height > MAX_SIDE or width > MAX_SIDE:
            raise ImageError(f"images up to {MAX_SIDE} pixels per side are supported, got {height}x{width}")
        padded = pad_to_multiple(x, self.config.image_multiple)
        out = self.codec.compress(padded, self.encode_latent(padded))
        identity = self.identity
        data = bitstream.write(Header(identity, height, width), out["strings"]["y"][0], out["strings"]["z"][0])
        return data, LatentReconstruction(out["y_hat"], out["c"], height, width, identity)

    def compress(self, image: torch.Tensor) -> bytes:
        """One image (3, H, W) or (1, 3, H, W) in [-1, 1] -> the bytes of a onedc file."""
        return self.encode(image)[0]

    @torch.no_grad()
    def decompress(self, data: bytes) -> LatentReconstruction:
        """The bytes of a onedc file -> its latent reconstruction. BitstreamError if the file
        is corrupt or was written by another model."""
        header, y_stream, z_stream = bitstream.read(data)
        if not header.model.matches(self.identity):
            raise BitstreamError(
                f"model mismatch: the file was written by {header.model.describe()}, "
                f"this model is {self.identity.describe()}"
            )
        m = self.config.image_multiple
        shape = (math.ceil(header.height / m), math.ceil(header.width / m))
        out = self.codec.decompress({"y": [y_stream], "z": [z_stream]}, shape)
        return LatentReconstruction(out["y_hat"], out["c"], header.height, header.width, header.model)


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise ImageError("expected a floating-point image tensor of shape (3, H, W) in [-1, 1]")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[:2] != (1, 3) or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ImageError(f"expected one RGB image of shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1.0 + 1e-4:
        raise ImageError("image values must be finite and in [-1, 1]")
    return x.float().clamp(-1, 1)
