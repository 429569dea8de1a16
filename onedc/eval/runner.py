"""Evaluate OneDC rate points on a dataset setting, resumably, and write the reports.

For every image: compress to a real file (`files/<stem>.onedc`), decompress, save the 8-bit
reconstruction (`recon/<stem>.png`) and measure bpp (from the file size, over the unpadded
pixels), the entropy model's estimated bpp, PSNR, MS-SSIM, LPIPS and DISTS, recorded in
`per_image/<stem>.json`. An image whose record matches the model is not recomputed on a rerun.
Then FID/KID over the patches of all reconstructions (from the PNGs) for each protocol of the
setting, and `summary.json` (means over images). Layout under `out/<setting>/`:

    <curve>/<rate point>/files, recon, per_image, summary.json   one folder per model
    <curve>/results.json  a curve (CompressAI results schema; input of `onedc-eval bdrate`)
    report.md, rd.png, rd.pdf, bdrate.md, report.html      all curves against the baselines

A curve is what `--name` names (e.g. "stage1", "stage2"); a rate point is one model, named by
its λ and weights digest, so models never overwrite each other's results.
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
from ..image_io import to_uint8_tensor
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


def rate_point_name(model: OneDC) -> str:
    """One folder per model: its λ (or "untrained") and its weights digest."""
    identity = model.identity
    rate = "untrained" if identity.lmbda is None else f"lmbda{identity.lmbda:g}"
    return f"{rate}_{identity.digest.hex()}"


def _png(u8: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def evaluate_rate_point(model: OneDC, images: list[Path], folder: Path, suite: MetricSuite, curve_name: str,
                        progress: bool = True, precision: str = "fp32") -> dict:
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
    summary = {"curve": curve_name, "rate_point": folder.name, "model": identity, "lmbda": model.lmbda, "images": len(records),
               "precision": precision}
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
    rec = to_uint8_tensor(x_hat)
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


def curve(curve_dir: Path) -> dict:
    """The curve of every `*/summary.json` under `curve_dir`, sorted by bpp."""
    summaries = sorted((json.loads(p.read_text()) for p in curve_dir.glob("*/summary.json")), key=lambda s: s["bpp"])
    keys = ["bpp", "bpp_estimated", "psnr", "ms-ssim", "lpips", "dists", "fid", "kid"]
    results = {k: [s.get(k) for s in summaries] for k in keys if any(s.get(k) is not None for s in summaries)}
    return {"name": summaries[0]["curve"] if summaries else curve_dir.name,
            "description": "onedc-eval: bpp from the real file sizes; per-image metrics averaged over images",
            "meta": {"setting": curve_dir.parent.name, "rate_points": [s["rate_point"] for s in summaries],
                     "models": [s["model"] for s in summaries], "metrics": summaries[0]["metrics"] if summaries else None},
            "results": results}


def write_reports(setting_dir: Path, show: int = 4, anchor: str = "OneDC") -> dict[str, Path]:
    """Each curve's results.json, then report.md, rd.png/.pdf, bdrate.md and report.html of all
    curves of `setting_dir` (with `show` image pairs of each curve's lowest rate point)."""
    setting = setting_dir.name
    folders = sorted(p for p in setting_dir.iterdir() if p.is_dir() and any(p.glob("*/summary.json"))) if setting_dir.is_dir() else []
    if not folders:
        raise OneDCError(f"{setting_dir}: no evaluated rate points (<curve>/<rate point>/summary.json); run `onedc-eval run` first")
    written, ours = {}, {}
    for folder in folders:
        data = curve(folder)
        _write_json(folder / "results.json", data)
        written[f"results {data['name']}"] = folder / "results.json"
        ours[data["name"]] = (folder, data)
    published = {n: c for n, c in baselines.load_all(setting).items()} if setting in baselines.datasets() else {}
    curves = {**published, **{name: data for name, (_, data) in ours.items()}}
    title = f"{', '.join(ours)} on {setting}" + (f" ({SETTINGS[setting].note})" if setting in SETTINGS else "")
    plots = rd_plot(curves, list(ours), title, setting_dir / "rd")
    written.update({p.suffix[1:]: p for p in plots})
    sections = {}
    if anchor in published:
        ordered = {anchor: curves[anchor], **curves}  # the anchor's row first
        rows = bd_rate_table({k: c["results"] for k, c in ordered.items()}, anchor)
        text = f"BD-rate against {anchor} (cubic; negative = fewer bits)\n\n" + format_table(rows)
        with atomic_file(setting_dir / "bdrate.md") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        written["bdrate"], sections["BD-rate"] = setting_dir / "bdrate.md", text
    for name, (_, data) in ours.items():
        sections[f"Metric settings ({name})"] = json.dumps(data["meta"]["metrics"], indent=1)
    sources = sorted({c["meta"]["source"] for c in published.values()})
    md = f"# {title}\n\n" + markdown_table(curves) + (f"\nBaselines: {', '.join(sources)}.\n" if sources else "")
    if "BD-rate" in sections:
        md += "\n" + sections["BD-rate"] + "\n"
    with atomic_file(setting_dir / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    written["markdown"] = setting_dir / "report.md"
    pairs = [c for folder, data in ours.values() for c in comparisons(folder / data["meta"]["rate_points"][0], show)]
    html_report(setting_dir / "report.html", title, plots[0] if plots else None, curves, sections, pairs)
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
        out.append(Comparison(f"{record_path.stem} ({folder.parent.name}, {folder.name})", _png(ref[window].contiguous()), _png(rec[window].contiguous()), caption))
    return out


def evaluate(models: list[OneDC], setting: Setting, paths: list[Path], out: Path, suite: MetricSuite,
             name: str = "onedc (ours)", show: int = 4, progress: bool = True, precision: str = "fp32") -> dict[str, Path]:
    """Evaluate each model as one rate point of curve `name` on `setting` under `out`, then
    write the reports of the setting (all its curves); returns the report paths."""
    setting_dir = out / setting.name
    images = setting_images(setting, paths, out)
    for model in models:
        folder = setting_dir / baselines.slug(name) / rate_point_name(model)
        evaluate_rate_point(model, images, folder, suite, name, progress, precision)
    return write_reports(setting_dir, show)
