"""How a checkpoint of the target's model is named when saved or downloaded: by its round."""

from __future__ import annotations


def checkpoint_filename(round_: int, name: str | None = None) -> str:
    """``round-0012.safetensors`` (with a federation's name: ``digits-round-0012.safetensors``)."""
    stem = f"round-{round_:04d}"
    return f"{name}-{stem}.safetensors" if name else f"{stem}.safetensors"
