import dataclasses
import struct
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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
    assert not header.z_only and header.version == 2
    assert data[:4] == b"ONDC" and data[4:7] == bytes([2, 0, 10]) and data[7:17] == b"onedc_tiny"
    assert struct.unpack(">f4sHHI", data[17:33]) == (pytest.approx(4.6), IDENTITY.digest, 300, 451, 4)
    assert len(data) == 4 + 3 + 10 + 4 + 4 + 2 + 2 + 4 + 4 + 2 + 4


def test_z_only_files_have_the_flag_and_no_y_stream():
    data = write(Header(IDENTITY, 768, 768, z_only=True), None, b"z" * 252)
    header, y, z = read(data)
    assert header.z_only and y is None and z == b"z" * 252
    assert data[5] == 0x01 and len(data) == 4 + 3 + 10 + 4 + 4 + 2 + 2 + 252 + 4  # no L_y field
    with pytest.raises(ValueError, match="z-only"):
        write(Header(IDENTITY, 8, 8, z_only=True), b"y", b"z")
    with pytest.raises(ValueError, match="z-only"):
        write(Header(IDENTITY, 8, 8), None, b"z")


def test_version_1_files_are_read():
    """Version 1: no flags byte (so never z-only), otherwise the same layout."""
    body = b"ONDC\x01\x0aonedc_tiny" + struct.pack(">f4sHHI", 4.6, IDENTITY.digest, 300, 451, 4) + b"yyyy" + b"zz"
    header, y, z = read(fix_crc(body))
    assert header.version == 1 and not header.z_only and (y, z) == (b"yyyy", b"zz")
    assert header.model.matches(IDENTITY) and (header.height, header.width) == (300, 451)


def test_a_committed_version_1_file_decodes(tiny_config):
    """A file written by onedc 0.1 (format version 1, before z-only files), with the entropy
    model that wrote it: the container reads and the streams decode to the y_hat the encoder
    recorded, exactly, and to its c up to float rounding (h_sem is a float network, and its
    attention has since moved to contiguous inputs: a change of kernel, 2.4e-7 here)."""
    folder = Path(__file__).parent / "data" / "v1"
    data = (folder / "chelsea_97x130.onedc").read_bytes()
    header, y, z = read(data)
    assert data[4] == 1 and header.version == 1 and not header.z_only
    assert (header.model.name, header.model.digest.hex(), header.height, header.width) == ("onedc_tiny", "50ceef47", 97, 130)
    assert header.model.lmbda == pytest.approx(4.6) and (len(y), len(z)) == (108, 11)
    codec = OneDC.untrained(tiny_config).codec
    modules = load_file(folder / "decoder_modules.safetensors")
    for name in ("h_dec", "context", "h_sem"):
        getattr(codec, name).load_state_dict({k[len(name) + 1:]: v for k, v in modules.items() if k.startswith(name + ".")})
    decoded = codec.decompress({"y": [y], "z": [z]}, (2, 3))
    expected = load_file(folder / "expected.safetensors")
    assert torch.equal(decoded["y_hat"], expected["y_hat"])
    assert torch.allclose(decoded["c"], expected["c"], rtol=0, atol=1e-5) and not torch.equal(decoded["c"], torch.zeros_like(decoded["c"]))


def test_no_lambda_is_nan_on_disk():
    header, _, _ = read(write(Header(ModelIdentity("m", None, b"abcd"), 1, 1), b"", b""))
    assert header.model.lmbda is None and "no lambda" in header.model.describe()


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: b"PNG!" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x07" + d[5:], "unsupported format version 7"),
        (lambda d: fix_crc(d[:5] + b"\x02" + d[6:-4]), "unknown flags 0x02"),
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-8], "length mismatch"),
        (lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:], "checksum mismatch"),
        (lambda d: fix_crc(d[:6] + b"\x03\x00\xff\x01" + d[10:-4]), "not printable ASCII"),
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
    with pytest.raises(BitstreamError, match=r"model mismatch: the file was written by onedc_tiny \(no lambda, weights [0-9a-f]{8}\), this model is"):
        other.decompress(data)


def test_z_length_must_match_the_image_size(tiny_model, photos):
    data = tiny_model.compress(photos["chelsea"][:, :64, :64])
    header, y, z = read(data)
    bigger = write(Header(header.model, 65, 64), y, z)  # 2 z positions expected, 1 present
    with pytest.raises(BitstreamError, match="z stream has 2 bytes, expected 4"):
        tiny_model.decompress(bigger)
