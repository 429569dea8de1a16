"""Published rate-quality curves of OneDC and the methods it compares with, as data.

Every file is transcribed from the OneDC supplementary, Tables C to H, one row per printed
row and every number as printed (trailing zeros aside: "0.110" is stored as 0.11). A table
cell printed as "-" would be stored as null; Tables C to H have none. Only the columns a
table prints are present.

Layout: ``<dataset folder>/<method slug>.json``. Dataset folders (the setting is part of the
name and is repeated in ``meta.setting``):

==================  =========  ===========================================================
folder              table      data and setting
==================  =========  ===========================================================
kodak               C          Kodak (24 images), full-resolution; no FID column
clic2020            D          CLIC2020 test, full-resolution; FID on 256x256 patches
mscoco30k           E          MS-COCO 30K at 512x512; FID on whole images
div2k               F          DIV2K test, full-resolution; FID on 256x256 patches
kodak_crop512       G          Kodak, resize & center-crop to 512x512; FID on 64x64 patches
clic2020_crop768    H          CLIC2020 test, resize & center-crop to 768x768; FID on 128x128
==================  =========  ===========================================================

Schema (CompressAI's results JSON): ``{"name": <method as printed>, "description": str,
"meta": {"dataset", "setting", "resolution", "fid", "source"}, "results": {"bpp": [...],
"psnr": [...], "ms-ssim": [...], "lpips": [...], "dists": [...], "fid": [...]}}``. Units:
bpp in bits per pixel, PSNR in dB, the other metrics unitless. The file name is a slug of
the method name (``slug``); `load` accepts either the printed name or the slug.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from onedc.errors import OneDCError

ROOT = Path(__file__).parent


class ResultsError(OneDCError, ValueError):
    """A results file is unknown, unreadable or not in the results schema."""


def slug(name: str) -> str:
    """Filesystem-safe file stem of a method name, e.g. "PerCo (SD)" -> "perco_sd"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def datasets() -> list[str]:
    """The dataset folders that have shipped baselines, sorted."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.json")))


def _folder(dataset: str) -> Path:
    if dataset not in datasets():
        raise ResultsError(f"unknown baseline dataset {dataset!r}; available: {', '.join(datasets())}")
    return ROOT / dataset


def methods(dataset: str) -> list[str]:
    """Printed names of the methods shipped for `dataset`, sorted by file name."""
    return [load_results(p)["name"] for p in sorted(_folder(dataset).glob("*.json"))]


def load(dataset: str, method: str) -> dict:
    """The shipped results JSON of `method` (printed name or slug) on `dataset`."""
    path = _folder(dataset) / f"{slug(method)}.json"
    if not path.is_file():
        raise ResultsError(
            f"no baseline {method!r} for dataset {dataset!r}; available: {', '.join(methods(dataset))}"
        )
    return load_results(path)


def load_all(dataset: str) -> dict[str, dict]:
    """All shipped results JSON of `dataset`, keyed by printed method name."""
    return {data["name"]: data for data in map(load_results, sorted(_folder(dataset).glob("*.json")))}


def load_results(path: str | Path) -> dict:
    """Read a results JSON (ours or shipped) and check it has "name" and "results" with "bpp",
    and that every results column is a list of numbers or nulls as long as "bpp"."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResultsError(f"cannot read results file {path}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ResultsError(f"results file {path} has no string field 'name'")
    results = data.get("results")
    if not isinstance(results, dict) or not isinstance(results.get("bpp"), list):
        raise ResultsError(f"results file {path} has no 'results' object with a 'bpp' list")
    if not results["bpp"] or not all(_is_number(v) for v in results["bpp"]):
        raise ResultsError(f"results file {path}: 'bpp' must be a non-empty list of numbers")
    for key, values in results.items():
        if not isinstance(values, list) or len(values) != len(results["bpp"]):
            raise ResultsError(f"results file {path}: {key!r} must be a list as long as 'bpp'")
        if not all(v is None or _is_number(v) for v in values):
            raise ResultsError(f"results file {path}: {key!r} holds a value that is not a number or null")
    return data


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
