"""``fedalign init-model`` and ``fedalign convert-checkpoint``: a federation's initial parameters, built on
the creator's machine (where a plug-in architecture is installed), and pretrained weights made fit for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import console
from cli.extras import needs
from fedalign.config import ConfigError, FederationConfig, load_config


def _config(path: Path) -> FederationConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


def _writable(path: Path, what: str) -> None:
    if not path.parent.is_dir():
        console.print(f"[red]error:[/] cannot write the {what} to {path}: no folder {path.parent}")
        raise typer.Exit(2)


@needs("init-model", "node")
def init_model(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Federation config (TOML).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The initial parameters to write (safetensors).")
    ],
    manifest: Annotated[
        Path | None,
        typer.Option(help="The manifest document to write (JSON; default: OUTPUT's name, .manifest.json)."),
    ] = None,
) -> None:
    """Build the federation's initial parameters (every tensor of G, T and D, from its seed and its
    model.init_checkpoint) and their manifest document. Nothing is written unless both can be."""
    from fedalign.initial_parameters import build_initial, manifest_path_for

    config = _config(config_path)
    manifest_path = manifest or manifest_path_for(output)
    _writable(output, "initial parameters")
    _writable(manifest_path, "manifest")
    try:
        initial = build_initial(config)
    except ValueError as exc:  # ArchitectureError, CheckpointError, a layer the manifest cannot hold
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    initial.save(output, manifest_path)
    document = initial.manifest
    console.print(f"[bold]{config.architecture}[/] version {document.version}, seed {config.seed}")
    for name, state in initial.models.items():
        spec = document.models[name]
        numbers = sum(t.numel() for t in state.values())
        source = "checkpoint" if name in initial.from_checkpoint else "seed"
        console.print(
            f"  {name}: {len(spec)} tensors ({len(spec.local_names())} local), {numbers:,} numbers, "
            f"from the {source}"
        )
    console.print(f"initial parameters written to {output}, manifest to {manifest_path}")


@needs("convert-checkpoint", "node")
def convert_checkpoint(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Federation config (TOML).")],
    source: Annotated[
        Path,
        typer.Argument(
            metavar="STATE_DICT",
            help="A torchvision or timm state dict (torch.save file, read with weights_only=True) or a "
            "safetensors file.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The checkpoint to write (safetensors).")],
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help="Leave out tensors whose names start with this prefix (repeatable). Default: the built-in "
            "backbone's classifier head (fc. for ResNets, classifier. for MobileNetV3)."
        ),
    ] = None,
    strip: Annotated[
        str, typer.Option(help="Remove this prefix from every name first (e.g. backbone.).")
    ] = "",
) -> None:
    """Convert a backbone's state dict into a checkpoint of G for model.init_checkpoint: names mapped to
    G's, the classifier head left out, every tensor of G checked. Nothing is written unless all of G fits."""
    from fedalign import params
    from fedalign.checkpoints import convert_state_dict, read_state_dict
    from fedalign.model_manifest import ModelManifest

    config = _config(config_path)
    _writable(output, "checkpoint")
    if drop is None:
        from fedalign.architecture_names import BUILTINS

        if config.architecture in BUILTINS:
            from fedalign.backbones import CLASSIFIER_HEADS

            drop = list(CLASSIFIER_HEADS.get(config.architecture, ()))
        else:
            drop = []
    try:
        target = ModelManifest.for_config(config).models["G"]
        conversion = convert_state_dict(read_state_dict(source), target, drop=drop, strip=strip)
    except ValueError as exc:  # CheckpointError, ArchitectureError
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    params.save_file(conversion.tensors, output)
    console.print(f"{len(conversion.tensors)} tensors of G written to {output}")
    if conversion.dropped:
        console.print(f"  left out {len(conversion.dropped)} tensor(s) under {', '.join(drop)}")
    if conversion.cast:
        console.print(f"  cast {len(conversion.cast)} tensor(s) to G's dtype")
    if conversion.filled:
        console.print(f"  {len(conversion.filled)} BatchNorm batch counter(s) the state dict lacked set to 0")
    console.print(f"set model.init_checkpoint = {str(output)!r} in the config, then run fedalign init-model")
