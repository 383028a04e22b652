"""Content-addressed artifact store: safetensors files named by their sha256 under ``DATA_DIR/artifacts``.

A file is written in two moves. ``stage`` writes the bytes to a temp file on the same file system and
hashes them, holding no lock; ``adopt`` then moves the file into place (``os.replace``, atomic) while the
caller's transaction holds the blob lock (`backend.database.lock_blob`) and before it commits the row
that references the file. Equal content lands on one file (dedup); the database keeps the metadata.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fedalign import params

CHUNK = 1 << 20


@dataclass(frozen=True)
class Staged:
    """Bytes written to a temp file, hashed, not yet in the store."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def temp_file(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-", suffix=".part")
        os.close(fd)
        return Path(name)

    def stage_bytes(self, data: bytes) -> Staged:
        path = self.temp_file()
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return Staged(path, hashlib.sha256(data).hexdigest(), len(data))

    def stage_state(self, state: Mapping[str, torch.Tensor]) -> Staged:
        return self.stage_bytes(params.to_bytes(state))

    def stage_file(self, path: Path) -> Staged:
        """Hash a temp file that the caller wrote (and fsynced) in ``self.tmp``."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return Staged(path, digest.hexdigest(), size)

    def adopt(self, staged: Staged) -> Path:
        """Move a staged file into place; with the content already stored, keep that file. Blob lock held."""
        final = self.path(staged.sha256)
        if final.is_file():
            staged.discard()
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        _fsync_dir(final.parent)
        return final

    def delete(self, sha256: str) -> None:
        """Remove a file no row references any more. Blob lock held."""
        self.path(sha256).unlink(missing_ok=True)

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def load(self, sha256: str) -> dict[str, torch.Tensor]:
        return params.load_file(self.path(sha256))


def _fsync_dir(path: Path) -> None:
    # The rename itself must survive a crash, not only the file's bytes.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
