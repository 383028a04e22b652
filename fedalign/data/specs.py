"""Resolving a node's data set spec (``scheme:argument``) into its data, on the node's own machine."""

from __future__ import annotations

from pathlib import Path

from fedalign.data.cache import default_cache_dir
from fedalign.data.core import DatasetError, NodeData
from fedalign.data.digits import DIGITS_DOMAINS, load_domain
from fedalign.data.files import load_imagefolder, load_npz
from fedalign.data.signals import SIGNALS_DOMAINS, load_signals

SCHEMES: dict[str, str] = {
    "digits": f"digits:<domain> with domain one of {', '.join(DIGITS_DOMAINS)}",
    "signals": f"signals:<domain> with domain one of {', '.join(SIGNALS_DOMAINS)}",
    "imagefolder": "imagefolder:<directory>[?size=S|?size=HxW] with one sub-folder of images per class",
    "npz": "npz:<file.npz> with arrays x and y (optionally x_val, y_val, x_test, y_test)",
}


def digits_domains() -> tuple[str, ...]:
    """The built-in benchmark's domains: ("mnist", "mnistm", "optdigits", "syn")."""
    return DIGITS_DOMAINS


def _expected() -> str:
    return "expected one of: " + "; ".join(SCHEMES.values())


def parse_spec(spec: str) -> tuple[str, str]:
    """``"scheme:argument"`` -> (scheme, argument), checking the scheme (and, for digits, the domain).

    Only the first colon separates, so paths may contain colons.
    """
    if not isinstance(spec, str):
        raise DatasetError(f"a dataset spec must be a string, got {type(spec).__name__}; {_expected()}")
    scheme, sep, argument = spec.strip().partition(":")
    if not sep:
        raise DatasetError(f"dataset spec {spec!r} has no scheme; {_expected()}")
    if scheme not in SCHEMES:
        raise DatasetError(f"dataset spec {spec!r} has unknown scheme {scheme!r}; {_expected()}")
    if not argument:
        raise DatasetError(f"dataset spec {spec!r} is missing its argument; expected {SCHEMES[scheme]}")
    for family, domains in (("digits", DIGITS_DOMAINS), ("signals", SIGNALS_DOMAINS)):
        if scheme == family and argument not in domains:
            raise DatasetError(
                f"dataset spec {spec!r} names unknown {family} domain {argument!r}; "
                f"expected one of {', '.join(domains)}"
            )
    return scheme, argument


def load(spec: str, cache_dir: Path | None = None) -> NodeData:
    """The data named by ``spec``. ``cache_dir`` is where built benchmark domains are kept (default:
    ``$FEDALIGN_DATA_DIR/datasets`` or ``~/.cache/fedalign/datasets``); file-backed specs are read as they
    are and not cached."""
    scheme, argument = parse_spec(spec)
    if scheme == "digits":
        return load_domain(spec, argument, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    if scheme == "signals":
        return load_signals(spec, argument)
    if scheme == "imagefolder":
        return load_imagefolder(spec, argument)
    return load_npz(spec, argument)
