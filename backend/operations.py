"""The names of roles and operations: the contract the access policy (`backend.access`), the API's schemas,
the CLI and, through the OpenAPI document, the dashboard share. Plain names, so that the client commands of
the base install (no database driver) can import them."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

Role = Literal["coordinator", "owner", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)


class Operation(StrEnum):
    """What a caller asks to do; each route names one."""

    LIST_FEDERATIONS = "federations.list"
    CREATE_FEDERATION = "federations.create"
    READ_FEDERATION = "federation.read"  # its config, manifest, rounds, metrics and events
    READ_NODES = "federation.nodes.read"  # a viewer: its own organisation's nodes only
    READ_MODEL = "federation.model.read"  # the published model, its card and checkpoints
    CONTROL_FEDERATION = "federation.control"  # start, pause, resume, cancel, continue
    MANAGE_FEDERATION = "federation.manage"  # delete, clone, initial model, aggregations
    MANAGE_NODES = "federation.nodes.manage"  # register and remove nodes; node and join tokens
    MANAGE_ACCESS_TOKENS = "access_tokens.manage"
