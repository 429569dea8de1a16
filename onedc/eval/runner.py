"""Evaluate OneDC rate points on a dataset setting, on any number of processes, resumably,
and write the reports.

For every image: compress to a real file (`files/<stem>.onedc`), decompress, save the 8-bit
reconstruction (`recon/<stem>.png`), measure bpp (from the file size, over the unpadded pixels),
the entropy model's estimated bpp, PSNR, MS-SSIM, LPIPS and DISTS and the FID/KID features of
its patches (`features/<stem>.safetensors`), recorded last in `per_image/<stem>.json` (see
`pipeline`). Then, on the main process, FID/KID over the features of all images for each
protocol of the setting and `summary.json` (means over images). Layout under `out/<setting>/`:

    <curve>/<rate point>/files, recon, features, per_image, summary.json   one folder per model
    <curve>/results.json  a curve (CompressAI results schema; input of `onedc-eval bdrate`)
    report.md, rd.png, rd.pdf, bdrate.md, report.html      all curves against the baselines

A curve is what `--name` names (e.g. "stage1", "stage2"); a rate point is one model, named by
its λ and weights digest, so models never overwrite each other's results.

Processes (`accelerate launch -m onedc.eval run ...`, one node or several sharing the output
folder): for each rate point the main process lists the unfinished images (those without a
complete record), groups them by size into batches and broadcasts the list; process i of n takes
batches i, i + n, i + 2n, ... After the last rate point every process waits for the others, and the
main process merges. What is done is read from the records alone, so a run stopped anywhere
resumes on any number of processes without recomputing, duplicating or missing an image; the
temporaries of writes killed midway are deleted when the rate point starts again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..atomic import atomic_file, remove_interrupted_writes
from ..errors import OneDCError
from ..model import OneDC
from . import baselines
from .bd_rate import bd_rate_table, format_table
from .datasets import SETTINGS, Setting, load_u8, prepare_crops
from .metrics import DistributionMetrics, DISTSMetric, LPIPSAlex, image_metrics_info
from .pipeline import code_batches, is_done, load_features, png_bytes, recon_path, record_path
from .progress import ProgressBar
from .report import BDRateSection, Comparison, Panel, html_report, markdown_table, rd_panels, rd_plot

METRICS = ("psnr", "ms-ssim", "lpips", "dists", "fid")
MEANS = ("bpp", "bpp_estimated", "bpp_estimated_official", "psnr", "ms-ssim", "lpips", "dists", "encode_s", "decode_s")


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


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def check_unique_stems(images: list[Path]) -> None:
    """Results are stored per file stem: two images with one stem would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in images:
        if path.stem in seen:
            raise OneDCError(f"{seen[path.stem]} and {path} share the name {path.stem!r}: results are stored by name; "
                             "rename one or evaluate them separately")
        seen[path.stem] = path


def image_size(path: Path, setting: Setting) -> tuple[int, int]:
    """(width, height) the codec sees: the crop size, or the file's own (read from its header)."""
    if setting.crop is not None:
        return setting.crop, setting.crop
    with Image.open(path) as im:
        return im.size


def pending_batches(images: list[Path], sizes: list[tuple[int, int]], folder: Path, identity: str, suite: MetricSuite,
                    batch_size: int) -> list[list[Path]]:
    """The images of `folder` not yet done, in dataset order, grouped by size into batches of at
    most `batch_size` (a size's batches in the order of its first image)."""
    groups: dict[tuple[int, int], list[Path]] = {}
    for path, size in zip(images, sizes):
        if not is_done(folder, path.stem, identity, suite.names, bool(suite.distribution)):
            groups.setdefault(size, []).append(path)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def share(batches: list[list[Path]], process: int, processes: int) -> list[list[Path]]:
    """Process `process` of `processes` takes batches process, process + processes, ..."""
    return batches[process::processes]


def summarize(folder: Path, images: list[Path], suite: MetricSuite, curve_name: str, model: dict, precision: str) -> dict:
    """Merge the records and features of every image of `folder` into its summary (written as
    summary.json): means over images, FID/KID per protocol; with a compiled decoder also
    compile_s, the seconds spent compiling it (not in decode_s). `model` = {"identity", "lmbda",
    "compiled" (the decoder ran under torch.compile)}.
    OneDCError naming the unfinished images if some are missing."""
    missing = [p.stem for p in images if not is_done(folder, p.stem, model["identity"], suite.names, bool(suite.distribution))]
    if missing:
        raise OneDCError(f"{folder}: {len(missing)} of {len(images)} images unfinished ({', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}); rerun the same command to finish them")
    records = [json.loads(record_path(folder, p.stem).read_text()) for p in images]
    summary = {"curve": curve_name, "rate_point": folder.name, "model": model["identity"], "lmbda": model["lmbda"],
               "images": len(records), "precision": precision, "compiled": model["compiled"]}
    for key in MEANS:
        values = [r[key] for r in records if r.get(key) is not None and not math.isnan(r[key])]
        summary[key] = sum(values) / len(values) if values else None
        if values and len(values) < len(records):
            summary[f"{key}_images"] = len(values)
    if model["compiled"]:  # a total, over every process that coded images of this rate point
        summary["compile_s"] = sum(r.get("compile_s", 0.0) for r in records)
    for i, d in enumerate(suite.distribution):
        d.reset()
        for path in images:
            d.add(*load_features(folder, path.stem, d.protocol.name))
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


def first_evaluated(curve_dir: Path) -> int:
    """When the curve's first image was finished (records are never rewritten), in ns."""
    return min((p.stat().st_mtime_ns for p in curve_dir.glob("*/per_image/*.json")), default=0)


def write_reports(setting_dir: Path, show: int = 4, anchor: str = "OneDC", show_crop: int = 256) -> dict[str, Path]:
    """Each curve's results.json, then report.md, rd.png/.pdf, bdrate.md and report.html of all
    curves of `setting_dir`, in the order they were first evaluated (the gallery: `show_crop` px
    crops of the first `show` images, each beside its reconstruction at every rate point)."""
    setting = setting_dir.name
    folders = [p for p in setting_dir.iterdir() if p.is_dir() and any(p.glob("*/summary.json"))] if setting_dir.is_dir() else []
    folders.sort(key=first_evaluated)
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
    note = SETTINGS[setting].note if setting in SETTINGS else None
    title = f"{', '.join(ours)} on {setting}"
    plots = rd_plot(curves, list(ours), title + (f" ({note})" if note else ""), setting_dir / "rd")
    written.update({p.suffix[1:]: p for p in plots})
    bd_rate = None
    md = f"# {title}" + (f" ({note})" if note else "") + "\n\n" + markdown_table(curves)
    sources = sorted({c["meta"]["source"] for c in published.values()})
    if sources:
        md += f"\nBaselines: {', '.join(sources)}.\n"
    if anchor in published:
        ordered = {anchor: curves[anchor], **curves}  # the anchor's row first
        bd_rate = BDRateSection(anchor, "cubic", bd_rate_table({k: c["results"] for k, c in ordered.items()}, anchor))
        text = f"BD-rate against {anchor} (cubic; negative = fewer bits)\n\n" + format_table(bd_rate.rows)
        with atomic_file(setting_dir / "bdrate.md") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        written["bdrate"] = setting_dir / "bdrate.md"
        md += "\n" + text + "\n"
    with atomic_file(setting_dir / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    written["markdown"] = setting_dir / "report.md"
    images = max(json.loads(p.read_text())["images"] for f in folders for p in f.glob("*/summary.json"))
    subtitle = ((f"{note}; " if note else "") + f"{images} images; bpp from the real file sizes, metrics on the 8-bit reconstructions"
                + (f"; baselines: {', '.join(sources)}" if sources else ""))
    details = {f"Metric settings ({name})": json.dumps(data["meta"]["metrics"], indent=1) for name, (_, data) in ours.items()}
    gallery = comparisons([folder / r for folder, data in ours.values() for r in data["meta"]["rate_points"]], show, show_crop)
    html_report(setting_dir / "report.html", title, subtitle, curves, list(ours), rd_panels(curves, list(ours)), gallery,
                bd_rate, details)
    written["html"] = setting_dir / "report.html"
    return written


def center_crop(x, size: int):
    """The central `size` x `size` window of a (3, H, W) tensor (all of a side shorter than it)."""
    height, width = x.shape[1:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return x[:, top:top + size, left:left + size].contiguous()


def comparisons(rate_points: list[Path], count: int, crop: int = 256) -> list[Comparison]:
    """The first `count` images (by name) of the first rate point: the `crop` px center crop of
    the original, then of the reconstruction at each of `rate_points` (its curve and λ; bpp,
    PSNR, LPIPS, DISTS)."""
    if not rate_points or count <= 0:
        return []
    labels = {}
    for folder in rate_points:
        summary = json.loads((folder / "summary.json").read_text())
        lmbda = summary.get("lmbda")
        labels[folder] = f"{summary['curve']}, " + ("untrained" if lmbda is None else f"λ {lmbda:g}")
    out = []
    for first in sorted((rate_points[0] / "per_image").glob("*.json"))[:count]:
        stem = first.stem
        ref, _ = load_u8(json.loads(first.read_text())["image"])
        height, width = ref.shape[1:]
        panels = [Panel("original", png_bytes(center_crop(ref, crop)), f"center {min(crop, width)}x{min(crop, height)} of {width}x{height}")]
        for folder in rate_points:
            if not record_path(folder, stem).is_file():
                continue
            record = json.loads(record_path(folder, stem).read_text())
            rec, _ = load_u8(recon_path(folder, stem))
            values = [f"{record['bpp']:.4f} bpp"] + [f"{label} {record[key]:.{digits}f}" for key, label, digits in
                                                      (("psnr", "PSNR", 2), ("lpips", "LPIPS", 3), ("dists", "DISTS", 3))
                                                      if record.get(key) is not None]
            panels.append(Panel(labels[folder], png_bytes(center_crop(rec, crop)), " · ".join(values)))
        out.append(Comparison(stem, panels))
    return out


def evaluate(rate_points: Sequence[Callable[[], OneDC]], setting: Setting, paths: list[Path], out: Path, suite: MetricSuite,
             name: str = "onedc (ours)", show: int = 4, progress: bool = True, precision: str = "fp32",
             batch_size: int = 1, workers: int = 2, show_crop: int = 256) -> dict[str, Path]:
    """Evaluate each model (`rate_points`: loaders, called one at a time on every process) as one
    rate point of curve `name` on `setting` under `out`, on this process's share of the images
    (see the module's docstring); then the main process writes the summaries and the reports of
    the setting (all its curves) and returns the report paths ({} on the other processes)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    main = state.is_main_process
    setting_dir = out / setting.name
    if main:  # crops are made once, by the main process
        images = setting_images(setting, paths, out)
        check_unique_stems(images)
        sizes = [image_size(p, setting) for p in images]
    images, sizes = broadcast_object_list([images, sizes] if main else [None, None])
    bar = ProgressBar(len(images) * len(rate_points), disable=not (main and progress)) if main else None
    evaluated = []
    try:
        for load in rate_points:
            model = load().eval()  # the rate estimate uses hard rounding only in eval mode
            folder = setting_dir / baselines.slug(name) / rate_point_name(model)
            identity = model.identity.describe()
            if main:  # before the broadcast below, so no process of this run writes into `folder` yet
                remove_interrupted_writes(folder)
                bar.watch(folder)
            batches = broadcast_object_list([pending_batches(images, sizes, folder, identity, suite, batch_size) if main else None])[0]
            code_batches(model, share(batches, state.process_index, state.num_processes), folder, suite, precision, workers,
                         (state.process_index, state.num_processes))
            evaluated.append((folder, {"identity": identity, "lmbda": model.lmbda, "compiled": model.decoder_compiled}))
            del model
        state.wait_for_everyone()
    finally:
        if bar is not None:
            bar.close()
    if not main:
        return {}
    for folder, model in evaluated:
        summarize(folder, images, suite, name, model, precision)
    return write_reports(setting_dir, show, show_crop=show_crop)
