"""Image-quality metrics on 8-bit images (docs/evaluation.md 2 and 6).

Every metric takes uint8 tensors (3, H, W) with values 0..255 (reference first, then
reconstruction), i.e. exactly what the PNG files hold, and converts them internally:

- `psnr`: data range 255, per image; identical images give inf.
- `ms_ssim`: pytorch_msssim on RGB in [0, 1] with data_range=1.0 (OneDC's call); NaN when the
  short side is <= 160 px (5 scales of an 11-tap window do not fit), see `ms_ssim_unavailable`.
- `LPIPSAlex`: lpips v0.1 AlexNet on [-1, 1]; trunk from a local torchvision file.
- `DISTSMetric`: DISTS_pytorch on [0, 1], no resize; VGG16 trunk from a local torchvision file.
- `DistributionMetrics`: torchmetrics FID (2048-d) and KID over the patches of all images of
  one rate point (`extract_patches`: the HiFiC/MS-ILLM grid plus shifted grids, as OneDC's tool).

No metric downloads anything: backbones are found through `onedc.weights.require`.
"""

from __future__ import annotations

import math
import pickle
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import ImageError, WeightsError
from ..state_dicts import check_keys, load_torchvision_features, read_state_dict
from ..weights import require

MS_SSIM_MIN_SIDE = 161  # pytorch_msssim: short side > (11 - 1) * 2**4 for 5 scales


@dataclass(frozen=True)
class KIDSettings:
    """KID's number of subsets, subset size (patches) and subset-drawing seed."""

    subsets: int
    subset_size: int
    seed: int


def load_kid_settings() -> KIDSettings:
    """The KID settings of `configs/eval/metrics.yaml` (shipped as `onedc.configs.eval`)."""
    from importlib.resources import files

    import yaml

    return KIDSettings(**yaml.safe_load(files("onedc.configs.eval").joinpath("metrics.yaml").read_text())["kid"])


KID = load_kid_settings()


def _check_image(x: torch.Tensor, what: str) -> None:
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 3 and x.shape[0] == 3):
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ImageError(f"{what} must be a uint8 tensor (3, H, W); got {got}")


def _check_pair(ref_u8: torch.Tensor, rec_u8: torch.Tensor) -> None:
    _check_image(ref_u8, "reference image")
    _check_image(rec_u8, "reconstruction")
    if ref_u8.shape != rec_u8.shape:
        raise ImageError(f"reference {tuple(ref_u8.shape)} and reconstruction {tuple(rec_u8.shape)} differ in size")


def _unit(x_u8: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (3, H, W) -> float32 (1, 3, H, W) in [0, 1]."""
    return x_u8.to(device=device, dtype=torch.float32).unsqueeze(0) / 255.0


# ----------------------------------------------------------------------- per-image metrics
def psnr(ref_u8: torch.Tensor, rec_u8: torch.Tensor) -> float:
    """PSNR in dB of two uint8 (3, H, W) images, data range 255; inf for identical images."""
    _check_pair(ref_u8, rec_u8)
    mse = (ref_u8.double() - rec_u8.double()).square().mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ms_ssim_unavailable(height: int, width: int) -> str | None:
    """Why MS-SSIM cannot be computed at this size, or None when it can."""
    if min(height, width) < MS_SSIM_MIN_SIDE:
        return f"MS-SSIM needs a short side > 160 px (5 scales, 11-tap window); image is {width}x{height}"
    return None


def ms_ssim(ref_u8: torch.Tensor, rec_u8: torch.Tensor, device: str | torch.device = "cpu") -> float:
    """RGB MS-SSIM of two uint8 (3, H, W) images (pytorch_msssim.ms_ssim on [0, 1] with
    data_range=1.0, default window and weights); NaN when `ms_ssim_unavailable` gives a reason."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    _check_pair(ref_u8, rec_u8)
    if ms_ssim_unavailable(*ref_u8.shape[1:]):
        return math.nan
    return _ms_ssim(_unit(ref_u8, device), _unit(rec_u8, device), data_range=1.0, size_average=True).item()


def image_metrics_info() -> dict:
    """How `psnr` and `ms_ssim` are computed, for the evaluation record."""
    return {
        "psnr": "per image on uint8 values, data range 255, mean squared error over all channels; inf if identical",
        "ms_ssim": f"pytorch_msssim {version('pytorch-msssim')} ms_ssim on RGB [0,1], data_range=1.0, win 11, "
        "sigma 1.5, default weights; NaN for a short side <= 160 px",
    }


# ---------------------------------------------------------------------- backbone loading
@contextmanager
def _seeded(seed: int):
    """Run under a fixed torch seed; the global RNG is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _NetworkMetric:
    """A full-reference metric computed by a frozen network (`self.model`, on `self.device`)."""

    def _use(self, model: nn.Module, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)

    @classmethod
    def from_random(cls, seed: int = 0, device: str | torch.device = "cpu") -> "_NetworkMetric":
        """The metric with a seeded random network instead of its pretrained weights (tests only)."""
        return cls(device=device, _random_seed=seed)


class LPIPSAlex(_NetworkMetric):
    """LPIPS v0.1 with AlexNet (the `lpips` package); `metric(ref_u8, rec_u8) -> float`.

    The linear heads ship inside the lpips wheel; the AlexNet trunk is read from torchvision's
    `alexnet-owt-7be5be79.pth`: `backbone_weights` if given, else `require("lpips_alex", weight_paths)`.
    `LPIPSAlex.from_random(seed)` keeps a randomly initialised trunk (tests only).
    """

    def __init__(self, backbone_weights: str | Path | None = None, weight_paths: dict | None = None,
                 device: str | torch.device = "cpu", _random_seed: int | None = None):
        import lpips

        with _seeded(_random_seed or 0), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lpips calls torchvision's deprecated `pretrained=`
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        if _random_seed is None:
            path = Path(backbone_weights) if backbone_weights else require("lpips_alex", weight_paths)
            load_torchvision_features(list(model.net.children()), path, "LPIPS AlexNet backbone")
            self.backbone = str(path)
        else:
            self.backbone = f"random (seed {_random_seed})"
        self._use(model, device)

    def __call__(self, ref_u8: torch.Tensor, rec_u8: torch.Tensor) -> float:
        """LPIPS distance of two uint8 (3, H, W) images, mapped to [-1, 1] as x / 127.5 - 1."""
        _check_pair(ref_u8, rec_u8)
        with torch.no_grad():
            ref, rec = (_unit(x, self.device) * 2 - 1 for x in (ref_u8, rec_u8))
            return self.model(ref, rec).item()

    def info(self) -> dict:
        return {"metric": "LPIPS", "package": f"lpips {version('lpips')}", "net": "alex", "version": "0.1",
                "backbone": self.backbone, "input": "uint8 / 127.5 - 1 in [-1, 1], full image, no resize"}


def dists_alpha_beta_file() -> Path:
    """DISTS' alpha/beta `weights.pt`: DISTS_pytorch 0.1 loads it from sys.prefix (where its
    wheel installs it as a data file); a copy inside the package folder is accepted too."""
    import DISTS_pytorch

    candidates = [Path(sys.prefix) / "weights.pt", Path(DISTS_pytorch.__file__).parent / "weights.pt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WeightsError(
        f"DISTS alpha/beta file weights.pt not found (looked in: {'; '.join(map(str, candidates))}); it is installed "
        "with dists-pytorch (`pip install --force-reinstall dists-pytorch`), or get "
        "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt and pass it as alpha_beta="
    )


@contextmanager
def _vgg16_without_download():
    """DISTS_pytorch builds `models.vgg16(pretrained=True)`, which downloads: hand it an
    uninitialised VGG16 feature stack instead (its weights are loaded from a local file next)."""
    import DISTS_pytorch.DISTS_pt as dists_pt
    from torchvision.models.vgg import cfgs, make_layers

    original = dists_pt.models
    dists_pt.models = SimpleNamespace(vgg16=lambda pretrained=False: SimpleNamespace(features=make_layers(cfgs["D"])))
    try:
        yield
    finally:
        dists_pt.models = original


class DISTSMetric(_NetworkMetric):
    """DISTS (DISTS_pytorch 0.1) on [0, 1], no resize; `metric(ref_u8, rec_u8) -> float`.

    VGG16 trunk from torchvision's `vgg16-397923af.pth` (`backbone_weights`, else
    `require("dists_vgg16", weight_paths)`); alpha/beta from `alpha_beta` or `dists_alpha_beta_file()`.
    `DISTSMetric.from_random(seed)` keeps a random trunk and random alpha/beta (tests only).
    """

    def __init__(self, backbone_weights: str | Path | None = None, weight_paths: dict | None = None,
                 alpha_beta: str | Path | None = None, device: str | torch.device = "cpu",
                 _random_seed: int | None = None):
        from DISTS_pytorch import DISTS

        with _seeded(_random_seed or 0), _vgg16_without_download():
            model = DISTS(load_weights=False)
        if _random_seed is None:
            path = Path(backbone_weights) if backbone_weights else require("dists_vgg16", weight_paths)
            stages = [m for name, m in model.named_children() if name.startswith("stage")]
            load_torchvision_features(stages, path, "DISTS VGG16 backbone")
            ab_path = Path(alpha_beta) if alpha_beta else dists_alpha_beta_file()
            ab = read_state_dict(ab_path)
            check_keys({"alpha": model.alpha.shape, "beta": model.beta.shape}, ab, str(ab_path), "DISTS alpha/beta")
            model.alpha.data, model.beta.data = ab["alpha"], ab["beta"]
            self.backbone, self.alpha_beta = str(path), str(ab_path)
        else:
            self.backbone = self.alpha_beta = f"random (seed {_random_seed})"
        self._use(model, device)

    def __call__(self, ref_u8: torch.Tensor, rec_u8: torch.Tensor) -> float:
        """DISTS of two uint8 (3, H, W) images, fed as x / 255 in [0, 1]."""
        _check_pair(ref_u8, rec_u8)
        with torch.no_grad():
            return self.model(_unit(ref_u8, self.device), _unit(rec_u8, self.device)).item()

    def info(self) -> dict:
        return {"metric": "DISTS", "package": f"DISTS_pytorch {version('DISTS_pytorch')}", "backbone": self.backbone,
                "alpha_beta": self.alpha_beta, "input": "uint8 / 255 in [0, 1], full image, no resize"}


# --------------------------------------------------------------------------------- patches
@dataclass(frozen=True)
class Protocol:
    """One FID/KID setting: patches of `patch` px (None: each whole image is one patch) on the
    grid at offset 0 plus `split - 1` shifted grids (see `extract_patches`)."""

    name: str
    patch: int | None
    split: int = 2
    note: str = ""


def extract_patches(img_u8: torch.Tensor, patch: int | None, split: int = 2) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (N, 3, P, P): the non-overlapping grid at offset 0, then for
    i = 1 .. split-1 the grid at offset (unit*i, unit*i), unit = patch // split, only when both
    sides are >= (2 - i/split) * patch. Rows/columns that do not fill a patch are dropped.
    `patch=None` returns the whole image as one patch."""
    _check_image(img_u8, "image")
    if patch is None:
        return img_u8.unsqueeze(0)
    height, width = img_u8.shape[1:]
    if height < patch or width < patch:
        raise ImageError(f"image {width}x{height} is smaller than the {patch}x{patch} FID patch")
    unit = patch // split
    grids = [img_u8]
    for i in range(1, split):
        if min(height, width) * split >= (2 * split - i) * patch:  # side >= (2 - i/split) * patch, exactly
            grids.append(img_u8[:, unit * i:, unit * i:])
    out = []
    for grid in grids:
        tiles = grid.unfold(1, patch, patch).unfold(2, patch, patch)  # (3, rows, cols, P, P)
        out.append(tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch))
    return torch.cat(out)


# ------------------------------------------------------------------------ FID and KID
class _PrecomputedFeatures(nn.Module):
    """Pass-through "feature extractor": FID and KID get the (N, D) features computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def build_inception(weights: Path, antialias: bool = True) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3 (torch-fidelity's TF-Inception port, 2048-d pool
    features) read from a local file: uint8 (N, 3, H, W) -> float (N, 2048)."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights),
                                  antialias=antialias)
    except ModuleNotFoundError as e:
        raise WeightsError(f"FID/KID need torch-fidelity for torchmetrics' Inception: pip install torch-fidelity ({e})") from e
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise WeightsError(f"{weights} does not load into torchmetrics' FID Inception-v3: {e}") from e


def write_random_inception(path: str | Path, seed: int = 0) -> Path:
    """A seeded random state dict in the layout of the FID Inception file (pytorch-fid's
    pt_inception, which torchmetrics reads): the real network's compute, meaningless features
    (tests and benchmarks)."""
    import pytorch_fid.inception as fid

    with _seeded(seed):
        net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = fid.FIDInceptionA(192, 32), fid.FIDInceptionA(256, 64), fid.FIDInceptionA(288, 64)
        net.Mixed_6b, net.Mixed_6c = fid.FIDInceptionC(768, 128), fid.FIDInceptionC(768, 160)
        net.Mixed_6d, net.Mixed_6e = fid.FIDInceptionC(768, 160), fid.FIDInceptionC(768, 192)
        net.Mixed_7b, net.Mixed_7c = fid.FIDInceptionE_1(1280), fid.FIDInceptionE_2(2048)
    torch.save(net.state_dict(), path)
    return Path(path)


class DistributionMetrics:
    """FID and KID between the reference and reconstruction patches of all images of one rate
    point: `update(ref_u8, rec_u8)` per image (or `patch_features` in any process, then `add`), then
    `compute()`.

    torchmetrics FrechetInceptionDistance (2048-d) and KernelInceptionDistance (polynomial
    kernel, `kid_subsets` subsets of `kid_subset_size`; defaults from configs/eval/metrics.yaml)
    on uint8 patches. Features are computed
    once per patch by `feature_extractor` (uint8 (N, 3, P, P) -> (N, D); default torchmetrics'
    Inception from `require("fid_inception", weight_paths)`, which resizes to 299x299 itself)
    and handed to both metrics. KID subsets are drawn with a fixed seed.
    """

    def __init__(self, protocol: Protocol, feature_extractor: nn.Module | None = None, weight_paths: dict | None = None,
                 antialias: bool = True, device: str | torch.device = "cpu", kid_subsets: int = KID.subsets,
                 kid_subset_size: int = KID.subset_size, kid_seed: int = KID.seed, batch_size: int = 64):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.protocol, self.device, self.batch_size, self.kid_seed = protocol, torch.device(device), batch_size, kid_seed
        if feature_extractor is None:
            weights = require("fid_inception", weight_paths)
            feature_extractor = build_inception(weights, antialias)
            self.extractor = f"torchmetrics NoTrainInceptionV3 (inception-v3-compat, 2048-d) from {weights}"
            self.resize = ("each patch resized to 299x299 inside Inception: " + (
                "torch bilinear, align_corners=False, antialias=True" if antialias
                else "TF1-compatible bilinear (torch-fidelity), no antialiasing"))
            self.antialias: bool | None = antialias
        else:
            self.extractor = f"injected {type(feature_extractor).__name__}"
            self.resize = "none here: up to the injected feature extractor"
            self.antialias = None
        self.features = feature_extractor.eval().requires_grad_(False).to(self.device)
        dim = getattr(feature_extractor, "num_features", None) or self._infer_dim()
        self.fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(dim)).to(self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features")  # known, by design
            self.kid = KernelInceptionDistance(feature=_PrecomputedFeatures(dim), subsets=kid_subsets,
                                               subset_size=kid_subset_size).to(self.device)
        self.patches = 0

    @classmethod
    def from_random(cls, protocol: Protocol, seed: int = 0, device: str | torch.device = "cpu") -> "DistributionMetrics":
        """FID/KID with torchmetrics' Inception on seeded random weights (`write_random_inception`):
        the compute of the real metric, meaningless values (benchmarks and tests only)."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            weights = write_random_inception(Path(folder) / "random_inception.pth", seed)
            metric = cls(protocol, weight_paths={"fid_inception": str(weights)}, device=device)
        metric.extractor = f"torchmetrics NoTrainInceptionV3 (inception-v3-compat, 2048-d) with random weights (seed {seed})"
        return metric

    def _infer_dim(self) -> int:
        size = self.protocol.patch or 299
        with torch.no_grad():
            return self.features(torch.zeros(1, 3, size, size, dtype=torch.uint8, device=self.device)).shape[-1]

    def _extract(self, patches: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.features(b.to(self.device)).float() for b in patches.split(self.batch_size)])

    def patch_features(self, ref_u8: torch.Tensor, rec_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (real, fake) features (N, D) of the N patches of one uint8 (3, H, W) reference and
        its reconstruction; `add` them, here or in another process."""
        _check_pair(ref_u8, rec_u8)
        real = self._extract(extract_patches(ref_u8, self.protocol.patch, self.protocol.split))
        fake = self._extract(extract_patches(rec_u8, self.protocol.patch, self.protocol.split))
        return real, fake

    def add(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """Add the (N, D) features of one image's reference and reconstruction patches."""
        for metric in (self.fid, self.kid):
            metric.update(real.to(self.device), real=True)
            metric.update(fake.to(self.device), real=False)
        self.patches += real.shape[0]

    def update(self, ref_u8: torch.Tensor, rec_u8: torch.Tensor) -> None:
        """Add the patches of one uint8 (3, H, W) reference (real) and its reconstruction (fake)."""
        self.add(*self.patch_features(ref_u8, rec_u8))

    def compute(self) -> dict:
        """{"fid", "kid", "kid_std", "patches", "kid_subset_size", "notes"}. A value that cannot
        be computed is None with the reason in "notes". With fewer patches than the KID subset
        size, KID uses subsets of all patches (the unbiased MMD estimate of the same quantity;
        kid_std is then ~0 and says nothing) and "kid_subset_size" records it."""
        n, notes = self.patches, []
        result = {"fid": None, "kid": None, "kid_std": None, "patches": n, "kid_subset_size": None, "notes": notes}
        if n < 2:
            notes.append(f"FID and KID need at least 2 patches per side; got {n}")
            return result
        result["fid"] = self.fid.compute().item()
        subset_size = self.kid.subset_size
        if n < subset_size:
            notes.append(f"KID: {n} patches < subset size {subset_size}: subsets of all {n} patches")
            self.kid.subset_size = n
        try:
            with _seeded(self.kid_seed):
                kid, kid_std = self.kid.compute()
        finally:
            self.kid.subset_size = subset_size
        result.update(kid=kid.item(), kid_std=kid_std.item(), kid_subset_size=min(n, subset_size))
        return result

    def reset(self) -> None:
        self.fid.reset()
        self.kid.reset()
        self.patches = 0

    def info(self) -> dict:
        try:
            fidelity = version("torch-fidelity")
        except PackageNotFoundError:  # only needed for the default Inception
            fidelity = None
        return {
            "protocol": self.protocol.name, "patch": self.protocol.patch, "split": self.protocol.split,
            "patches_rule": "grid at offset 0 plus grids at offset (P//split)*i, i=1..split-1, when both sides "
            ">= (2 - i/split)*P; remainders dropped" if self.protocol.patch else "whole image as one patch",
            "torchmetrics": version("torchmetrics"), "torch_fidelity": fidelity, "feature_extractor": self.extractor,
            "antialias": self.antialias, "resize": self.resize, "fid_features": self.fid.real_features_sum.shape[0],
            "kid_subsets": self.kid.subsets, "kid_subset_size": self.kid.subset_size, "kid_degree": self.kid.degree,
            "kid_seed": self.kid_seed, "input": "uint8 patches, real = reference, fake = reconstruction",
        }
