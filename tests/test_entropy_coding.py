import hashlib
import importlib
import math

import numpy as np
import pytest
import torch

from onedc import BitstreamError
from onedc.codec.context_model import STEP_PHASES, step_masks
from onedc.codec.entropy_coding import GaussianCoder, gaussian_tables, pack_fixed_width, unpack_fixed_width

TABLES_SHA256 = "d1b7a989c5cc2cbcc29f16832b5b898df553f71c372a2faf02656cb92aa27f64"


def compressai_ans():
    """compressai (a test dependency, never imported by onedc) for the reference coder."""
    return importlib.import_module("compressai.ans")


def compressai_conditional(cfg):
    from compressai.entropy_models import GaussianConditional

    table = torch.exp(torch.linspace(math.log(cfg.scale_min), math.log(cfg.scale_max), cfg.scale_levels, dtype=torch.float64))
    conditional = GaussianConditional(table.tolist(), scale_bound=cfg.scale_min, tail_mass=cfg.tail_mass)
    conditional.update()
    return conditional


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


def test_table_index_is_the_smallest_table_scale_not_below_sigma(tiny_config):
    coder = GaussianCoder(tiny_config.codec.entropy)
    table = torch.from_numpy(coder.tables.scales)
    assert len(table) == 256 and table[0] == torch.tensor(0.11) and table[-1] == 64.0
    scales = torch.tensor([0.0, -1.0, 0.11, 0.1101, 63.9, 64.0, 1000.0])
    assert coder.indexes(scales).tolist() == [0, 0, 0, 1, 255, 255, 255]
    # at and just above every table scale (float32)
    assert torch.equal(coder.indexes(table).long(), torch.arange(256))
    assert torch.equal(coder.indexes(table[:-1].nextafter(table[1:])).long(), torch.arange(1, 256))
    assert coder.indexes(scales.double()).dtype == torch.int16


def test_tables_are_pinned_by_a_digest(tiny_config):
    """The tables decide every stream: a change (numpy, torch's erfc, our quantiser) must be
    seen. The digest is that of compressai 1.2.8's GaussianConditional tables."""
    t = gaussian_tables(tiny_config.codec.entropy)
    assert t.cdfs.shape == (256, 787) and t.lengths.max() == 787 and t.offsets.min() == -392
    digest = hashlib.sha256(b"".join(a.tobytes() for a in (t.scales, t.cdfs, t.lengths, t.offsets))).hexdigest()
    assert digest == TABLES_SHA256
    for cdf, n in zip(t.cdfs, t.lengths):
        assert cdf[0] == 0 and cdf[n - 1] == 2**16 and (np.diff(cdf[:n]) >= 1).all()


def test_tables_match_compressai(tiny_config):
    cfg = tiny_config.codec.entropy
    conditional = compressai_conditional(cfg)
    t = gaussian_tables(cfg)
    assert np.array_equal(conditional.scale_table.numpy(), t.scales)
    assert np.array_equal(conditional.quantized_cdf.numpy(), t.cdfs)
    assert np.array_equal(conditional.cdf_length.numpy(), t.lengths)
    assert np.array_equal(conditional.offset.numpy(), t.offsets)
    scales = torch.cat([torch.rand(1000) * 70, torch.tensor([0.0, 0.11, 64.0, 1e6])])
    assert torch.equal(conditional.build_indexes(scales).long(), GaussianCoder(cfg).indexes(scales).long())


def random_symbols(coder, n=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.rand(n, generator=gen) * 20
    symbols = torch.round(torch.randn(n, generator=gen) * scales).int()
    symbols[:6] = torch.tensor([5000, -7000, 32767, -32767, 300, -100])  # far tails: escape coded
    return symbols.numpy(), coder.indexes(scales).numpy()


def test_rans_round_trip_over_several_writes(tiny_config):
    coder = GaussianCoder(tiny_config.codec.entropy)
    symbols, indexes = random_symbols(coder)
    writer = coder.writer()
    for part in np.array_split(np.arange(symbols.size), 4):
        writer.write(symbols[part], indexes[part])
    reader = coder.reader(writer.finish())
    decoded = np.concatenate([reader.read(indexes[part], 32767) for part in np.array_split(np.arange(symbols.size), 3)])
    reader.finish()
    assert np.array_equal(decoded, symbols)


def test_streams_are_byte_identical_to_compressais(tiny_config):
    """Files of format version 1 were written by compressai's coder: both directions agree."""
    coder = GaussianCoder(tiny_config.codec.entropy)
    t = coder.tables
    symbols, indexes = random_symbols(coder, seed=1)
    cdfs = [row[:n].tolist() for row, n in zip(t.cdfs, t.lengths)]
    encoder = compressai_ans().BufferedRansEncoder()
    encoder.encode_with_indexes(symbols.tolist(), indexes.tolist(), cdfs, t.lengths.tolist(), t.offsets.tolist())
    theirs = encoder.flush()
    writer = coder.writer()
    writer.write(symbols, indexes)
    assert writer.finish() == theirs
    decoder = compressai_ans().RansDecoder()
    decoder.set_stream(theirs)
    assert decoder.decode_stream(indexes.tolist(), cdfs, t.lengths.tolist(), t.offsets.tolist()) == symbols.tolist()


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: d[:-4], "ends before its last symbol"),
        (lambda d: d[:4], "ends before its last symbol"),
        (lambda d: b"", "ends before its last symbol"),
        (lambda d: d + bytes(4), "left over"),
        (lambda d: d[:-1], "whole number of 32-bit words"),
        (lambda d: d[:8] + bytes(len(d) - 8), "corrupt y stream"),
    ],
)
def test_corrupt_streams_raise_instead_of_reading_past_the_end(tiny_config, mangle, message):
    coder = GaussianCoder(tiny_config.codec.entropy)
    symbols, indexes = random_symbols(coder, n=500)
    writer = coder.writer()
    writer.write(symbols, indexes)
    with pytest.raises(BitstreamError, match=message):
        reader = coder.reader(mangle(writer.finish()))
        reader.read(indexes, 32767)
        reader.finish()


def test_random_streams_never_read_past_their_end(tiny_config):
    coder = GaussianCoder(tiny_config.codec.entropy)
    rng = np.random.default_rng(0)
    indexes = np.zeros(2000, np.int16)  # the narrowest table: escapes are frequent in garbage
    for size in range(0, 64, 4):
        with pytest.raises(BitstreamError):
            reader = coder.reader(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            reader.read(indexes, 32767)
            reader.finish()


def test_step_masks_cover_every_element_once():
    masks = step_masks(16, 6, 10, torch.float32, torch.device("cpu"))
    assert torch.equal(masks.sum(0), torch.ones(16, 6, 10))
    for k, phases in enumerate(STEP_PHASES):
        for g, (row, col) in enumerate(phases):
            assert masks[k, 4 * g, row, col] == 1 and masks[k, 4 * g].sum() == 15
