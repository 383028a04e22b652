"""Where the client commands (``fedalign federations ...``, ``fedalign node register``) find the server and
their token: the command's option, else the environment (``FEDALIGN_URL``, ``FEDALIGN_TOKEN``), else the
config file, else (for the URL) the local default.

The config file is TOML, ``$FEDALIGN_CLI_CONFIG`` or ``$XDG_CONFIG_HOME/fedalign/cli.toml`` (by default
``~/.config/fedalign/cli.toml``)::

    url = "https://fedalign.example.org"
    token = "..."

It holds a token, so it must be readable by its owner only (mode 0600): a file others can read is refused
rather than used.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_ENV = "FEDALIGN_CLI_CONFIG"
KEYS = ("url", "token")

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="FEDALIGN_URL",
        show_envvar=True,
        help=f"The FedAlign API's base URL (else the config file's url, else {DEFAULT_URL}).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDALIGN_TOKEN",
        show_envvar=True,
        help="The admin token (or, for `node register`, a federation's join token); else the config "
        "file's token. Prefer the variable or the file: `ps` shows options.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (the API's own fields) instead of tables.")
]


class ConfigProblem(ValueError):
    """A client setting that cannot be used, said so that a user can fix it."""


@dataclass(frozen=True)
class ClientSettings:
    url: str
    token: str | None
    # Where the values came from, for messages ("the token from ~/.config/fedalign/cli.toml ...").
    source: str


def config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fedalign" / "cli.toml"


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings; {} when there is no file. Refuses a file that others may read, or that holds
    anything but the known keys as strings."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigProblem(
            f"{path} may be read by other users (mode {stat.S_IMODE(mode):04o}) and it holds a token; "
            f"make it yours alone with: chmod 600 {path}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigProblem(f"{path} cannot be read as TOML: {exc}") from exc
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigProblem(f"{path} has unknown settings {unknown}; it takes only {', '.join(KEYS)}")
    wrong = sorted(k for k, v in data.items() if not isinstance(v, str) or not v)
    if wrong:
        raise ConfigProblem(f"{path}: {', '.join(wrong)} must be non-empty strings")
    return data


def client_settings(url: str | None, token: str | None) -> ClientSettings:
    """The URL and token a command uses: its options (which Typer fills from the environment), else the
    config file, else the default URL and no token."""
    path = config_path()
    file = read_config_file(path) if url is None or token is None else {}
    chosen_url = (url or file.get("url") or DEFAULT_URL).rstrip("/")
    if not chosen_url.startswith(("http://", "https://")):
        raise ConfigProblem(f"the server URL {chosen_url!r} must start with http:// or https://")
    source = str(path) if file else "the command line and environment"
    return ClientSettings(url=chosen_url, token=token or file.get("token"), source=source)


def no_token_message(what: str) -> str:
    return (
        f'{what} needs a token: pass --token, set FEDALIGN_TOKEN, or write token = "..." to '
        f"{config_path()} (mode 0600)"
    )
