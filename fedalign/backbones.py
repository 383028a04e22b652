"""Built-in backbones of the field: torchvision's ResNet-18, ResNet-50 and MobileNetV3-Small.

Each is G: the torchvision network up to its global average pooling (its classifier head replaced by an
identity), so G's tensor names are torchvision's own, less the head's: a torchvision (or timm, for ResNets)
state dict becomes a checkpoint for G by dropping the head (`fedalign convert-checkpoint`). T is one linear
layer on G's features; D is FedAlign's default on G's features. Every network is built with
``weights=None``: nothing ever downloads weights; pretrained ones come from a local file
(``model.init_checkpoint``).

Inputs are images (channels, height, width) of any size from 32x32 up (the networks downsample 32 times
before their global pooling). Three channels keep torchvision's first convolution; another channel count
replaces it with one of the same shape otherwise (a pretrained checkpoint's first layer then no longer
fits, and loading it says so). ``model.normalization = "group"`` swaps every BatchNorm for GroupNorm
(what differential privacy needs); ``"batch"`` keeps torchvision's own layers, so pretrained statistics
load unchanged.

MobileNetV3-Small (Howard et al., ICCV 2019) is the small modern network: 0.9 M parameters in G (ResNet-18:
11 M), about 60 MFLOPs at 224x224, BatchNorm and hard-swish layers that Opacus supports in their GroupNorm
form, and ImageNet weights that torchvision and timm publish, so a node on a CPU or a small GPU can take
part in a federation that starts from pretrained features.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedalign.architectures import Architecture, ArchitectureContext, ArchitectureError
from fedalign.torchvision_import import import_torchvision

MIN_SIZE = 32

# The torchvision names of each backbone's classifier head, which G does not hold (a checkpoint's tensors
# under these prefixes are dropped when it is converted).
CLASSIFIER_HEADS: dict[str, tuple[str, ...]] = {
    "resnet18": ("fc.",),
    "resnet50": ("fc.",),
    "mobilenet_v3_small": ("classifier.",),
}


def resnet18(context: ArchitectureContext) -> Architecture:
    """ResNet-18 (He et al., CVPR 2016) as G, 512 features."""
    return _resnet("resnet18", context)


def resnet50(context: ArchitectureContext) -> Architecture:
    """ResNet-50 (He et al., CVPR 2016) as G, 2048 features."""
    return _resnet("resnet50", context)


def mobilenet_v3_small(context: ArchitectureContext) -> Architecture:
    """MobileNetV3-Small (Howard et al., ICCV 2019) as G, 576 features."""
    channels = _check_images("mobilenet_v3_small", context)
    models = import_torchvision().models
    net = models.mobilenet_v3_small(weights=None, norm_layer=_norm_layer(context))
    features = net.classifier[0].in_features
    net.classifier = nn.Identity()
    if channels != 3:
        first = net.features[0][0]
        net.features[0][0] = _conv_like(first, channels)
    return Architecture(G=net, T=nn.Linear(features, context.num_classes))


def _resnet(name: str, context: ArchitectureContext) -> Architecture:
    channels = _check_images(name, context)
    factory = getattr(import_torchvision().models, name)
    net = factory(weights=None, norm_layer=_norm_layer(context))
    features = net.fc.in_features
    net.fc = nn.Identity()
    if channels != 3:
        net.conv1 = _conv_like(net.conv1, channels)
    return Architecture(G=net, T=nn.Linear(features, context.num_classes))


def _check_images(name: str, context: ArchitectureContext) -> int:
    if context.options:
        raise ArchitectureError(f"{name} takes no model.options; got {sorted(context.options)}")
    shape = context.input_shape
    if len(shape) != 3 or min(shape[1:]) < MIN_SIZE:
        raise ArchitectureError(
            f"{name} takes images (channels, height, width) of at least {MIN_SIZE}x{MIN_SIZE}, "
            f"got inputs of shape {list(shape)}"
        )
    return shape[0]


def _norm_layer(context: ArchitectureContext) -> Callable[[int], nn.Module] | None:
    """torchvision's own BatchNorm (None), or GroupNorm under ``normalization = "group"``."""
    if context.normalization == "batch":
        return None
    return lambda channels: context.norm(channels, spatial=True)


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` with another number of input channels, initialised as torchvision initialises it."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new
