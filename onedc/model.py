"""OneDC end to end: SD VAE encoder -> latent codec -> file -> latent codec -> one-step
generator -> SD VAE decoder, and checkpoint folders.

x (B, 3, H, W) in [-1, 1] (H, W multiples of 64 in `forward`; any size in `compress`)
  x_lat = VAE.encode(x);  codec(x, x_lat) -> y_hat, c, y_in = g_s(y_hat, c), rates
  y_out = generator(y_in, tokens(c));  x_hat = VAE.decode(y_out)

Checkpoint folder (written atomically by `save_pretrained`):
    model.safetensors   trainable weights (latent codec, LoRA, new conv_in, vae_reduction),
                        keys as in OneDC.state_dict()
    frozen.safetensors  optional: frozen weights bundled with the checkpoint (an imported
                        official release carries its DMD2 U-Net base)
    onedc.json          {"format", "format_version", "model_config", "lmbda", "weights_digest",
                        "decoder_digest" (SHA-256 of the trainable weights decoding uses: all
                        but g_a and h_enc; since format 3), "frozen_digest" (with
                        frozen.safetensors), "checksum" (SHA-256 of the other entries as
                        canonical JSON)}
Frozen parts (the U-Net base and the VAE) are not stored: they come from their own source
(the seeded initialisation of an untrained config; the DMD2 U-Net and SD2.1 VAE at full size,
found as `onedc weights check` finds them): `OneDC.from_pretrained` loads all of it, or of an
encoder or a decoder only what it keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from . import bitstream
from .atomic import atomic_directory
from .bitstream import DIGEST_BYTES, MAX_SIDE, Header, ModelIdentity
from .checksums import json_checksum
from .codec import LatentCodec
from .codec.code_predictor import CodePredictor
from .codec.semantic import tokens
from .codec.stream_limits import stream_bounds
from .config import ModelConfig, model_config_from_dict
from .errors import BitstreamError, CheckpointError, ConfigError, ImageError
from .generator.one_step_unet import OneStepGenerator, is_trainable
from .generator.tokenizer import MaskGITTokenizer
from .generator.vae import build_vae, decode_latent, encode_latent
from .limits import check_size
from .profiling import stage, synchronized_seconds
from .state_dicts import check_keys, kept, load_into, load_safetensors
from .weights import externally_loaded_parts, load_frozen_weights

CHECKPOINT_FORMAT = "onedc-checkpoint"
CHECKPOINT_VERSION = 3  # 2: the checksum and the config keys of FORMAT_1_DEFAULTS; 3: decoder_digest
READABLE_VERSIONS = (1, 2, 3)
# Model-config keys added after checkpoint format 1, with the value format-1 checkpoints were
# built with (they did not record them). Format-1 checkpoints that bundle frozen weights are
# imported official releases, whose vae_reduction was trained with GroupNorm eps 1e-6: format 1
# recorded our former default, 1e-5, for them.
FORMAT_1_DEFAULTS = {
    ("image_padding",): "replicate",
    ("codec", "z_only"): False,
    ("codec", "entropy", "official_eval_scale_min"): 1.0e-5,
    ("codec", "analysis", "unet", "norm_eps"): 1.0e-5,
    ("generator", "unet", "norm_eps"): 1.0e-5,
    ("distillation", "predictor", "layer_norm_eps"): 1.0e-5,
    ("distillation", "predictor", "head_norm_eps"): 1.0e-5,
}
OFFICIAL_REDUCTION_EPS = 1.0e-6
WEIGHTS_FILE = "model.safetensors"
FROZEN_FILE = "frozen.safetensors"
METADATA_FILE = "onedc.json"
ROLES = ("full", "encoder", "decoder")  # what a loaded model is for (`OneDC.from_pretrained`, `for_role`)
METADATA_KEYS = {"format", "format_version", "model_config", "lmbda", "weights_digest", "decoder_digest", "frozen_digest", "checksum"}


@dataclass
class LatentReconstruction:
    """What a file decodes to before the generator: y_hat (1, Cy, Hp/16, Wp/16) and
    c (1, Cc, Hp/64, Wp/64) for the padded size Hp x Wp, and the original size."""

    y_hat: torch.Tensor
    c: torch.Tensor
    height: int
    width: int
    model: ModelIdentity


def tensor_digest(tensors: dict[str, torch.Tensor]) -> bytes:
    """SHA-256 over the tensors in sorted key order: for each, `key|dtype|shape|` then its bytes."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy())
    return h.digest()


def used_by_decoder(key: str) -> bool:
    """Whether the trainable weight `key` (as in OneDC.state_dict()) is one decoding uses: all
    but those of g_a and h_enc."""
    return not key.startswith(tuple(f"codec.{part}." for part in LatentCodec.ENCODER_PARTS))


def write_checkpoint(folder: Path, config: ModelConfig, lmbda: float | None, trainable: dict[str, torch.Tensor],
                     frozen: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint's files into an existing folder: model.safetensors (trainable
    weights), optionally frozen.safetensors (frozen weights bundled with it), onedc.json."""
    trainable = {k: v.detach().cpu().contiguous() for k, v in trainable.items()}
    save_file(trainable, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": config.to_dict(),
        "lmbda": lmbda,
        "weights_digest": tensor_digest(trainable)[:DIGEST_BYTES].hex(),
        "decoder_digest": tensor_digest({k: v for k, v in trainable.items() if used_by_decoder(k)}).hex(),
    }
    if frozen:
        frozen = {k: v.detach().cpu().contiguous() for k, v in frozen.items()}
        save_file(frozen, folder / FROZEN_FILE, metadata={"format": "pt"})
        meta["frozen_digest"] = tensor_digest(frozen).hex()
    meta["checksum"] = json_checksum(meta)
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2))


def upgrade_format_1(meta: dict) -> None:
    """Bring the metadata of a format-1 checkpoint to the current format, in place."""
    config = meta.get("model_config")
    if not isinstance(config, dict):
        return  # reported as an invalid model config by the caller
    for keys, value in FORMAT_1_DEFAULTS.items():
        section = config
        for key in keys[:-1]:
            section = section.setdefault(key, {})
        section.setdefault(keys[-1], value)
    if meta.get("frozen_digest"):
        config.setdefault("generator", {})["reduction_eps"] = OFFICIAL_REDUCTION_EPS
    meta["format_version"] = CHECKPOINT_VERSION


def read_metadata(path: Path) -> dict:
    """A checkpoint's onedc.json, checked: valid JSON, known keys, its checksum (files written
    before the checksum existed have none), a readable format (format 1 upgraded).
    CheckpointError naming the check."""
    try:
        meta = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}): the file is corrupt or truncated") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a onedc checkpoint (format version {CHECKPOINT_VERSION})")
    unknown = sorted(set(meta) - METADATA_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unexpected entries {unknown}: the file is corrupt or written by a newer onedc")
    if "checksum" in meta and meta["checksum"] != json_checksum(meta):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt or was edited")
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} is not a onedc checkpoint (format versions {', '.join(map(str, READABLE_VERSIONS))})")
    if "decoder_digest" in meta and not (is_hex_digest(meta["decoder_digest"], 32) and is_hex_digest(meta.get("weights_digest"), DIGEST_BYTES)):
        raise CheckpointError(f"{path}: its weights_digest or decoder_digest is not a digest: the file is corrupt or was edited")
    if meta["format_version"] == 1:
        upgrade_format_1(meta)
    return meta


def is_hex_digest(value, size: int) -> bool:
    """Whether `value` is the hexadecimal string of a `size`-byte digest."""
    return isinstance(value, str) and len(value) == 2 * size and all(c in "0123456789abcdef" for c in value)


def read_checkpoint(path: Path) -> tuple[dict, ModelConfig, dict[str, torch.Tensor]]:
    """A checkpoint folder's metadata, model config and trainable weights; CheckpointError if
    the folder or a file is missing, or the metadata or config is invalid."""
    meta_path, weights_path = path / METADATA_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    for required in (meta_path, weights_path):
        if not required.is_file():
            raise CheckpointError(f"incomplete checkpoint {path}: {required.name} is missing")
    meta = read_metadata(meta_path)
    try:
        config = model_config_from_dict(meta["model_config"], source=str(meta_path))
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{meta_path} holds no valid model config: {e}") from e
    return meta, config, load_safetensors(weights_path, error=CheckpointError)


def read_bundled_frozen(path: Path, digest: str) -> dict[str, torch.Tensor]:
    """The frozen weights bundled in a checkpoint folder, checked against their digest."""
    state = load_safetensors(path / FROZEN_FILE, error=CheckpointError)
    if tensor_digest(state).hex() != digest:
        raise CheckpointError(f"{path / FROZEN_FILE}: digest mismatch with {METADATA_FILE}: the file is corrupt or was replaced")
    return state


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right to multiples of `multiple`: "replicate" repeats
    the last row and column; "reflect" mirrors the image about them, as often as needed (one
    mirror image is F.pad's reflect; a side of one pixel is repeated)."""
    h, w = x.shape[-2:]
    if mode == "replicate":
        return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")
    rows, cols = _reflected_indices(h, h - h % -multiple), _reflected_indices(w, w - w % -multiple)
    return x[..., rows.to(x.device)[:, None], cols.to(x.device)]


def _reflected_indices(size: int, padded: int) -> torch.Tensor:
    """Source index of each of `padded` positions when a side of `size` is mirrored about its
    last element as often as needed (period 2 (size - 1))."""
    if size == 1:
        return torch.zeros(padded, dtype=torch.long)
    period = 2 * (size - 1)
    i = torch.arange(padded) % period
    return torch.where(i < size, i, period - i)


class OneDC(nn.Module):
    def __init__(self, config: ModelConfig, lmbda: float | None = None):
        super().__init__()
        self.config = config
        self.lmbda = lmbda
        self.vae = build_vae(config.vae)
        self.codec = LatentCodec(config.codec, config.blocks)
        self.generator = OneStepGenerator(config.generator, config.codec.synthesis.out_channels)
        self.frozen_dtype = torch.float32  # of the U-Net base and the VAE (`for_decoding`)
        self.decoder_compiled = False  # `compile_decoder`
        self._compiled_shapes: set[tuple[int, int, int]] = set()  # (batch, height, width) padded: `compile_for`
        self._digest: tuple[tuple, bytes] | None = None
        self._fixed_digest: bytes | None = None  # the identity of a decoding- or encoding-only model

    # ----------------------------------------------------------------- construction
    @classmethod
    def untrained(cls, config: ModelConfig) -> "OneDC":
        """Randomly initialised from `config.seed`: the same weights on every machine."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return cls(config)

    @classmethod
    def without_weights(cls, config: ModelConfig) -> "OneDC":
        """Built with its parameters on the meta device (no memory, no random initialisation)
        and its buffers computed: a model whose every weight is then loaded from files."""
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            return cls(config)

    @classmethod
    def from_pretrained(cls, path: str | Path, weight_paths: dict[str, str | None] | None = None, role: str = "full",
                        frozen_dtype: torch.dtype = torch.float32) -> "OneDC":
        """A usable model from a checkpoint folder written by `save_pretrained` (or by
        `onedc import-official`): its trainable weights, the frozen weights bundled with it,
        and the external frozen weights its config names (the DMD2 U-Net and the SD2.1 VAE at
        full size; looked up as `onedc weights check` does, `weight_paths` overriding the
        weights config). WeightsError with the command to get them if any is missing.

        Where files hold every weight (the full-size configs) the model is built without
        initialising them and takes the loaded tensors (13 s less on 2 cores at full size,
        docs/benchmarks.md); otherwise (the tiny configs, whose frozen parts are seeded) on the
        seeded initialisation.

        `role` (ROLES): "full"; "encoder", made `for_encoding` before its frozen weights load,
        so the U-Net's and the VAE decoder's are neither looked for nor read; or "decoder",
        made `for_decoding(frozen_dtype)` before they load, so the VAE encoder's are not read
        and the others are cast once, straight to `frozen_dtype`. Where the checkpoint records
        its decoder's digest (format 3) a decoder also drops g_a and h_enc before loading its
        trainable weights, which are verified against that digest; an older checkpoint, and
        any other role, is verified whole."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        path = Path(path)
        meta, config, state = read_checkpoint(path)
        bundled = read_bundled_frozen(path, meta["frozen_digest"]) if meta.get("frozen_digest") else {}
        model = cls.without_weights(config)
        if not model.weights_all_from_files(bundled):
            model = cls.untrained(config)
        model.lmbda = meta.get("lmbda")
        decoder_only = role == "decoder" and "decoder_digest" in meta
        if decoder_only:
            model.codec.drop_encoder()
            model._fixed_digest = bytes.fromhex(meta["weights_digest"])  # the identity of the whole model
            state = {k: v for k, v in state.items() if used_by_decoder(k)}
        model.load_trainable_state_dict(state, source=str(path / WEIGHTS_FILE))
        if decoder_only:
            digest, recorded = tensor_digest(model.trainable_state_dict()).hex(), meta["decoder_digest"]
        else:
            digest, recorded = model.weights_digest().hex(), meta.get("weights_digest")
        if digest != recorded:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: digest mismatch with {METADATA_FILE}: the file is corrupt or was replaced")
        model.for_role(role, frozen_dtype)
        if bundled:
            model.load_bundled_frozen(bundled, source=str(path / FROZEN_FILE))
        load_frozen_weights(model, weight_paths)
        return model

    def weights_all_from_files(self, bundled: dict[str, torch.Tensor]) -> bool:
        """Whether loading a checkpoint replaces every weight: the trainable ones, `bundled`
        frozen ones, and those of the parts whose external weights the config names."""
        external = tuple(f"{part}." for part in externally_loaded_parts(self.config.external))
        trainable = self.trainable_state_dict()
        return all(k in trainable or k in bundled or k.startswith(external) for k in self.state_dict())

    def load_bundled_frozen(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Frozen weights shipped inside a checkpoint (e.g. the DMD2 U-Net base of an imported
        official release): a subset of the frozen keys, each with its shape. Those of parts
        this model dropped are left out (`state_dicts.dropped`)."""
        state = kept(self, state)
        trainable = self.trainable_state_dict()
        frozen = {k: v.shape for k, v in self.state_dict().items() if k not in trainable}
        unknown = sorted(set(state) - set(frozen))
        if unknown:
            raise CheckpointError(f"{source}: {len(unknown)} keys that are not frozen weights of {self.config.name} (e.g. {unknown[:3]})")
        check_keys({k: frozen[k] for k in state}, state, source, f"model {self.config.name}", error=CheckpointError)
        load_into(self, state)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint stores (those not frozen) that this model holds (an
        encoding-only one has no generator), keys as in `state_dict()`."""
        generator = self.generator.trainable_state_dict() if self.generator is not None else {}
        return {
            **{f"codec.{k}": v for k, v in self.codec.state_dict().items()},
            **{f"generator.{k}": v for k, v in generator.items()},
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict: every trainable key must be present with its shape, nothing else."""
        expected = {k: v.shape for k, v in self.trainable_state_dict().items()}
        check_keys(expected, state, source, f"model {self.config.name}", error=CheckpointError)
        load_into(self, state)

    def save_pretrained(self, path: str | Path) -> None:
        """Write a checkpoint folder atomically: into a temporary folder, then renamed."""
        with atomic_directory(path) as tmp:
            self.write_checkpoint_files(tmp)

    def write_checkpoint_files(self, folder: Path) -> None:
        """model.safetensors (trainable weights) and onedc.json into an existing folder."""
        if self.decoding_only or self.encoding_only:
            raise CheckpointError("a decoding-only or encoding-only model (OneDC.for_decoding, for_encoding) lacks weights: save the full model")
        write_checkpoint(folder, self.config, self.lmbda, self.trainable_state_dict())

    # ----------------------------------------------------------------- identity
    @property
    def device(self) -> torch.device:
        return next(self.codec.parameters()).device

    def weights_digest(self) -> bytes:
        """First DIGEST_BYTES of SHA-256 over the trainable tensors (key, dtype, shape, bytes),
        i.e. over what a checkpoint stores. Cached until a tensor is replaced or modified in
        place (version counters; writes through `.data` bypass them). A decoding-only or
        encoding-only model keeps the digest it had when it was made one (`for_decoding`,
        `for_encoding`; or its checkpoint's, `from_pretrained(role=...)`)."""
        if self._fixed_digest is not None:
            return self._fixed_digest
        generator = (p for n, p in self.generator.named_parameters() if is_trainable(n))
        fingerprint = self.codec.weights_fingerprint() + tuple((p.data_ptr(), p._version) for p in generator)
        if self._digest is None or self._digest[0] != fingerprint:
            self._digest = (fingerprint, tensor_digest(self.trainable_state_dict())[:DIGEST_BYTES])
        return self._digest[1]

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.config.name, self.lmbda, self.weights_digest())

    # ----------------------------------------------------------------- passes
    @torch.no_grad()
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """SD VAE latent of x (B, 3, H, W) in [-1, 1]: (B, 4, H/8, W/8), posterior mode."""
        self.codec.require_encoder()
        return encode_latent(self.vae, x)

    def generate(self, y_in: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One-step generator and VAE decoder: y_in (B, Cin, H/8, W/8) and c (B, Cc, H/64, W/64)
        -> x_hat (B, 3, H, W), unclamped."""
        return decode_latent(self.vae, self.generator(y_in, tokens(c)))

    def forward(self, x: torch.Tensor) -> dict:
        """Training / evaluation pass on x (B, 3, H, W) in [-1, 1], H and W multiples of 64:
        the codec's outputs (y, y_hat, c, likelihoods, bits, ...) plus x_hat (B, 3, H, W)."""
        out = self.codec(x, self.encode_latent(x))
        out["x_hat"] = self.generate(out["y_in"], out["c"])
        return out

    # ----------------------------------------------------------------- coding
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) padded at the bottom and right to multiples of image_multiple, in the
        config's image_padding mode."""
        return pad_to_multiple(x, self.config.image_multiple, self.config.image_padding)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, max_pixels: int | None = None) -> tuple[bytes, LatentReconstruction]:
        """One image (3, H, W) or (1, 3, H, W) in [-1, 1] -> (the bytes of a onedc file, the
        latent reconstruction the decoder will produce from them). `max_pixels`: see `decode_latents`."""
        files, y_hat, indices, (height, width) = self._encode_batch([image], max_pixels)
        with stage("h_sem"):
            c = self.codec.semantic(indices)
        return files[0], LatentReconstruction(y_hat, c, height, width, self.identity)

    @torch.no_grad()
    def compress(self, images: torch.Tensor | list[torch.Tensor], max_pixels: int | None = None) -> bytes | list[bytes]:
        """One image (3, H, W) or (1, 3, H, W) in [-1, 1] -> the bytes of a onedc file; a list of
        images of one size -> a list of files, each identical to the one the image alone gives.
        `max_pixels`: see `decode_latents`."""
        if isinstance(images, (list, tuple)):
            return self._encode_batch(list(images), max_pixels)[0] if images else []
        return self._encode_batch([images], max_pixels)[0][0]

    def _encode_batch(
        self, images: list[torch.Tensor], max_pixels: int | None = None
    ) -> tuple[list[bytes], torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Files, y_hat (B, Cy, h, w), FSQ indices (B, h/4, w/4) and the original size of images
        of one size. The float networks (VAE encoder, g_a, h_enc) see one image at a time, so
        that a batch cannot move y by a rounding and change a file; the exact entropy networks
        (batch-invariant) and the rANS streams (parallel threads) take the whole batch."""
        xs = [_check_image(image) for image in images]
        height, width = xs[0].shape[-2:]
        if any(x.shape != xs[0].shape for x in xs):
            raise ImageError(f"a batch holds images of one size; got {sorted({tuple(x.shape[-2:]) for x in xs})}")
        if height > MAX_SIDE or width > MAX_SIDE:
            raise ImageError(f"images up to {MAX_SIDE} pixels per side are supported, got {height}x{width}")
        check_size(self.config.name, "compress", height, width, self.device, max_pixels)
        ys, indices = [], []
        for x in xs:
            padded = self.pad(x.to(self.device))
            with stage("vae_encoder"):
                x_lat = self.encode_latent(padded)
            y, index = self.codec.analyse(padded, x_lat)
            ys.append(y)
            indices.append(index)
        indices = torch.cat(indices)
        strings, y_hat = self.codec.code(torch.cat(ys), indices)
        with stage("container"):
            z_only = self.config.codec.z_only
            header = Header(self.identity, height, width, z_only)
            y_streams = [None] * len(strings["z"]) if z_only else strings["y"]
            files = [bitstream.write(header, y, z) for y, z in zip(y_streams, strings["z"])]
        return files, y_hat, indices, (height, width)

    @torch.no_grad()
    def estimate_bits(self, image: torch.Tensor) -> dict[str, float]:
        """The entropy model's estimates for one image (3, H, W) in [-1, 1], in eval mode (hard
        rounding): {"y": our rate model's bits (sigma >= scale_min), "y_official": the official
        code's eval-mode estimate (sigma >= official_eval_scale_min), "z": the fixed 14 bits per
        position}; the file adds its container and the coder's overhead. A z-only model's y
        bits are zero."""
        x = self.pad(_check_image(image).to(self.device))
        modes = [(m, m.training) for m in self.codec.modules()]
        self.codec.eval()
        try:
            bits = self.codec(x, self.encode_latent(x))["bits"]
        finally:
            for m, training in modes:
                m.training = training
        return {"y": float(bits["y"][0]), "y_official": float(bits.get("y_official", bits["y"])[0]), "z": float(bits["z"][0])}

    @torch.no_grad()
    def decode_latents(self, data: bytes, max_pixels: int | None = None) -> LatentReconstruction:
        """The bytes of a onedc file -> its latent reconstruction. BitstreamError if the file
        is corrupt or was written by another model; SizeLimitError, before anything is
        allocated, if its image is larger than `max_pixels` (None: the default limit of
        configs/limits.yaml, 4096 x 4096, and the memory the device has available; see
        onedc.limits)."""
        return self._decode_latents([data], max_pixels)

    def _decode_latents(self, files: list[bytes], max_pixels: int | None = None) -> LatentReconstruction:
        """Files of this model and one image size -> their latent reconstruction, batched
        (y_hat (B, ...), c (B, ...)); the streams decode in parallel threads."""
        with stage("container_z"):
            parsed = [bitstream.read(data) for data in files]
        header = parsed[0][0]
        for other, _, _ in parsed:
            if not other.model.matches(self.identity):
                raise BitstreamError(
                    f"model mismatch: the file was written by {other.model.describe()}, "
                    f"this model is {self.identity.describe()}"
                )
            if other.z_only != self.config.codec.z_only:
                kind = "a z-only file (no y stream)" if other.z_only else "a file with a y stream"
                raise BitstreamError(f"{kind}, but {self.config.name} {'is' if self.config.codec.z_only else 'is not'} a z-only model")
            if (other.height, other.width) != (header.height, header.width):
                raise BitstreamError(f"a batch decodes files of one image size; got {header.width}x{header.height} and {other.width}x{other.height}")
        check_size(self.config.name, "decompress", header.height, header.width, self.device, max_pixels)
        m = self.config.image_multiple
        shape = (math.ceil(header.height / m), math.ceil(header.width / m))
        strings = {"z": [z for _, _, z in parsed]}
        if not header.z_only:
            strings["y"] = [y for _, y, _ in parsed]
            self._check_y_streams(strings["y"], shape)
        out = self.codec.decompress(strings, shape)
        return LatentReconstruction(out["y_hat"], out["c"], header.height, header.width, header.model)

    def _check_y_streams(self, y_streams: list[bytes], shape: tuple[int, int]) -> None:
        """BitstreamError before decoding if a y stream's length cannot hold the symbols of a
        latent of `shape` (in image_multiple units), by the bounds of the coder's tables."""
        m = self.config.image_multiple
        y_stride = 2 * self.config.codec.analysis.patch_size  # g_a: patchify, then a stride-2 conv
        y_symbols = self.config.codec.y_channels * (shape[0] * m // y_stride) * (shape[1] * m // y_stride)
        bounds = stream_bounds(self.codec.coder.tables, self.config.codec.entropy.max_symbol)
        for y_stream in y_streams:
            bounds.check(y_symbols, len(y_stream))

    @torch.no_grad()
    def render(self, rec: LatentReconstruction) -> torch.Tensor:
        """Latent reconstruction -> image (3, H, W) in [-1, 1] at the original size ((B, 3, H, W)
        for a batched reconstruction). With frozen weights in bf16 (`for_decoding`) the
        generator and the VAE decoder run under bf16 autocast."""
        self.codec.require_decoder()
        with stage("h_sem_g_s"):
            y_in = self.codec.g_s(rec.y_hat, rec.c)
        low_precision = torch.autocast(self.device.type, dtype=self.frozen_dtype) if self.frozen_dtype != torch.float32 else contextlib.nullcontext()
        with low_precision:
            with stage("unet"):
                y_out = self.generator(y_in, tokens(rec.c))
            with stage("vae_decoder"):
                x_hat = decode_latent(self.vae, y_out).float()
        x_hat = x_hat[:, :, : rec.height, : rec.width].clamp(-1, 1)
        return x_hat[0] if x_hat.shape[0] == 1 else x_hat

    def decompress(self, data: bytes | list[bytes], max_pixels: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The bytes of a onedc file -> the decoded image (3, H, W) in [-1, 1]; a list of files
        of this model and one image size -> a list of images, decoded as one batch.
        `max_pixels`: see `decode_latents`."""
        if isinstance(data, (list, tuple)):
            if not data:
                return []
            images = self.render(self._decode_latents(list(data), max_pixels))
            return [images] if len(data) == 1 else list(images)
        return self.render(self._decode_latents([data], max_pixels))

    # ----------------------------------------------------------------- inference setup
    @property
    def decoding_only(self) -> bool:
        return self.codec.g_a is None

    @property
    def encoding_only(self) -> bool:
        return self.codec.g_s is None

    def for_decoding(self, frozen_dtype: torch.dtype = torch.float32) -> "OneDC":
        """Make this model a decoder, in place: drop g_a, h_enc and the VAE encoder (which only
        encoding uses; call before moving the model to its device) and store the frozen U-Net
        base and VAE decoder in `frozen_dtype` (bf16 on a GPU: half the memory; the trainable
        weights stay float32). The identity is fixed at its current digest, since the model no
        longer holds every trainable weight. Returns self."""
        self.codec.require_decoder()
        if self._fixed_digest is None:
            self._fixed_digest = self.weights_digest()
        self.codec.drop_encoder()
        self.vae.encoder = None
        self.vae.quant_conv = None
        frozen = [p for name, p in self.generator.named_parameters() if not is_trainable(name)]
        for p in frozen + list(self.vae.parameters()):
            p.data = p.data.to(frozen_dtype)
        self.frozen_dtype = frozen_dtype
        return self

    def for_encoding(self) -> "OneDC":
        """Make this model an encoder, in place: drop what only decoding uses (h_sem, g_s, the
        one-step generator with its U-Net, the VAE decoder; call before moving the model to its
        device: at full size 1.41 B parameters become 0.35 B). The identity is fixed at its
        current digest. Returns self."""
        self.codec.require_encoder()
        if self._fixed_digest is None:
            self._fixed_digest = self.weights_digest()
        self.codec.drop_decoder()
        self.generator = None
        self.vae.decoder = None
        self.vae.post_quant_conv = None
        return self

    def for_role(self, role: str, frozen_dtype: torch.dtype = torch.float32) -> "OneDC":
        """What `role` (ROLES) asks of a model: "full" leaves it whole, "encoder" makes it
        `for_encoding`, "decoder" `for_decoding(frozen_dtype)`. Returns self."""
        if role == "encoder":
            return self.for_encoding()
        return self.for_decoding(frozen_dtype) if role == "decoder" else self

    def compile_decoder(self) -> "OneDC":
        """torch.compile the U-Net and the VAE decoder in place (static shapes: each batch size
        and image size compiles on its first decode, or ahead of it with `compile_for`).
        Returns self."""
        self.generator.unet.compile(dynamic=False)
        self.vae.decoder.compile(dynamic=False)
        self.decoder_compiled = True
        return self

    def compile_for(self, data: bytes | list[bytes], max_pixels: int | None = None) -> float:
        """Compile the decoder (after `compile_decoder`) for the shape of `data` (a file, or
        the files of one `decompress` batch) now, so that timed decodes exclude it: renders
        their latents twice and returns the compile time in seconds (the first render's time
        minus the second's, synchronised). 0.0 for an eager decoder or a shape (batch size,
        padded image size) it has compiled for."""
        files = [data] if isinstance(data, (bytes, bytearray)) else list(data)
        header = bitstream.read(files[0])[0]
        m = self.config.image_multiple
        shape = (len(files), math.ceil(header.height / m) * m, math.ceil(header.width / m) * m)
        if not self.decoder_compiled or shape in self._compiled_shapes:
            return 0.0
        with torch.no_grad():
            rec = self._decode_latents(files, max_pixels)
            first, _ = synchronized_seconds(lambda: self.render(rec), self.device)
            second, _ = synchronized_seconds(lambda: self.render(rec), self.device)
        self._compiled_shapes.add(shape)
        return max(first - second, 0.0)


def build_code_predictor(config: ModelConfig) -> CodePredictor:
    """The Stage I code predictor on c (training only; not part of OneDC)."""
    d = config.distillation
    return CodePredictor(config.codec.semantic.channels, d.tokenizer.codebook_size, d.predictor, config.blocks)


def build_tokenizer(config: ModelConfig) -> MaskGITTokenizer:
    """The frozen MaskGIT tokenizer of Stage I (training only; not part of OneDC)."""
    return MaskGITTokenizer(config.distillation.tokenizer, config.blocks)


def parameter_table(config: ModelConfig) -> list[tuple[str, int]]:
    """(component, parameter count) rows of a model config, built on the meta device."""
    with torch.device("meta"):
        net = OneDC(config)
        predictor, tokenizer = build_code_predictor(config), build_tokenizer(config)

    def count(module: nn.Module, keep=lambda name: True) -> int:
        return sum(p.numel() for name, p in module.named_parameters() if keep(name))

    codec, generator, vae = net.codec, net.generator, net.vae
    lora = count(generator.unet, lambda n: ".lora_" in n)
    conv_in = count(generator.unet.conv_in)
    return [
        ("g_a (analysis)", count(codec.g_a)),
        ("h_enc (hyper-encoder)", count(codec.h_enc)),
        ("hyper-decoder (stem + h_ctx trunk)", count(codec.h_dec)),
        ("context model", count(codec.context)),
        ("h_sem (semantic decoder)", count(codec.h_sem)),
        ("g_s (synthesis)", count(codec.g_s)),
        ("codec total", count(codec)),
        ("U-Net base (frozen, without SD1.5's conv_in)", count(generator.unet) - lora - conv_in),
        (f"LoRA (rank {config.generator.lora.rank})", lora),
        ("new conv_in", conv_in),
        ("vae_reduction", count(generator.vae_reduction)),
        ("generator trainable (LoRA + conv_in + vae_reduction)", lora + conv_in + count(generator.vae_reduction)),
        ("SD VAE encoder (frozen)", count(vae.encoder) + count(vae.quant_conv)),
        ("SD VAE decoder (frozen)", count(vae.decoder) + count(vae.post_quant_conv)),
        ("SD VAE total (frozen)", count(vae)),
        ("total for inference", count(net)),
        ("code predictor (Stage I training only)", count(predictor)),
        ("MaskGIT tokenizer encoder + codebook (frozen, training only)", count(tokenizer)),
    ]


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise ImageError("expected a floating-point image tensor of shape (3, H, W) in [-1, 1]")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[:2] != (1, 3) or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ImageError(f"expected one RGB image of shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1.0 + 1e-4:
        raise ImageError("image values must be finite and in [-1, 1]")
    return x.float().clamp(-1, 1)
