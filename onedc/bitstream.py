"""The onedc file format (documented in docs/bitstream.md). Version 2 is written; version 1
is still read.

All integers are big-endian.

    offset  size  field
    0       4     magic b"ONDC"
    4       1     format version (2)
    5       1     flags: bit 0 set = z-only file (no y stream); the other bits are zero
    6       1     n = length of the model name
    7       n     model name (ASCII, the config name, e.g. "onedc_sd15")
    7+n     4     lambda, float32 (NaN: no lambda, e.g. an untrained model)
    11+n    4     weights digest: first 4 bytes of SHA-256 over the model's trainable weights
    15+n    2     original image height H (1..65535)
    17+n    2     original image width W (1..65535)
    19+n    4     L_y = byte length of the y stream        (absent in z-only files)
    23+n    L_y   y stream (rANS)                           (absent in z-only files)
    ...     L_z   z stream (FSQ indices at a fixed width); L_z follows from H, W and the model
    end-4   4     CRC-32 of every byte before it

Version 1 is the same without the flags byte (so without z-only files).

`read` checks structure only (magic, version, flags, lengths, checksum); the model checks that
the file is its own and that L_z is what H and W imply.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from .errors import BitstreamError

MAGIC = b"ONDC"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
Z_ONLY = 0x01  # flags bit: no y stream
DIGEST_BYTES = 4
MAX_SIDE = 65535
_IDENTITY = struct.Struct(">f4sHH")  # lambda, digest, H, W
_LENGTH = struct.Struct(">I")  # L_y
_CRC = struct.Struct(">I")


@dataclass(frozen=True)
class ModelIdentity:
    """What a file says about the model that wrote it."""

    name: str
    lmbda: float | None  # None: no rate point (an untrained model, the z-only model)
    digest: bytes  # DIGEST_BYTES of SHA-256 over the model's trainable weights

    def describe(self) -> str:
        rate = "no lambda" if self.lmbda is None else f"lambda {self.lmbda:g}"
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
    z_only: bool = False  # the file carries z alone; y_hat is the context model's prediction
    version: int = FORMAT_VERSION  # of a file read; files are always written in FORMAT_VERSION


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
    """The bpp onedc reports everywhere: the whole file (container included) in bits over the
    original image's H x W pixels."""
    return 8 * num_bytes / (height * width)


def _f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def write(header: Header, y_stream: bytes | None, z_stream: bytes) -> bytes:
    """A version-2 file; `y_stream` is None exactly for z-only headers."""
    name = header.model.name.encode("ascii")
    if not 1 <= len(name) <= 255 or not name.isascii() or not name.decode().isprintable():
        raise ValueError(f"model name must be 1-255 printable ASCII characters: {header.model.name!r}")
    if not (1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE):
        raise ValueError(f"image sides must be 1..{MAX_SIDE}, got {header.height}x{header.width}")
    if len(header.model.digest) != DIGEST_BYTES:
        raise ValueError(f"weights digest must have {DIGEST_BYTES} bytes")
    if header.z_only != (y_stream is None):
        raise ValueError("a z-only file has no y stream, and every other file has one")
    lmbda = math.nan if header.model.lmbda is None else header.model.lmbda
    parts = [
        MAGIC,
        bytes([FORMAT_VERSION, Z_ONLY if header.z_only else 0, len(name)]),
        name,
        _IDENTITY.pack(lmbda, header.model.digest, header.height, header.width),
    ]
    if y_stream is not None:
        parts += [_LENGTH.pack(len(y_stream)), y_stream]
    body = b"".join(parts + [z_stream])
    return body + _CRC.pack(zlib.crc32(body))


def read(data: bytes) -> tuple[Header, bytes | None, bytes]:
    """Parse a file into (header, y stream or None for z-only files, z stream);
    BitstreamError on any defect."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not a onedc file (bad magic bytes)")
    if len(data) < 6:
        raise BitstreamError("truncated file: header incomplete")
    version = data[4]
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported format version {version} (this onedc reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    flags = data[5] if version >= 2 else 0
    if flags & ~Z_ONLY:
        raise BitstreamError(f"corrupt header: unknown flags {flags:#04x}")
    z_only = bool(flags & Z_ONLY)
    name_at = 6 if version == 1 else 7
    if len(data) < name_at:
        raise BitstreamError("truncated file: header incomplete")
    n = data[name_at - 1]
    identity_at = name_at + n
    payload_at = identity_at + _IDENTITY.size + (0 if z_only else _LENGTH.size)
    if len(data) < payload_at + _CRC.size:
        raise BitstreamError("truncated file: header incomplete")
    try:
        name = data[name_at:identity_at].decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if not name or not name.isprintable():
        raise BitstreamError("corrupt header: the model name is not printable ASCII")
    lmbda, digest, height, width = _IDENTITY.unpack_from(data, identity_at)
    if height == 0 or width == 0:
        raise BitstreamError(f"corrupt header: image size {height}x{width}")
    end = len(data) - _CRC.size
    if z_only:
        y_stream, z_at = None, payload_at
    else:
        (y_length,) = _LENGTH.unpack_from(data, identity_at + _IDENTITY.size)
        z_at = payload_at + y_length
        if z_at > end:
            raise BitstreamError(f"length mismatch: the y stream is said to hold {y_length} bytes but only {end - payload_at} follow the header")
        y_stream = data[payload_at:z_at]
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise BitstreamError("checksum mismatch: the file is corrupt or truncated")
    model = ModelIdentity(name, None if math.isnan(lmbda) else float(lmbda), digest)
    return Header(model, height, width, z_only, version), y_stream, data[z_at:end]
