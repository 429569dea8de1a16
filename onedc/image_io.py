"""Reading and writing images.

`load_image` returns a (3, H, W) float32 tensor in [-1, 1] and the list of conversions it
applied (grayscale, alpha, palette, 16-bit ...), so callers can tell the user.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what folders of images are searched for
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(25)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24]
    return None


def open_image(source: str | Path | BinaryIO, name: str, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file (a path or a binary file object) with Pillow, refusing decompression
    bombs before decoding: more than `max_pixels` pixels (when given), or more than Pillow's own
    limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89,478,485 by default: Pillow only warns up to twice
    that). ImageError naming `name` for those and for unreadable files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if max_pixels is not None and im.width * im.height > max_pixels:
                    raise ImageError(f"{name} is {im.width}x{im.height} = {im.width * im.height:,} pixels, above the limit of "
                                     f"{max_pixels:,} (a decompression bomb?); if you trust it, raise the limit: --max-pixels "
                                     f"{im.width * im.height}")
                im.load()
                return im
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} is not a readable image: {e}") from e
    except OSError as e:
        raise ImageError(f"cannot read image {name}: {e}") from e


def load_image(path: str | Path, max_pixels: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Read an image file as RGB; returns (x (3, H, W) in [-1, 1], conversion notes).
    ImageError above `max_pixels` pixels (None: the default limit of configs/limits.yaml)."""
    from .limits import default_max_pixels

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no such image file: {path}")
    im = open_image(path, str(path), default_max_pixels() if max_pixels is None else max_pixels)
    array, notes = _to_rgb8(im, [])
    if _png_bit_depth(path) == 16 and not any("16-bit" in n for n in notes):
        notes.append("16-bit PNG reduced to 8 bits per channel")
    return from_uint8(array), notes


def _to_rgb8(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, list[str]]:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8)
        notes.append(f"{'16-bit ' if peak > 255 else ''}grayscale ({mode}) converted to 8-bit RGB")
        return np.repeat(gray[..., None], 3, axis=2), notes
    if mode == "P":
        notes.append("palette image converted to RGB")
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        notes.append("alpha channel composited over white")
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8), notes
    if mode in ("L", "1"):
        notes.append("grayscale image converted to RGB")
        return np.asarray(im.convert("RGB")), notes
    if mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
        im = im.convert("RGB")
    return np.asarray(im), notes


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1] (x / 127.5 - 1)."""
    return from_uint8_tensor(torch.tensor(np.asarray(array)).permute(2, 0, 1))  # a copy: the array may be read-only


def from_uint8_tensor(x: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) tensor -> (3, H, W) float32 in [-1, 1] (x / 127.5 - 1)."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounded to nearest."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_uint8_tensor(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> uint8 (3, H, W) tensor on the CPU, rounded to nearest (what a PNG holds)."""
    return torch.from_numpy(to_uint8(x)).permute(2, 0, 1).contiguous()


def save_image(x: torch.Tensor, path: str | Path, format: str | None = None) -> None:
    """Write (3, H, W) in [-1, 1] as an 8-bit image; the format follows the suffix (PNG, ...)
    unless given."""
    Image.fromarray(to_uint8(x)).save(path, format=format)
