"""A 1-D convolutional network for sequences: the worked example of FedAlign's "Bring your own model".

FedAlign calls `build` with the federation's model settings (an `ArchitectureContext`) and trains what it
returns: the feature extractor G and the task model T. This factory leaves D out, so FedAlign builds the
domain discriminator on G's feature size. Its own settings come from the config's ``[model.options]``.

Used by ``examples/byo_model/federation.toml`` as ``architecture = "byo_model.signal_cnn:build"``, on the
built-in signals benchmark (windows of 64 readings, six waveforms).
"""

from __future__ import annotations

from torch import nn

from fedalign.architectures import Architecture, ArchitectureContext, ArchitectureError

# The settings this factory reads from [model.options], with their defaults.
DEFAULTS = {"channels": 16, "kernel_size": 5, "blocks": 2}


def build(context: ArchitectureContext) -> Architecture:
    """G: convolution blocks over the sequence, then global average pooling; T: one linear layer."""
    unknown = sorted(set(context.options) - set(DEFAULTS))
    if unknown:
        raise ArchitectureError(f"signal_cnn has no options {unknown}; it takes {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **context.options}
    if len(context.input_shape) != 1:
        raise ArchitectureError(f"signal_cnn takes sequences (length,), got inputs {context.input_shape}")
    (length,) = context.input_shape
    channels, kernel = int(options["channels"]), int(options["kernel_size"])

    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]  # (N, length) -> (N, 1 channel, length)
    in_channels = 1
    for _ in range(int(options["blocks"])):
        layers += [
            nn.Conv1d(in_channels, channels, kernel, padding=kernel // 2),
            # BatchNorm, or GroupNorm when the federation asks for it (differential privacy does).
            context.norm(channels, spatial=False),
            nn.ReLU(),
            nn.MaxPool1d(2),
        ]
        in_channels = channels
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]  # G's output: (N, channels) feature vectors

    G = nn.Sequential(*layers)
    T = nn.Linear(channels, context.num_classes)
    # Change the version whenever the layers change: every node checks it against the federation's.
    return Architecture(G=G, T=T, version="1")
