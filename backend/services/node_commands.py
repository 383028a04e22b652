"""The command a newly registered node runs on its own machine, shown once with its token."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

from backend.settings import Settings


def _broker(settings: Settings) -> str:
    url = settings.broker_url or ""
    # A password in the broker URL is the operator's to hand out, not something to echo to a page.
    return "<broker-url>" if urlsplit(url).password else url


def run_command(mode: str, name: str, token: str, api_url: str, settings: Settings) -> str:
    env = [f"FEDALIGN_NODE_TOKEN={shlex.quote(token)}"]
    api = ["--api", shlex.quote(api_url.rstrip("/"))]
    if mode == "rest":
        return " ".join([*env, "fedalign", "node", "run", *api])
    env.append(f"FEDALIGN_BROKER_URL={shlex.quote(_broker(settings))}")
    if (settings.broker_url or "").startswith("filesystem:"):
        # The filesystem broker's queues are folders under the server's data directory.
        env.append(f"FEDALIGN_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}")
    if settings.queue_prefix:
        env.append(f"FEDALIGN_QUEUE_PREFIX={shlex.quote(settings.queue_prefix)}")
    return " ".join([*env, "fedalign", "worker", "--node", shlex.quote(name), *api])
