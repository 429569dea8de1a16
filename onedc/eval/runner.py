"""Evaluate OneDC rate points on a dataset setting, resumably, and write the reports.

For every image: compress to a real file (`files/<stem>.onedc`), decompress, save the 8-bit
reconstruction (`recon/<stem>.png`) and measure bpp (from the file size, over the unpadded
pixels), the entropy model's estimated bpp, PSNR, MS-SSIM, LPIPS and DISTS, recorded in
`per_image/<stem>.json`. An image whose record matches the model is not recomputed on a rerun.
Then FID/KID over the patches of all reconstructions (from the PNGs) for each protocol of the
setting, and `summary.json` (means over images). Layout under `out/<setting>/`:

    <rate point>/files, recon, per_image, summary.json     one folder per checkpoint
    results.json        our curve (CompressAI results schema; input of `onedc-eval bdrate`)
    report.md, rd.png, rd.pdf, bdrate.md, report.html      against the shipped baselines
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..atomic import atomic_file
from ..errors import OneDCError
from ..image_io import to_uint8
from ..model import OneDC
from . import baselines
from .bd_rate import bd_rate_table, format_table
from .datasets import SETTINGS, Setting, load_u8, prepare_crops
from .metrics import DISTSMetric, DistributionMetrics, LPIPSAlex, image_metrics_info, ms_ssim, ms_ssim_unavailable, psnr
from .report import Comparison, html_report, markdown_table, rd_plot

METRICS = ("psnr", "ms-ssim", "lpips", "dists", "fid")
MEANS = ("bpp", "bpp_estimated", "psnr", "ms-ssim", "lpips", "dists", "encode_s", "decode_s")


@dataclass
class MetricSuite:
    """The metrics of one evaluation. `lpips`/`dists` None: not measured; `distribution`: one
    FID/KID accumulator per protocol of the setting (reset per rate point)."""

    names: tuple[str, ...]
    lpips: LPIPSAlex | None = None
    dists: DISTSMetric | None = None
    distribution: list[DistributionMetrics] = field(default_factory=list)

    @classmethod
    def build(cls, setting: Setting, names=METRICS, weight_paths: dict | None = None, device="cpu") -> "MetricSuite":
        """Backbones from `onedc.weights` (WeightsError with `onedc weights check`'s message if
        one is missing); FID/KID only where the setting has patch protocols."""
        unknown = sorted(set(names) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
        return cls(
            tuple(names),
            LPIPSAlex(weight_paths=weight_paths, device=device) if "lpips" in names else None,
            DISTSMetric(weight_paths=weight_paths, device=device) if "dists" in names else None,
            [DistributionMetrics(p, weight_paths=weight_paths, device=device) for p in setting.protocols] if "fid" in names else [],
        )

    def info(self) -> dict:
        return {
            "image_metrics": image_metrics_info(),
            "lpips": self.lpips.info() if self.lpips else None,
            "dists": self.dists.info() if self.dists else None,
            "distribution": [d.info() for d in self.distribution],
        }


def setting_images(setting: Setting, paths: list[Path], out: Path) -> list[Path]:
    """The images the codec sees: the originals, or their crops (made once, in out/crops<S>)."""
    if setting.crop is None:
        return paths
    return prepare_crops(paths, setting.crop, out / f"crops{setting.crop}")


def rate_point_name(model: OneDC, checkpoint: str | None) -> str:
    if model.lmbda is not None:
        return f"lmbda{model.lmbda:g}"
    return Path(checkpoint).name if checkpoint else "untrained"


def _png(u8: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def evaluate_rate_point(model: OneDC, images: list[Path], folder: Path, suite: MetricSuite, progress: bool = True,
                        precision: str = "fp32") -> dict:
    """Evaluate one model on `images` into `folder`; returns (and writes) the summary.
    precision "bf16": the VAE and the generator under bf16 autocast, as the official inference
    (the entropy networks are exact either way)."""
    from tqdm.auto import tqdm

    identity = model.identity.describe()
    records = []
    for path in tqdm(images, desc=folder.name, disable=not progress, unit="img"):
        record_path = folder / "per_image" / f"{path.stem}.json"
        recon_path = folder / "recon" / f"{path.stem}.png"
        ref, notes = load_u8(path)
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        if record is None or record.get("model") != identity or not recon_path.is_file():
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                record = _measure(model, path, ref, notes, folder, suite)
            _write_json(record_path, record)
        records.append(record)
        rec, _ = load_u8(recon_path)
        for d in suite.distribution:
            d.update(ref, rec)
    summary = {"rate_point": folder.name, "model": identity, "lmbda": model.lmbda, "images": len(records), "precision": precision}
    for key in MEANS:
        values = [r[key] for r in records if r.get(key) is not None and not math.isnan(r[key])]
        summary[key] = sum(values) / len(values) if values else None
        if values and len(values) < len(records):
            summary[f"{key}_images"] = len(values)
    for i, d in enumerate(suite.distribution):
        result = d.compute()
        prefix = "" if i == 0 else f"{d.protocol.name}/"  # the setting's main protocol is plain "fid"
        summary.update({f"{prefix}fid": result["fid"], f"{prefix}kid": result["kid"], f"{prefix}kid_std": result["kid_std"],
                        f"{prefix}patches": result["patches"]})
        if result["notes"]:
            summary[f"{prefix}notes"] = result["notes"]
        d.reset()
    summary["metrics"] = suite.info()
    _write_json(folder / "summary.json", summary)
    return summary


def _measure(model: OneDC, path: Path, ref: torch.Tensor, notes: list[str], folder: Path, suite: MetricSuite) -> dict:
    x = ref.float() / 127.5 - 1
    height, width = x.shape[-2:]
    start = time.perf_counter()
    data = model.compress(x)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    x_hat = model.decompress(data)
    decode_s = time.perf_counter() - start
    rec = torch.from_numpy(to_uint8(x_hat)).permute(2, 0, 1).contiguous()
    with atomic_file(folder / "files" / f"{path.stem}.onedc") as tmp:
        tmp.write_bytes(data)
    with atomic_file(folder / "recon" / f"{path.stem}.png") as tmp:
        tmp.write_bytes(_png(rec))
    pixels = height * width
    estimate = model.estimate_bits(x)
    record = {
        "image": str(path), "model": model.identity.describe(), "width": width, "height": height, "bytes": len(data),
        "bpp": 8 * len(data) / pixels, "bpp_estimated": (estimate["y"] + estimate["z"]) / pixels,
        "bpp_y_estimated": estimate["y"] / pixels, "bpp_z": estimate["z"] / pixels,
        "encode_s": encode_s, "decode_s": decode_s, "notes": list(notes),
    }
    if "psnr" in suite.names:
        record["psnr"] = psnr(ref, rec)
    if "ms-ssim" in suite.names:
        record["ms-ssim"] = ms_ssim(ref, rec)
        reason = ms_ssim_unavailable(height, width)
        if reason:
            record["notes"].append(reason)
    if suite.lpips:
        record["lpips"] = suite.lpips(ref, rec)
    if suite.dists:
        record["dists"] = suite.dists(ref, rec)
    return record


def curve(setting_dir: Path, name: str) -> dict:
    """Our curve from every `*/summary.json` under `setting_dir`, sorted by bpp."""
    summaries = sorted((json.loads(p.read_text()) for p in setting_dir.glob("*/summary.json")), key=lambda s: s["bpp"])
    keys = ["bpp", "bpp_estimated", "psnr", "ms-ssim", "lpips", "dists", "fid", "kid"]
    results = {k: [s.get(k) for s in summaries] for k in keys if any(s.get(k) is not None for s in summaries)}
    return {"name": name, "description": "onedc-eval: bpp from the real file sizes; per-image metrics averaged over images",
            "meta": {"setting": setting_dir.name, "rate_points": [s["rate_point"] for s in summaries],
                     "models": [s["model"] for s in summaries], "metrics": summaries[0]["metrics"] if summaries else None},
            "results": results}


def write_reports(setting_dir: Path, name: str, show: int = 4, anchor: str = "OneDC") -> dict[str, Path]:
    """results.json, report.md, rd.png/.pdf, bdrate.md and report.html (with `show` image
    pairs of the lowest rate point) of `setting_dir`."""
    setting = setting_dir.name
    ours = curve(setting_dir, name)
    if not ours["results"]:
        raise OneDCError(f"{setting_dir}: no evaluated rate points (*/summary.json); run `onedc-eval run` first")
    _write_json(setting_dir / "results.json", ours)
    published = {n: c for n, c in baselines.load_all(setting).items()} if setting in baselines.datasets() else {}
    curves = {**published, name: ours}
    title = f"{name} on {setting}" + (f" ({SETTINGS[setting].note})" if setting in SETTINGS else "")
    plots = rd_plot(curves, [name], title, setting_dir / "rd")
    written = {"results": setting_dir / "results.json"}
    written.update({p.suffix[1:]: p for p in plots})
    sections = {}
    if anchor in published:
        ordered = {anchor: curves[anchor], **curves}  # the anchor's row first
        rows = bd_rate_table({k: c["results"] for k, c in ordered.items()}, anchor)
        text = f"BD-rate against {anchor} (cubic; negative = fewer bits)\n\n" + format_table(rows)
        with atomic_file(setting_dir / "bdrate.md") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        written["bdrate"], sections["BD-rate"] = setting_dir / "bdrate.md", text
    if ours["meta"]["metrics"]:
        sections["Metric settings"] = json.dumps(ours["meta"]["metrics"], indent=1)
    sources = sorted({c["meta"]["source"] for c in published.values()})
    md = f"# {title}\n\n" + markdown_table(curves) + (f"\nBaselines: {', '.join(sources)}.\n" if sources else "")
    if "BD-rate" in sections:
        md += "\n" + sections["BD-rate"] + "\n"
    with atomic_file(setting_dir / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    written["markdown"] = setting_dir / "report.md"
    lowest = setting_dir / ours["meta"]["rate_points"][0]
    html_report(setting_dir / "report.html", title, plots[0] if plots else None, curves, sections, comparisons(lowest, show))
    written["html"] = setting_dir / "report.html"
    return written


def comparisons(folder: Path, count: int, crop: int = 256) -> list[Comparison]:
    """Side-by-side center crops (`crop` px) of the first `count` images evaluated in `folder`
    and their reconstructions, captioned with bpp, LPIPS and DISTS."""
    out = []
    for record_path in sorted((folder / "per_image").glob("*.json"))[:count]:
        record = json.loads(record_path.read_text())
        ref, _ = load_u8(record["image"])
        rec, _ = load_u8(folder / "recon" / f"{record_path.stem}.png")
        h, w = ref.shape[1:]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        window = (slice(None), slice(top, top + crop), slice(left, left + crop))
        caption = ", ".join([f"{record['bpp']:.4f} bpp"] + [f"{k.upper()} {record[k]:.3f}" for k in ("lpips", "dists") if record.get(k) is not None])
        out.append(Comparison(f"{record_path.stem} ({folder.name})", _png(ref[window].contiguous()), _png(rec[window].contiguous()), caption))
    return out


def evaluate(models: list[tuple[OneDC, str | None]], setting: Setting, paths: list[Path], out: Path, suite: MetricSuite,
             name: str = "onedc (ours)", show: int = 4, progress: bool = True, precision: str = "fp32") -> dict[str, Path]:
    """Evaluate each (model, checkpoint path) as one rate point of `setting` under `out`, then
    write the reports; returns the report paths."""
    setting_dir = out / setting.name
    images = setting_images(setting, paths, out)
    for model, checkpoint in models:
        evaluate_rate_point(model, images, setting_dir / rate_point_name(model, checkpoint), suite, progress, precision)
    return write_reports(setting_dir, name, show)
