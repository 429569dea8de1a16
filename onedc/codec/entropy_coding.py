"""Turning symbols into bytes and back.

* y: integer residuals round(y - mu) coded with rANS under discretised zero-mean Gaussians,
  using compressai's `GaussianConditional` (log-spaced scale table, 16-bit quantised CDFs,
  escape coding of the tails) and its rANS coder. All steps of the context model go into
  one stream, in coding order.
* z: FSQ indices packed at a fixed width (14 bits for levels [4]*7), no entropy model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import GaussianConditional

from ..config import EntropyConfig
from ..errors import BitstreamError


class GaussianCoder:
    """CPU tables of the y coder. Not an nn.Module: the tables follow from the config alone.

    A scale sigma selects the smallest table scale >= sigma (compressai's `build_indexes`),
    a deterministic float32 comparison.
    """

    def __init__(self, cfg: EntropyConfig):
        table = torch.exp(torch.linspace(math.log(cfg.scale_min), math.log(cfg.scale_max), cfg.scale_levels, dtype=torch.float64))
        self.scale_table = table  # (scale_levels,) float64: the Gaussian scale of each table
        self._conditional = GaussianConditional(table.tolist(), scale_bound=cfg.scale_min, tail_mass=cfg.tail_mass)
        self._conditional.update()
        self.cdfs = self._conditional.quantized_cdf.tolist()
        self.cdf_lengths = self._conditional.cdf_length.reshape(-1).tolist()
        self.offsets = self._conditional.offset.reshape(-1).tolist()

    def tables(self, scales: torch.Tensor) -> tuple[list[int], list[list[int]], list[int], list[int]]:
        """(indexes, cdfs, cdf_lengths, offsets) for coding one symbol per element of `scales`.
        Only the tables in use are passed to the coder (indexes renumbered accordingly); the
        stream is the same as with all tables, and far cheaper to hand over."""
        indexes = self._conditional.build_indexes(scales.detach().to("cpu", torch.float32)).reshape(-1)
        used, local = torch.unique(indexes, return_inverse=True)
        used = used.tolist()
        return (
            local.tolist(),
            [self.cdfs[i] for i in used],
            [self.cdf_lengths[i] for i in used],
            [self.offsets[i] for i in used],
        )

    def writer(self) -> "RansWriter":
        return RansWriter(self)

    def reader(self, data: bytes, num_symbols: int) -> "RansReader":
        return RansReader(self, data, num_symbols)


class RansWriter:
    """Accumulates symbols of one image, step after step; `finish` returns the stream."""

    def __init__(self, coder: GaussianCoder):
        self._coder = coder
        self._encoder = BufferedRansEncoder()

    def write(self, symbols: torch.Tensor, scales: torch.Tensor) -> None:
        """symbols: integer-valued tensor; scales: same number of elements."""
        self._encoder.encode_with_indexes(symbols.reshape(-1).long().tolist(), *self._coder.tables(scales))

    def finish(self) -> bytes:
        return self._encoder.flush()


class RansReader:
    """Decodes the symbols of one image in the order they were written.

    compressai's rANS decoder does not check the end of its input. Each decoded symbol reads
    at most 4 bytes, and escape (bypass) decoding can read further only while it consumes
    real stream bits, so we append 4 bytes per symbol plus 128 per stream byte of zeros:
    corrupt or crafted streams then decode to garbage (caught by the symbol-range check)
    instead of reading outside the buffer.
    """

    def __init__(self, coder: GaussianCoder, data: bytes, num_symbols: int):
        self._coder = coder
        self._decoder = RansDecoder()
        self._decoder.set_stream(bytes(data) + bytes(4 * num_symbols + 128 * len(data) + 64))

    def read(self, scales: torch.Tensor, max_symbol: int) -> torch.Tensor:
        """Decode one symbol per element of `scales`; returns an int64 tensor of their shape."""
        values = self._decoder.decode_stream(*self._coder.tables(scales))
        out = torch.tensor(values, dtype=torch.int64).reshape(scales.shape)
        if out.numel() and int(out.abs().max()) > max_symbol:
            raise BitstreamError("corrupt y stream: decoded residual out of range")
        return out


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
