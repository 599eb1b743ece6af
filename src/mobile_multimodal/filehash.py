"""sha256 of a file, streamed in 1 MiB blocks. One helper for every place that hashes files:
model manifests, the integrity monitor and database backups. Imports nothing heavy, so the
store and security layers can use it without pulling in torch."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
