"""Evaluation datasets: folder checks with clear errors, and the resize & center-crop cache."""

import json
import os

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from onedc.errors import ConfigError, ImageError
from onedc.eval.datasets import SETTINGS, DatasetError, load_dataset, load_u8, prepare_crops, resize_center_crop


def write_images(folder, names, size=(8, 6)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, (i % 256, 10, 20)).save(folder / name)


def test_missing_folder_names_layout_and_source(tmp_path):
    with pytest.raises(DatasetError, match=r"kodak at .*nowhere: no such folder.*kodim01.png .. kodim24.png.*r0k.us"):
        load_dataset("kodak", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path)


def test_incomplete_kodak_names_the_missing_files(tmp_path):
    write_images(tmp_path, [f"kodim{i:02d}.png" for i in range(1, 21)])
    with pytest.raises(DatasetError, match=r"4 of 24 images missing \(kodim21.png, kodim22.png, kodim23.png, kodim24.png\)"):
        load_dataset("kodak", tmp_path)
    with pytest.warns(UserWarning, match="partial set"):
        paths = load_dataset("kodak", tmp_path, allow_partial=True)
    assert [p.name for p in paths] == [f"kodim{i:02d}.png" for i in range(1, 21)]
    write_images(tmp_path, [f"kodim{i:02d}.png" for i in range(21, 25)])
    assert len(load_dataset("kodak", tmp_path)) == 24


def test_div2k_in_its_zip_subfolder(tmp_path):
    write_images(tmp_path / "DIV2K_valid_HR", [f"{i:04d}.png" for i in range(801, 901)], size=(2, 2))
    paths = load_dataset("div2k", tmp_path)
    assert len(paths) == 100 and paths[0].name == "0801.png" and paths[-1].name == "0900.png"
    (paths[5]).unlink()
    with pytest.raises(DatasetError, match=r"1 of 100 images missing \(0806.png\).*DIV2K_valid_HR.zip"):
        load_dataset("div2k", tmp_path)


def test_clic2020_layouts_and_count(tmp_path):
    write_images(tmp_path / "professional", ["a.png", "b.png"])
    write_images(tmp_path / "mobile", ["c.jpg"])
    with pytest.raises(DatasetError, match=r"found 3 images .*expected 428.*professional/ and mobile/"):
        load_dataset("clic2020", tmp_path)
    with pytest.warns(UserWarning):
        paths = load_dataset("clic2020", tmp_path, allow_partial=True)
    assert [p.name for p in paths] == ["c.jpg", "a.png", "b.png"]
    write_images(tmp_path / "flat", ["x.png"])
    with pytest.warns(UserWarning):
        assert [p.name for p in load_dataset("clic2020", tmp_path / "flat", allow_partial=True)] == ["x.png"]


def test_coco_file_list(tmp_path):
    write_images(tmp_path / "val2014", ["1.jpg", "2.jpg"])
    with pytest.raises(DatasetError, match="no file list given"):
        load_dataset("mscoco30k", tmp_path)
    listing = tmp_path / "coco30k.txt"
    listing.write_text("# test list\nval2014/1.jpg\n\nval2014/2.jpg\nval2014/3.jpg\n")
    with pytest.raises(DatasetError, match="has 3 entries, expected 30000"):
        load_dataset("mscoco30k", tmp_path, file_list=listing)
    with pytest.warns(UserWarning) as caught:
        paths = load_dataset("mscoco30k", tmp_path, file_list=listing, allow_partial=True)
    assert "has 3 entries" in str(caught[0].message) and "1 of 3 images missing (val2014/3.jpg)" in str(caught[1].message)
    assert paths == [tmp_path / "val2014/1.jpg", tmp_path / "val2014/2.jpg"]


def test_any_folder_of_images(tmp_path):
    write_images(tmp_path, ["b.png", "a.JPG", "c.webp", "d.bmp", "e.tif"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in load_dataset("folder", tmp_path)] == ["a.JPG", "b.png", "c.webp", "d.bmp", "e.tif"]
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset("folder", tmp_path / "sub")


def test_settings_name_their_fid_protocols():
    assert SETTINGS["kodak"].protocols == ()
    assert [(p.patch, p.split) for p in SETTINGS["kodak_crop512"].protocols] == [(64, 2)]
    assert [(p.patch, p.split) for p in SETTINGS["clic2020_crop768"].protocols] == [(128, 2), (256, 2)]
    assert [(p.patch, p.split) for p in SETTINGS["mscoco30k"].protocols] == [(512, 1)]
    assert SETTINGS["clic2020"].crop is None and SETTINGS["clic2020_crop768"].crop == 768


def test_load_u8_is_exact_and_converts_to_rgb(tmp_path):
    rgb = skimage.data.coffee()
    Image.fromarray(rgb).save(tmp_path / "c.png")
    x, notes = load_u8(tmp_path / "c.png")
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1)) and notes == []
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    x, notes = load_u8(tmp_path / "g.png")
    assert x.shape == (3, 400, 600) and torch.equal(x[0], x[2]) and "grayscale" in notes[0]


def test_resize_center_crop():
    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)  # 512x512
    wide = torch.cat([img, img[:, :, :256]], dim=2)  # 512x768: short side already 512, pure crop
    assert torch.equal(resize_center_crop(wide, 512), wide[:, :, 128:640])
    coffee = torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1)  # 400x600 -> 256x384 -> crop
    out = resize_center_crop(coffee, 256)
    resized = np.array(Image.fromarray(skimage.data.coffee()).resize((384, 256), Image.BICUBIC))
    assert torch.equal(out, torch.from_numpy(resized[:, 64:320]).permute(2, 0, 1))


def test_prepare_crops_writes_once_and_repairs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(skimage.data.coffee()).save(src / "coffee.png")
    Image.fromarray(skimage.data.chelsea()).convert("RGBA").save(src / "cat.png")
    Image.fromarray(skimage.data.astronaut()[..., 0]).save(src / "gray.png")
    paths = [src / "coffee.png", src / "cat.png", src / "gray.png"]
    cache = tmp_path / "crops"
    out = prepare_crops(paths, 128, cache)
    assert [p.name for p in out] == ["coffee.png", "cat.png", "gray.png"]
    for p in out:
        with Image.open(p) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["size"] == 128 and "BICUBIC" in manifest["resize"] and len(manifest["files"]["cat.png"]["sha256"]) == 64
    assert "alpha" in manifest["files"]["cat.png"]["notes"][0]
    mtimes = {p: os.stat(p).st_mtime_ns for p in [*out, cache / "manifest.json"]}
    before = load_u8(out[0])[0]

    assert prepare_crops(paths, 128, cache) == out  # reused, nothing rewritten
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes

    out[0].write_bytes(b"corrupted")  # a damaged crop is regenerated, the others are kept
    prepare_crops(paths, 128, cache)
    assert torch.equal(load_u8(out[0])[0], before)
    assert [os.stat(p).st_mtime_ns for p in out[1:]] == [mtimes[p] for p in out[1:]]
    out[1].unlink()  # a missing one too
    prepare_crops(paths, 128, cache)
    assert out[1].is_file()

    assert all(Image.open(p).size == (96, 96) for p in prepare_crops(paths, 96, cache))  # another size: all redone


def test_prepare_crops_errors(tmp_path):
    write_images(tmp_path / "a", ["x.png"])
    write_images(tmp_path / "b", ["x.png"])
    with pytest.raises(DatasetError, match="share the names x"):
        prepare_crops([tmp_path / "a/x.png", tmp_path / "b/x.png"], 4, tmp_path / "crops")
    with pytest.raises(ImageError, match="no such image file"):
        prepare_crops([tmp_path / "missing.png"], 4, tmp_path / "crops")
