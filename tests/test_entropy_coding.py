import numpy as np
import pytest
import torch

from onedc import BitstreamError
from onedc.codec.context_model import STEP_PHASES, step_masks
from onedc.codec.entropy_coding import GaussianCoder, pack_fixed_width, unpack_fixed_width


def test_fixed_width_packing_is_right_aligned_big_endian():
    # two 14-bit indices = 28 bits in 4 bytes, 4 leading zero bits
    data = pack_fixed_width(np.array([0x3FFF, 1]), 14)
    assert data == bytes([0b0000_1111, 0b1111_1111, 0b1100_0000, 0b0000_0001])
    assert unpack_fixed_width(data, 2, 14).tolist() == [0x3FFF, 1]


def test_fixed_width_round_trip_and_errors():
    values = np.random.default_rng(0).integers(0, 2**14, size=97)
    data = pack_fixed_width(values, 14)
    assert len(data) == (97 * 14 + 7) // 8
    assert np.array_equal(unpack_fixed_width(data, 97, 14), values)
    with pytest.raises(BitstreamError, match="expected"):
        unpack_fixed_width(data[:-1], 97, 14)
    with pytest.raises(BitstreamError, match="padding"):
        unpack_fixed_width(bytes([0x80]) + data[1:], 97, 14)


def test_scale_table(tiny_config):
    coder = GaussianCoder(tiny_config.codec.entropy)
    assert len(coder.cdfs) == 256
    scales = torch.tensor([0.0, 0.11, 0.1101, 63.9, 64.0, 1000.0])
    local, cdfs, lengths, offsets = coder.tables(scales)
    # the smallest table scale >= sigma; only the tables in use are handed to the coder
    assert len(cdfs) == len(lengths) == len(offsets) == 3
    assert [offsets[i] for i in local] == [coder.offsets[i] for i in (0, 0, 1, 255, 255, 255)]
    assert [cdfs[i] for i in local][-1] == coder.cdfs[255]


def test_rans_round_trip_with_escapes(tiny_config):
    coder = GaussianCoder(tiny_config.codec.entropy)
    gen = torch.Generator().manual_seed(0)
    scales = torch.rand(3, 500, generator=gen) * 20
    symbols = torch.round(torch.randn(3, 500, generator=gen) * scales)
    symbols[0, :5] = torch.tensor([5000.0, -7000.0, 32767.0, -32767.0, 300.0])  # far tails: escape coded
    writer = coder.writer()
    for s, sc in zip(symbols, scales):
        writer.write(s, sc)
    data = writer.finish()
    reader = coder.reader(data, num_symbols=symbols.numel())
    decoded = torch.stack([reader.read(sc, max_symbol=32767) for sc in scales])
    assert torch.equal(decoded, symbols.long())


def test_step_masks_cover_every_element_once():
    masks = step_masks(16, 6, 10, torch.float32, torch.device("cpu"))
    assert torch.equal(masks.sum(0), torch.ones(16, 6, 10))
    for k, phases in enumerate(STEP_PHASES):
        for g, (row, col) in enumerate(phases):
            assert masks[k, 4 * g, row, col] == 1 and masks[k, 4 * g].sum() == 15
