"""Benchmark: the entropy path of one image in single-thread CPU time (robust on a shared
machine): the exact hyper-decoder + 4-step context loop (zero residuals, no coding) and the
rANS coder on as many symbols as y has, with random weights of `--model` at `--size` (WxH).
Example: python scripts/bench_entropy.py --model onedc_sd15 --size 768x512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from onedc import load_model_config
from onedc.codec.context_model import QuadtreeContextModel
from onedc.codec.entropy_coding import GaussianCoder
from onedc.codec.exact import exact_copy
from onedc.codec.hyperprior import HyperDecoder
from onedc.eval.complexity import parse_size


def cpu_seconds(fn, repeat: int) -> float:
    """Median process CPU time of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="onedc_sd15")
    parser.add_argument("--size", default="768x512", help="WxH")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_model_config(args.model)
    h, w = parse_size(args.size)
    torch.manual_seed(0)
    networks = nn.ModuleDict({
        "h_dec": HyperDecoder(len(cfg.codec.fsq.levels), cfg.codec.hyper_decoder, cfg.blocks),
        "context": QuadtreeContextModel(cfg.codec.hyper_decoder.channels, cfg.codec.y_channels, cfg.blocks),
    })
    exact = exact_copy(networks, cfg.codec.entropy.exact)
    z_hat = (torch.randint(0, 4, (1, len(cfg.codec.fsq.levels), h // 64, w // 64)).double() - 2) / 2

    def networks_pass():
        _, features = exact["h_dec"](z_hat)
        return exact["context"].run(features, lambda step, scales, means, mask: torch.zeros_like(means))

    coder = GaussianCoder(cfg.codec.entropy)
    n = cfg.codec.y_channels * (h // 16) * (w // 16)
    scales = torch.rand(n) * 8
    symbols = torch.round(torch.randn(n) * scales).int().numpy()
    indexes = coder.indexes(scales).numpy()

    def encode():
        writer = coder.writer()
        writer.write(symbols, indexes)
        return writer.finish()

    stream = encode()

    def decode():
        reader = coder.reader(stream)
        reader.read(indexes, cfg.codec.entropy.max_symbol)
        reader.finish()

    print(f"{args.model}, {w}x{h}, 1 thread, CPU time, median of {args.repeat}")
    print(f"  exact h_dec + context loop   {cpu_seconds(networks_pass, args.repeat):8.3f} s")
    print(f"  rANS encode, {n} symbols  {1000 * cpu_seconds(encode, args.repeat):8.1f} ms")
    print(f"  rANS decode, {n} symbols  {1000 * cpu_seconds(decode, args.repeat):8.1f} ms")


if __name__ == "__main__":
    main()
