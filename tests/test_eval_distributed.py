"""Distributed, batched, resumable evaluation: images split over processes by a deterministic
rule, a run killed midway on 2 CPU processes (gloo) resumed on 1 without recomputing, duplicating
or missing an image, and results and files identical to a one-pass run at any batch size."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load

from helpers import ACCELERATE_2_PROCESSES
from onedc import OneDC
from onedc.errors import OneDCError
from onedc.eval.cli import main
from onedc.eval.datasets import Setting
from onedc.eval.metrics import DistributionMetrics, DISTSMetric, LPIPSAlex, Protocol
from onedc.eval.progress import ProgressBar
from onedc.eval.runner import MetricSuite, check_unique_stems, evaluate, pending_batches, share

# what may differ between two runs of the same images: timing and how the work was split
RUN_FIELDS = {"encode_s", "decode_s", "batch_size", "process", "processes"}


@pytest.fixture(autouse=True)
def one_thread():
    """The launched processes run one thread each; the same here, so every run computes alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photo_crops(folder: Path, count: int, sizes=((64, 64),)) -> list[Path]:
    """`count` small crops (width, height cycling through `sizes`) of the scikit-image photos."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
    paths = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        source = sources[i % len(sources)]
        top, left = 40 * (i // len(sources)), 60 * (i // len(sources))
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(np.ascontiguousarray(source[top:top + height, left:left + width])).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def checkpoint(tiny_config, tmp_path_factory):
    model = OneDC.untrained(tiny_config)
    model.lmbda = 1.8
    folder = tmp_path_factory.mktemp("ckpt") / "lmbda1.8"
    model.save_pretrained(folder)
    return folder


def rate_point(out: Path) -> Path:
    return next(p for p in (out / "folder" / "onedc_ours").iterdir() if p.is_dir())


def records(folder: Path) -> dict[str, dict]:
    # NaN (MS-SSIM of small images) read as the string "NaN", so equal records compare equal
    return {p.stem: json.loads(p.read_text(), parse_constant=str) for p in sorted((folder / "per_image").glob("*.json"))}


def results(folder: Path) -> tuple[dict, dict]:
    """(records without their run fields, summary without its timing means) of a rate point."""
    summary = json.loads((folder / "summary.json").read_text())
    return ({stem: {k: v for k, v in r.items() if k not in RUN_FIELDS} for stem, r in records(folder).items()},
            {k: v for k, v in summary.items() if k not in {"encode_s", "decode_s"}})


def files_of(folder: Path) -> dict[str, bytes]:
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for sub in ("files", "recon", "features") if (folder / sub).is_dir()
            for p in sorted((folder / sub).iterdir())}


def close(value, expected) -> bool:
    """Equal, or for floats within what one 8-bit level of some reconstructed pixels moves a metric."""
    if isinstance(value, float) and isinstance(expected, float):
        return value == pytest.approx(expected, rel=2e-2, abs=1e-3)
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(close(value[k], expected[k]) for k in value)
    if isinstance(value, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(value) == len(expected) and all(close(a, b) for a, b in zip(value, expected))
    return value == expected


def assert_same_results(folder: Path, reference: Path) -> None:
    """The .onedc files of a rate point are those of the reference byte for byte; its
    reconstructions are within one 8-bit level of the reference's (a batch of several images may
    round the float decoder differently from a batch of one), and so are its metrics and FID/KID
    features, up to that."""
    files, expected = files_of(folder), files_of(reference)
    assert files.keys() == expected.keys()
    assert {k: v for k, v in files.items() if k.startswith("files/")} == {k: v for k, v in expected.items() if k.startswith("files/")}
    for name in (k for k in files if k.startswith("recon/")):
        a, b = (np.asarray(Image.open(io.BytesIO(f[name])), dtype=np.int16) for f in (files, expected))
        assert np.abs(a - b).max() <= 1, name
    for name in (k for k in files if k.startswith("features/")):
        a, b = (load(f[name]) for f in (files, expected))
        assert all(torch.allclose(a[k], b[k], atol=1e-2) for k in b), name
    assert close(results(folder), results(reference))


def test_batches_are_shared_out_once_whatever_the_number_of_processes(tmp_path):
    images = [Path(f"/data/{i}.png") for i in range(11)]
    sizes = [(64, 64) if i % 3 else (96, 64) for i in range(11)]
    suite = MetricSuite(("psnr",))
    batches = pending_batches(images, sizes, tmp_path / "rate_point", "model", suite, batch_size=3)
    assert [len(b) for b in batches] == [3, 1, 3, 3, 1]  # the 4 of the first image's size, then the 7 others
    assert all(len({sizes[images.index(p)] for p in b}) == 1 for b in batches)
    for processes in (1, 2, 3, 4, 7):
        shares = [[p for b in share(batches, i, processes) for p in b] for i in range(processes)]
        flat = [p for s in shares for p in s]
        assert sorted(flat) == sorted(images) and len(flat) == len(set(flat))


def test_results_are_stored_by_name_so_names_must_be_unique():
    check_unique_stems([Path("a/x.png"), Path("b/y.png")])
    with pytest.raises(OneDCError, match="a/x.png and b/x.jpg share the name 'x'"):
        check_unique_stems([Path("a/x.png"), Path("b/x.jpg")])


def test_progress_counts_the_records_of_every_process(tmp_path):
    first, second = tmp_path / "rate_point_1", tmp_path / "rate_point_2"
    for folder, names in ((first, ["a", "b", ".c.json.tmp"]), (second, [])):
        (folder / "per_image").mkdir(parents=True)
        for name in names:
            (folder / "per_image" / (name if name.startswith(".") else f"{name}.json")).write_text("{}")
    bar = ProgressBar(total=8, every=3600, disable=True)
    bar.watch(first)
    assert bar.done == 2  # done before this run (a temporary file is not a record)
    (first / "per_image" / "d.json").write_text("{}")  # written by another process
    bar.watch(second)
    (second / "per_image" / "e.json").write_text("{}")
    bar.close()
    assert bar.done == 4


def test_two_processes_stopped_midway_resume_on_one(checkpoint, tmp_path):
    images = photo_crops(tmp_path / "photos", 16)
    args = ["run", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(tmp_path / "photos"),
            "--metrics", "psnr,ms-ssim", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable, *ACCELERATE_2_PROCESSES, "-m", "onedc.eval", *args, "--out", str(tmp_path / "run"),
              "--batch-size", "2", "--workers", "1"]
    process = subprocess.Popen(launch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            folders = [p for p in (tmp_path / "run" / "folder" / "onedc_ours").glob("*") if p.is_dir()]
            seen = records(folders[0]) if folders else {}
            if {r["process"] for r in seen.values()} == {0, 1}:  # both processes have finished images
                break
            time.sleep(0.05)
    finally:  # stop the launcher and its processes (ranks run in process groups of their own), wherever they are
        for started in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            started.kill()
        stderr = process.communicate()[1].decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be stopped: {stderr[-2000:]}"
    folder = rate_point(tmp_path / "run")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (folder / "per_image").glob("*.json")}
    assert 2 <= len(before) < len(images), "stopped midway"
    # the split is the documented one: batch b of 2 images went to process b mod 2
    for stem, record in records(folder).items():
        assert record["processes"] == 2 and record["batch_size"] == 2
        assert record["process"] == (int(stem[3:]) // 2) % 2

    # what a write killed midway leaves (made here, as the kill may or may not land inside a write)
    (folder / "recon" / ".img15.png.kasy8oj2").write_bytes(b"\x89PNG half")
    assert main([*args, "--out", str(tmp_path / "run"), "--workers", "0"]) == 0  # resumed on one process
    after = records(folder)
    assert sorted(after) == sorted(p.stem for p in images)  # none missing (one record per image by name)
    for name, (data, mtime) in before.items():  # none recomputed
        path = folder / "per_image" / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    resumed = [r for r in after.values() if r["processes"] == 1]
    assert len(resumed) == len(images) - len(before)  # exactly the unfinished ones, once

    assert main([*args, "--out", str(tmp_path / "one_pass"), "--workers", "0"]) == 0
    reference = rate_point(tmp_path / "one_pass")
    assert_same_results(folder, reference)


class TinyFeatures(torch.nn.Module):
    """An injected FID/KID feature net: uint8 patches -> 8-d features."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        torch.nn.init.normal_(self.conv.weight, std=0.2, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.conv(x.float() / 255).relu().mean(dim=(2, 3))


def suite() -> MetricSuite:
    protocol = Protocol("fid32", 32, 2)
    return MetricSuite(("psnr", "ms-ssim", "lpips", "dists", "fid"), LPIPSAlex.from_random(0), DISTSMetric.from_random(0),
                       [DistributionMetrics(protocol, feature_extractor=TinyFeatures(), kid_subset_size=10)])


def test_batched_and_resumed_runs_give_the_files_and_results_of_one_pass(checkpoint, tmp_path):
    model = OneDC.from_pretrained(checkpoint)
    images = photo_crops(tmp_path / "photos", 7, sizes=((64, 64), (128, 64)))
    setting = Setting("folder", "folder", None, (Protocol("fid32", 32, 2),))

    def run(out, paths, **kwargs):
        return evaluate([lambda: model], setting, paths, tmp_path / out, suite(), progress=False, **kwargs)

    run("one_pass", images, batch_size=1, workers=0)
    run("batched", images[:1], batch_size=3, workers=1)  # a partial run, then the whole set
    written = run("batched", images, batch_size=3, workers=1)
    assert written["html"].is_file()
    one_pass, batched = rate_point(tmp_path / "one_pass"), rate_point(tmp_path / "batched")
    assert {r["batch_size"] for r in records(batched).values()} == {1, 3}  # then 3 of each size
    assert_same_results(batched, one_pass)
    summary = results(batched)[1]
    assert summary["images"] == 7 and summary["fid"] > 0 and summary["patches"] == 4 * (4 + 1) + 3 * (8 + 3)
