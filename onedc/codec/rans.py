"""rANS coding of integer symbols under quantised CDF tables, in numba.

The stream format is that of CompressAI's `BufferedRansEncoder` / `RansDecoder` (ryg_rans'
Rans64: a 64-bit state renormalised in 32-bit words, 16-bit CDF precision), so files written
by either coder decode with the other:

* A symbol v under table t is coded as s = v - offset[t] if 0 <= s < length[t] - 2; otherwise
  the escape symbol length[t] - 2 is coded, followed by the raw value r (2s' for the upper
  tail s' = s - escape, -2s - 1 for the lower tail) in 4-bit bypass chunks: first the chunk
  count n (as repeated 15s and a final 0..14), then the n chunks, least significant first.
* The encoder puts symbols last to first; the stream is the final state (two words, low then
  high) followed by the renormalisation words, all little-endian uint32.

The decoder is bounds-checked: it never reads past its words and reports a stream that ends
early, a chunk count beyond 32 bits, or (at `finish`) words left over or a final state other
than the encoder's initial one, all of which only corrupt streams produce. Every kernel
releases the GIL, so several streams can be coded in parallel threads.
"""

from __future__ import annotations

import numba
import numpy as np

PRECISION = 16
BYPASS_BITS = 4
_BYPASS_MAX = (1 << BYPASS_BITS) - 1
_RANS_L = 1 << 31  # lower bound of the normalisation interval
_MAX_CHUNKS = 32 // BYPASS_BITS  # raw values of escaped symbols fit in 32 bits

# Status codes of the decoding kernels.
OK, ENDED_EARLY, BAD_ESCAPE, TRAILING_DATA = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def quantized_cdf(pmf: np.ndarray, precision: int) -> np.ndarray:
    """float32 pmf (last entry: the tail mass) -> int32 CDF of len(pmf) + 1 entries summing to
    2**precision, every symbol with a frequency >= 1 (CompressAI's `pmf_to_quantized_cdf`:
    rounded, rescaled, then frequency stolen from the least likely symbol above 1)."""
    n = pmf.size + 1
    cdf = np.zeros(n, dtype=np.int64)
    total = 0
    for i in range(pmf.size):
        cdf[i + 1] = np.int64(np.floor(np.float64(pmf[i] * np.float32(1 << precision)) + 0.5))
        total += cdf[i + 1]
    for i in range(n):
        cdf[i] = ((1 << precision) * cdf[i]) // total
    for i in range(1, n):
        cdf[i] += cdf[i - 1]
    cdf[n - 1] = 1 << precision
    for i in range(n - 1):
        if cdf[i] == cdf[i + 1]:
            best_freq = 1 << 62
            best = -1
            for j in range(n - 1):
                freq = cdf[j + 1] - cdf[j]
                if 1 < freq < best_freq:
                    best_freq = freq
                    best = j
            if best < i:
                for j in range(best + 1, i + 1):
                    cdf[j] -= 1
            else:
                for j in range(i + 1, best + 1):
                    cdf[j] += 1
    return cdf.astype(np.int32)


@numba.njit(cache=True, nogil=True)
def _escape_chunks(raw: int) -> int:
    n = 0
    while (raw >> (n * BYPASS_BITS)) != 0:
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _put(state: np.uint64, words: np.ndarray, pos: int, start: int, freq: int, scale_bits: int):
    x = state
    x_max = np.uint64(((_RANS_L >> scale_bits) << 32) * freq)
    if x >= x_max:
        pos -= 1
        words[pos] = np.uint32(x & np.uint64(0xFFFFFFFF))
        x >>= np.uint64(32)
    x = (x // np.uint64(freq) << np.uint64(scale_bits)) + x % np.uint64(freq) + np.uint64(start)
    return x, pos


@numba.njit(cache=True, nogil=True)
def _put_bits(state: np.uint64, words: np.ndarray, pos: int, value: int):
    """A BYPASS_BITS-bit chunk: the state shifts left by the chunk (CompressAI's RansEncPutBits)."""
    x = state
    x_max = np.uint64(((_RANS_L >> PRECISION) << 32) << (PRECISION - BYPASS_BITS))
    if x >= x_max:
        pos -= 1
        words[pos] = np.uint32(x & np.uint64(0xFFFFFFFF))
        x >>= np.uint64(32)
    return (x << np.uint64(BYPASS_BITS)) | np.uint64(value), pos


@numba.njit(cache=True, nogil=True)
def encode(symbols: np.ndarray, indexes: np.ndarray, cdfs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Code symbols[i] under table indexes[i]; returns the stream as uint32 words."""
    n = symbols.size
    capacity = 2 + n
    for i in range(n):  # every put adds at most one word; an escaped symbol makes several puts
        t = indexes[i]
        s = np.int64(symbols[i]) - offsets[t]
        if s < 0 or s >= lengths[t] - 2:
            capacity += 18  # at most 16 chunks of a 64-bit raw value, their count and one 15
    words = np.empty(capacity, dtype=np.uint32)
    pos = capacity
    x = np.uint64(_RANS_L)
    for i in range(n - 1, -1, -1):
        t = indexes[i]
        cdf = cdfs[t]
        escape = lengths[t] - 2
        s = np.int64(symbols[i]) - offsets[t]
        raw = 0
        if s < 0:
            raw = -2 * s - 1
            s = escape
        elif s >= escape:
            raw = 2 * (s - escape)
            s = escape
        if s == escape:  # the chunks go in first: the decoder reads them after the escape symbol
            count = _escape_chunks(raw)
            for j in range(count - 1, -1, -1):
                x, pos = _put_bits(x, words, pos, (raw >> (j * BYPASS_BITS)) & _BYPASS_MAX)
            pieces, rest = count // _BYPASS_MAX, count % _BYPASS_MAX
            x, pos = _put_bits(x, words, pos, rest)
            for _ in range(pieces):
                x, pos = _put_bits(x, words, pos, _BYPASS_MAX)
        x, pos = _put(x, words, pos, cdf[s], cdf[s + 1] - cdf[s], PRECISION)
    pos -= 2
    words[pos] = np.uint32(x & np.uint64(0xFFFFFFFF))
    words[pos + 1] = np.uint32(x >> np.uint64(32))
    return words[pos:].copy()


@numba.njit(cache=True, nogil=True)
def _renormalise(x: np.uint64, words: np.ndarray, cursor: np.ndarray):
    """Shift a word in when the state fell below the interval; False if none is left."""
    if x < np.uint64(_RANS_L):
        if cursor[0] >= words.size:
            return x, False
        x = (x << np.uint64(32)) | np.uint64(words[cursor[0]])
        cursor[0] += 1
    return x, True


@numba.njit(cache=True, nogil=True)
def _get_bits(state: np.ndarray, words: np.ndarray, cursor: np.ndarray):
    x = np.uint64(state[0])
    value = np.int64(x & np.uint64(_BYPASS_MAX))
    x, ok = _renormalise(x >> np.uint64(BYPASS_BITS), words, cursor)
    state[0] = x
    return value, ok


@numba.njit(cache=True, nogil=True)
def start_decoding(words: np.ndarray, state: np.ndarray, cursor: np.ndarray) -> int:
    """Read the initial state (two words) into state[0]; cursor[0] is the next word."""
    if words.size < 2:
        return ENDED_EARLY
    state[0] = np.uint64(words[0]) | (np.uint64(words[1]) << np.uint64(32))
    cursor[0] = 2
    return OK


@numba.njit(cache=True, nogil=True)
def decode(words: np.ndarray, state: np.ndarray, cursor: np.ndarray, indexes: np.ndarray, cdfs: np.ndarray,
           lengths: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> int:
    """Decode one symbol per entry of `indexes` into `out`, continuing from state/cursor.
    Returns a status code (OK, ENDED_EARLY, BAD_ESCAPE)."""
    mask = np.uint64((1 << PRECISION) - 1)
    x = np.uint64(state[0])
    for i in range(indexes.size):
        t = indexes[i]
        cdf = cdfs[t]
        escape = lengths[t] - 2
        cum = np.int64(x & mask)
        lo, hi = 0, escape + 1  # cdf[lo] <= cum < cdf[hi]
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if cdf[mid] <= cum:
                lo = mid
            else:
                hi = mid
        s = lo
        freq = np.uint64(cdf[s + 1] - cdf[s])
        x = freq * (x >> np.uint64(PRECISION)) + (x & mask) - np.uint64(cdf[s])
        x, ok = _renormalise(x, words, cursor)
        if not ok:
            return ENDED_EARLY
        value = np.int64(s)
        if s == escape:
            state[0] = x
            chunk, ok = _get_bits(state, words, cursor)
            count = chunk
            while ok and chunk == _BYPASS_MAX and count <= _MAX_CHUNKS:
                chunk, ok = _get_bits(state, words, cursor)
                count += chunk
            if not ok:
                return ENDED_EARLY
            if count > _MAX_CHUNKS:
                return BAD_ESCAPE
            raw = np.int64(0)
            for j in range(count):
                chunk, ok = _get_bits(state, words, cursor)
                if not ok:
                    return ENDED_EARLY
                raw |= chunk << (j * BYPASS_BITS)
            x = np.uint64(state[0])
            value = raw >> 1
            if raw & 1:
                value = -value - 1
            else:
                value += escape
        out[i] = value + offsets[t]
    state[0] = x
    return OK


def finish_status(words: np.ndarray, state: np.ndarray, cursor: np.ndarray) -> int:
    """After the last symbol: every word read and the state back at its initial value."""
    return OK if cursor[0] == words.size and int(state[0]) == _RANS_L else TRAILING_DATA
