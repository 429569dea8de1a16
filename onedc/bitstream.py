"""The onedc file format, version 1 (documented in docs/bitstream.md).

All integers are big-endian.

    offset  size  field
    0       4     magic b"ONDC"
    4       1     format version (1)
    5       1     n = length of the model name
    6       n     model name (ASCII, the config name, e.g. "onedc_sd15")
    6+n     4     lambda, float32 (NaN: untrained model)
    10+n    4     weights digest: first 4 bytes of SHA-256 over the model's trainable weights
    14+n    2     original image height H (1..65535)
    16+n    2     original image width W (1..65535)
    18+n    4     L_y = byte length of the y stream
    22+n    L_y   y stream (rANS)
    ...     L_z   z stream (FSQ indices at a fixed width); L_z follows from H, W and the model
    end-4   4     CRC-32 of every byte before it

`read` checks structure only (magic, version, lengths, checksum); the model checks that the
file is its own and that L_z is what H and W imply.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from .errors import BitstreamError

MAGIC = b"ONDC"
FORMAT_VERSION = 1
DIGEST_BYTES = 4
MAX_SIDE = 65535
_TAIL = struct.Struct(">f4sHHI")  # lambda, digest, H, W, L_y
_CRC = struct.Struct(">I")


@dataclass(frozen=True)
class ModelIdentity:
    """What a file says about the model that wrote it."""

    name: str
    lmbda: float | None  # None for an untrained model
    digest: bytes  # DIGEST_BYTES of SHA-256 over the model's trainable weights

    def describe(self) -> str:
        rate = "untrained" if self.lmbda is None else f"lambda {self.lmbda:g}"
        return f"{self.name} ({rate}, weights {self.digest.hex()})"

    def matches(self, other: "ModelIdentity") -> bool:
        same_rate = (self.lmbda is None and other.lmbda is None) or (
            self.lmbda is not None and other.lmbda is not None and _f32(self.lmbda) == _f32(other.lmbda)
        )
        return self.name == other.name and same_rate and self.digest == other.digest


@dataclass(frozen=True)
class Header:
    model: ModelIdentity
    height: int
    width: int


def _f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def write(header: Header, y_stream: bytes, z_stream: bytes) -> bytes:
    name = header.model.name.encode("ascii")
    if not 1 <= len(name) <= 255 or not name.isascii() or not name.decode().isprintable():
        raise ValueError(f"model name must be 1-255 printable ASCII characters: {header.model.name!r}")
    if not (1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE):
        raise ValueError(f"image sides must be 1..{MAX_SIDE}, got {header.height}x{header.width}")
    if len(header.model.digest) != DIGEST_BYTES:
        raise ValueError(f"weights digest must have {DIGEST_BYTES} bytes")
    lmbda = math.nan if header.model.lmbda is None else header.model.lmbda
    body = b"".join(
        [
            MAGIC,
            bytes([FORMAT_VERSION, len(name)]),
            name,
            _TAIL.pack(lmbda, header.model.digest, header.height, header.width, len(y_stream)),
            y_stream,
            z_stream,
        ]
    )
    return body + _CRC.pack(zlib.crc32(body))


def read(data: bytes) -> tuple[Header, bytes, bytes]:
    """Parse a file into (header, y stream, z stream); BitstreamError on any defect."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not a onedc file (bad magic bytes)")
    if len(data) < 6:
        raise BitstreamError("truncated file: header incomplete")
    if data[4] != FORMAT_VERSION:
        raise BitstreamError(f"unsupported format version {data[4]} (this onedc reads version {FORMAT_VERSION})")
    n = data[5]
    tail_at = 6 + n
    payload_at = tail_at + _TAIL.size
    if len(data) < payload_at + _CRC.size:
        raise BitstreamError("truncated file: header incomplete")
    try:
        name = data[6:tail_at].decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not name or not name.isprintable():
        raise BitstreamError("corrupt header: the model name is not printable ASCII")
    lmbda, digest, height, width, y_length = _TAIL.unpack_from(data, tail_at)
    if height == 0 or width == 0:
        raise BitstreamError(f"corrupt header: image size {height}x{width}")
    z_at = payload_at + y_length
    end = len(data) - _CRC.size
    if z_at > end:
        raise BitstreamError(f"length mismatch: the y stream is said to hold {y_length} bytes but only {end - payload_at} follow the header")
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise BitstreamError("checksum mismatch: the file is corrupt or truncated")
    model = ModelIdentity(name, None if math.isnan(lmbda) else float(lmbda), digest)
    return Header(model, height, width), data[payload_at:z_at], data[z_at:end]


def file_bpp(data: bytes) -> float:
    """Bits per pixel of a file: all its bytes (header included) over the original H x W."""
    header, _, _ = read(data)
    return 8 * len(data) / (header.height * header.width)
