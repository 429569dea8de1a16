"""Structured fuzzing of the decoder: mutated .onedc files, each decoded in a worker process
with a memory and a time limit; every case must decode or be refused with a onedc error.

    python scripts/fuzz.py --cases 20000 --seed 1 [--checkpoint CKPT | --model onedc_tiny]

Seed files are valid files of the model (`--seeds DIR` of .onedc files, or made from the
scikit-image photos). Case i applies mutation number i mod (number of mutations), with a random
generator seeded by (seed, i), so any case can be rebuilt alone. The mutations cover every field
of the container (magic, version, flags, name length and bytes, lambda, digest, sizes, stream lengths,
CRC), truncation and extension, splices of two seeds, bit flips in each stream with and without
a repaired CRC, re-headed sizes with a z stream of the declared length (the decompression bomb),
and random bytes. Outcomes: "refused" (a onedc error: which one, with its message's pattern),
"decoded", and the failures "traceback" (any other exception), "crashed" (the worker died),
"timed out" and "over memory" (a MemoryError, or the worker killed at its address-space limit).

Workers are long-lived (a fresh process per case would pay the ~5-9 s import each time); a case
that hangs or kills its worker is counted and the worker replaced. The run folder keeps the seeds,
every case (`cases/<id>.onedc`), `outcomes.jsonl` (one line per case: mutation, outcome, message,
seconds, peak memory), and the outcome table as `table.json` and `table.md`. The exit status is 1
if any case failed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import struct
import sys
import time
import traceback
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

FAILURES = ("traceback", "crashed", "timed out", "over memory")
# how allocation failures at the address-space limit surface from torch, oneDNN and C++ code
ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "could not create a primitive", "bad_alloc")

# ------------------------------------------------------------------------------ the container
# The layout of docs/bitstream.md, read independently of onedc.bitstream (so a reader bug is not
# mirrored here): magic, version, [flags: version 2], n, name, lambda f32, digest 4, H u16, W u16,
# [L_y u32, y: absent in z-only files], z, CRC.
Z_ONLY = 0x01  # flags bit of version 2


@dataclass(frozen=True)
class Layout:
    """Offsets of one valid file's fields."""

    data: bytes
    n_at: int  # the name's length byte; the name follows it
    tail_at: int  # lambda, digest, H, W
    y_length_at: int | None  # None: a z-only file
    y_at: int
    z_at: int
    crc_at: int

    @classmethod
    def parse(cls, data: bytes) -> "Layout":
        version = data[4]
        n_at = 5 if version == 1 else 6
        tail_at = n_at + 1 + data[n_at]
        if version >= 2 and data[5] & Z_ONLY:
            return cls(data, n_at, tail_at, None, tail_at + 12, tail_at + 12, len(data) - 4)
        (y_length,) = struct.unpack_from(">I", data, tail_at + 12)
        return cls(data, n_at, tail_at, tail_at + 12, tail_at + 16, tail_at + 16 + y_length, len(data) - 4)

    @property
    def body(self) -> bytes:
        return self.data[: self.crc_at]

    @property
    def name_at(self) -> int:
        return self.n_at + 1


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def replace(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def flip_bits(data: bytes, start: int, end: int, rng: random.Random) -> bytes:
    d = bytearray(data)
    if end > start:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(start, end)
            d[i] ^= 1 << rng.randrange(8)
    return bytes(d)


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return min(high, max(low, int(math.exp(rng.uniform(math.log(low), math.log(high + 1))))))


# ------------------------------------------------------------------------------ mutations
# Each takes (rng, a seed's layout, all seeds' layouts) and returns the case's bytes.

def m_magic(rng, s, seeds):
    return replace(s.data, rng.randrange(4), bytes([rng.randrange(256)]))


def m_version(rng, s, seeds):
    """Another version byte: each known version and some unknown ones, never the file's own."""
    other = [v for v in (0, 1, 2, 3, 255, rng.randrange(256)) if v != s.data[4]]
    return with_crc(replace(s.body, 4, bytes([rng.choice(other)])))


def m_flags(rng, s, seeds):
    """Another flags byte (a version-1 file gets one, and version 2): unknown bits, or z-only
    set on a file with a y stream and cleared on one without."""
    own = 0 if s.data[4] == 1 else s.data[5]
    flags = bytes([rng.choice([f for f in (0, Z_ONLY, 2, 0x80, 0xFF, rng.randrange(256)) if f != own])])
    if s.data[4] == 1:
        return with_crc(s.body[:4] + b"\x02" + flags + s.body[5:])
    return with_crc(replace(s.body, 5, flags))


def m_name_length(rng, s, seeds):
    return with_crc(replace(s.body, s.n_at, bytes([rng.choice([0, 1, 255, rng.randrange(256)])])))


def m_name_bytes(rng, s, seeds):
    name_length = s.tail_at - s.name_at
    if rng.random() < 0.3:  # another model's name, the length byte kept consistent
        name = rng.choice([b"onedc_sd15", b"onedc_tin", b"onedc_tiny_", b"x"])
        return with_crc(s.body[: s.n_at] + bytes([len(name)]) + name + s.body[s.tail_at:])
    return with_crc(replace(s.body, s.name_at + rng.randrange(name_length), bytes([rng.randrange(256)])))


def m_lambda(rng, s, seeds):
    value = rng.choice([math.nan, math.inf, -math.inf, 0.0, -1.0, 4.6, 0.6, 12.2, rng.uniform(-1e6, 1e6)])
    packed = struct.pack(">f", value) if rng.random() < 0.8 else rng.randbytes(4)
    return with_crc(replace(s.body, s.tail_at, packed))


def m_digest(rng, s, seeds):
    return with_crc(replace(s.body, s.tail_at + 4, rng.randbytes(4)))


def m_size(rng, s, seeds):
    at = s.tail_at + rng.choice([8, 10])  # height or width alone: the z length no longer fits
    (old,) = struct.unpack_from(">H", s.body, at)
    value = rng.choice([0, 1, 65535, max(0, min(65535, old + rng.randint(-70, 70))), rng.randrange(65536)])
    return with_crc(replace(s.body, at, struct.pack(">H", value)))


def m_size_bomb(rng, s, seeds):
    """Re-headed to another size with a z stream of exactly the declared length: only the size
    guard (and the y stream's length) stand between the file and the decoder."""
    height, width = log_uniform(rng, 1, 65535), log_uniform(rng, 1, 65535)
    z_length = math.ceil(14 * math.ceil(height / 64) * math.ceil(width / 64) / 8)
    if z_length > 8 << 20:  # keep the corpus small: such sizes are refused by their size anyway
        z_length = rng.randint(0, 64)
    z = bytes(z_length) if rng.random() < 0.5 else rng.randbytes(z_length)
    header = replace(s.body[: s.tail_at + 8], s.tail_at + 8, struct.pack(">HH", height, width))
    if s.y_length_at is None:
        return with_crc(header + z)
    y = s.data[s.y_at: s.z_at] if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 2))  # or too short for the size
    return with_crc(header + struct.pack(">I", len(y)) + y + z)


def m_y_length(rng, s, seeds):
    s = with_y(rng, s, seeds)
    (old,) = struct.unpack_from(">I", s.body, s.y_length_at)
    value = rng.choice([0, 1, 2**32 - 1, old + rng.randint(-8, 8), rng.randrange(2**32)]) % 2**32
    return with_crc(replace(s.body, s.y_length_at, struct.pack(">I", value)))


def m_y_stream(rng, s, seeds):
    """A new y stream of another length (random, constant, or far longer than any image of the
    declared size can fill), its length field consistent."""
    s = with_y(rng, s, seeds)
    y_length, kind = s.z_at - s.y_at, rng.random()
    if kind < 0.7:
        y = rng.randbytes(rng.randint(0, 2 * y_length + 8))
    elif kind < 0.85:
        y = bytes([rng.choice([0, 255])]) * rng.randint(0, 64)
    else:
        y = rng.randbytes(rng.randint(2000, 20000))
    return with_crc(s.body[: s.y_length_at] + struct.pack(">I", len(y)) + y + s.data[s.z_at: s.crc_at])


def with_y(rng, s, seeds) -> Layout:
    """`s`, or a seed with a y stream if `s` is z-only (and one exists)."""
    return s if s.y_length_at is not None else next((t for t in rng.sample(seeds, len(seeds)) if t.y_length_at is not None), s)


def m_truncate(rng, s, seeds):
    cut = s.data[: rng.randrange(len(s.data))]
    return with_crc(cut[:-4]) if rng.random() < 0.3 and len(cut) > 4 else cut


def m_extend(rng, s, seeds):
    extra = rng.randbytes(rng.randint(1, 4096))
    return with_crc(s.body + extra) if rng.random() < 0.5 else s.data + extra


def m_splice(rng, s, seeds):
    other = rng.choice(seeds)
    spliced = s.data[: rng.randrange(len(s.data) + 1)] + other.data[rng.randrange(len(other.data) + 1):]
    return with_crc(spliced[:-4]) if rng.random() < 0.5 and len(spliced) > 4 else spliced


def m_flip_header(rng, s, seeds):
    return flip_bits(s.data, 0, s.y_at, rng)


def m_flip_y(rng, s, seeds):
    s = with_y(rng, s, seeds)
    return flip_bits(s.data, s.y_at, s.z_at, rng)


def m_flip_y_crc(rng, s, seeds):
    s = with_y(rng, s, seeds)
    return with_crc(flip_bits(s.body, s.y_at, s.z_at, rng))


def m_flip_z(rng, s, seeds):
    return flip_bits(s.data, s.z_at, s.crc_at, rng)


def m_flip_z_crc(rng, s, seeds):
    return with_crc(flip_bits(s.body, s.z_at, s.crc_at, rng))


def m_crc(rng, s, seeds):
    return s.body + rng.randbytes(4)


def m_fill(rng, s, seeds):
    """Every stream byte set to one value (long escape runs), CRC repaired."""
    return with_crc(s.body[: s.y_at] + bytes([rng.choice([0x00, 0xFF, 0x0F, 0xF0])]) * (s.crc_at - s.y_at))


def m_random(rng, s, seeds):
    prefix = s.data[:5] if rng.random() < 0.5 else b""
    data = prefix + rng.randbytes(rng.randint(0, 400))
    return with_crc(data) if rng.random() < 0.5 else data


MUTATIONS = {
    "magic": m_magic, "version+crc": m_version, "flags+crc": m_flags, "name length+crc": m_name_length, "name bytes+crc": m_name_bytes,
    "lambda+crc": m_lambda, "digest+crc": m_digest, "size+crc": m_size, "size bomb+crc": m_size_bomb,
    "y length+crc": m_y_length, "y stream+crc": m_y_stream, "truncate": m_truncate, "extend": m_extend,
    "splice": m_splice, "flip header": m_flip_header, "flip y": m_flip_y, "flip y+crc": m_flip_y_crc,
    "flip z": m_flip_z, "flip z+crc": m_flip_z_crc, "crc": m_crc, "fill+crc": m_fill, "random": m_random,
}


def make_case(seed: int, index: int, seeds: list[Layout]) -> tuple[str, bytes]:
    """(mutation name, bytes) of case `index`: a pure function of (seed, index, seeds)."""
    rng = random.Random(f"{seed}:{index}")
    name = list(MUTATIONS)[index % len(MUTATIONS)]
    return name, MUTATIONS[name](rng, rng.choice(seeds), seeds)


# ------------------------------------------------------------------------------ workers
def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def worker(conn, model_spec: dict, memory_mb: int, max_pixels: int, latents_only: bool, warm_up: str) -> None:
    """Load the model, then decode the files whose paths arrive on `conn` (to the image, or to
    the latents only), answering with one outcome dict each, under an address-space limit of
    what it holds + `memory_mb`."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    import onedc
    from onedc.errors import OneDCError

    torch.set_num_threads(1)
    if model_spec.get("checkpoint"):
        model = onedc.OneDC.from_pretrained(model_spec["checkpoint"]).eval()
    else:
        model = onedc.OneDC.untrained(onedc.load_model_config(model_spec["model"])).eval()
    decode = model.decode_latents if latents_only else model.decompress
    decode(Path(warm_up).read_bytes(), max_pixels=max_pixels)  # lazy set-up outside the cases
    limit = address_space() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    conn.send("ready")
    while True:
        path = conn.recv()
        data = Path(path).read_bytes()
        before = rss()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS
        start = time.perf_counter()
        result = {"outcome": "decoded", "message": ""}
        try:
            decoded = decode(data, max_pixels=max_pixels)
            if not bool(torch.isfinite(decoded.y_hat if latents_only else decoded).all()):
                result = {"outcome": "traceback", "message": "decoded image is not finite"}
        except OneDCError as e:
            result = {"outcome": "refused", "error": type(e).__name__, "message": str(e)}
        except MemoryError as e:
            result = {"outcome": "over memory", "message": f"MemoryError: {e}"}
        except Exception as e:
            over = any(sign in str(e).lower() for sign in ALLOCATION_FAILURES)
            result = {"outcome": "over memory" if over else "traceback", "message": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = time.perf_counter() - start
        result["peak_mb"] = max(0, peak_rss() - before) / 2**20
        conn.send(result)


class Pool:
    """Long-lived workers; a case that outlives its time limit or kills its worker is counted
    and the worker replaced."""

    def __init__(self, size: int, args: tuple, timeout: float):
        self.ctx = mp.get_context("spawn")
        self.args, self.timeout = args, timeout
        self.workers = [self._start() for _ in range(size)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=worker, args=(child, *self.args), daemon=True)
        process.start()
        child.close()
        return {"process": process, "conn": parent, "case": None, "since": None, "ready": False}

    def _replace(self, w) -> None:
        if w["process"].is_alive():
            w["process"].kill()
        w["process"].join()
        self.workers[self.workers.index(w)] = self._start()

    def run(self, cases: list[tuple[int, Path]]):
        """Yield (case index, result) as cases finish."""
        pending = list(reversed(cases))
        while pending or any(w["case"] is not None for w in self.workers):
            for w in self.workers:
                if w["ready"] and w["case"] is None and pending:
                    index, path = pending.pop()
                    w["conn"].send(str(path))
                    w["case"], w["since"] = index, time.monotonic()
            ready = wait([w["conn"] for w in self.workers] + [w["process"].sentinel for w in self.workers], timeout=1.0)
            for w in list(self.workers):
                ended = not w["process"].is_alive()
                if w["conn"] in ready:
                    try:
                        message = w["conn"].recv()
                    except (EOFError, OSError):  # the worker died
                        ended = True
                    else:
                        if message == "ready":
                            w["ready"] = True
                        else:
                            yield w["case"], message
                            w["case"] = None
                        continue
                if ended:
                    code = w["process"].exitcode
                    if w["case"] is None:
                        raise RuntimeError(f"a fuzz worker failed (exit code {code}) outside a case; run it by hand to see why")
                    # SIGKILL: the kernel's OOM killer (or an allocator at the address-space limit)
                    yield w["case"], {"outcome": "over memory" if code == -9 else "crashed",
                                      "message": f"worker exited with code {code}", "seconds": time.monotonic() - w["since"]}
                    self._replace(w)
                elif w["case"] is not None and time.monotonic() - w["since"] > self.timeout:
                    yield w["case"], {"outcome": "timed out", "message": f"no answer in {self.timeout:g} s",
                                      "seconds": time.monotonic() - w["since"]}
                    self._replace(w)

    def close(self) -> None:
        for w in self.workers:
            w["process"].kill()
            w["process"].join()


# ------------------------------------------------------------------------------ seeds and report
def make_seeds(model_spec: dict, folder: Path) -> list[Path]:
    """Valid files of the model from crops of the scikit-image photos, written to `folder`."""
    import numpy as np

    import onedc
    from onedc.data.sources import SamplePhotos
    from onedc.image_io import from_uint8

    if model_spec.get("checkpoint"):
        model = onedc.OneDC.from_pretrained(model_spec["checkpoint"]).eval()
    else:
        model = onedc.OneDC.untrained(onedc.load_model_config(model_spec["model"])).eval()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, h, w in [("chelsea", 64, 96), ("coffee", 130, 70), ("rocket", 1, 1), ("astronaut", 128, 128), ("camera", 200, 256)]:
        x = from_uint8(np.asarray(SamplePhotos([name]).load(0)[0]))[:, :h, :w]
        path = folder / f"{name}_{h}x{w}.onedc"
        path.write_bytes(model.compress(x))
        paths.append(path)
    return paths


def pattern(message: str) -> str:
    """A refusal's message reduced to its kind: the text before the first colon and the next five
    words (without file-specific details), numbers (decimal or 0x hexadecimal) as #."""
    head, _, detail = re.sub(r"0x[0-9a-fA-F]+|\d[\d,.]*", "#", message).partition(":")
    return f"{head}: {' '.join(detail.split()[:5])}" if detail else head


def tables(records: list[dict]) -> tuple[dict, str]:
    """The outcome table as JSON and Markdown."""
    outcomes = Counter(r["outcome"] for r in records)
    refusals = Counter(f"{r['error']}: {pattern(r['message'])}" for r in records if r["outcome"] == "refused")
    by_mutation = defaultdict(Counter)
    for r in records:
        by_mutation[r["mutation"]][r["outcome"]] += 1
    slowest = max(records, key=lambda r: r.get("seconds", 0.0))
    largest = max(records, key=lambda r: r.get("peak_mb", 0.0))
    summary = {
        "cases": len(records), "outcomes": dict(outcomes), "failures": sum(outcomes[f] for f in FAILURES),
        "refusals": dict(refusals.most_common()), "by_mutation": {m: dict(c) for m, c in by_mutation.items()},
        "slowest": {k: slowest.get(k) for k in ("id", "mutation", "outcome", "seconds")},
        "largest_memory": {k: largest.get(k) for k in ("id", "mutation", "outcome", "peak_mb")},
    }
    columns = ["refused", "decoded", *FAILURES]
    lines = [f"{len(records)} cases: " + ", ".join(f"{k} {outcomes[k]}" for k in columns), "",
             "| mutation | cases | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for m, c in by_mutation.items():
        lines.append(f"| {m} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in columns) + " |")
    lines += ["", "| refused with | cases |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in refusals.most_common()]
    lines += ["", f"Slowest case: {slowest['id']} ({slowest['mutation']}, {slowest['outcome']}) {slowest.get('seconds', 0):.3f} s; "
              f"largest memory: {largest['id']} ({largest['mutation']}, {largest['outcome']}) "
              f"{largest.get('peak_mb', 0):.1f} MB above the worker's resident set."]
    return summary, "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="checkpoint folder of the model (default: the untrained --model)")
    parser.add_argument("--model", default="onedc_tiny")
    parser.add_argument("--seeds", help="folder of valid .onedc files of that model (default: made from sample photos)")
    parser.add_argument("--out", help="run folder (default: outputs/fuzz/seed<S>_<N>)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space per worker beyond what it holds after loading")
    parser.add_argument("--max-pixels", type=int, default=512 * 512,
                        help="the decoder's size limit (small, so decodable re-headed sizes stay quick)")
    parser.add_argument("--latents", action="store_true", help="decode to the latents only (no generator: faster)")
    args = parser.parse_args()
    out = Path(args.out or f"outputs/fuzz/seed{args.seed}_{args.cases}")
    model_spec = {"checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None, "model": args.model}
    (out / "cases").mkdir(parents=True, exist_ok=True)
    if args.seeds:
        seed_paths = sorted(Path(args.seeds).glob("*.onedc"))
        (out / "seeds").mkdir(exist_ok=True)
        for p in seed_paths:
            (out / "seeds" / p.name).write_bytes(p.read_bytes())
    else:
        seed_paths = make_seeds(model_spec, out / "seeds")
    seeds = [Layout.parse(p.read_bytes()) for p in seed_paths]
    cases = []
    for i in range(args.cases):
        mutation, data = make_case(args.seed, i, seeds)
        path = out / "cases" / f"{i:06d}.onedc"
        path.write_bytes(data)
        cases.append((i, path, mutation))
    mutation_of = {i: m for i, _, m in cases}
    started = time.time()
    pool = Pool(args.workers, (model_spec, args.memory_mb, args.max_pixels, args.latents, str(seed_paths[0])), args.timeout)
    records = []
    try:
        with open(out / "outcomes.jsonl", "w") as log:
            for index, result in pool.run([(i, p) for i, p, _ in cases]):
                record = {"id": f"{index:06d}", "mutation": mutation_of[index], **result}
                records.append(record)
                log.write(json.dumps(record) + "\n")
                if len(records) % 1000 == 0:
                    print(f"{len(records)} cases, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        pool.close()
    records.sort(key=lambda r: r["id"])
    summary, markdown = tables(records)
    summary.update({"seed": args.seed, "model": model_spec, "max_pixels": args.max_pixels, "latents_only": args.latents, "timeout_s": args.timeout,
                    "memory_mb": args.memory_mb, "workers": args.workers, "wall_s": round(time.time() - started, 1)})
    (out / "table.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(markdown)
    print(markdown)
    print(f"run folder: {out} ({summary['wall_s']} s)")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
