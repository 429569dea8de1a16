"""Turning symbols into bytes and back.

* y: integer residuals round(y - mu) coded with rANS (`rans.py`) under discretised zero-mean
  Gaussians: a log-spaced table of scales, one 16-bit quantised CDF per scale, escape coding
  of the tails. Tables and streams are bit-identical to those of compressai's
  `GaussianConditional` and rANS coder (tested against compressai, a test dependency).
  All steps of the context model go into one stream per image, in coding order.
* z: FSQ indices packed at a fixed width (14 bits for levels [4]*7), no entropy model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from ..config import EntropyConfig
from ..errors import BitstreamError
from . import rans


@dataclass(frozen=True)
class GaussianTables:
    """scales (L,) float32, increasing; cdfs (L, M) int32, row t valid up to lengths[t];
    lengths (L,) int32 (pmf length + 2: the escape symbol and the end); offsets (L,) int32
    (the symbol coded as CDF entry 0)."""

    scales: np.ndarray
    cdfs: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray


def gaussian_tables(cfg: EntropyConfig) -> GaussianTables:
    """The coding tables of `cfg`, as compressai's `GaussianConditional.update` builds them:
    scales exp-spaced from scale_min to scale_max (float32); pmf centre ceil(scale * -Phi^-1(
    tail_mass / 2)) in float32; pmf over the integers within the centre, in float32 through
    0.5 * erfc, plus the tail mass; quantised to 16 bits with frequency stealing."""
    log_scales = torch.linspace(math.log(cfg.scale_min), math.log(cfg.scale_max), cfg.scale_levels, dtype=torch.float64)
    scales = torch.exp(log_scales).float()
    multiplier = -NormalDist().inv_cdf(cfg.tail_mass / 2)
    centres = torch.ceil(scales * multiplier).int()
    pmf_lengths = 2 * centres + 1
    width = int(pmf_lengths.max())
    samples = torch.abs(torch.arange(width).int() - centres[:, None]).float()

    def cumulative(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.erfc(-(2**-0.5) * v)

    upper = cumulative((0.5 - samples) / scales[:, None])
    lower = cumulative((-0.5 - samples) / scales[:, None])
    pmfs, tails = (upper - lower).numpy(), (2 * lower[:, 0]).numpy()
    cdfs = np.zeros((cfg.scale_levels, width + 2), dtype=np.int32)
    for t, n in enumerate(pmf_lengths.tolist()):
        cdfs[t, : n + 2] = rans.quantized_cdf(np.append(pmfs[t, :n], tails[t]), rans.PRECISION)
    return GaussianTables(scales.numpy(), cdfs, (pmf_lengths + 2).numpy(), (-centres).numpy())


class GaussianCoder:
    """The y coder's tables (built from the config alone; not an nn.Module) and its streams.

    A scale sigma selects the smallest table scale >= max(sigma, scale_min) in float32
    (compressai's `build_indexes`), computed on sigma's device.
    """

    def __init__(self, cfg: EntropyConfig):
        self.tables = gaussian_tables(cfg)
        self.scale_min = cfg.scale_min
        self._thresholds: dict[torch.device, torch.Tensor] = {}

    def indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Table index (int16, on scales' device) per element of `scales`."""
        device = scales.device
        if device not in self._thresholds:
            self._thresholds[device] = torch.from_numpy(self.tables.scales[:-1]).to(device)
        sigma = scales.detach().float().clamp_min(self.scale_min)
        return torch.searchsorted(self._thresholds[device], sigma).to(torch.int16)

    def writer(self) -> "RansWriter":
        return RansWriter(self.tables)

    def reader(self, data: bytes) -> "RansReader":
        return RansReader(self.tables, data)


class RansWriter:
    """Collects the symbols of one image, step after step; `finish` codes them into a stream."""

    def __init__(self, tables: GaussianTables):
        self._tables = tables
        self._symbols: list[np.ndarray] = []
        self._indexes: list[np.ndarray] = []

    def write(self, symbols: np.ndarray, indexes: np.ndarray) -> None:
        """symbols: integers (int32); indexes: their table indexes, as many."""
        self._symbols.append(np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1))
        self._indexes.append(np.ascontiguousarray(indexes, dtype=np.int16).reshape(-1))

    def finish(self) -> bytes:
        t = self._tables
        symbols = np.concatenate(self._symbols) if self._symbols else np.zeros(0, np.int32)
        indexes = np.concatenate(self._indexes) if self._indexes else np.zeros(0, np.int16)
        return rans.encode(symbols, indexes, t.cdfs, t.lengths, t.offsets).astype("<u4").tobytes()


class RansReader:
    """Decodes the symbols of one image in the order they were written, never reading past
    the stream; BitstreamError for a stream that ends early, a bad escape or (at `finish`)
    bytes left over."""

    def __init__(self, tables: GaussianTables, data: bytes):
        if len(data) % 4:
            raise BitstreamError(f"corrupt y stream: {len(data)} bytes is not a whole number of 32-bit words")
        self._tables = tables
        self._words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._state = np.zeros(1, dtype=np.uint64)
        self._cursor = np.zeros(1, dtype=np.int64)
        self._check(rans.start_decoding(self._words, self._state, self._cursor))

    def read(self, indexes: np.ndarray, max_symbol: int) -> np.ndarray:
        """Decode one symbol per table index; returns them as int32, in [-max_symbol, max_symbol]."""
        t = self._tables
        out = np.empty(indexes.size, dtype=np.int32)
        indexes = np.ascontiguousarray(indexes, dtype=np.int16).reshape(-1)
        self._check(rans.decode(self._words, self._state, self._cursor, indexes, t.cdfs, t.lengths, t.offsets, out))
        if out.size and int(np.abs(out).max()) > max_symbol:
            raise BitstreamError("corrupt y stream: decoded residual out of range")
        return out

    def finish(self) -> None:
        """Check that the stream ended exactly where its last symbol did."""
        self._check(rans.finish_status(self._words, self._state, self._cursor))

    @staticmethod
    def _check(status: int) -> None:
        messages = {
            rans.ENDED_EARLY: "corrupt y stream: it ends before its last symbol",
            rans.BAD_ESCAPE: "corrupt y stream: an escaped symbol longer than 32 bits",
            rans.TRAILING_DATA: "corrupt y stream: data left over after the last symbol",
        }
        if status != rans.OK:
            raise BitstreamError(messages[status])


def pack_fixed_width(values: np.ndarray, bits: int) -> bytes:
    """Concatenate non-negative integers MSB-first at `bits` each, as one big-endian integer:
    the bit string is right-aligned, so leading zero bits pad the first byte."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    pad = (-values.size * bits) % 8
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_array = ((values[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(np.concatenate([np.zeros(pad, np.uint8), bit_array])).tobytes()


def unpack_fixed_width(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of `pack_fixed_width`; raises BitstreamError on a wrong length or padding."""
    expected = (count * bits + 7) // 8
    if len(data) != expected:
        raise BitstreamError(f"z stream has {len(data)} bytes, expected {expected} for {count} positions")
    bit_array = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    pad = expected * 8 - count * bits
    if bit_array[:pad].any():
        raise BitstreamError("corrupt z stream: non-zero padding bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return (bit_array[pad:].reshape(count, bits).astype(np.int64) << shifts).sum(axis=1)
