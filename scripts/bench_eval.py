"""Benchmark: evaluation throughput of one process with all metrics, and the projected wall time
of MS-COCO 30K x 7 rate points on 1 and 8 processes (GPUs).

Runs the evaluation pipeline of `onedc-eval run` (DataLoader readers, batched coding, LPIPS,
DISTS and FID features on the device, a writer thread for PNGs, PSNR, MS-SSIM and records) on
`--images` sample photos resized and center-cropped to `--size` (COCO's 512 setting: whole-image
FID), after a warm-up batch. Metric backbones whose weights are missing are replaced by seeded
random ones, and `--random-weights` gives the model random weights: the compute is the same.

It also measures the two ways of getting FID/KID over all images: features gathered from the
processes (what onedc-eval does: computed beside each image, stored, merged by the main process)
against computing them once on the main process from the PNGs at the end.

    python scripts/bench_eval.py --model onedc_tiny --size 512 --images 8 --device cpu
    python scripts/bench_eval.py --model onedc_sd15 --random-weights --size 512 --images 64 --batch-size 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from onedc import OneDC, load_model_config
from onedc import weights as external
from onedc.errors import WeightsError
from onedc.eval.datasets import load_u8, resize_center_crop
from onedc.eval.metrics import DistributionMetrics, DISTSMetric, LPIPSAlex, Protocol
from onedc.eval.pipeline import code_batches, load_features, recon_path, record_path
from onedc.eval.runner import MetricSuite, summarize

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle", "hubble_deep_field", "retina")
COCO_IMAGES, RATE_POINTS = 30_000, 7


def photo_set(folder: Path, count: int, size: int) -> list[Path]:
    """`count` PNGs of size x size: the sample photos resized and center-cropped, mirrored on later rounds."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
        photo = photo[0] if isinstance(photo, tuple) else photo
        u8 = resize_center_crop(torch.from_numpy(np.ascontiguousarray(photo[..., :3])).permute(2, 0, 1), size)
        if (i // len(PHOTOS)) % 2:
            u8 = u8.flip(-1)
        paths.append(folder / f"photo{i:04d}.png")
        Image.fromarray(u8.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def metric(name: str, real, random, notes: list[str]):
    """The metric with its real weights, else with seeded random ones (noted)."""
    try:
        return real()
    except WeightsError:
        notes.append(f"{name}: random weights (its weights are missing; the compute is the same)")
        return random()


def build_suite(size: int, weight_paths: dict, device: str, notes: list[str]) -> MetricSuite:
    protocol = Protocol(f"fid{size}", size, 1, "whole image, as MS-COCO 30K")
    return MetricSuite(
        ("psnr", "ms-ssim", "lpips", "dists", "fid"),
        metric("LPIPS", lambda: LPIPSAlex(weight_paths=weight_paths, device=device), lambda: LPIPSAlex.from_random(0, device), notes),
        metric("DISTS", lambda: DISTSMetric(weight_paths=weight_paths, device=device), lambda: DISTSMetric.from_random(0, device), notes),
        [metric("FID/KID Inception", lambda: DistributionMetrics(protocol, weight_paths=weight_paths, device=device),
                lambda: DistributionMetrics.from_random(protocol, 0, device), notes)],
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="onedc_tiny")
    parser.add_argument("--random-weights", action="store_true", help="seeded random weights instead of the external ones")
    parser.add_argument("--size", type=int, default=512, help="square images of this side")
    parser.add_argument("--images", type=int, default=8, help="timed images (after a warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="image-reading processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on a GPU, else fp32")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net and VAE decoder (compiled by the warm-up batch)")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH", help="external weight location")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time, not wall time (a shared, loaded machine: use OMP_NUM_THREADS=1 "
                             "and --workers 0; the writer thread's work then adds up instead of overlapping)")
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    weight_paths = external.load_weight_paths(args.weights)
    notes: list[str] = []
    config = load_model_config(args.model)
    model = OneDC.untrained(config)
    if not args.random_weights:
        external.load_frozen_weights(model, weight_paths)
    model.lmbda = 4.6
    model = model.to(args.device).eval()
    if args.compile:
        model.compile_decoder()
    suite = build_suite(args.size, weight_paths, args.device, notes)
    distribution = suite.distribution[0]

    with tempfile.TemporaryDirectory(prefix="onedc-bench-eval-") as tmp:
        root = Path(tmp)
        warmup = photo_set(root / "warmup", args.batch_size, args.size)
        images = photo_set(root / "images", args.images, args.size)
        code_batches(model, [warmup], root / "warm", suite, precision, 0)
        compile_s = sum(json.loads(record_path(root / "warm", p.stem).read_text())["compile_s"] for p in warmup)

        batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
        synchronize(args.device)
        start = clock()
        code_batches(model, batches, root / "run", suite, precision, args.workers)
        synchronize(args.device)
        seconds = clock() - start
        folder = root / "run"
        records = [json.loads(record_path(folder, p.stem).read_text()) for p in images]

        # FID/KID features as computed beside each image (on the device, from the decoded pixels)
        pairs = [(load_u8(p)[0], load_u8(recon_path(folder, p.stem))[0]) for p in images]
        start = clock()
        for ref, rec in pairs:
            distribution.patch_features(ref, rec)
        synchronize(args.device)
        features_s = (clock() - start) / len(images)
        # gathered: the main process reads every image's stored features and computes FID/KID
        start = clock()
        for path in images:
            load_features(folder, path.stem, distribution.protocol.name)
        read_s = (clock() - start) / len(images)
        start = clock()
        summary = summarize(folder, images, suite, "bench", {"identity": model.identity.describe(), "lmbda": model.lmbda,
                                                              "compiled": model.decoder_compiled}, precision)
        merge_s = clock() - start
        compute_s = max(0.0, merge_s - read_s * len(images))
        # from the PNGs: one process reads both PNGs of every image and runs Inception on them
        distribution.reset()
        start = clock()
        for path in images:
            distribution.update(load_u8(path)[0], load_u8(recon_path(folder, path.stem))[0])
        synchronize(args.device)
        png_features_s = (clock() - start) / len(images)
        distribution.reset()

    rate = len(images) / seconds
    rate_without_features = 1 / max(1e-9, 1 / rate - features_s)
    total = COCO_IMAGES * RATE_POINTS
    merge_coco_s = RATE_POINTS * (COCO_IMAGES * read_s + compute_s)
    projected = {}
    for gpus in (1, 8):
        gathered = total / (gpus * rate) + merge_coco_s
        from_pngs = total / (gpus * rate_without_features) + total * png_features_s + RATE_POINTS * compute_s
        projected[gpus] = {"gathered_h": gathered / 3600, "from_pngs_h": from_pngs / 3600}

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {args.model}{' (random weights)' if args.random_weights else ''}, {args.size}x{args.size}, "
          f"{len(images)} images, batch {args.batch_size}, {args.workers} reading workers, {precision}"
          f"{', compiled' if args.compile else ''}, {device_name}"
          f"{', by CPU time' if args.cpu_time else ''}")
    for note in notes:
        print(f"  note: {note}")
    if args.compile:
        print(f"  compiling the decoder (the warm-up batch, not in the figures): {compile_s:.1f} s")
    mean = {k: sum(r[k] for r in records) / len(records) for k in ("encode_s", "decode_s")}
    print(f"  throughput, one process, all metrics:   {rate:8.3f} images/s   ({seconds / len(images):.3f} s/image)")
    if not args.cpu_time:  # the records time coding by the wall clock
        print(f"    of which encode {mean['encode_s']:.3f} s, decode {mean['decode_s']:.3f} s per image")
    print(f"    of which FID/KID features {features_s:.3f} s per image")
    print(f"  FID/KID merge on the main process:      {read_s * 1000:8.2f} ms/image to read the features, "
          f"{compute_s:.2f} s to compute ({summary['images']} images)")
    print(f"  FID features from the PNGs at the end:  {png_features_s:8.3f} s/image on one process")
    print(f"  MS-COCO 30K x {RATE_POINTS} rate points ({total:,} images), projected from this process's rate:")
    for gpus, p in projected.items():
        print(f"    {gpus} process{'es' if gpus > 1 else ''}: {p['gathered_h']:7.2f} h with gathered features "
              f"(onedc-eval), {p['from_pngs_h']:7.2f} h with features from the PNGs")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "size": args.size, "images": len(images), "batch_size": args.batch_size, "precision": precision,
            "compiled": args.compile, "compile_s": compile_s,
            "device": device_name, "cpu_time": args.cpu_time, "images_per_s": rate, "encode_s": mean["encode_s"], "decode_s": mean["decode_s"],
            "features_s": features_s, "merge_read_s_per_image": read_s, "merge_compute_s": compute_s,
            "png_features_s": png_features_s, "projected": projected, "notes": notes}, indent=1) + "\n")


if __name__ == "__main__":
    main()
