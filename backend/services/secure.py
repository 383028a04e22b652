"""Secure aggregation on the server: what the steps of a masked phase carry, and the reveals that unmask it.

The server only relays (nodes' public keys, the roster's weights, the phase's one dropout list) and, when it
aggregates, folds masked uploads and removes the masks the survivors' reveals name (`fedalign.secagg`). It
never sees a private key or a node's plain upload. Seeds and keys travel as base64 in JSON.

Every step of a masked phase carries ``spec.secure``: slot (model) -> its mask context, the roster's
weights, public keys and threshold t, and, for reveal steps and a target's aggregate step, the dropped
nodes; a reveal step also the sealed shares the survivors handed its node, a target's aggregate step the
holders' answers (`fedalign.secagg_shares`). The server relays sealed shares it cannot open, and rebuilds
the survivors' seeds from t answers.
"""

from __future__ import annotations

import base64
from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Node, SeedReveal, Step
from fedalign import secagg, secagg_shares
from fedalign.config import FederationConfig
from fedalign.phases import Phase
from fedalign.protocol import MODELS, Aggregate, Protocol, StepSpec
from messaging.node_api import MaskContextOut, SecureSlot, ShareAnswer


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
    config: FederationConfig,
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
        threshold=config.secure_threshold(len(roster)),
        dropped=sorted(dropped),
    )


def step_masking(
    session: Session, federation_id: str, protocol: Protocol, step: StepSpec, keys: dict[str, str]
) -> dict[str, SecureSlot]:
    """``spec.secure`` of a training or reveal step of a masked phase; empty when nothing is masked.

    A reveal step also carries, per model, the sealed shares every survivor handed this node with its
    masked upload (kept in the survivor's step result), for the node to open and answer from.
    """
    rosters = protocol.roster_weights(step.round, step.phase)
    if step.kind == "reveal":
        slots = {m: dropped for m, dropped in step.dropped.items() if m in rosters}
    else:
        slots = {m: [] for m in step.uploads if m in rosters}
    phase = protocol.phase_of(step.round, step.phase)
    masking = {
        model: _slot(protocol.config, federation_id, step.round, phase, model, rosters[model], keys, dropped)
        for model, dropped in slots.items()
    }
    if step.kind == "reveal":
        sealed = _sealed_shares(session, federation_id, step.round, step.phase)
        for model, slot in masking.items():
            survivors = [n for n in sorted(slot.weights) if n not in slot.dropped]
            # A survivor whose step completed without shares (one stored before threshold recovery) is left
            # out; the holder then refuses to answer, naming it.
            held = {n: sealed.get(n, {}).get(model, {}).get(step.node) for n in survivors}
            slot.shares = {n: share for n, share in held.items() if share is not None}
    return masking


def _sealed_shares(
    session: Session, federation_id: str, round_: int, phase: str
) -> dict[str, dict[str, dict[str, str]]]:
    """node -> model -> holder -> sealed shares, as the phase's completed training steps sent them."""
    rows = session.execute(
        select(Node.name, Step.result).where(
            Step.federation_id == federation_id,
            Step.node_id == Node.id,
            Step.round == round_,
            Step.phase == phase,
            Step.kind.not_in(("reveal", "aggregate")),
            Step.status == "done",
        )
    )
    return {name: dict((result or {}).get("shares", {})) for name, result in rows}


def aggregate_masking(
    session: Session, federation_id: str, protocol: Protocol, action: Aggregate, keys: dict[str, str]
) -> dict[str, SecureSlot]:
    """``spec.secure`` of a target's aggregate step: the roster, the dropped nodes and the answers."""
    round_, phase = protocol.state.round, protocol.phase
    roster = protocol.roster_weights(round_, phase)[action.model]
    dropped = sorted(set(roster) - set(action.inputs))
    config, current = protocol.config, protocol.current
    entry = _slot(config, federation_id, round_, current, action.model, roster, keys, dropped)
    answers = {
        row.node: ShareAnswer.model_validate(row.seeds[action.model])
        for row in _answers(session, federation_id, round_, phase)
        if action.model in row.seeds
    }
    return {action.model: entry.model_copy(update={"answers": answers})}


def _answers(session: Session, federation_id: str, round_: int, phase: str) -> list[SeedReveal]:
    return list(
        session.scalars(
            select(SeedReveal).where(
                SeedReveal.federation_id == federation_id,
                SeedReveal.round == round_,
                SeedReveal.phase == phase,
            )
        )
    )


def load_seeds(
    session: Session,
    config: FederationConfig,
    federation_id: str,
    round_: int,
    phase: str,
    model: str,
    roster: dict[str, float],
    inputs: list[str],
) -> dict[str, secagg.SeedReveal]:
    """The survivors' seeds for ``model`` of a closed masked phase, rebuilt from the stored answers (for the
    server's unmasking); raises `fedalign.secagg.SecAggError` when they are too few or do not agree."""
    answers = {
        row.node: secagg_shares.ShareReveal(row.node, *ShareAnswer.model_validate(row.seeds[model]).decoded())
        for row in _answers(session, federation_id, round_, phase)
        if model in row.seeds
    }
    dropped = sorted(set(roster) - set(inputs))
    return secagg_shares.recover(roster, dropped, answers, config.secure_threshold(len(roster)))
