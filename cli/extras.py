"""Which install a command needs, and a clear message when it is missing.

One distribution, three installs (pyproject.toml): the base install is the command line's client side;
``fedalign[node]`` adds what a partner's node runs (torch, the data readers, ...); ``fedalign[server]`` the
coordinator's API and aggregator; ``fedalign[celery]`` Celery for nodes run as workers. A command that
needs an extra checks, before it imports anything of it, that every distribution the extra requires is
installed, reading the requirements from the installed package's own metadata (so the list is
pyproject.toml's, never repeated here), and otherwise says which extra to install.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rich.markup import escape

from cli.console import err_console
from cli.exit_codes import NOT_INSTALLED

DISTRIBUTION = "fedalign"
P = ParamSpec("P")
R = TypeVar("R")


def _requirements(extra: str) -> list[Requirement]:
    """The distributions `extra` brings (with the extras it names), this platform's markers applied."""
    try:
        specs = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []  # run from a source tree that is not installed: nothing to check against
    environment = {**default_environment(), "extra": extra}
    wanted: list[Requirement] = []
    for spec in specs:
        requirement = Requirement(spec)
        if requirement.marker is None or not requirement.marker.evaluate(environment):
            continue  # the base install's, or another extra's
        if canonicalize_name(requirement.name) == DISTRIBUTION:
            for inner in sorted(requirement.extras):
                wanted += _requirements(inner)
        else:
            wanted.append(requirement)
    return wanted


def missing(extra: str) -> list[str]:
    """The distributions of `extra` that are not installed here."""
    absent = []
    for requirement in _requirements(extra):
        try:
            importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(requirement.name)
    return sorted(set(absent))


def require(extra: str, what: str) -> None:
    """Stop with a message that names the extra to install when `extra` is not installed."""
    absent = missing(extra)
    if absent:
        message = (
            f"{what} needs FedAlign's {extra!r} extra, which is not installed here (missing: "
            f"{', '.join(absent)}). Install it with: pip install 'fedalign[{extra}]'"
        )
        err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
        raise typer.Exit(NOT_INSTALLED)


def needs(command_name: str, *extras: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A command (``fedalign <command_name>``) that runs only with `extras` installed; checked when it is
    called, not when ``--help`` lists it."""

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            for extra in extras:
                require(extra, f"`fedalign {command_name}`")
            return command(*args, **kwargs)

        return checked

    return decorate
