"""Checksums that let a reader name a corrupt file: SHA-256 of a file's bytes, and of a JSON
document's entries (so a JSON file can carry its own checksum)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_checksum(document: dict) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, no spaces) of every entry but "checksum"."""
    body = {k: v for k, v in document.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
