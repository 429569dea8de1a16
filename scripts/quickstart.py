"""Quickstart: the tiny OneDC learns to code the scikit-image sample photos on the CPU in a few
minutes, then the photos (two of them held out) are coded before and after training and shown
side by side in an HTML report. Everything goes to outputs/quickstart/.

  1. demo only: pretrain the tiny model's VAE on sample photos (an autoencoder; the tiny model's
     VAE is otherwise random), written where `weights.quickstart_vae` points; it then stays
     frozen, as the SD VAE does in the paper
  2. Stage I (`onedc-train experiment=quickstart_demo`): the codec and the generator's LoRA,
     conv_in and vae_reduction learn through the frozen VAE and U-Net
  3. `onedc-eval`'s runner on the photos with the untrained and the trained model: real files,
     bpp, PSNR, MS-SSIM, every file decoded to the encoder's latent (bit-exact); report.html
     shows each photo beside its reconstructions before and after training

The same training from the command line: onedc-train experiment=quickstart_demo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from onedc import OneDC
from onedc.data.sources import SamplePhotos
from onedc.eval.datasets import Setting
from onedc.eval.runner import MetricSuite, evaluate
from onedc.image_io import from_uint8, load_image
from onedc.train.config import compose_config, run_config
from onedc.train.stage1 import train

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "camera")
HELD_OUT = {"chelsea", "camera"}  # the quickstart's validation photos, never trained on


def pretrain_vae(model: OneDC, settings, path: Path) -> dict:
    """Demo only: train `model.vae` as an autoencoder (L1 between a crop and its decoded
    posterior mode, the code the encoder uses) on random `settings.crop` px crops of
    `settings.photos`, mirrored at random; save it as safetensors at `path`. Returns the last loss."""
    source = SamplePhotos(list(settings.photos))
    photos = [from_uint8(np.asarray(source.load(i)[0])) for i in range(len(source))]
    vae = model.vae.requires_grad_(True).train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.steps):
        crops = []
        for _ in range(settings.batch_size):
            photo = photos[int(torch.randint(len(photos), (1,), generator=g))]
            top = int(torch.randint(photo.shape[1] - settings.crop + 1, (1,), generator=g))
            left = int(torch.randint(photo.shape[2] - settings.crop + 1, (1,), generator=g))
            crop = photo[:, top:top + settings.crop, left:left + settings.crop]
            crops.append(crop.flip(-1) if torch.rand(1, generator=g) < 0.5 else crop)
        x = torch.stack(crops)
        loss = (vae.decode(vae.encode(x).latent_dist.mode()).sample - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.requires_grad_(False).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, path)
    return {"l1": loss.item()}


def check_bit_exact(model: OneDC, images: dict[str, Path], files: Path) -> dict[str, bool]:
    """Each written file decodes to exactly the latent its encoder produced."""
    exact = {}
    for name, path in images.items():
        x, _ = load_image(path)
        _, expected = model.encode(x)
        exact[name] = torch.equal(model.decode_latents((files / f"{name}.onedc").read_bytes()).y_hat, expected.y_hat)
    return exact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. train.max_steps=100")
    args = parser.parse_args()
    out = Path(args.out)
    images = {}
    for name in PHOTOS:
        images[name] = out / "images" / f"{name}.png"
        images[name].parent.mkdir(parents=True, exist_ok=True)
        SamplePhotos([name]).load(0)[0].save(images[name])

    vae_path = out / "vae" / "model.safetensors"
    config = compose_config(["experiment=quickstart_demo", f"weights.quickstart_vae={vae_path}", *args.overrides])
    run, demo = run_config(config), config.demo_vae
    print(f"1/3 pretraining the tiny VAE on {len(demo.photos)} sample photos ({demo.steps} steps; demo only) ...", flush=True)
    start = time.perf_counter()
    untrained = OneDC.untrained(run.model)  # the random VAE: what the photos look like before
    pretrain_vae(OneDC.untrained(run.model), demo, vae_path)
    vae_minutes = (time.perf_counter() - start) / 60
    print(f"2/3 training Stage I for {run.train.max_steps} steps on the CPU (onedc-train experiment=quickstart_demo) ...", flush=True)
    start = time.perf_counter()
    train(run, out / "train")
    train_minutes = (time.perf_counter() - start) / 60
    best = out / "train" / "checkpoints" / "best"
    trained = OneDC.from_pretrained(best, run.weights)

    print("3/3 coding the photos before and after training ...", flush=True)
    setting = Setting("photos", "folder", None, ())
    suite = MetricSuite(("psnr", "ms-ssim"))
    paths = list(images.values())
    evaluate([lambda: untrained], setting, paths, out / "eval", suite, name="before training", show=0, progress=False, workers=0)
    written = evaluate([lambda: trained], setting, paths, out / "eval", suite, name="after training", show=len(PHOTOS),
                       progress=False, workers=0, show_crop=512)
    rows, exact = {}, True
    for model, curve in ((untrained, "before_training"), (trained, "after_training")):
        rate_point = next(p for p in (out / "eval" / "photos" / curve).iterdir() if p.is_dir())
        rows[curve] = {p.stem: json.loads(p.read_text()) for p in (rate_point / "per_image").glob("*.json")}
        exact = exact and all(check_bit_exact(model, images, rate_point / "files").values())

    print(f"\nVAE pretrained in {vae_minutes:.1f} min, Stage I trained in {train_minutes:.1f} min; best checkpoint: {best} "
          f"({trained.identity.describe()})")
    print(f"{'image':<11} {'size':>9} {'bytes before':>12} {'after':>6} {'bpp before':>10} {'after':>7} {'PSNR before':>11} {'after':>6}")
    for name in PHOTOS:
        b, a = rows["before_training"][name], rows["after_training"][name]
        notes = (["held out"] if name in HELD_OUT else []) + a["notes"]
        print(f"{name:<11} {b['width']:>4}x{b['height']:<4} {b['bytes']:>12} {a['bytes']:>6} {b['bpp']:>10.4f} {a['bpp']:>7.4f} "
              f"{b['psnr']:>11.2f} {a['psnr']:>6.2f}" + (f"  ({'; '.join(notes)})" if notes else ""))
    print(f"every file decodes bit-exactly to its encoder's latent: {'yes' if exact else 'NO'}")
    print(f"\nthe photos before and after training, side by side: open {written['html'].resolve()}")
    print("single images from the command line:")
    print(f"  onedc compress {images['chelsea']} chelsea.onedc --checkpoint {best} --weights quickstart_vae={vae_path}")
    print(f"  onedc decompress chelsea.onedc chelsea.png --checkpoint {best} --weights quickstart_vae={vae_path}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
