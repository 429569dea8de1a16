"""Image sources for training and validation: an image folder (recursive), a local Hugging
Face dataset (arrow or parquet, e.g. a CommonCatalog shard with `jpg` and `blip2_caption`
columns), and the scikit-image sample photos. Each maps an index to (RGB PIL image, caption)
and raises `ImageError` for an entry that cannot be decoded or exceeds Pillow's decompression-bomb
limit (`PIL.Image.MAX_IMAGE_PIXELS`), which training skips with a warning.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import ConfigError, ImageError
from ..image_io import IMAGE_SUFFIXES, from_uint8, open_image

if TYPE_CHECKING:
    import torch


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageFolder:
    """Every jpg/png/webp file below `root` (recursive, sorted); captions from a sibling .txt."""

    def __init__(self, root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"image folder not found: {self.root}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        if not self.files:
            raise ConfigError(f"no {'/'.join(s[1:] for s in suffixes)} images below {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index].relative_to(self.root))

    def load(self, index: int) -> tuple[Image.Image, str]:
        path = self.files[index]
        image = _rgb(open_image(path, str(path)))
        caption = path.with_suffix(".txt")
        return image, caption.read_text().strip() if caption.is_file() else ""


class HFImageDataset:
    """A local Hugging Face dataset: a `save_to_disk` folder, or arrow/parquet files."""

    def __init__(self, path: str | Path, image_column: str, caption_column: str | None = None, split: str = "train"):
        import datasets

        path = Path(path).expanduser()
        if not path.exists():
            raise ConfigError(f"dataset not found: {path}")
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".arrow", ".parquet"))
            if not files:
                raise ConfigError(f"no .arrow or .parquet files in {path}")
            kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
        missing = [c for c in (image_column, caption_column) if c and c not in ds.column_names]
        if missing:
            raise ConfigError(f"dataset {path} has no column(s) {missing}; it has {ds.column_names}")
        # decode images ourselves, so a corrupt one is an error we can skip, not a crash
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds, self.image_column, self.caption_column, self.path = ds, image_column, caption_column, path

    def __len__(self) -> int:
        return len(self.ds)

    def name(self, index: int) -> str:
        return f"{self.path.name}[{index}]"

    def load(self, index: int) -> tuple[Image.Image, str]:
        row = self.ds[index]
        value = row[self.image_column]
        data = value.get("bytes") if isinstance(value, dict) else value
        try:
            if data is None and isinstance(value, dict) and value.get("path"):
                data = Path(value["path"]).read_bytes()
            source = io.BytesIO(data)
        except (OSError, TypeError) as e:
            raise ImageError(f"{self.name(index)}: {e}") from e
        image = _rgb(open_image(source, self.name(index)))
        caption = row.get(self.caption_column) if self.caption_column else None
        return image, caption or ""


class SamplePhotos:
    """Named scikit-image sample photos (bundled with scikit-image, no download)."""

    def __init__(self, names: list[str]):
        import skimage.data

        unknown = [n for n in names if not hasattr(skimage.data, n)]
        if unknown:
            raise ConfigError(f"unknown scikit-image sample photos: {unknown}")
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def load(self, index: int) -> tuple[Image.Image, str]:
        import skimage.data

        photo = getattr(skimage.data, self.names[index])()
        array = np.asarray(photo[0] if isinstance(photo, tuple) else photo)  # stereo pairs: the left view
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        return Image.fromarray(array[..., :3].astype(np.uint8)), ""


def build_source(cfg) -> ImageFolder | HFImageDataset | SamplePhotos:
    """A source from a data-source config: {type: folder|hf|samples, ...}."""
    if cfg.type == "folder":
        return ImageFolder(cfg.path)
    if cfg.type == "hf":
        return HFImageDataset(cfg.path, cfg.image_column, cfg.caption_column, cfg.split)
    if cfg.type == "samples":
        return SamplePhotos(list(cfg.names))
    raise ConfigError(f"unknown data source type {cfg.type!r}: use folder, hf or samples")


def load_images(source, crop: int | None = None) -> list[tuple[str, "torch.Tensor"]]:
    """Every image of a (validation) source as (name, (3, H, W) in [-1, 1]), center-cropped to at
    most crop x crop when `crop` is set. Unreadable images are an error here, not skipped."""
    out = []
    for i in range(len(source)):
        image, _ = source.load(i)
        if crop:
            w, h = image.size
            cw, ch = min(w, crop), min(h, crop)
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        out.append((source.name(i), from_uint8(np.asarray(image))))
    return out
