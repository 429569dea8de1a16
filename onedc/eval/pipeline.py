"""One process's share of a rate point, as a pipeline that keeps the model's device busy.

    DataLoader workers     read the images of each batch (uint8, PNG/JPEG decoding on the CPU)
    this thread            codes the batch on the model's device (`OneDC.compress` / `decompress`
                           on a list: batched where the model batches), estimates the rate, and
                           measures LPIPS, DISTS and the FID/KID features on the device
    a writer thread        encodes the reconstruction PNGs, measures PSNR and MS-SSIM (CPU) and
                           writes, per image: files/<stem>.onedc, recon/<stem>.png,
                           features/<stem>.safetensors and last per_image/<stem>.json

A record is written last and atomically, so its presence (for this model and these metrics, see
`is_done`) means the image is finished: a run stopped at any point redoes only unfinished images.
Every metric is computed per image, so values do not depend on the batch size or the number of
processes; the files are the model's batch-1 files (the batched API's contract).
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_file
from ..bitstream import bits_per_pixel
from ..image_io import from_uint8_tensor, to_uint8_tensor
from ..model import OneDC
from .datasets import load_u8
from .metrics import ms_ssim, ms_ssim_unavailable, psnr

PER_IMAGE_METRICS = ("psnr", "ms-ssim", "lpips", "dists")


def record_path(folder: Path, stem: str) -> Path:
    return folder / "per_image" / f"{stem}.json"


def recon_path(folder: Path, stem: str) -> Path:
    return folder / "recon" / f"{stem}.png"


def file_path(folder: Path, stem: str) -> Path:
    return folder / "files" / f"{stem}.onedc"


def features_path(folder: Path, stem: str) -> Path:
    return folder / "features" / f"{stem}.safetensors"


def is_done(folder: Path, stem: str, identity: str, metrics: tuple[str, ...], features: bool) -> bool:
    """Whether image `stem` is finished in `folder`: its record (of model `identity`, with every
    per-image metric of `metrics`), file and reconstruction exist, and its FID/KID features if
    `features`."""
    path = record_path(folder, stem)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (record.get("model") == identity and all(m in record for m in metrics if m in PER_IMAGE_METRICS)
            and file_path(folder, stem).is_file() and recon_path(folder, stem).is_file()
            and (not features or features_path(folder, stem).is_file()))


def load_features(folder: Path, stem: str, protocol: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored (real, fake) FID/KID features (N, D) of image `stem` for `protocol`."""
    stored = load_file(features_path(folder, stem))
    return stored[f"{protocol}.real"], stored[f"{protocol}.fake"]


class ImageBatches(Dataset):
    """Item i = batch i read from disk: a list of (path, uint8 (3, H, W), conversion notes)."""

    def __init__(self, batches: list[list[Path]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[tuple[str, torch.Tensor, list[str]]]:
        return [(str(path), *load_u8(path)) for path in self.batches[index]]


@dataclass
class CodedImage:
    """What the writer thread needs to finish one image."""

    path: str
    ref: torch.Tensor  # uint8 (3, H, W), CPU
    rec: torch.Tensor  # uint8 (3, H, W), CPU
    data: bytes
    record: dict
    features: dict[str, torch.Tensor]


class Writer:
    """Finishes coded images on one background thread, in order; `submit` waits while more than
    `depth` images are queued (bounded memory) and re-raises the thread's errors."""

    def __init__(self, folder: Path, metrics: tuple[str, ...], depth: int = 16):
        self.folder, self.metrics, self.depth = folder, metrics, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onedc-eval-writer")
        self.queued: deque[Future] = deque()

    def submit(self, image: CodedImage) -> None:
        self.queued.append(self.pool.submit(self._finish, image))
        while len(self.queued) > self.depth:
            self.queued.popleft().result()

    def close(self) -> None:
        """Wait for every queued image (errors re-raised) and stop the thread."""
        try:
            while self.queued:
                self.queued.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _finish(self, image: CodedImage) -> None:
        stem, record = Path(image.path).stem, image.record
        if "psnr" in self.metrics:
            record["psnr"] = psnr(image.ref, image.rec)
        if "ms-ssim" in self.metrics:
            record["ms-ssim"] = ms_ssim(image.ref, image.rec)
            reason = ms_ssim_unavailable(*image.ref.shape[1:])
            if reason:
                record["notes"].append(reason)
        with atomic_file(file_path(self.folder, stem)) as tmp:
            tmp.write_bytes(image.data)
        with atomic_file(recon_path(self.folder, stem)) as tmp:
            tmp.write_bytes(png_bytes(image.rec))
        if image.features:
            with atomic_file(features_path(self.folder, stem)) as tmp:
                save_file(image.features, tmp)
        with atomic_file(record_path(self.folder, stem)) as tmp:  # last: the image is done
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def png_bytes(u8: torch.Tensor) -> bytes:
    """uint8 (3, H, W) -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def code_batches(model: OneDC, batches: list[list[Path]], folder: Path, suite, precision: str = "fp32",
                 workers: int = 2, process: tuple[int, int] = (0, 1)) -> int:
    """Code, measure and write every image of `batches` (lists of image paths of one size) into
    `folder`; returns the number of images. `suite` is the runner's MetricSuite; precision "bf16"
    runs the coding under bf16 autocast (the metrics stay fp32); `process` = (index, count) is
    recorded with each image."""
    if not batches:
        return 0
    loader = DataLoader(ImageBatches(batches), batch_size=None, shuffle=False, num_workers=workers,
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    identity = model.identity.describe()
    writer = Writer(folder, suite.names)
    done = 0
    try:
        for batch in loader:
            paths, refs, notes = zip(*batch)
            images = [from_uint8_tensor(ref) for ref in refs]
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                start = time.perf_counter()
                files = model.compress(images)
                encoded = time.perf_counter()
                compile_s = model.compile_for(files)  # a compiled decoder's first batch of a shape: not decode time
                started_decoding = time.perf_counter()
                recs = [to_uint8_tensor(x_hat) for x_hat in model.decompress(files)]
                decoded = time.perf_counter()
                estimates = [model.estimate_bits(x) for x in images]
            for path, ref, rec, data, estimate, note in zip(paths, refs, recs, files, estimates, notes):
                height, width = ref.shape[1:]
                pixels = height * width
                record = {
                    "image": path, "model": identity, "width": width, "height": height, "bytes": len(data),
                    "bpp": bits_per_pixel(len(data), height, width), "bpp_estimated": (estimate["y"] + estimate["z"]) / pixels,
                    "bpp_estimated_official": (estimate["y_official"] + estimate["z"]) / pixels,
                    "bpp_y_estimated": estimate["y"] / pixels, "bpp_z": estimate["z"] / pixels,
                    # the batch's wall time shared among its images
                    "encode_s": (encoded - start) / len(files), "decode_s": (decoded - started_decoding) / len(files),
                    "compile_s": compile_s / len(files),
                    "batch_size": len(files), "process": process[0], "processes": process[1], "notes": list(note),
                }
                if suite.lpips:
                    record["lpips"] = suite.lpips(ref, rec)
                if suite.dists:
                    record["dists"] = suite.dists(ref, rec)
                features = {}
                for metric in suite.distribution:
                    real, fake = metric.patch_features(ref, rec)
                    features[f"{metric.protocol.name}.real"], features[f"{metric.protocol.name}.fake"] = real.cpu(), fake.cpu()
                writer.submit(CodedImage(path, ref, rec, data, record, features))
                done += 1
    finally:
        writer.close()
    return done
