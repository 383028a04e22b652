"""``imagefolder:``: a node's images as files in a folder, read one by one as batches ask for them.

Layouts (``<root>`` is the spec's path):

- **labelled**: ``<root>/<class>/**/<image>``, one sub-folder per class; the class index is the position of
  the folder's name in sorted order. A class folder may be empty, so that nodes holding different subsets
  of the classes agree on the indices. Train, validation and test are drawn from it, class-stratified
  70/15/15 with a fixed seed.
- **unlabelled** (a target's): ``<root>/**/<image>`` with images directly in ``<root>``; train and
  validation are drawn from them 85/15 with a fixed seed, and no test split exists.
- either layout may hold ``<root>/test/<class>/**/<image>``: the labelled evaluation split (read for
  ``target_acc`` alone); its class folders must be among the training classes (in a labelled layout) and
  name the same classes as every other node's. With it, a labelled layout is drawn 85/15 into train and
  validation.

Every image (any size, any mode PIL reads) becomes RGB at the configured size (stretched, not cropped;
bilinear), float32 in [0, 1], then goes through the federation's normalisation. Files are read when a batch
asks for them: only the list of paths is held in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fedalign.config import Preprocessing
from fedalign.data.core import UNLABELLED, DatasetError, NodeData, Split
from fedalign.data.preprocessing import ImageTransform, transformed
from fedalign.data.splits import SPLIT_FRACTIONS, SPLIT_SEED, stratified_split

DEFAULT_IMAGE_SIZE: tuple[int, int] = (28, 28)  # (height, width)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
TEST_FOLDER = "test"
# Images of each split read when the folder is loaded, so that an unreadable file among the first fails
# at once (every image is read, and checked, again when a batch asks for it).
CHECKED_AT_LOAD = 8
_SIZE_OPTION = re.compile(r"^size=(\d+)(?:x(\d+))?$")
# Train and validation of a folder whose test split is given (or absent: unlabelled data).
TRAIN_VAL_FRACTIONS: tuple[float, float] = (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[2], SPLIT_FRACTIONS[1])


def parse_imagefolder_argument(argument: str) -> tuple[Path, tuple[int, int] | None]:
    """``<path>`` or ``<path>?size=S`` or ``<path>?size=HxW`` -> (path, (height, width) or None)."""
    path, sep, option = argument.rpartition("?")
    if not sep:
        return Path(argument).expanduser(), None
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


def image_size(spec: str, option: tuple[int, int] | None, preprocessing: Preprocessing) -> tuple[int, int]:
    """The size images are read at: ``preprocessing.resize``, else the spec's ``?size=``, else 28x28."""
    resize = tuple(preprocessing.resize) if preprocessing.resize is not None else None
    if resize is not None and option is not None and option != resize:
        raise DatasetError(
            f"dataset {spec!r} asks for images of {option[0]}x{option[1]}, but the federation's "
            f"preprocessing.resize is {resize[0]}x{resize[1]}; drop '?size=' from the spec (resize applies)"
        )
    return resize or option or DEFAULT_IMAGE_SIZE  # type: ignore[return-value]


def image_files(folder: Path, skip: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (not under ``skip``, nor hidden), sorted so that the sample order, hence
    the split, does not depend on the file system."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (skip is None or not p.is_relative_to(skip))
    )


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 RGB (H, W, 3) at ``size`` (height, width)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """A split of image files, read (decoded and resized) when an item is asked for."""

    files: tuple[Path, ...]
    labels: np.ndarray | None  # int64 (N,), or None: unlabelled
    size: tuple[int, int]

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (3, *self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = int(self.labels[index]) if self.labels is not None else UNLABELLED
        return image_to_tensor(read_image(self.files[index], self.size)), torch.tensor(y, dtype=torch.int64)


def class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class FolderLayout:
    """What a folder holds: its training images (labelled or not), its classes, its evaluation split."""

    files: list[Path]
    labels: np.ndarray | None
    classes: list[str] | None
    test_files: list[Path]
    test_labels: np.ndarray


def _labelled_files(
    root: Path, classes: list[str], index_of: dict[str, int]
) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for name in classes:
        found = image_files(root / name)
        files += found
        labels += [index_of[name]] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _has_images_directly(folder: Path) -> bool:
    return any(
        p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        for p in folder.iterdir()
    )


def folder_layout(root: Path) -> FolderLayout:
    """Reads the folder's structure (file names only): labelled or flat, and its ``test/`` split."""
    if not root.is_dir():
        raise DatasetError(
            f"imagefolder path {root} is not a directory; expected one sub-folder per class, or a flat "
            f"folder of images (unlabelled)"
        )
    test_root = root / TEST_FOLDER
    test_classes = class_folders(test_root) if test_root.is_dir() else []
    if _has_images_directly(root):  # unlabelled: every image but test/'s is a training sample
        if test_root.is_dir() and not test_classes and image_files(test_root):
            raise DatasetError(
                f"{test_root} holds images but no class sub-folders; the test split is the labelled "
                f"evaluation split: put its images in one sub-folder per class, e.g. {test_root}/cat/*.png"
            )
        files = image_files(root, skip=test_root)
        classes = test_classes or None
        labels = None
    else:
        # A test/ folder with class folders is the evaluation split; one with images only is a class.
        classes = [c for c in class_folders(root) if not (test_classes and c == TEST_FOLDER)]
        if not classes:
            raise DatasetError(
                f"imagefolder {root} has no class sub-folders and no images; expected e.g. "
                f"{root}/cat/*.png (labelled) or {root}/*.png (unlabelled)"
            )
        files, labels = _labelled_files(root, classes, {c: i for i, c in enumerate(classes)})
        if not files:
            raise DatasetError(
                f"imagefolder {root} has no images in its class folders {classes}; "
                f"expected files ending in one of {sorted(IMAGE_SUFFIXES)}"
            )
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DatasetError(
                f"{test_root} has class folders {unknown} that the training classes {classes} lack; a "
                f"class index is its folder's position among the training classes, the same on every node"
            )
    index_of = {c: i for i, c in enumerate(classes or [])}
    test_files, test_labels = _labelled_files(test_root, test_classes, index_of)
    if test_classes and not test_files:
        raise DatasetError(f"{test_root} has class folders {test_classes} but no images in them")
    return FolderLayout(files, labels, classes, test_files, test_labels)


def load_imagefolder(spec: str, argument: str, preprocessing: Preprocessing | None = None) -> NodeData:
    """A folder of images (see the module's docstring for its layouts) as a node's lazily read splits."""
    preprocessing = preprocessing or Preprocessing()
    root, option = parse_imagefolder_argument(argument)
    size = image_size(spec, option, preprocessing)
    layout = folder_layout(root)
    transform = ImageTransform.of(preprocessing, resize=False)  # the images are read at their size

    def split(index: np.ndarray, files: list[Path], labels: np.ndarray | None) -> ImageFiles:
        return ImageFiles(tuple(files[i] for i in index), labels[index] if labels is not None else None, size)

    if layout.labels is not None and not layout.test_files:
        parts = [split(i, layout.files, layout.labels) for i in stratified_split(layout.labels)]
    else:
        strata = layout.labels if layout.labels is not None else np.zeros(len(layout.files), np.int64)
        train, val = stratified_split(strata, fractions=TRAIN_VAL_FRACTIONS, seed=SPLIT_SEED)
        test = (
            ImageFiles(tuple(layout.test_files), layout.test_labels, size)
            if layout.test_files
            else Split.empty((3, *size))
        )
        parts = [split(train, layout.files, layout.labels), split(val, layout.files, layout.labels), test]
    for part in parts:
        for index in range(min(len(part), CHECKED_AT_LOAD)):
            part[index]
    train, val, test = (transformed(p, transform) for p in parts)
    return NodeData(
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=len(layout.classes) if layout.classes else None,
        input_shape=tuple(train.sample_shape),
    )
