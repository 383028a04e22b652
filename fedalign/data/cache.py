"""Where built data sets live on disk, and how they get there without ever leaving a half-written file."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "FEDALIGN_DATA_DIR"
CACHE_FILE_MODE = 0o644


def default_cache_dir() -> Path:
    """``$FEDALIGN_DATA_DIR/datasets`` when that is set, else ``~/.cache/fedalign/datasets``."""
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return Path(root).expanduser() / "datasets"
    return Path.home() / ".cache" / "fedalign" / "datasets"


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that readers see either the old file or the whole new one.

    Several workers on one machine may build the same data set at once; each writes its own temporary file
    in the target directory (same file system, so ``os.replace`` is atomic) and the last rename wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, CACHE_FILE_MODE)  # mkstemp makes it owner-only; other local users may share it
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named arrays of a cached file, or None when it is missing, truncated or lacks a key (rebuild)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
