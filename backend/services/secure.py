"""Secure aggregation on the server: what the steps of a masked phase carry, and the reveals that unmask it.

The server only relays (nodes' public keys, the roster's weights, the phase's one dropout list) and, when it
aggregates, folds masked uploads and removes the masks the survivors' reveals name (`fedalign.secagg`). It
never sees a private key or a node's plain upload. Seeds and keys travel as base64 in JSON.

Every step of a masked phase carries ``spec.secure``: slot (model) -> its mask context, the roster's
weights and public keys, and, for reveal steps and a target's aggregate step, the dropped nodes (and for
the latter the survivors' reveals).
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Node, SeedReveal
from fedalign import secagg
from fedalign.config import FederationConfig
from fedalign.phases import Phase
from fedalign.protocol import MODELS, Aggregate, Protocol, StepSpec
from messaging.node_api import MaskContextOut, SecureSlot, Seeds


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def is_masked(config: FederationConfig, step_kind: str, slot: str) -> bool:
    """Whether an upload to ``slot`` of a ``step_kind`` step travels masked.

    Every averaged submission (G, T, D of a training step); never the published model (kept by the server
    as the target sends it) nor a target's aggregate (the unmasked sum, checked like any plain upload).
    """
    return config.secure_aggregation and step_kind != "aggregate" and slot in MODELS


def public_keys(session: Session, federation_id: str) -> dict[str, str]:
    """Every node of the federation that sent its public key: name -> base64."""
    rows = session.execute(
        select(Node.name, Node.public_key).where(
            Node.federation_id == federation_id, Node.public_key.is_not(None)
        )
    )
    return {name: key for name, key in rows if key is not None}


def _slot(
    federation_id: str,
    round_: int,
    phase: Phase,
    model: str,
    roster: dict[str, float],
    keys: dict[str, str],
    dropped: list[str],
) -> SecureSlot:
    return SecureSlot(
        context=MaskContextOut(**asdict(secagg.MaskContext.of_phase(federation_id, round_, phase, model))),
        weights=dict(roster),
        public_keys={node: keys[node] for node in sorted(roster)},
        dropped=sorted(dropped),
    )


def step_masking(
    federation_id: str, protocol: Protocol, step: StepSpec, keys: dict[str, str]
) -> dict[str, SecureSlot]:
    """``spec.secure`` of a training or reveal step of a masked phase; empty when nothing is masked."""
    rosters = protocol.roster_weights(step.round, step.phase)
    if step.kind == "reveal":
        slots = {m: dropped for m, dropped in step.dropped.items() if m in rosters}
    else:
        slots = {m: [] for m in step.uploads if m in rosters}
    phase = protocol.phase_of(step.round, step.phase)
    return {
        model: _slot(federation_id, step.round, phase, model, rosters[model], keys, dropped)
        for model, dropped in slots.items()
    }


def aggregate_masking(
    session: Session, federation_id: str, protocol: Protocol, action: Aggregate, keys: dict[str, str]
) -> dict[str, SecureSlot]:
    """``spec.secure`` of a target's aggregate step: the roster, the dropped nodes and the reveals."""
    round_, phase = protocol.state.round, protocol.phase
    roster = protocol.roster_weights(round_, phase)[action.model]
    dropped = sorted(set(roster) - set(action.inputs))
    entry = _slot(federation_id, round_, protocol.current, action.model, roster, keys, dropped)
    rows = session.scalars(
        select(SeedReveal).where(
            SeedReveal.federation_id == federation_id,
            SeedReveal.round == round_,
            SeedReveal.phase == phase,
            SeedReveal.node.in_(list(action.inputs)),
        )
    )
    reveals = {row.node: Seeds.model_validate(row.seeds[action.model]) for row in rows}
    return {action.model: entry.model_copy(update={"reveals": reveals})}


def reveal_of(node: str, seeds: dict[str, Any]) -> secagg.SeedReveal:
    """One model's revealed seeds (as stored: base64) as `fedalign.secagg.SeedReveal`."""
    return secagg.SeedReveal(
        node, unb64(seeds["self_seed"]), {peer: unb64(s) for peer, s in seeds["pair_seeds"].items()}
    )


def load_reveals(
    session: Session, federation_id: str, round_: int, phase: str, model: str, nodes: list[str]
) -> dict[str, secagg.SeedReveal]:
    """The reveals of ``nodes`` for ``model`` in a closed masked phase (for the server's unmasking)."""
    rows = session.scalars(
        select(SeedReveal).where(
            SeedReveal.federation_id == federation_id,
            SeedReveal.round == round_,
            SeedReveal.phase == phase,
            SeedReveal.node.in_(nodes),
        )
    )
    return {row.node: reveal_of(row.node, row.seeds[model]) for row in rows if model in row.seeds}
