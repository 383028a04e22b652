"""A node's own data from files: a folder of images per class, or arrays in an ``.npz`` file."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fedalign.data.core import DatasetError, NodeData, Split, images_to_tensor, labels_to_tensor, node_data
from fedalign.data.splits import SPLIT_FRACTIONS, stratified_split

DEFAULT_IMAGE_SIZE: tuple[int, int] = (28, 28)  # (height, width)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_SIZE_OPTION = re.compile(r"^size=(\d+)(?:x(\d+))?$")
_CHANNELS = (1, 3)

# ---------------------------------------------------------------------------------------------- imagefolder


def parse_imagefolder_argument(argument: str) -> tuple[Path, tuple[int, int]]:
    """``<path>`` or ``<path>?size=S`` or ``<path>?size=HxW`` -> (path, (height, width))."""
    path, sep, option = argument.rpartition("?")
    if not sep:
        return Path(argument).expanduser(), DEFAULT_IMAGE_SIZE
    match = _SIZE_OPTION.match(option)
    if match is None:
        raise DatasetError(
            f"imagefolder option {option!r} is not understood; expected 'size=S' or "
            f"'size=HxW' after '?', e.g. 'imagefolder:/data/cats?size=32'"
        )
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 1 or width < 1:
        raise DatasetError(f"imagefolder size must be positive, got {height}x{width}")
    return Path(path).expanduser(), (height, width)


def _image_files(folder: Path) -> list[Path]:
    # Recursive and sorted so the sample order, hence the split, does not depend on the file system.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def load_imagefolder(spec: str, argument: str) -> NodeData:
    """One sub-folder per class, class index = position of the folder's name in sorted order. Images of any
    size and mode become RGB at the configured size (stretched, not cropped). A class folder may be empty,
    so that nodes holding different subsets of the classes still agree on the indices."""
    root, size = parse_imagefolder_argument(argument)
    if not root.is_dir():
        raise DatasetError(f"imagefolder path {root} is not a directory; expected one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"imagefolder {root} has no class sub-folders; expected e.g. {root}/cat/*.png")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = _image_files(root / name)
        files += found
        labels += [index] * len(found)
    if not files:
        raise DatasetError(
            f"imagefolder {root} has no images in its class folders {classes}; "
            f"expected files ending in one of {sorted(IMAGE_SUFFIXES)}"
        )
    images = np.stack([_read_image(path, size) for path in files])
    y = np.asarray(labels, dtype=np.int64)
    parts = [Split(images_to_tensor(images[i]), labels_to_tensor(y[i])) for i in stratified_split(y)]
    return node_data(spec, *parts, num_classes=len(classes))


# ---------------------------------------------------------------------------------------------------- npz


def _samples_to_tensor(x: np.ndarray, where: str) -> torch.Tensor:
    """Accepted layouts: (N, D) vectors, any real values; images (N, H, W) grey, (N, H, W, C) or (N, C, H, W)
    with C in {1, 3}, either uint8 0..255 or float in [0, 1]. A last axis of size 1 or 3 is read as channels
    last; otherwise axis 1 must be the channels."""
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DatasetError(f"{where} has dtype {x.dtype}; expected uint8 or floating point samples")
    if x.ndim == 2:
        values = x.astype(np.float32)
        if not np.isfinite(values).all():
            raise DatasetError(f"{where} holds NaN or infinite values; vector samples must be finite")
        return torch.from_numpy(values)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in _CHANNELS:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4 or x.shape[1] not in _CHANNELS:
        raise DatasetError(
            f"{where} has shape {x.shape}; expected (N, D) vectors or images (N, H, W), "
            f"(N, H, W, C) or (N, C, H, W) with C = 1 or 3"
        )
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{where} has integer pixels outside 0..255; expected uint8 images")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0))
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise DatasetError(
            f"{where} has float pixels outside [0, 1] (or NaN); expected float images in "
            f"[0, 1] or uint8 images in 0..255"
        )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels_to_tensor(y: np.ndarray, n: int, where: str) -> torch.Tensor:
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{where} has shape {y.shape}; expected ({n},), one label per sample")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where} has dtype {y.dtype}; expected integer class labels 0..K-1")
    if y.size and y.min() < 0:
        raise DatasetError(f"{where} has negative labels; expected class labels 0..K-1")
    return labels_to_tensor(y)


def _read_archive(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"npz file {path} does not exist; expected an .npz with arrays 'x' and 'y'")
    try:
        # allow_pickle=False: a data file must never be able to run code.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} holds a single array; expected an .npz with arrays 'x' and 'y'")
        with loaded as archive:
            return {key: archive[key] for key in archive.files}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read npz file {path}: {exc}") from exc


def _split_from_arrays(arrays: dict[str, np.ndarray], suffix: str, path: Path) -> Split:
    x_key, y_key = f"x{suffix}", f"y{suffix}"
    x = _samples_to_tensor(arrays[x_key], f"{path}:{x_key}")
    return Split(x, _labels_to_tensor(arrays[y_key], x.shape[0], f"{path}:{y_key}"))


def load_npz(spec: str, argument: str) -> NodeData:
    """Arrays ``x`` and ``y``, with optional ``x_val``/``y_val`` and ``x_test``/``y_test``. A split that is
    not given is carved out of ``x`` (stratified, fixed seed): 15% of it each for validation and test."""
    path = Path(argument).expanduser()
    arrays = _read_archive(path)
    for suffix in ("", "_val", "_test"):
        if (f"x{suffix}" in arrays) != (f"y{suffix}" in arrays) or (not suffix and "x" not in arrays):
            raise DatasetError(
                f"npz file {path} has arrays {sorted(arrays)}; expected 'x' with 'y', and "
                f"optionally 'x_val' with 'y_val' and 'x_test' with 'y_test'"
            )
    given = {
        name: _split_from_arrays(arrays, f"_{name}", path)
        for name in ("val", "test")
        if f"x_{name}" in arrays
    }
    pool = _split_from_arrays(arrays, "", path)
    if len(pool) == 0:
        raise DatasetError(f"npz file {path} has no samples in 'x'")
    missing = [name for name in ("val", "test") if name not in given]
    # The carved-out parts keep their default share of the pool; the train split takes the rest.
    shares = {"val": SPLIT_FRACTIONS[1], "test": SPLIT_FRACTIONS[2]}
    parts = stratified_split(pool.y.numpy(), fractions=(SPLIT_FRACTIONS[0], *(shares[n] for n in missing)))
    splits = {"train": Split(pool.x[parts[0]], pool.y[parts[0]]), **given}
    for name, index in zip(missing, parts[1:], strict=True):
        splits[name] = Split(pool.x[index], pool.y[index])
    shapes = {name: tuple(s.x.shape[1:]) for name, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise DatasetError(f"npz file {path} has splits of different sample shapes {shapes}; expected one")
    return node_data(spec, splits["train"], splits["val"], splits["test"])
