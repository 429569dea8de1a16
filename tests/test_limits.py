"""The decompression-bomb guard and the header-vs-length checks: refused before anything is
allocated from a declared size, with the size, the estimate and the override in the message."""

import dataclasses
import io
import math
import struct
import time
import zlib

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from onedc import BitstreamError, ImageError, SizeLimitError, bitstream
from onedc.cli import main
from onedc.codec.stream_limits import stream_bounds
from onedc.data.sources import ImageFolder
from onedc.data.training import TrainingCrops, policies_from_config
from onedc.image_io import load_image
from onedc.limits import cgroup_available, check_size, default_max_pixels, estimate


def reheaded(data: bytes, height: int, width: int, y_stream: bytes | None = None) -> bytes:
    """A file re-headed to height x width, with a z stream of the declared length (zeros) and a
    valid CRC; optionally another y stream."""
    header, y, _ = bitstream.read(data)
    z = bytes(math.ceil(14 * math.ceil(height / 64) * math.ceil(width / 64) / 8))
    return bitstream.write(dataclasses.replace(header, height=height, width=width), y if y_stream is None else y_stream, z)


@pytest.fixture(scope="module")
def small_file(tiny_model, photos):
    return tiny_model.compress(photos["chelsea"][:, :64, :96])


def test_the_crafted_8192_file_is_refused_before_decoding(tiny_model, small_file):
    bomb = reheaded(small_file, 8192, 8192)
    assert len(bomb) < 30_000  # the 29 KB file
    start = time.perf_counter()
    with pytest.raises(SizeLimitError) as e:
        tiny_model.decompress(bomb)
    assert time.perf_counter() - start < 1.0  # refused from the header: nothing decoded
    message = str(e.value)
    assert "refusing to decode a 8192x8192 image" in message and "67,108,864 pixels exceed the default limit of 16,777,216" in message
    assert "onedc_tiny on cpu would need about" in message and "--max-pixels 67108864 (Python: max_pixels=67108864)" in message


def test_the_limit_is_the_padded_size_and_can_be_raised(tiny_model, small_file):
    skinny = reheaded(small_file, 1, 8192)  # 8,192 pixels, but 64 x 8192 = 524,288 computed
    with pytest.raises(SizeLimitError, match=r"524,288 pixels \(padded to 8192x64\) exceed the limit of 100,000"):
        tiny_model.decode_latents(skinny, max_pixels=100_000)
    with pytest.raises(BitstreamError, match="data left over"):  # past the size guard: the y stream's own checks
        tiny_model.decode_latents(reheaded(small_file, 64, 128), max_pixels=64 * 128)
    assert tiny_model.decompress(small_file).shape == (3, 64, 96)  # within the default limit and the memory


def test_memory_beyond_what_the_device_has_is_refused_unless_overridden(tiny_model, small_file, monkeypatch):
    monkeypatch.setattr("onedc.limits.available_memory", lambda device: 1_000_000)
    with pytest.raises(SizeLimitError, match=r"onedc_tiny on cpu would need about .* more than the 1.0 MB available on cpu"):
        tiny_model.decompress(small_file)
    with pytest.raises(SizeLimitError, match="refusing to encode a 96x64 image"):
        tiny_model.compress(torch.zeros(3, 64, 96))
    assert tiny_model.decompress(small_file, max_pixels=64 * 128).shape == (3, 64, 96)  # the caller's decision


def test_estimates_grow_with_the_padded_size_and_fall_back_to_the_full_model():
    tiny, full = estimate("onedc_tiny", "decompress", 1024, 1024, "cpu"), estimate("onedc_sd15", "decompress", 1024, 1024, "cpu")
    assert 0 < tiny.seconds < full.seconds and 0 < tiny.bytes < full.bytes
    assert estimate("my_variant", "decompress", 1000, 1000, "cpu") == full  # unknown models: the full-size model
    assert estimate("onedc_tiny", "decompress", 1, 1, "cpu").pixels == 64 * 64
    assert estimate("onedc_sd15", "decompress", 1024, 1024, "cpu", threads=4).seconds == pytest.approx(full.seconds / 4)
    assert check_size("onedc_tiny", "decompress", 64, 64, "cpu", max_pixels=64 * 64).pixels == 4096


def test_cgroup_limit(tmp_path):
    (tmp_path / "proc").write_text("0::/job_42\n")
    group = tmp_path / "cg" / "job_42"
    group.mkdir(parents=True)
    (group / "memory.max").write_text("8000000000\n")
    (group / "memory.current").write_text("3000000000\n")
    assert cgroup_available(tmp_path / "cg", tmp_path / "proc") == 5_000_000_000
    (group / "memory.max").write_text("max\n")
    assert cgroup_available(tmp_path / "cg", tmp_path / "proc") is None
    assert cgroup_available(tmp_path / "none", tmp_path / "proc") is None


def test_stream_bounds_hold_for_the_coders_cheapest_and_dearest_symbols(tiny_model):
    coder, entropy = tiny_model.codec.coder, tiny_model.config.codec.entropy
    bounds = stream_bounds(coder.tables, entropy.max_symbol)
    n = 20_000
    narrow, wide = torch.full((n,), entropy.scale_min), torch.full((n,), entropy.scale_max)
    extremes = torch.tensor([entropy.max_symbol, -entropy.max_symbol]).repeat(n // 2)
    lengths = []
    for symbols, scales in [(torch.zeros(n), narrow), (extremes, narrow), (extremes, wide), (torch.zeros(n), wide)]:
        writer = coder.writer()
        writer.write(symbols.int().numpy(), coder.indexes(scales).numpy())
        lengths.append(len(writer.finish()))
        bounds.check(n, lengths[-1])  # every real stream passes
    # the dearest symbols (escaped extremes, 36 bits) come within 15% of the upper bound
    assert 8 * max(lengths) > 0.85 * n * bounds.max_bits


def test_files_claiming_more_symbols_than_their_y_stream_holds_are_refused(tiny_model, small_file):
    # 4096 x 4096 is 1,048,576 y symbols: at least 3 bytes of stream at the cheapest symbol
    with pytest.raises(BitstreamError, match=r"needs 1,048,576 y symbols, more than a y stream of 2 bytes can hold"):
        tiny_model.decode_latents(reheaded(small_file, 4096, 4096, y_stream=b"\x00\x01"), max_pixels=4096 * 4096)
    # 64 x 64 is 256 y symbols: at most 40 bits each
    with pytest.raises(BitstreamError, match=r"a y stream of 2,000 bytes is longer than the 256 y symbols"):
        tiny_model.decode_latents(reheaded(small_file, 64, 64, y_stream=bytes(2000)))


def png_claiming(width: int, height: int) -> bytes:
    """An 8x8 PNG whose header (IHDR, CRC repaired) declares width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_image_bombs_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(5000, 4000))
    with pytest.raises(ImageError, match=r"5000x4000 = 20,000,000 pixels, above the limit of 16,777,216 .* --max-pixels 20000000"):
        load_image(path)
    assert default_max_pixels() == 16_777_216
    path.write_bytes(png_claiming(30000, 30000))  # beyond twice Pillow's limit: Pillow's own error, as ours
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, max_pixels=10**10)


def test_data_loaders_refuse_and_skip_image_bombs(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_bomb.png").write_bytes(png_claiming(10000, 10000))  # 1e8 pixels: Pillow only warns
    Image.new("RGB", (80, 80), (10, 200, 30)).save(folder / "b_fine.png")
    source = ImageFolder(folder)
    with pytest.raises(ImageError, match=r"a_bomb.png is not a readable image: .*decompression bomb"):
        source.load(0)
    policies = policies_from_config(OmegaConf.create([{"name": "c", "weight": 1, "mode": "crop", "size": 64, "batch_fraction": 1}]))
    crops = TrainingCrops(source, policies, 64)
    assert crops[(0, 1, 0)]["image"].shape == (3, 64, 64)  # the bomb skipped, the next image used
    assert "skipping unreadable training image" in caplog.text


def test_the_command_line_refuses_before_loading_the_model(tiny_model, small_file, tmp_path, capsys, monkeypatch):
    bomb = tmp_path / "bomb.onedc"
    bomb.write_bytes(reheaded(small_file, 8192, 8192))

    def not_expected(*args, **kwargs):
        raise AssertionError("the model was loaded for a file the guard refuses")

    monkeypatch.setattr("onedc.cli._load_model", not_expected)
    assert main(["decompress", str(bomb), str(tmp_path / "out.png"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("onedc: error: refusing to decode a 8192x8192 image")
    image = tmp_path / "big.png"
    image.write_bytes(png_claiming(5000, 4000))
    assert main(["compress", str(image), str(tmp_path / "big.onedc")]) == 1
    assert "above the limit of 16,777,216" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["decompress", str(bomb), str(tmp_path / "out.png"), "--max-pixels", "0"])
