"""Structured fuzzing (scripts/fuzz.py): 2,000 mutated files, each decoded in a worker process
under memory and time limits, either decode or are refused with a onedc error."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"
N_CASES = 2000


def test_fuzzed_files_decode_or_are_refused_with_a_onedc_error(fitted_model, photos, tmp_path):
    checkpoint, seeds, out = tmp_path / "ckpt", tmp_path / "seeds", tmp_path / "run"
    fitted_model.save_pretrained(checkpoint)
    seeds.mkdir()
    for name, h, w in [("chelsea", 64, 96), ("coffee", 130, 70), ("rocket", 1, 1), ("astronaut", 128, 128)]:
        (seeds / f"{name}.onedc").write_bytes(fitted_model.compress(photos[name][:, :h, :w]))
    result = subprocess.run([sys.executable, str(SCRIPT), "--cases", str(N_CASES), "--seed", "1234", "--checkpoint", str(checkpoint),
                             "--seeds", str(seeds), "--out", str(out), "--workers", "2", "--latents", "--timeout", "120"],
                            capture_output=True, text=True, timeout=900)
    table = json.loads((out / "table.json").read_text())
    assert result.returncode == 0 and table["failures"] == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert table["cases"] == N_CASES == len((out / "outcomes.jsonl").read_text().splitlines())
    assert len(list((out / "cases").glob("*.onedc"))) == N_CASES and (out / "table.md").is_file()
    by_mutation, refusals = table["by_mutation"], table["refusals"]
    assert all(sum(c.values()) >= N_CASES // len(by_mutation) for c in by_mutation.values())
    # the CRC-repaired stream mutations reached the entropy decoders, whose own checks refused them
    assert by_mutation["y stream+crc"].get("refused", 0) > 0 and by_mutation["flip y+crc"].get("refused", 0) > 0
    assert "BitstreamError: corrupt y stream: data left over after the" in refusals
    assert "BitstreamError: corrupt z stream: non-zero padding bits" in refusals
    # re-headed sizes reached the size guard, and the y stream's length check
    assert any(k.startswith("SizeLimitError: refusing to decode") for k in refusals)
    assert "BitstreamError: length mismatch: the image size needs #" in refusals  # the y stream's length, both ways
    assert "BitstreamError: length mismatch: a y stream of #" in refusals
    assert by_mutation["flip y"].get("decoded", 0) == 0 and by_mutation["crc"].get("decoded", 0) == 0  # the CRC catches them
    assert table["slowest"]["seconds"] < 30 and table["largest_memory"]["peak_mb"] < 1024
