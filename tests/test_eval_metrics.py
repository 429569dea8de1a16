"""Evaluation metrics on uint8 images: PSNR and MS-SSIM values, the FID patch grid, FID/KID
with an injected feature net, LPIPS/DISTS with random backbones, and missing-weight errors.
Nothing is downloaded: backbones are random or tiny stand-ins."""

import math

import pytest
import skimage.data
import torch
from torch import nn

from onedc.errors import ImageError, WeightsError
from onedc.eval.metrics import (
    DistributionMetrics,
    DISTSMetric,
    LPIPSAlex,
    Protocol,
    dists_alpha_beta_file,
    extract_patches,
    load_kid_settings,
    ms_ssim,
    ms_ssim_unavailable,
    psnr,
    write_random_inception,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions: one thread is as fast, and far faster when other jobs share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample(name: str) -> torch.Tensor:
    return torch.tensor(getattr(skimage.data, name)()).permute(2, 0, 1).contiguous()


def noisy(x: torch.Tensor, amplitude: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x.int() + torch.randint(-amplitude, amplitude + 1, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def random_u8(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ PSNR
def test_psnr_known_values():
    x = torch.full((3, 32, 48), 100, dtype=torch.uint8)
    assert psnr(x, x + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-9)  # MSE 1: 48.13 dB
    assert psnr(x, x + 1) == pytest.approx(48.1308, abs=1e-4)
    y = x.clone()
    y[:, :16] += 2  # half the pixels off by 2: MSE 2
    assert psnr(x, y) == pytest.approx(10 * math.log10(255**2 / 2), abs=1e-9)
    assert psnr(x, x) == math.inf


def test_metrics_reject_wrong_inputs():
    x = random_u8(32, 32)
    with pytest.raises(ImageError, match="differ in size"):
        psnr(x, random_u8(32, 40))
    with pytest.raises(ImageError, match="uint8 tensor"):
        psnr(x.float(), x)
    with pytest.raises(ImageError, match="uint8 tensor"):
        ms_ssim(x, x[None])


# --------------------------------------------------------------------------- MS-SSIM
def test_ms_ssim_matches_pytorch_msssim():
    from pytorch_msssim import ms_ssim as reference

    ref, rec = sample("astronaut"), noisy(sample("astronaut"))
    value = ms_ssim(ref, rec)
    assert value == reference(ref[None].float() / 255, rec[None].float() / 255, data_range=1.0).item()
    assert value == pytest.approx(reference(ref[None].float(), rec[None].float(), data_range=255).item(), abs=1e-6)
    assert 0.5 < value < 1.0
    assert ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_of_small_images_is_nan_with_a_reason():
    x = random_u8(64, 64)
    assert math.isnan(ms_ssim(x, noisy(x)))
    assert "short side > 160" in ms_ssim_unavailable(64, 64)
    assert ms_ssim_unavailable(161, 300) is None
    assert ms_ssim_unavailable(160, 300) is not None


# ---------------------------------------------------------------------------- patches
@pytest.mark.parametrize("height, width, patch, expected", [
    (512, 768, 256, 6 + 2),
    (768, 512, 256, 6 + 2),
    (512, 512, 64, 64 + 49),
    (768, 768, 128, 36 + 25),
    (768, 768, 256, 9 + 4),
    (300, 383, 256, 1),  # shifted grid needs both sides >= 384
    (384, 384, 256, 1 + 1),
])
def test_patch_counts(height, width, patch, expected):
    patches = extract_patches(torch.zeros(3, height, width, dtype=torch.uint8), patch, 2)
    assert patches.shape == (expected, 3, patch, patch) and patches.dtype == torch.uint8


def test_patch_grid_and_shifted_grid_content():
    img = random_u8(512, 768)
    patches = extract_patches(img, 256, 2)
    assert torch.equal(patches[0], img[:, :256, :256])
    assert torch.equal(patches[1], img[:, :256, 256:512])  # row-major
    assert torch.equal(patches[3], img[:, 256:512, :256])
    assert torch.equal(patches[6], img[:, 128:384, 128:384])  # grid shifted by patch/2 on both axes
    assert torch.equal(patches[7], img[:, 128:384, 384:640])


def test_patch_split_and_whole_image_modes():
    img = random_u8(512, 512)
    assert extract_patches(img, 256, 1).shape[0] == 4  # grid only
    # split 4: offsets 64, 128, 192 with thresholds 448, 384, 320: one extra patch each
    assert torch.equal(extract_patches(img, 256, 4)[4:], torch.stack([img[:, o:o + 256, o:o + 256] for o in (64, 128, 192)]))
    assert torch.equal(extract_patches(img, None, 1), img[None])


def test_image_smaller_than_the_patch_raises():
    with pytest.raises(ImageError, match="200x300 is smaller than the 256x256"):
        extract_patches(torch.zeros(3, 300, 200, dtype=torch.uint8), 256)


# -------------------------------------------------------------------------- FID / KID
class TinyFeatures(nn.Module):
    """uint8 (N, 3, H, W) -> (N, 16): a random conv and global average pooling."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 5, stride=2)
        nn.init.normal_(self.conv.weight, std=0.2, generator=torch.Generator().manual_seed(0))
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.conv(x.float() / 255).relu().mean(dim=(2, 3))


def photo_set():
    return [sample(name) for name in ("astronaut", "coffee", "chelsea", "rocket")]


def distribution(reals, fakes, **kwargs):
    metric = DistributionMetrics(Protocol("t", 64, 2), feature_extractor=TinyFeatures(), **kwargs)
    for ref, rec in zip(reals, fakes):
        metric.update(ref, rec)
    return metric, metric.compute()


def test_fid_and_kid_of_a_set_against_itself():
    photos = photo_set()
    metric, out = distribution(photos, photos)
    assert out["patches"] == 113 + 94 + 52 + 114
    assert abs(out["fid"]) < 1e-3
    # KID's unbiased MMD of a set with itself (subsets of all patches) is -2/m (mean k(x,x) - mean k(x,y)),
    # not 0: check that closed form with the default kernel (x.y / d + 1)^3
    with torch.no_grad():
        f = torch.cat([TinyFeatures()(extract_patches(x, 64, 2)) for x in photos]).double()
    k, m = (f @ f.T / f.shape[1] + 1) ** 3, f.shape[0]
    expected = -2 / m * (k.diag().mean() - (k.sum() - k.diag().sum()) / (m * (m - 1)))
    assert out["kid"] == pytest.approx(expected.item(), rel=1e-3)  # float32 kernels
    info = metric.info()
    assert info["patch"] == 64 and info["split"] == 2 and info["kid_subsets"] == 100 and info["antialias"] is None


def test_fid_and_kid_of_independent_sets_of_one_distribution_are_near_zero():
    noise_a = [random_u8(256, 256, seed=i) for i in range(4)]
    noise_b = [random_u8(256, 256, seed=10 + i) for i in range(4)]
    _, same = distribution(noise_a, noise_b, kid_subset_size=50)
    assert same["patches"] == 100 and same["kid_subset_size"] == 50 and same["notes"] == []
    assert abs(same["fid"]) < 1e-3 and abs(same["kid"]) < 1e-4
    _, different = distribution(photo_set()[:1], [random_u8(512, 512)])
    assert different["fid"] > 1 and different["kid"] > 0.05


def test_fid_and_kid_grow_with_distortion():
    metric = DistributionMetrics(Protocol("t", 64, 2), feature_extractor=TinyFeatures())
    for img in photo_set():
        metric.update(img, noisy(img, 60))
    out = metric.compute()
    assert out["fid"] > 1e-3 and out["kid"] > 0
    # fewer patches (373) than the default subset size (1000): subsets of all patches, recorded
    assert out["kid_subset_size"] == 373 and "subsets of all 373 patches" in out["notes"][0]
    assert metric.info()["kid_subset_size"] == 1000
    metric.reset()
    metric.update(random_u8(64, 64), random_u8(64, 64, seed=1))
    out = metric.compute()
    assert out["fid"] is None and out["kid"] is None and out["patches"] == 1 and "at least 2 patches" in out["notes"][0]


def test_kid_settings_come_from_the_config_and_are_torch_fidelitys_defaults():
    import torch_fidelity.defaults

    kid, defaults = load_kid_settings(), torch_fidelity.defaults.DEFAULTS
    assert (kid.subsets, kid.subset_size, kid.seed) == (defaults["kid_subsets"], defaults["kid_subset_size"], defaults["rng_seed"])
    info = DistributionMetrics(Protocol("t", 64, 2), feature_extractor=TinyFeatures()).info()
    assert (info["kid_subsets"], info["kid_subset_size"], info["kid_seed"]) == (kid.subsets, kid.subset_size, kid.seed)


def test_default_inception_is_read_from_the_fid_inception_file(tmp_path):
    pytest.importorskip("torch_fidelity")
    weights = write_random_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    metric = DistributionMetrics(Protocol("t", 64, 2), weight_paths={"fid_inception": str(weights)}, antialias=False)
    img = random_u8(64, 128)
    metric.update(img, noisy(img))  # compute() is skipped: a 2048-d eigendecomposition takes long on CPU
    assert metric.patches == 2 and metric.fid.real_features_sum.shape == (2048,)
    assert metric.kid.fake_features[0].shape == (2, 2048)
    info = metric.info()
    assert info["antialias"] is False and "TF1" in info["resize"] and str(weights) in info["feature_extractor"]
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(WeightsError, match="bad.pth"):
        DistributionMetrics(Protocol("t", 64, 2), weight_paths={"fid_inception": str(tmp_path / "bad.pth")})


# --------------------------------------------------------------------------- LPIPS / DISTS
@pytest.mark.parametrize("metric_class", [LPIPSAlex, DISTSMetric])
def test_perceptual_metrics_with_random_backbones(metric_class):
    metric = metric_class.from_random(seed=0)
    for x in (sample("chelsea")[:, 50:250, 100:300], random_u8(64, 96)):
        assert abs(metric(x, x)) < 1e-5
        assert metric(x, noisy(x, 40)) > 1e-5
    assert "random" in metric.info()["backbone"]


def test_lpips_and_dists_read_torchvision_backbone_files(tmp_path):
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    alexnet = {k: v for k, v in torchvision.models.AlexNet().state_dict().items() if k.startswith("features.")}
    alexnet["classifier.1.weight"] = torch.zeros(1)  # the real file's classifier is skipped (kept tiny here)
    torch.save(alexnet, tmp_path / "alexnet.pth")
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, tmp_path / "vgg16.pth")
    x = sample("coffee")[:, 100:228, 200:392]
    lp = LPIPSAlex(backbone_weights=tmp_path / "alexnet.pth")
    assert lp(x, x) == 0 and lp(x, noisy(x)) > 0 and lp.info()["backbone"] == str(tmp_path / "alexnet.pth")
    dists = DISTSMetric(backbone_weights=tmp_path / "vgg16.pth", alpha_beta=dists_alpha_beta_file())
    assert abs(dists(x, x)) < 1e-5 and dists(x, noisy(x)) > 0
    with pytest.raises(WeightsError, match="does not fit the LPIPS AlexNet backbone"):
        LPIPSAlex(backbone_weights=tmp_path / "vgg16.pth")


def test_missing_backbones_raise_the_weights_check_message(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match=r"missing external weights 'lpips_alex'.*looked in: TORCH_HOME .*alexnet-owt-7be5be79.pth"):
        LPIPSAlex()
    with pytest.raises(WeightsError, match=r"missing external weights 'dists_vgg16'.*vgg16-397923af.pth"):
        DISTSMetric()
    with pytest.raises(WeightsError, match=r"missing external weights 'fid_inception'.*pt_inception"):
        DistributionMetrics(Protocol("t", 64, 2))
    with pytest.raises(WeightsError, match=r"config path /nowhere/alexnet.pth"):
        LPIPSAlex(weight_paths={"lpips_alex": "/nowhere/alexnet.pth"})


def test_missing_dists_alpha_beta_file_is_explained(tmp_path, monkeypatch):
    import DISTS_pytorch

    monkeypatch.setattr("sys.prefix", str(tmp_path))
    monkeypatch.setattr(DISTS_pytorch, "__file__", str(tmp_path / "pkg" / "__init__.py"))
    with pytest.raises(WeightsError, match=r"DISTS alpha/beta file weights.pt not found.*dists-pytorch"):
        dists_alpha_beta_file()
