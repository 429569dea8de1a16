"""How many symbols a y stream of L bytes can hold, from the coder's tables.

The y stream is rANS (compressai's format: 64-bit state kept in [2^31, 2^63), 32-bit output
words, 16-bit quantised CDFs, escapes in 4-bit bypass chunks). Coding a symbol of probability
p = freq / 2^16 multiplies the state by 1/p up to a factor (1 +- 2^16 / 2^31), so it costs
between -log2(p) - 2^-15 / ln 2 and -log2(p) + 2^-15 / ln 2 bits, and the whole stream (state
flushed in its last 8 bytes) holds fewer than 8 L bits. Hence, for N symbols:

    N * min_bits <= 8 L      min_bits: the most probable symbol of the narrowest table
    8 L <= N * max_bits + 8 * SLACK_BYTES   max_bits: the least probable symbol plus the longest escape

A file that claims more symbols than its stream can hold (or a stream longer than its symbols
can fill) was not written by onedc: refused before any decoding, so nothing is sized from a
claim the file's length contradicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BitstreamError
from .entropy_coding import GaussianTables

PRECISION = 16  # bits of the quantised CDFs
STATE_LOWER_BITS = 31  # the rANS state stays at or above 2^31
BYPASS_BITS = 4  # escape chunks
BYPASS_MAX = 2**BYPASS_BITS - 1  # a chunk of the escape's length this large means "more follow"
SLACK_BYTES = 24  # flush (8 bytes), the last partial word and rounding


@dataclass(frozen=True)
class StreamBounds:
    """Bits one coded y symbol costs at least and at most."""

    min_bits: float
    max_bits: float

    def check(self, num_symbols: int, length: int) -> None:
        """BitstreamError unless `num_symbols` symbols can be coded in `length` bytes."""
        if num_symbols * self.min_bits > 8 * length:
            raise BitstreamError(
                f"length mismatch: the image size needs {num_symbols:,} y symbols, more than a y stream of {length} bytes "
                f"can hold (at least {math.ceil(num_symbols * self.min_bits / 8):,} bytes)"
            )
        if 8 * length > num_symbols * self.max_bits + 8 * SLACK_BYTES:
            raise BitstreamError(
                f"length mismatch: a y stream of {length:,} bytes is longer than the {num_symbols:,} y symbols of the image "
                f"size can fill (at most {math.floor(num_symbols * self.max_bits / 8) + SLACK_BYTES:,} bytes)"
            )


def stream_bounds(tables: GaussianTables, max_symbol: int) -> StreamBounds:
    """Bounds for a coder's tables (quantised CDFs, their lengths and offsets; the last entry of
    each table is the escape) and residuals clamped to +-max_symbol."""
    rounding = math.log2(1 + 2.0 ** (PRECISION - STATE_LOWER_BITS))  # the state's rounding, per coded symbol
    frequencies = np.diff(tables.cdfs.astype(np.int64), axis=1)
    valid = np.arange(frequencies.shape[1]) < (tables.lengths[:, None] - 1)
    most_probable = int(frequencies[valid].max())
    least_probable = int(frequencies[valid].min())
    # after its chunk count (in chunks of at most BYPASS_MAX)
    raw = 2 * (max_symbol + int(np.abs(tables.offsets).max())) + 1
    chunks = math.ceil(raw.bit_length() / BYPASS_BITS)
    escape_symbols = chunks + chunks // BYPASS_MAX + 1
    return StreamBounds(
        min_bits=max(0.0, PRECISION - math.log2(most_probable) - rounding),
        max_bits=PRECISION - math.log2(least_probable) + escape_symbols * BYPASS_BITS + (1 + escape_symbols) * rounding,
    )
