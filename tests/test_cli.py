import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import run_python
from onedc.bitstream import read
from onedc.cli import main


@pytest.fixture()
def chelsea_png(tmp_path) -> Path:
    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    return path


def test_compress_then_decompress_untrained(chelsea_png, tmp_path, capsys):
    out = tmp_path / "chelsea.onedc"
    assert main(["compress", str(chelsea_png), str(out), "--model", "onedc_tiny"]) == 0
    captured = capsys.readouterr()
    assert "untrained onedc_tiny" in captured.err
    size = out.stat().st_size
    assert f"{size} bytes" in captured.out and f"{8 * size / (300 * 451):.5f} bpp" in captured.out
    header, _, _ = read(out.read_bytes())
    assert (header.model.name, header.height, header.width) == ("onedc_tiny", 300, 451)

    rec = tmp_path / "chelsea.safetensors"
    assert main(["decompress", str(out), str(rec)]) == 0
    tensors = load_file(rec)
    assert tensors["y_hat"].shape == (1, 16, 20, 32) and tensors["c"].shape == (1, 32, 5, 8)


def test_decompress_writes_the_decoded_png(tiny_model, chelsea_png, tmp_path, capsys):
    out, png = tmp_path / "c.onedc", tmp_path / "c.png"
    assert main(["compress", str(chelsea_png), str(out)]) == 0
    assert main(["decompress", str(out), str(png)]) == 0
    with Image.open(png) as im:
        assert (im.mode, im.size) == ("RGB", (451, 300))
        pixels = np.asarray(im)
    expected = ((tiny_model.decompress(out.read_bytes()) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, expected)


def test_checkpoint_round_trip_and_mismatch(fitted_model, chelsea_png, tmp_path, capsys):
    ckpt, out, rec = tmp_path / "ckpt", tmp_path / "c.onedc", tmp_path / "c.safetensors"
    fitted_model.save_pretrained(ckpt)
    assert main(["compress", str(chelsea_png), str(out), "--checkpoint", str(ckpt)]) == 0
    assert main(["decompress", str(out), str(rec), "--checkpoint", str(ckpt)]) == 0
    assert torch.equal(load_file(rec)["y_hat"], fitted_model.decode_latents(out.read_bytes()).y_hat)
    capsys.readouterr()
    # without its checkpoint, the untrained model of the same config refuses the file
    assert main(["decompress", str(out), str(rec)]) == 1
    assert "model mismatch" in capsys.readouterr().err


def test_input_conversions_are_reported(tmp_path, capsys):
    rgba = np.zeros((20, 30, 4), np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), str(tmp_path / "a.onedc")]) == 0
    assert "alpha channel composited over white" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "{tmp}/text.png", "{tmp}/x.onedc"], "not a readable image"),
        (["compress", "{tmp}/missing.png", "{tmp}/x.onedc"], "no such image file"),
        (["compress", "{tmp}/ok.png", "{tmp}/x.onedc", "--model", "nope"], "unknown model config"),
        (["decompress", "{tmp}/text.png", "{tmp}/x.safetensors"], "bad magic"),
        (["decompress", "{tmp}/missing.onedc", "{tmp}/x.safetensors"], "cannot read"),
        (["decompress", "{tmp}/text.png", "{tmp}/x.unknown"], "unknown output type"),
        (["compress", "{tmp}/text.png", "{tmp}/x.onedc", "--checkpoint", "{tmp}/none"], "not a readable image"),
    ],
)
def test_errors_exit_non_zero_with_a_message(tmp_path, capsys, argv, message):
    (tmp_path / "text.png").write_text("hello")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("onedc: error:") and message in err and "Traceback" not in err
    assert not any(p.name.startswith("x.") for p in tmp_path.iterdir())


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "onedc"
    assert exe.is_file(), "the onedc entry point is not installed beside the interpreter"
    run = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("onedc ")


def test_the_three_commands_share_version_weights_and_a_torch_free_help(capsys):
    from onedc import __version__
    from onedc.eval.cli import main as eval_main
    from onedc.train.cli import hydra_arguments

    for command, program in ((main, "onedc"), (eval_main, "onedc-eval"), (hydra_arguments, "onedc-train")):
        with pytest.raises(SystemExit) as stop:
            command(["--version"])
        assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"{program} {__version__}"
    # one spelling for weight locations: --weights NAME=PATH (onedc-train turns it into Hydra's override)
    assert hydra_arguments(["experiment=quickstart", "--weights", "sd21_vae=/v", "--weights=lpips_vgg=/x.pth"]) == [
        "experiment=quickstart", "weights.sd21_vae=/v", "weights.lpips_vgg=/x.pth"]
    with pytest.raises(SystemExit):
        hydra_arguments(["--weights", "sd99_vae=/v"])
    assert "NAME one of dmd2_unet" in capsys.readouterr().err
    # --help builds every parser without importing torch (it takes seconds to import)
    out = run_python("-c", "import sys\nfrom onedc.cli import build_parser\nfrom onedc.eval.cli import _parser\n"
                     "from onedc.train.cli import hydra_arguments\nbuild_parser(); _parser()\nprint('torch' in sys.modules)")
    assert out.strip() == "False"


def test_model_libraries_are_imported_once_with_their_objects_frozen():
    """The coding commands import torch, diffusers and peft with the garbage collector paused
    and freeze what the imports made (not collected again, at exit either); once per process,
    so what the program makes later stays collectable."""
    out = run_python("-c", """
import gc, sys
from onedc.cli_common import import_model_libraries
import_model_libraries()
frozen = gc.get_freeze_count()
print("onedc.model" in sys.modules, gc.isenabled(), frozen > 100_000)
cycle = [[]]
cycle[0].append(cycle)
del cycle
import_model_libraries()
print(gc.get_freeze_count() == frozen, gc.collect() > 0)
""")
    assert out.split() == ["True"] * 5
