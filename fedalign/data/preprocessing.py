"""The federation's image preprocessing (`fedalign.config.Preprocessing`) as functions on tensors.

Two parts, applied at two places:

- `ImageTransform` (resize, then per-channel normalisation) is part of reading a sample: every split
  applies it, training and evaluation alike, and the exported model's input pipeline is the same.
- `Augmentation` (flip, crop and flip) changes training batches only, after they are collated, drawing from
  a generator seeded with the step's seed: the batch order and the augmentation are both the seed's, so a
  served run repeats a simulated one, with any number of DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedalign.config import Preprocessing
from fedalign.data.core import Batch, DatasetError, SplitDataset

# crop_flip pads an image by this fraction of its height and width on each side before cropping it back.
CROP_PAD_FRACTION = 1 / 8


@dataclass(frozen=True)
class ImageTransform:
    """Resize (bilinear, with antialiasing when shrinking) and normalise float images in [0, 1].

    Works on one image (C, H, W) or a batch (N, C, H, W).
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, preprocessing: Preprocessing, resize: bool = True) -> ImageTransform | None:
        """The settings' transform (None when there is nothing to do). ``resize=False``: for a reader that
        already reads images at the size (imagefolder resizes as it decodes)."""
        size = tuple(preprocessing.resize) if preprocessing.resize is not None and resize else None
        if size is None and preprocessing.mean is None:
            return None
        return cls(size, preprocessing.mean, preprocessing.std)  # type: ignore[arg-type]

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a transformed sample of ``shape`` (C, H, W); refuses shapes that are not images."""
        if len(shape) != 3:
            raise DatasetError(
                f"preprocessing (resize, mean/std) applies to images (C, H, W), but the samples have shape "
                f"{shape}; leave [preprocessing] unset for vector data"
            )
        if self.mean is not None and len(self.mean) not in (1, shape[0]):
            raise DatasetError(
                f"preprocessing.mean and std have {len(self.mean)} values, but the images have {shape[0]} "
                f"channel(s); give one value per channel, or one for all"
            )
        return (shape[0], *self.resize) if self.resize is not None else shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 3
        batch = x.unsqueeze(0) if single else x
        if self.resize is not None and tuple(batch.shape[-2:]) != self.resize:
            shrinking = batch.shape[-2] > self.resize[0] or batch.shape[-1] > self.resize[1]
            batch = F.interpolate(
                batch, size=self.resize, mode="bilinear", align_corners=False, antialias=shrinking
            )
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=batch.dtype).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=batch.dtype).view(-1, 1, 1)
            batch = (batch - mean) / std
        return batch.squeeze(0) if single else batch


class Transformed:
    """A split whose samples go through ``transform`` as they are read (labels untouched)."""

    def __init__(self, split: SplitDataset, transform: ImageTransform) -> None:
        self.split = split
        self.transform = transform
        self.labelled = split.labelled
        self.sample_shape = transform.output_shape(tuple(split.sample_shape))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.split[index]
        return self.transform(x), y

    def __getitems__(self, indices: list[int]) -> Batch | list[tuple[torch.Tensor, torch.Tensor]]:
        getitems = getattr(self.split, "__getitems__", None)
        if getitems is None:
            return [self[i] for i in indices]
        batch = getitems(indices)
        if isinstance(batch, Batch):
            return Batch(self.transform(batch.x), batch.y) if len(batch.x) else batch
        return [(self.transform(x), y) for x, y in batch]


def transformed(split: SplitDataset, transform: ImageTransform | None) -> SplitDataset:
    return split if transform is None else Transformed(split, transform)


class Augmentation:
    """Random flips (and crops) of a training batch of images (N, C, H, W), from a seeded generator."""

    def __init__(self, kind: str, generator: torch.Generator) -> None:
        if kind not in ("flip", "crop_flip"):
            raise ValueError(f"unknown augmentation {kind!r}; expected 'flip' or 'crop_flip'")
        self.kind = kind
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise DatasetError(
                f"preprocessing.augment applies to image batches (N, C, H, W), got shape {tuple(x.shape)}; "
                "set augment = 'none' for vector data"
            )
        n, _, height, width = x.shape
        if self.kind == "crop_flip":
            pad_h, pad_w = max(1, round(height * CROP_PAD_FRACTION)), max(1, round(width * CROP_PAD_FRACTION))
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=mode)
            top = torch.randint(0, 2 * pad_h + 1, (n,), generator=self.generator).tolist()
            left = torch.randint(0, 2 * pad_w + 1, (n,), generator=self.generator).tolist()
            x = torch.stack(
                [
                    padded[i, :, t : t + height, s : s + width]
                    for i, (t, s) in enumerate(zip(top, left, strict=True))
                ]
            )
        flip = torch.rand(n, generator=self.generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def augmentation(preprocessing: Preprocessing, seed: int) -> Augmentation | None:
    """The training batches' augmentation for one step, seeded by ``seed``; None when it is 'none'."""
    if preprocessing.augment == "none":
        return None
    return Augmentation(preprocessing.augment, torch.Generator().manual_seed(seed))
