"""Resolving a node's data set spec (``scheme:argument``) into its data, on the node's own machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedalign.data.cache import default_cache_dir
from fedalign.data.clinics import CLINICS_DOMAINS, load_clinics
from fedalign.data.core import DatasetError, NodeData
from fedalign.data.digits import DIGITS_DOMAINS, load_domain
from fedalign.data.imagefolder import load_imagefolder
from fedalign.data.npz import load_npz
from fedalign.data.plugins import FORM, LoaderContext, load_plugin, parse_plugin_argument
from fedalign.data.preprocessing import ImageTransform, transformed
from fedalign.data.signals import SIGNALS_DOMAINS, load_signals

# The generated benchmark families: scheme -> its domains.
BUILT_IN_DOMAINS: dict[str, tuple[str, ...]] = {
    "digits": DIGITS_DOMAINS,
    "signals": SIGNALS_DOMAINS,
    "clinics": CLINICS_DOMAINS,
}
SCHEMES: dict[str, str] = {
    "digits": f"digits:<domain> with domain one of {', '.join(DIGITS_DOMAINS)}",
    "signals": f"signals:<domain> with domain one of {', '.join(SIGNALS_DOMAINS)}",
    "clinics": f"clinics:<domain> with domain one of {', '.join(CLINICS_DOMAINS)}",
    "imagefolder": "imagefolder:<directory>[?size=S|?size=HxW] with one sub-folder of images per class, or "
    "images directly in it (unlabelled)",
    "npz": "npz:<file.npz> with arrays x and y (or x alone: unlabelled; optionally x_val, y_val, x_test, "
    "y_test)",
    "python": f"{FORM}, a loader function of your own returning map-style datasets",
}


def digits_domains() -> tuple[str, ...]:
    """The built-in benchmark's domains: ("mnist", "mnistm", "optdigits", "syn")."""
    return DIGITS_DOMAINS


def _expected() -> str:
    return "expected one of: " + "; ".join(SCHEMES.values())


def parse_spec(spec: str) -> tuple[str, str]:
    """``"scheme:argument"`` -> (scheme, argument), checking the scheme (and, for a built-in benchmark, the
    domain; for a loader plug-in, the form of its import path; nothing is imported).

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
    for family, domains in BUILT_IN_DOMAINS.items():
        if scheme == family and argument not in domains:
            raise DatasetError(
                f"dataset spec {spec!r} names unknown {family} domain {argument!r}; "
                f"expected one of {', '.join(domains)}"
            )
    if scheme == "python":
        parse_plugin_argument(argument, spec)
    return scheme, argument


def _transformed(data: NodeData, transform: ImageTransform | None) -> NodeData:
    if transform is None:
        return data
    train, val, test = (transformed(s, transform) for s in (data.train, data.val, data.test))
    return replace(data, train=train, val=val, test=test, input_shape=tuple(train.sample_shape))


def load(spec: str, cache_dir: Path | None = None, context: LoaderContext | None = None) -> NodeData:
    """The data named by ``spec``, its splits read lazily (`fedalign.data.core.SplitDataset`).

    ``cache_dir`` is where built benchmark domains are kept (default: ``$FEDALIGN_DATA_DIR/datasets`` or
    ``~/.cache/fedalign/datasets``); file-backed specs are read as they are and not cached. ``context``: the
    federation the data are for (its preprocessing, and for a loader plug-in everything it is told);
    `fedalign.node.load_node_data` builds it from a federation's config.
    """
    scheme, argument = parse_spec(spec)
    context = context or LoaderContext()
    preprocessing = context.preprocessing
    if scheme == "digits":
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return _transformed(load_domain(spec, argument, cache), ImageTransform.of(preprocessing))
    if scheme == "signals":
        return _transformed(load_signals(spec, argument), ImageTransform.of(preprocessing))
    if scheme == "clinics":
        return _transformed(load_clinics(spec, argument), ImageTransform.of(preprocessing))
    if scheme == "imagefolder":
        return load_imagefolder(spec, argument, preprocessing)
    if scheme == "npz":
        return load_npz(spec, argument, preprocessing)
    return load_plugin(spec, argument, context)
