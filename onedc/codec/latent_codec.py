"""The OneDC latent codec: everything between the image (+ SD VAE latent) and the U-Net's
inputs, with CompressAI's contract (forward -> likelihoods, compress -> strings + shape,
decompress mirrors compress).

x (B, 3, H, W) in [-1, 1], H and W multiples of 64; x_lat (B, 4, H/8, W/8)
  g_a -> y (B, Cy, H/16, W/16), sem;  h_enc -> z;  FSQ -> z_hat, indices (B, H/64, W/64)
  hyper-decoder(z_hat) -> f_z, features;  context model -> y_hat;  h_sem(f_z) -> c
  g_s(y_hat, c) -> y_in (B, Cin, H/8, W/8)
A z-only codec (the "exlow" model, `z_only: true`) transmits no y: its y_hat is the context
model's prediction from z alone (`QuadtreeContextModel.predict`: every residual zero).

Bit-exactness: the decoder rebuilds z_hat from the transmitted indices, and the encoder
derives every entropy parameter from that same z_hat and from the y_hat the decoder will
reconstruct. Both run the hyper-decoder trunk and the context model through `exact_copy`
(float64 fixed point, on the codec's device), so any machine decodes the same y_hat from the same file.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..config import BlockConfig, CodecConfig
from ..errors import BitstreamError, OneDCError
from ..profiling import stage
from .analysis import AnalysisTransform
from .context_model import QuadtreeContextModel, gaussian_likelihood, rate_bits
from .entropy_coding import GaussianCoder, pack_fixed_width, unpack_fixed_width
from .exact import exact_copy
from .hyperprior import FSQ, HyperDecoder, HyperEncoder
from .semantic import SemanticDecoder
from .synthesis import SynthesisTransform


class LatentCodec(nn.Module):
    ENCODER_PARTS = ("g_a", "h_enc")  # the submodules only encoding uses
    DECODER_PARTS = ("h_sem", "g_s")  # those only decoding uses (the hyper-decoder and context model serve both)

    def __init__(self, cfg: CodecConfig, bc: BlockConfig):
        super().__init__()
        self.cfg = cfg
        sem_channels = cfg.analysis.unet.block_out_channels[-1]
        self.g_a = AnalysisTransform(cfg.analysis, cfg.y_channels, bc)
        self.fsq = FSQ(cfg.fsq)
        self.h_enc = HyperEncoder(cfg.y_channels, sem_channels, self.fsq.dim, cfg.hyper_encoder, bc)
        self.h_dec = HyperDecoder(self.fsq.dim, cfg.hyper_decoder, bc)
        self.context = QuadtreeContextModel(cfg.hyper_decoder.channels, cfg.y_channels, bc)
        self.h_sem = SemanticDecoder(cfg.hyper_decoder.channels, cfg.semantic, bc)
        self.g_s = SynthesisTransform(cfg.y_channels, cfg.semantic.channels, cfg.synthesis, bc)
        self._coder: GaussianCoder | None = None
        self._exact: tuple[tuple, nn.ModuleDict] | None = None

    @property
    def coder(self) -> GaussianCoder:
        """CPU tables of the y coder, built on first use (not weights, not in state_dict)."""
        if self._coder is None:
            self._coder = GaussianCoder(self.cfg.entropy)
        return self._coder

    def forward(self, x: torch.Tensor, x_lat: torch.Tensor) -> dict:
        """Training / evaluation pass. bits["y"] is the rate formula per image (noisy residuals in
        training mode, rounded ones in eval mode; zero for a z-only model); in eval mode also
        bits["y_official"], the official code's eval-mode estimate (sigma bounded at
        official_eval_scale_min instead of scale_min). bits["z"] is the fixed cost of the indices."""
        self.require_encoder()
        self.require_decoder()
        e = self.cfg.entropy
        y, sem = self.g_a(x, x_lat)
        z_hat, indices = self.fsq(self.h_enc(y, sem))
        f_z, features = self.h_dec(z_hat)
        c = self.h_sem(f_z)
        if self.cfg.z_only:
            y_hat = self.context.predict(features)
            likelihoods = {"y": torch.ones_like(y)}
        else:
            y_hat, residuals, scales = self.context(y, features, e.noise)
            likelihoods = {"y": gaussian_likelihood(residuals, scales, e.scale_min, e)}
            if not self.training:
                likelihoods["y_official"] = gaussian_likelihood(residuals, scales, e.official_eval_scale_min, e)
        bits = {name: rate_bits(p, e).flatten(1).sum(dim=1) for name, p in likelihoods.items()}
        bits["z"] = torch.full_like(bits["y"], float(indices[0].numel() * self.fsq.bits))
        return {
            "y": y,
            "y_hat": y_hat,
            "z_hat": z_hat,
            "indices": indices,
            "c": c,
            "y_in": self.g_s(y_hat, c),
            "likelihoods": likelihoods,
            "bits": bits,
        }

    def weights_fingerprint(self) -> tuple:
        """Changes whenever a tensor of the codec is replaced or modified in place (through its
        version counter). Writes through `.data` bypass version counters: rebuild or reload
        the model after them."""
        return tuple((t.data_ptr(), t._version) for t in itertools.chain(self.parameters(), self.buffers()))

    def _exact_entropy_model(self) -> nn.ModuleDict:
        """Exact copies of the hyper-decoder and context model, rebuilt when weights change."""
        fingerprint = self.weights_fingerprint()
        if self._exact is None or self._exact[0] != fingerprint:
            modules = nn.ModuleDict({"h_dec": self.h_dec, "context": self.context})
            self._exact = (fingerprint, exact_copy(modules, self.cfg.entropy.exact, next(self.parameters()).device))
        return self._exact[1]

    def require_encoder(self) -> None:
        if self.g_a is None:
            raise OneDCError("this model was made for decoding only (OneDC.for_decoding): it cannot encode")

    def require_decoder(self) -> None:
        if self.g_s is None:
            raise OneDCError("this model was made for encoding only (OneDC.for_encoding): it cannot decode")

    def drop_encoder(self) -> None:
        """Remove g_a and h_enc, which only encoding uses."""
        for name in self.ENCODER_PARTS:
            setattr(self, name, None)

    def drop_decoder(self) -> None:
        """Remove h_sem and g_s, which only decoding uses."""
        for name in self.DECODER_PARTS:
            setattr(self, name, None)

    def semantic(self, indices: torch.Tensor) -> torch.Tensor:
        """c (B, Cc, h, w) from the FSQ indices (B, h, w)."""
        self.require_decoder()
        return self.h_sem(self.h_dec.stem(self.fsq.codes(indices)))

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, x_lat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float networks of the encoder: y (B, Cy, H/16, W/16) and the FSQ indices
        (B, H/64, W/64) of x (B, 3, H, W) and its SD VAE latent."""
        self.require_encoder()
        with stage("g_a"):
            y, sem = self.g_a(x, x_lat)
        with stage("h_enc_fsq"):
            _, indices = self.fsq(self.h_enc(y, sem))
        return y, indices

    @torch.no_grad()
    def code(self, y: torch.Tensor, indices: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Entropy-code y (B, Cy, h, w) given the FSQ indices (B, h/4, w/4): ({"y": [bytes] * B,
        "z": [bytes] * B}, the y_hat the decoder will reconstruct, float32 on y's device). A
        z-only codec sends no y: its y_hat is the context model's prediction from z."""
        with stage("h_enc_fsq"):
            z_strings = [pack_fixed_width(i, self.fsq.bits) for i in indices.cpu().numpy()]
        with stage("entropy_networks"):
            exact = self._exact_entropy_model()
            _, features = exact["h_dec"](self.fsq.codes(indices).double())
            if self.cfg.z_only:
                strings, y_hat = {"z": z_strings}, exact["context"].predict(features)
            else:
                y_strings, y_hat = exact["context"].compress(y.double(), features, self.coder, self.cfg.entropy.max_symbol)
                strings = {"y": y_strings, "z": z_strings}
        return strings, y_hat.to(y.device, torch.float32)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, x_lat: torch.Tensor) -> dict:
        """-> {"strings": {"y": [bytes] * B, "z": [bytes] * B}, "shape": (H/64, W/64),
        "y_hat": what the decoder will reconstruct, "c"}; a z-only codec has no "y" strings."""
        y, indices = self.analyse(x, x_lat)
        strings, y_hat = self.code(y, indices)
        with stage("h_sem"):
            c = self.semantic(indices)
        return {"strings": strings, "shape": tuple(indices.shape[-2:]), "y_hat": y_hat, "c": c}

    @torch.no_grad()
    def decompress(self, strings: dict, shape: tuple[int, int]) -> dict:
        """strings {"y": [bytes] * B, "z": [bytes] * B} (no "y" for a z-only codec), shape
        (H/64, W/64) -> {"y_hat", "c"}."""
        h, w = shape
        device = next(self.parameters()).device
        with stage("container_z"):
            indices = torch.stack(
                [torch.from_numpy(unpack_fixed_width(s, h * w, self.fsq.bits)).view(h, w) for s in strings["z"]]
            )
            if int(indices.max()) >= self.fsq.codebook_size:
                raise BitstreamError("corrupt z stream: index beyond the FSQ codebook")
            indices = indices.to(device)
        with stage("entropy_networks"):
            exact = self._exact_entropy_model()
            _, features = exact["h_dec"](self.fsq.codes(indices).double())
            if self.cfg.z_only:
                y_hat = exact["context"].predict(features)
            else:
                y_hat = exact["context"].decompress(strings["y"], features, self.coder, self.cfg.entropy.max_symbol)
        with stage("h_sem_g_s"):
            c = self.semantic(indices)
        return {"y_hat": y_hat.to(device, torch.float32), "c": c}
