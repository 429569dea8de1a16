"""Evaluation datasets and settings (docs/evaluation.md 1, 3, 5).

`load_dataset(name, root)` checks a local copy (nothing is downloaded) and returns its image
paths, sorted; a missing folder or an incomplete set raises `DatasetError` with the expected
layout and where to get it (`allow_partial=True` warns instead, for quick runs).

Settings (`SETTINGS`, from configs/eval/settings.yaml): full resolution (images as they are; the codec pads to a multiple of
64 itself) or resize & center-crop (`prepare_crops`: short side -> S with PIL bicubic, then the
center S x S crop, stored once as PNG with a sha256 manifest). Each setting names its FID/KID
patch protocols (`onedc.eval.metrics.Protocol`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_file
from ..checksums import file_sha256
from ..errors import ConfigError, OneDCError
from ..image_io import IMAGE_SUFFIXES, load_image, to_uint8_tensor
from .metrics import Protocol

RESIZE = "PIL Image.resize BICUBIC (antialiased when downsampling), short side -> S, long side rounded; center crop S x S"


class DatasetError(OneDCError):
    """An evaluation dataset is missing, incomplete or cannot be prepared."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a complete local copy looks like: `count` images (None: any number > 0)."""

    name: str
    count: int | None
    layout: str
    source: str


DATASETS: dict[str, DatasetSpec] = {
    "kodak": DatasetSpec("kodak", 24, "kodim01.png .. kodim24.png directly in the folder (768x512, six portrait)",
                         "http://r0k.us/graphics/kodak/ (files http://r0k.us/graphics/kodak/kodak/kodimNN.png)"),
    "clic2020": DatasetSpec(
        "clic2020", 428, "CLIC 2020 test, professional + mobile (250 + 178 = 428 images): a folder with professional/ "
        "and mobile/ subfolders, or one flat folder holding all 428",
        "the CLIC 2020 site (https://data.vision.ee.ethz.ch/cvl/clic/test/CLIC2020Professional_test.zip and "
        "CLIC2020Mobile_test.zip), or the tfds `clic` test split"),
    "div2k": DatasetSpec("div2k", 100, "DIV2K validation HR 0801.png .. 0900.png directly in the folder "
                         "(or in its DIV2K_valid_HR/ subfolder)",
                         "https://data.vision.ee.ethz.ch/cvl/DIV2K/ (DIV2K_valid_HR.zip)"),
    "mscoco30k": DatasetSpec("mscoco30k", 30000, "a text file listing 30000 image paths (one per line) relative to "
                             "the root folder", "https://cocodataset.org/ (e.g. val2014 or train2017) plus the 30k list"),
    "folder": DatasetSpec("folder", None, f"image files ({', '.join(IMAGE_SUFFIXES)}) directly in the folder", "-"),
}


@dataclass(frozen=True)
class Setting:
    """A dataset at one preprocessing: `crop` None = full resolution, else short side -> crop and
    center crop; `protocols` are its FID/KID patch protocols (empty: no FID/KID)."""

    name: str
    dataset: str
    crop: int | None
    protocols: tuple[Protocol, ...]
    note: str = ""


def load_settings() -> dict[str, Setting]:
    """The settings of `configs/eval/settings.yaml` (shipped as `onedc.configs.eval`)."""
    from importlib.resources import files

    import yaml

    table = yaml.safe_load(files("onedc.configs.eval").joinpath("settings.yaml").read_text())
    return {name: Setting(name, s["dataset"], s["crop"], tuple(Protocol(**p) for p in s["protocols"]), s["note"])
            for name, s in table.items()}


SETTINGS: dict[str, Setting] = load_settings()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _fail(spec: DatasetSpec, root: Path, problem: str) -> DatasetError:
    return DatasetError(f"{spec.name} at {root}: {problem}. Expected layout: {spec.layout}. Get it: {spec.source}")


def _incomplete(spec: DatasetSpec, root: Path, problem: str, allow_partial: bool) -> None:
    if not allow_partial:
        raise _fail(spec, root, f"{problem} (pass allow_partial=True for a quick run on what is there)")
    warnings.warn(f"{spec.name} at {root}: {problem}; evaluating a partial set", stacklevel=3)


def _named(spec: DatasetSpec, root: Path, names: list[str], allow_partial: bool) -> list[Path]:
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        _incomplete(spec, root, f"{len(missing)} of {len(names)} images missing ({shown})", allow_partial)
    gone = set(missing)
    return [root / n for n in names if n not in gone]


def load_dataset(name: str, root: str | Path, file_list: str | Path | None = None,
                 allow_partial: bool = False) -> list[Path]:
    """The image paths of dataset `name` under `root`, in a fixed order, after checking the set
    is complete. `file_list` (mscoco30k, required; folder, optional) is a text file of paths
    relative to `root`, one per line (blank lines and # comments skipped)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec, root = DATASETS[name], Path(root).expanduser()
    if not root.is_dir():
        raise _fail(spec, root, "no such folder")
    if name == "kodak":
        paths = _named(spec, root, [f"kodim{i:02d}.png" for i in range(1, 25)], allow_partial)
    elif name == "div2k":
        folder = root / "DIV2K_valid_HR" if (root / "DIV2K_valid_HR").is_dir() else root
        paths = _named(spec, folder, [f"{i:04d}.png" for i in range(801, 901)], allow_partial)
    elif file_list is not None or name == "mscoco30k":
        if file_list is None:
            raise _fail(spec, root, "no file list given")
        listed = Path(file_list).expanduser()
        if not listed.is_file():
            raise _fail(spec, root, f"file list {listed} does not exist")
        names = [s for s in (line.strip() for line in listed.read_text().splitlines()) if s and not s.startswith("#")]
        if spec.count and len(names) != spec.count:
            _incomplete(spec, root, f"file list {listed} has {len(names)} entries, expected {spec.count}", allow_partial)
        paths = _named(spec, root, names, allow_partial)
    elif name == "clic2020":
        folders = [root / "mobile", root / "professional"]
        folders = folders if all(f.is_dir() for f in folders) else [root]
        paths = [p for f in folders for p in _images_in(f)]
        if len(paths) != spec.count:
            _incomplete(spec, root, f"found {len(paths)} images in {', '.join(map(str, folders))}, expected {spec.count}",
                        allow_partial)
    else:
        paths = _images_in(root)
    if not paths:
        raise _fail(spec, root, "no images found")
    return paths


# ------------------------------------------------------------------------------ crops
def load_u8(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """An image file as uint8 (3, H, W) RGB, with onedc.image_io's conversion notes (grayscale,
    alpha composited over white, palette, 16-bit -> 8-bit)."""
    x, notes = load_image(path)
    return to_uint8_tensor(x), notes


def resize_center_crop(img_u8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size): short side -> size with PIL bicubic (skipped
    when it already is), long side round(long * size / short), then the center crop."""
    height, width = img_u8.shape[1:]
    im = Image.fromarray(img_u8.permute(1, 2, 0).numpy())
    if min(height, width) != size:
        scale = size / min(height, width)
        width, height = round(width * scale), round(height * scale)
        im = im.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def prepare_crops(paths: list[Path], size: int, cache_dir: str | Path) -> list[Path]:
    """Resize & center-crop `paths` to size x size PNGs `<cache_dir>/<stem>.png`, once.

    `<cache_dir>/manifest.json` records the size, the filter and, per file, its source, the
    source's and the PNG's sha256 and the conversion notes. A later call reuses a PNG whose
    manifest entry matches (same source bytes, PNG hash verified) and regenerates the rest.
    Returns the PNG paths in the order of `paths`."""
    cache_dir = Path(cache_dir)
    stems = [Path(p).stem for p in paths]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise DatasetError(f"cannot crop into one folder: several sources share the names {', '.join(clashes[:5])}")
    manifest_path = cache_dir / "manifest.json"
    manifest, changed = {"size": size, "resize": RESIZE, "files": {}}, True
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("size") == size and old.get("resize") == RESIZE:
            manifest["files"], changed = old.get("files", {}), False
    out = []
    for path, stem in zip(map(Path, paths), stems):
        target = cache_dir / f"{stem}.png"
        entry = manifest["files"].get(target.name, {})
        source_hash = file_sha256(path) if path.is_file() else None
        fresh = (entry.get("source_sha256") == source_hash and target.is_file() and file_sha256(target) == entry.get("sha256"))
        if not fresh:
            img, notes = load_u8(path)  # ImageError naming the file if it is missing or unreadable
            with atomic_file(target) as tmp:
                Image.fromarray(resize_center_crop(img, size).permute(1, 2, 0).numpy()).save(tmp, format="PNG")
            manifest["files"][target.name] = {"source": str(path.resolve()), "source_sha256": source_hash,
                                              "sha256": file_sha256(target), "notes": notes}
            changed = True
        out.append(target)
    if changed:
        with atomic_file(manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out
