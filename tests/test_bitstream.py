import dataclasses
import struct
import zlib

import pytest

from onedc import BitstreamError, OneDC
from onedc.bitstream import Header, ModelIdentity, read, write

IDENTITY = ModelIdentity("onedc_tiny", 4.6, bytes.fromhex("01020304"))


def fix_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_header_round_trip_and_layout():
    data = write(Header(IDENTITY, 300, 451), b"yyyy", b"zz")
    header, y, z = read(data)
    assert (y, z) == (b"yyyy", b"zz") and (header.height, header.width) == (300, 451)
    assert header.model.matches(IDENTITY) and header.model.lmbda == pytest.approx(4.6)
    assert data[:4] == b"ONDC" and data[4] == 1 and data[6:16] == b"onedc_tiny"
    assert len(data) == 4 + 2 + 10 + 4 + 4 + 2 + 2 + 4 + 4 + 2 + 4


def test_untrained_lambda_is_nan_on_disk():
    header, _, _ = read(write(Header(ModelIdentity("m", None, b"abcd"), 1, 1), b"", b""))
    assert header.model.lmbda is None and "untrained" in header.model.describe()


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: b"PNG!" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x07" + d[5:], "unsupported format version 7"),
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-8], "length mismatch"),
        (lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:], "checksum mismatch"),
        (lambda d: fix_crc(d[:5] + b"\x03\x00\xff\x01" + d[9:-4]), "not printable ASCII"),
        (lambda d: b"", "bad magic"),
    ],
)
def test_structural_errors_have_clear_messages(mangle, message):
    data = write(Header(IDENTITY, 30, 40), b"y" * 20, b"z" * 3)
    with pytest.raises(BitstreamError, match=message):
        read(mangle(data))


def test_model_mismatch_names_both_models(tiny_model, tiny_config, photos):
    data = tiny_model.compress(photos["chelsea"][:, :64, :64])
    other = OneDC.untrained(dataclasses.replace(tiny_config, seed=1))
    with pytest.raises(BitstreamError, match=r"model mismatch: the file was written by onedc_tiny \(untrained, weights [0-9a-f]{8}\), this model is"):
        other.decompress(data)


def test_z_length_must_match_the_image_size(tiny_model, photos):
    data = tiny_model.compress(photos["chelsea"][:, :64, :64])
    header, y, z = read(data)
    bigger = write(Header(header.model, 65, 64), y, z)  # 2 z positions expected, 1 present
    with pytest.raises(BitstreamError, match="z stream has 2 bytes, expected 4"):
        tiny_model.decompress(bigger)
