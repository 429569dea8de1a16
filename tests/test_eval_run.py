"""End to end: `onedc-eval` on tiny checkpoints over the scikit-image photos writes every report,
resumes without recomputing, and the complexity table comes out in Table A's layout."""

import json
import re

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from helpers import COMPILE_SECONDS
from onedc import OneDC
from onedc.errors import OneDCError
from onedc.eval.cli import expand_checkpoints, main
from onedc.eval.datasets import Setting
from onedc.eval.metrics import DistributionMetrics, DISTSMetric, LPIPSAlex, Protocol
from onedc.eval.runner import MetricSuite, evaluate
from onedc.image_io import to_uint8

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tiny_config, tmp_path_factory):
    """Two rate points of the tiny model (the second's generator perturbed, so they differ)."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = []
    for lmbda, noise in ((0.6, 0.0), (4.6, 0.02)):
        model = OneDC.untrained(tiny_config)
        model.lmbda = lmbda
        with torch.no_grad():
            for p in model.generator.parameters():
                p.add_(torch.randn_like(p) * noise)
        model.save_pretrained(root / f"lmbda{lmbda}")
        paths.append(str(root / f"lmbda{lmbda}"))
    return paths


class TinyFeatures(nn.Module):
    """An injected FID/KID backbone: uint8 patches -> 16-d features."""

    num_features = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x.float() / 255)


def test_evaluation_writes_every_report_and_resumes(photo_folder, checkpoints, tmp_path):

    # the Table G setting (baselines, BD-rate) on 128 px crops of the photos, FID on 64 px patches
    setting = Setting("kodak_crop512", "folder", 128, (Protocol("fid64", 64, 2),))
    suite = MetricSuite(("psnr", "ms-ssim", "lpips", "dists", "fid"), LPIPSAlex.from_random(0), DISTSMetric.from_random(0),
                        [DistributionMetrics(setting.protocols[0], feature_extractor=TinyFeatures(), kid_subset_size=50)])
    models = [OneDC.from_pretrained(c) for c in checkpoints]
    images = sorted(photo_folder.glob("*.png"))
    written = evaluate([lambda m=m: m for m in models], setting, images, tmp_path, suite, progress=False, workers=0)
    out = tmp_path / "kodak_crop512"
    assert {p.name for p in written.values()} == {"results.json", "rd.png", "rd.pdf", "bdrate.md", "report.md", "report.html"}
    low = next((out / "onedc_ours").glob("lmbda0.6_*"))  # curve / rate point (lambda and weights digest)
    assert all(p.stat().st_size > 0 for p in written.values())

    summary = json.loads((low / "summary.json").read_text())
    assert summary["images"] == 4 and summary["patches"] == 4 * (4 + 1)  # 128 px crops: 4 + 1 patches of 64
    for key in ("bpp", "bpp_estimated", "psnr", "lpips", "dists", "fid", "kid"):
        assert summary[key] is not None and summary[key] == summary[key], key
    assert summary["ms-ssim"] is None  # 128 px is too small for 5 scales: recorded in the notes
    record = json.loads((low / "per_image" / "coffee.json").read_text())
    assert record["bytes"] == (low / "files" / "coffee.onedc").stat().st_size
    assert record["bpp"] == pytest.approx(8 * record["bytes"] / (128 * 128))
    assert any("MS-SSIM" in n or "160" in n for n in record["notes"])
    # the decoded file is the reconstruction that was measured
    rec = np.array(Image.open(low / "recon" / "coffee.png"))
    x_hat = models[0].decompress((low / "files" / "coffee.onedc").read_bytes())
    assert np.array_equal(rec, to_uint8(x_hat))

    results = json.loads((out / "onedc_ours" / "results.json").read_text())
    assert len(results["results"]["bpp"]) == 2 and results["results"]["bpp"] == sorted(results["results"]["bpp"])
    assert sorted(r.split("_")[0] for r in results["meta"]["rate_points"]) == ["lmbda0.6", "lmbda4.6"] and "fid" in results["results"]
    report = (out / "report.md").read_text()
    assert "DDCM" in report and "onedc (ours)" in report and "Table G" in report
    html = (out / "report.html").read_text()
    # an RD panel per metric (PSNR, LPIPS, FID: Table G's, DISTS, KID: ours), then 4 images: original + 2 rate points
    panels = re.findall(r"class='rd' alt='(\w+) against bpp'", html)
    assert panels == ["PSNR", "LPIPS", "DISTS", "FID", "KID"] and html.count("class='zoomable'") == 4 * 3 and "BD-rate" in html

    # a rerun finds every image done: the codec is not called again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("per_image/*.json")}
    for model in models:
        model.compress = None  # would raise if used
    evaluate([lambda m=m: m for m in models], setting, images, tmp_path, suite, progress=False, workers=0)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("per_image/*.json")}


def test_command_line_run_bdrate_report_and_complexity(photo_folder, checkpoints, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["run", "--checkpoint", *checkpoints, "--dataset", "folder", "--root", str(photo_folder), "--crop", "192",
            "--metrics", "psnr,ms-ssim", "--out", str(out), "--device", "cpu", "--limit", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| onedc (ours) |" in printed and (out / "folder_crop192" / "report.html").is_file()
    # a second curve (another model family) joins the same report
    assert main(["run", "--checkpoint", checkpoints[0], *args[4:], "--name", "stage2"]) == 0
    assert "| stage2 |" in capsys.readouterr().out
    assert (out / "crops192" / "manifest.json").is_file()

    assert main(["bdrate", "--dataset", "mscoco30k", "--anchor", "OneDC", "--json", str(tmp_path / "bd.json")]) == 0
    printed = capsys.readouterr().out
    assert "| OneDC | 0.0% | 0.0% | 0.0% |" in printed and "MS-ILLM" in printed
    assert json.loads((tmp_path / "bd.json").read_text())["anchor"] == "OneDC"

    assert main(["report", "--dir", str(out / "folder_crop192")]) == 0
    assert main(["complexity", "--model", "onedc_tiny", "--sizes", "64", "--repeat", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "onedc-eval: warning: no --checkpoint given: using an untrained onedc_tiny" in captured.err
    assert "| Model | Params | Enc. time (s) | Dec. time (s)" in captured.out and "| onedc (onedc_tiny) |" in captured.out


def test_checkpoint_globs_expand_to_sorted_folders(checkpoints, tmp_path):
    root = str(checkpoints[0]).rsplit("/", 1)[0]
    assert expand_checkpoints([f"{root}/lmbda*"]) == sorted(checkpoints)
    assert expand_checkpoints([checkpoints[1], f"{root}/lmbda*"]) == [checkpoints[1], checkpoints[0]]  # each folder once
    with pytest.raises(OneDCError, match="matches nothing"):
        expand_checkpoints([str(tmp_path / "lmbda*")])


def test_clear_errors(tmp_path, capsys):
    assert main(["run", "--dataset", "kodak", "--root", str(tmp_path / "nowhere"), "--metrics", "psnr"]) == 1
    assert "kodim01.png" in capsys.readouterr().err
    assert main(["run", "--dataset", "imagenet", "--root", str(tmp_path), "--metrics", "psnr"]) == 1
    assert "unknown dataset setting" in capsys.readouterr().err
    assert main(["bdrate", "--dataset", "nope"]) == 1
    assert "mscoco30k" in capsys.readouterr().err
    assert main(["report", "--dir", str(tmp_path)]) == 1
    assert "onedc-eval run" in capsys.readouterr().err
    assert main(["run", "--checkpoint", str(tmp_path / "run*"), "--dataset", "kodak", "--root", str(tmp_path), "--metrics", "psnr"]) == 1
    assert "matches nothing" in capsys.readouterr().err


def test_run_with_compile_compiles_each_rate_points_decoder_and_records_it(photo_folder, checkpoints, tmp_path, stub_compile):
    """`onedc-eval run --compile`: every rate point's model is compiled before it codes (the
    compiled pixels themselves are tested in test_batch_decoding.py), the summaries say so, and
    the compile time is recorded apart from decode_s (the stand-in compiles for 1 s)."""
    out = tmp_path / "eval"
    args = ["run", "--checkpoint", *checkpoints, "--dataset", "folder", "--root", str(photo_folder), "--crop", "128",
            "--metrics", "psnr", "--out", str(out), "--device", "cpu", "--limit", "1", "--fid-patch", "0"]
    assert main([*args, "--compile"]) == 0
    summaries = [json.loads(p.read_text()) for p in sorted(out.rglob("summary.json"))]
    assert len(stub_compile) == len(summaries) == 2 and all(s["compiled"] for s in summaries)
    assert sorted(s["model"] for s in summaries) == sorted(stub_compile)
    for s in summaries:
        assert s["compile_s"] > 0.5 * COMPILE_SECONDS and s["decode_s"] < COMPILE_SECONDS
    assert main([*args, "--name", "eager"]) == 0
    eager = [json.loads(p.read_text()) for p in out.rglob("summary.json") if "eager" in str(p)]
    assert len(eager) == 2 and not any(s["compiled"] or "compile_s" in s for s in eager) and len(stub_compile) == 2
