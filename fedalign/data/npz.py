"""``npz:``: a node's data as arrays in one ``.npz`` file, converted to float32 a batch at a time.

Arrays:

- ``x``: the samples. Vectors (N, D) of any real values, or images (N, H, W) grey, (N, H, W, C) or
  (N, C, H, W) with C in {1, 3}, either uint8 0..255 or float in [0, 1]. A last axis of size 1 or 3 is
  read as channels last; otherwise axis 1 must be the channels.
- ``y`` (optional): int class labels 0..K-1, one per sample. Without it the data are unlabelled: valid
  for the target only.
- ``x_val`` (+ ``y_val`` when ``x`` is labelled; optional): the validation split.
- ``x_test`` with ``y_test`` (optional): the labelled evaluation split. For a target it is read for
  ``target_acc`` alone, and its labels may be given while ``x`` has none.

A split that is not given is drawn from ``x`` with a fixed seed: validation and test 15% each,
class-stratified (labelled data without a test split), or validation 15% (with a test split, or
unlabelled data, which has none). An array stored uncompressed (``np.savez``) is memory-mapped, so it is
read from disk a batch at a time; a compressed one (``np.savez_compressed``) is read into memory once, in
its own dtype (uint8 images take a quarter of their float32 size). Sample values are checked as they are
read (the first samples at once), so a bad value anywhere is an error that names its array and index.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedalign.config import Preprocessing
from fedalign.data.core import UNLABELLED, Batch, DatasetError, NodeData, Split
from fedalign.data.preprocessing import ImageTransform, transformed
from fedalign.data.splits import SPLIT_FRACTIONS, SPLIT_SEED, stratified_split

_CHANNELS = (1, 3)
# Samples of a memory-mapped array whose values are checked when the file is opened (an array in memory is
# checked whole; every sample is checked again when it is read).
CHECKED_AT_LOAD = 256
CHECK_CHUNK = 4096
EXPECTED = (
    "expected 'x' with 'y' (or 'x' alone: unlabelled data, for a target), and optionally 'x_val' with "
    "'y_val' ('x_val' alone when 'x' is unlabelled) and 'x_test' with 'y_test'"
)


# ------------------------------------------------------------------------------------------- reading


def _memory_map(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> np.ndarray | None:
    """The member's array mapped from the file, or None when it cannot be (compressed, or object dtype)."""
    if member.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as handle:
        # The data start after the member's local header: 30 bytes, then its name and extra field.
        handle.seek(member.header_offset)
        local = handle.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length = int.from_bytes(local[26:28], "little")
        extra_length = int.from_bytes(local[28:30], "little")
        start = member.header_offset + 30 + name_length + extra_length
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        offset = handle.tell()
    if dtype.hasobject or fortran:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file: memory-mapped where stored uncompressed, else read into memory."""
    if not path.is_file():
        raise DatasetError(f"npz file {path} does not exist; expected an .npz with arrays 'x' and 'y'")
    try:
        if not zipfile.is_zipfile(path):
            # allow_pickle=False: a data file must never be able to run code.
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                raise DatasetError(f"{path} holds a single array; expected an .npz with arrays 'x' and 'y'")
            raise DatasetError(f"cannot read npz file {path}: not a zip archive")
        arrays: dict[str, np.ndarray] = {}
        with zipfile.ZipFile(path) as archive, np.load(path, allow_pickle=False) as npz:
            members = {m.filename: m for m in archive.infolist()}
            for key in npz.files:
                member = members.get(f"{key}.npy")
                mapped = _memory_map(path, archive, member) if member is not None else None
                arrays[key] = mapped if mapped is not None else npz[key]
        return arrays
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read npz file {path}: {exc}") from exc


# ------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class SampleLayout:
    """How one array's samples become float32 tensors: channels to move, integers to scale, values checked."""

    where: str
    kind: str  # "vector" or "image"
    channels_last: bool
    add_channel: bool
    integer: bool

    @classmethod
    def of(cls, x: np.ndarray, where: str) -> SampleLayout:
        if x.dtype == np.bool_ or not (
            np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
        ):
            raise DatasetError(f"{where} has dtype {x.dtype}; expected uint8 or floating point samples")
        integer = bool(np.issubdtype(x.dtype, np.integer))
        if x.ndim == 2:
            return cls(where, "vector", False, False, integer)
        if x.ndim == 3:
            return cls(where, "image", False, True, integer)
        if x.ndim == 4 and x.shape[-1] in _CHANNELS:
            return cls(where, "image", True, False, integer)
        if x.ndim == 4 and x.shape[1] in _CHANNELS:
            return cls(where, "image", False, False, integer)
        raise DatasetError(
            f"{where} has shape {x.shape}; expected (N, D) vectors or images (N, H, W), "
            f"(N, H, W, C) or (N, C, H, W) with C = 1 or 3"
        )

    def sample_shape(self, x: np.ndarray) -> tuple[int, ...]:
        if self.kind == "vector":
            return (int(x.shape[1]),)
        if self.add_channel:
            return (1, int(x.shape[1]), int(x.shape[2]))
        if self.channels_last:
            return (int(x.shape[3]), int(x.shape[1]), int(x.shape[2]))
        return tuple(int(d) for d in x.shape[1:])

    def to_tensor(self, rows: np.ndarray, index: np.ndarray) -> torch.Tensor:
        """Rows of the array (their sample indices ``index``, for messages) as float32 (n, *sample shape)."""
        if self.kind == "vector":
            values = rows.astype(np.float32)
            if not np.isfinite(values).all():
                bad = int(index[np.flatnonzero(~np.isfinite(values).all(axis=1))[0]])
                raise DatasetError(
                    f"{self.where} holds NaN or infinite values (sample {bad}); vector samples must be finite"
                )
            return torch.from_numpy(values)
        if self.add_channel:
            rows = rows[:, None]
        elif self.channels_last:
            rows = rows.transpose(0, 3, 1, 2)
        if self.integer:
            if rows.size and (rows.min() < 0 or rows.max() > 255):
                raise DatasetError(
                    f"{self.where} has integer pixels outside 0..255 (sample "
                    f"{self._first_bad(rows, index)}); expected uint8 images"
                )
            return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32) / np.float32(255.0))
        if rows.size and not (np.isfinite(rows).all() and rows.min() >= 0.0 and rows.max() <= 1.0):
            raise DatasetError(
                f"{self.where} has float pixels outside [0, 1] or NaN (sample "
                f"{self._first_bad(rows, index)}); expected float images in [0, 1] or uint8 images in 0..255"
            )
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    def _first_bad(self, rows: np.ndarray, index: np.ndarray) -> int:
        flat = rows.reshape(len(rows), -1)
        high = 255 if self.integer else 1.0
        bad = ~(np.isfinite(flat) & (flat >= 0) & (flat <= high)).all(axis=1)
        return int(index[np.flatnonzero(bad)[0]])


@dataclass(frozen=True, eq=False)
class ArraySamples:
    """A split of an array's rows (``index`` into it), converted to float32 tensors as they are read."""

    array: np.ndarray  # memory-mapped or in memory, in the file's dtype
    index: np.ndarray  # int64: the rows of this split, in order
    labels: np.ndarray | None  # int64 labels of those rows, or None: unlabelled
    layout: SampleLayout

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.layout.sample_shape(self.array)

    def __len__(self) -> int:
        return len(self.index)

    def _rows(self, positions: np.ndarray) -> torch.Tensor:
        rows = self.index[positions]
        # Sorted reads of a memory-mapped array touch each page once; the batch keeps the asked order.
        order = np.argsort(rows, kind="stable")
        values = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        values[order] = self.array[rows[order]]
        return self.layout.to_tensor(values, rows)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._rows(np.asarray([position]))[0]
        y = int(self.labels[position]) if self.labels is not None else UNLABELLED
        return x, torch.tensor(y, dtype=torch.int64)

    def __getitems__(self, positions: list[int]) -> Batch:
        at = np.asarray(positions, dtype=np.int64)
        if self.labels is not None:
            y = torch.from_numpy(self.labels[at].astype(np.int64))
        else:
            y = torch.full((len(at),), UNLABELLED, dtype=torch.int64)
        return Batch(self._rows(at), y)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{where} has shape {y.shape}; expected ({n},), one label per sample")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where} has dtype {y.dtype}; expected integer class labels 0..K-1")
    labels = np.asarray(y, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{where} has negative labels; expected class labels 0..K-1")
    return labels


def _samples(arrays: dict[str, np.ndarray], key: str, path: Path, labelled: bool) -> ArraySamples:
    x = arrays[key]
    layout = SampleLayout.of(x, f"{path}:{key}")
    labels = _labels(arrays["y" + key[1:]], len(x), f"{path}:y{key[1:]}") if labelled else None
    samples = ArraySamples(x, np.arange(len(x), dtype=np.int64), labels, layout)
    # Bad values are found now where that is cheap: the whole array in memory, the first of a mapped one.
    checked = min(len(samples), CHECKED_AT_LOAD) if isinstance(x, np.memmap) else len(samples)
    for start in range(0, checked, CHECK_CHUNK):
        samples.__getitems__(list(range(start, min(checked, start + CHECK_CHUNK))))
    return samples


def _subset(samples: ArraySamples, positions: np.ndarray) -> ArraySamples:
    labels = samples.labels[positions] if samples.labels is not None else None
    return ArraySamples(samples.array, samples.index[positions], labels, samples.layout)


def load_npz(spec: str, argument: str, preprocessing: Preprocessing | None = None) -> NodeData:
    """The arrays of an ``.npz`` file (see the module's docstring) as a node's splits."""
    path = Path(argument).expanduser()
    arrays = read_arrays(path)
    if "x" not in arrays:
        raise DatasetError(f"npz file {path} has arrays {sorted(arrays)}; {EXPECTED}")
    labelled = "y" in arrays
    pairs = {"_val": labelled, "_test": True}  # x_test always comes with its labels
    for suffix, needs_labels in pairs.items():
        if (f"y{suffix}" in arrays and f"x{suffix}" not in arrays) or (
            f"x{suffix}" in arrays and (f"y{suffix}" in arrays) != needs_labels
        ):
            raise DatasetError(f"npz file {path} has arrays {sorted(arrays)}; {EXPECTED}")
    given = {
        name: _samples(arrays, f"x_{name}", path, labelled=pairs[f"_{name}"])
        for name in ("val", "test")
        if f"x_{name}" in arrays
    }
    pool = _samples(arrays, "x", path, labelled)
    if len(pool) == 0:
        raise DatasetError(f"npz file {path} has no samples in 'x'")
    missing = [name for name in ("val", "test") if name not in given and (labelled or name == "val")]
    # The carved-out parts keep their default share of the pool; the train split takes the rest.
    shares = {"val": SPLIT_FRACTIONS[1], "test": SPLIT_FRACTIONS[2]}
    strata = pool.labels if pool.labels is not None else np.zeros(len(pool), np.int64)
    parts = stratified_split(
        strata, fractions=(SPLIT_FRACTIONS[0], *(shares[n] for n in missing)), seed=SPLIT_SEED
    )
    splits = {"train": _subset(pool, parts[0]), **given}
    for name, index in zip(missing, parts[1:], strict=True):
        splits[name] = _subset(pool, index)
    shapes = {name: s.sample_shape for name, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise DatasetError(f"npz file {path} has splits of different sample shapes {shapes}; expected one")
    shape = shapes["train"]
    if "test" not in splits:
        splits["test"] = Split.empty(shape)
    transform = ImageTransform.of(preprocessing) if preprocessing is not None else None
    train, val, test = (transformed(splits[n], transform) for n in ("train", "val", "test"))
    label_sets = [
        s.labels
        for s in (splits["train"], splits["val"], splits["test"])
        if isinstance(s, ArraySamples) and s.labels is not None and len(s.labels)
    ]
    num_classes = 1 + max(int(labels.max()) for labels in label_sets) if label_sets else None
    return NodeData(spec, train, val, test, num_classes, tuple(train.sample_shape))
