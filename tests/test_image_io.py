import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from onedc import ImageError
from onedc.image_io import load_image


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale or RGB) written by hand: Pillow cannot write 16-bit RGB."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if array.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_rgb_png_round_values(tmp_path):
    rgb = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x, notes = load_image(tmp_path / "a.png")
    assert notes == [] and x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(rgb))


def test_grayscale_is_replicated(tmp_path):
    Image.fromarray(np.full((4, 6), 200, np.uint8)).save(tmp_path / "g.png")
    x, notes = load_image(tmp_path / "g.png")
    assert "grayscale" in notes[0] and x.shape == (3, 4, 6) and torch.equal(x[0], x[2])


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red, the rest fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x, notes = load_image(tmp_path / "a.png")
    assert "alpha" in notes[0]
    assert x[:, 0, 0].tolist() == [1.0, -1.0, -1.0] and x[:, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_palette(tmp_path):
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).convert("P").save(tmp_path / "p.png")
    x, notes = load_image(tmp_path / "p.png")
    assert "palette" in notes[0] and x.shape == (3, 3, 4)


def test_16_bit_grayscale_and_rgb(tmp_path):
    gray = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    (tmp_path / "g16.png").write_bytes(png16(gray))
    x, notes = load_image(tmp_path / "g16.png")
    assert "16-bit" in notes[0]
    assert torch.equal(((x[0] + 1) * 127.5).round(), torch.from_numpy(np.round(gray / 257.0)).float())
    rgb = (np.arange(36).reshape(3, 4, 3) * 1500).astype(np.uint16)
    (tmp_path / "c16.png").write_bytes(png16(rgb))
    x, notes = load_image(tmp_path / "c16.png")
    assert notes == ["16-bit PNG reduced to 8 bits per channel"] and x.shape == (3, 3, 4)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
