import io
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from onedc import ConfigError
from onedc.data.sources import HFImageDataset, ImageFolder, SamplePhotos, load_images
from onedc.data.training import StepBatchSampler, TrainingCrops, choose_policy, collate, policies_from_config, policy_batch_size

POLICIES = policies_from_config(OmegaConf.create([
    {"name": "resize512", "weight": 0.2, "mode": "resize", "size": 64, "batch_fraction": 1.0},
    {"name": "crop512", "weight": 0.5, "mode": "crop", "size": 64, "batch_fraction": 1.0},
    {"name": "crop1024", "weight": 0.3, "mode": "crop", "size": 128, "batch_fraction": 0.25},
]))


def test_policy_draws_follow_the_weights_and_are_stable():
    draws = [choose_policy(POLICIES, seed=7, step=s) for s in range(20000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, [0.2, 0.5, 0.3], atol=0.015)
    assert draws[:50] == [choose_policy(POLICIES, seed=7, step=s) for s in range(50)]
    assert draws[:50] != [choose_policy(POLICIES, seed=8, step=s) for s in range(50)]
    assert [policy_batch_size(p, 8) for p in POLICIES] == [8, 8, 2]


def test_ranks_share_policies_and_split_the_stream_without_overlap():
    a = iter(StepBatchSampler(10, POLICIES, 8, seed=1, rank=0, world_size=2))
    b = iter(StepBatchSampler(10, POLICIES, 8, seed=1, rank=1, world_size=2))
    for _ in range(30):
        ra, rb = next(a), next(b)
        assert {p for *_, p in ra} == {p for *_, p in rb} and len(ra) == len(rb)
        assert not {s for _, s, _ in ra} & {s for _, s, _ in rb}  # distinct stream positions


def test_starting_at_a_step_replays_the_uninterrupted_stream():
    straight = iter(StepBatchSampler(7, POLICIES, 4, seed=3))
    batches = [next(straight) for _ in range(25)]
    resumed = iter(StepBatchSampler(7, POLICIES, 4, seed=3, start_step=13))
    assert [next(resumed) for _ in range(12)] == batches[13:]


def test_crops_sizes_flip_range_and_determinism():
    crops = TrainingCrops(SamplePhotos(["chelsea", "camera"]), POLICIES, min_side=32)
    sample = crops[(0, 123, 2)]
    assert sample["image"].shape == (3, 128, 128) and sample["policy"] == "crop1024"
    assert float(sample["image"].min()) >= -1 and float(sample["image"].max()) <= 1
    assert torch.equal(crops[(0, 123, 2)]["image"], sample["image"])
    assert crops[(1, 5, 0)]["image"].shape == (3, 64, 64)  # grayscale photo, resized policy
    batch = collate([crops[(0, s, 1)] for s in range(3)])
    assert batch["image"].shape == (3, 3, 64, 64) and batch["policy"] == "crop512"


def test_corrupt_and_tiny_images_are_skipped_with_a_warning(tmp_path, caplog):
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(tmp_path / "a_good.png")
    (tmp_path / "b_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c_tiny.png")
    source = ImageFolder(tmp_path)
    assert [p.name for p in source.files] == ["a_good.png", "b_corrupt.jpg", "c_tiny.png"]
    crops = TrainingCrops(source, POLICIES, min_side=32)
    with caplog.at_level(logging.WARNING):
        assert crops[(1, 0, 0)]["image"].shape == (3, 64, 64)  # corrupt -> tiny -> wraps to a_good
    assert "unreadable" in caplog.text and "below data.min_side" in caplog.text


def test_hf_dataset_shards(tmp_path):
    datasets = pytest.importorskip("datasets")
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(buf, format="JPEG")
    jpgs = [{"bytes": buf.getvalue(), "path": None}, {"bytes": b"broken", "path": None}]
    ds = datasets.Dataset.from_dict({"jpg": jpgs, "blip2_caption": ["a cat", "x"]})
    ds = ds.cast_column("jpg", datasets.Image())
    ds.to_parquet(str(tmp_path / "shard-0.parquet"))
    source = HFImageDataset(tmp_path, "jpg", "blip2_caption")
    image, caption = source.load(0)
    assert image.size == (50, 40) and caption == "a cat"
    from onedc import ImageError

    with pytest.raises(ImageError):
        source.load(1)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(HFImageDataset(tmp_path / "saved", "jpg", "blip2_caption")) == 2
    with pytest.raises(ConfigError, match="no column"):
        HFImageDataset(tmp_path / "saved", "png")


def test_validation_images_are_center_cropped():
    images = load_images(SamplePhotos(["chelsea", "camera"]), crop=128)
    assert [n for n, _ in images] == ["chelsea", "camera"] and images[0][1].shape == (3, 128, 128)
    assert load_images(SamplePhotos(["chelsea"]))[0][1].shape == (3, 300, 451)
