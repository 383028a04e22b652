"""How an architecture is named (`fedalign.architectures` resolves the names): the built-ins, the form of an
import path, the entry-point group. Imports nothing, so that the config can check a name's form without
loading torch.
"""

# Built-ins are import paths like any plug-in's, imported only when asked for (torchvision takes a second
# to import, and a federation of digits never needs it).
BUILTINS: dict[str, str] = {
    "digits_cnn": "fedalign.models:digits_cnn",
    "mlp": "fedalign.models:mlp",
    "resnet18": "fedalign.backbones:resnet18",
    "resnet50": "fedalign.backbones:resnet50",
    "mobilenet_v3_small": "fedalign.backbones:mobilenet_v3_small",
}

# Where installed packages register architectures by name (pyproject.toml:
# [project.entry-points."fedalign.architectures"] my_net = "my_package.models:my_net").
ENTRY_POINT_GROUP = "fedalign.architectures"

# The form of `architecture` in a config: a name (built-in or registered) or "package.module:factory".
ARCHITECTURE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?$"
