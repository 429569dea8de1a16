"""Training batches (docs/design.md 6.1).

Per sample: resize the short side up to the base crop if smaller, random base crop, random
horizontal flip, then the step's batch policy (resize to its size, or a random crop of its size),
values in [-1, 1]. Per (micro-)step: one policy for the whole batch, drawn from the policy
weights with a hash of (seed, step), so every rank draws the same one; its batch size is
round(batch_size * batch_fraction) per rank.

Everything random is a pure function of (seed, step, position): the epoch permutations, the
policies and each sample's crop and flip. Resuming at step s therefore replays exactly the data
an uninterrupted run would have seen, with no data-loader state to save.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Sampler

from ..errors import ConfigError, ImageError
from ..image_io import from_uint8

log = logging.getLogger(__name__)


def stable_hash(*keys: object) -> int:
    """A 63-bit integer hash of `keys` that is the same on every machine and Python run."""
    digest = hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class BatchPolicy:
    name: str
    weight: float
    mode: str  # "resize" or "crop"
    size: int
    batch_fraction: float


def policies_from_config(items) -> list[BatchPolicy]:
    policies = [BatchPolicy(p.name, float(p.weight), p.mode, int(p.size), float(p.batch_fraction)) for p in items]
    if not policies or any(p.weight < 0 for p in policies) or sum(p.weight for p in policies) <= 0:
        raise ConfigError("data.policies needs at least one policy and positive weights")
    for p in policies:
        if p.mode not in ("resize", "crop") or p.size <= 0 or p.batch_fraction <= 0:
            raise ConfigError(f"data policy {p.name}: mode must be resize or crop, size and batch_fraction positive")
    return policies


def choose_policy(policies: list[BatchPolicy], seed: int, step: int) -> int:
    """Index of the policy of `step`: identical on all ranks and across restarts."""
    u = stable_hash(seed, "policy", step) / 2**63
    total = sum(p.weight for p in policies)
    acc = 0.0
    for i, p in enumerate(policies):
        acc += p.weight / total
        if u < acc:
            return i
    return len(policies) - 1


def policy_batch_size(policy: BatchPolicy, batch_size: int) -> int:
    return max(1, round(batch_size * policy.batch_fraction))


class StepBatchSampler(Sampler):
    """Yields, for steps start_step, start_step + 1, ..., this rank's list of sample requests
    (dataset index, sample seed, policy index). The global sample stream is an endless
    sequence of seeded epoch permutations; each step takes world_size * batch samples."""

    def __init__(self, num_samples: int, policies: list[BatchPolicy], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, start_step: int = 0):
        self.num_samples, self.policies, self.batch_size, self.seed = num_samples, policies, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self._perms: dict[int, torch.Tensor] = {}

    def policy(self, step: int) -> BatchPolicy:
        return self.policies[choose_policy(self.policies, self.seed, step)]

    def cursor(self, step: int) -> int:
        """Position in the global sample stream where `step` starts."""
        return sum(policy_batch_size(self.policy(s), self.batch_size) for s in range(step)) * self.world_size

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(stable_hash(self.seed, "epoch", epoch)))}
        return int(self._perms[epoch][offset])

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step, position = self.start_step, self.cursor(self.start_step)
        while True:
            p = choose_policy(self.policies, self.seed, step)
            b = policy_batch_size(self.policies[p], self.batch_size)
            mine = position + self.rank * b
            yield [(self._index(mine + j), stable_hash(self.seed, "sample", mine + j), p) for j in range(b)]
            position += self.world_size * b
            step += 1


class TrainingCrops(torch.utils.data.Dataset):
    """Turns a sample request into {"image": (3, S, S) in [-1, 1], "caption", "policy"}.
    An image that cannot be decoded, or whose short side is below `min_side`, is skipped with a
    warning: the next index is used instead (deterministically)."""

    def __init__(self, source, policies: list[BatchPolicy], min_side: int, max_skips: int = 100):
        self.source, self.policies, self.min_side, self.max_skips = source, policies, min_side, max_skips
        self.base = max(p.size for p in policies)

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, index: int) -> tuple[Image.Image, str]:
        for k in range(self.max_skips):
            i = (index + k) % len(self.source)
            try:
                image, caption = self.source.load(i)
            except ImageError as e:
                log.warning("skipping unreadable training image %s", e)
                continue
            if min(image.size) < self.min_side:
                log.warning("skipping training image %s: %dx%d is below data.min_side=%d", self.source.name(i), *image.size, self.min_side)
                continue
            return image, caption
        raise ImageError(f"{self.max_skips} training images in a row were unreadable or too small (from index {index})")

    def __getitem__(self, request: tuple[int, int, int]) -> dict:
        index, sample_seed, p = request
        image, caption = self._load(index)
        rng = random.Random(sample_seed)
        w, h = image.size
        if min(w, h) < self.base:
            scale = self.base / min(w, h)
            image = image.resize((max(self.base, round(w * scale)), max(self.base, round(h * scale))), Image.BILINEAR)
        image = _random_crop(image, self.base, rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        policy = self.policies[p]
        if policy.size != self.base:
            image = image.resize((policy.size, policy.size), Image.BILINEAR) if policy.mode == "resize" else _random_crop(image, policy.size, rng)
        return {"image": from_uint8(np.asarray(image)), "caption": caption, "policy": policy.name}


def _random_crop(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    w, h = image.size
    left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    return image.crop((left, top, left + size, top + size))


def collate(samples: list[dict]) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "policy": samples[0]["policy"],
    }
