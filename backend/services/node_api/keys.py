"""Secure aggregation's node side of the server: public keys relayed (AdvertiseKeys), shares revealed
(Unmasking).

The server keeps each node's one public key and hands the roster's keys out in the steps of masked phases;
after a masked phase closes, each survivor's reveal step is answered here with its threshold shares of the
survivors' self seeds and of their pairwise seeds with the dropped nodes only (`check_answer`), and fed to
the protocol as `RevealDone`.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import ApiError, conflict, not_found
from backend.models import Federation, Node, SeedReveal
from backend.security import NodeCredential
from backend.services import secure
from backend.services.node_api.access import federation_of, refuse_if_closed, refuse_if_over, step_transaction
from backend.services.node_api.completion import answer, mark_done
from backend.services.node_api.share_checks import check_answer
from backend.services.orchestrator import Orchestrator, federation_config
from fedalign import secagg
from fedalign.protocol import ProtocolError, RevealDone
from messaging.node_api import CompleteResult, PublicKeyIn, PublicKeyOut, PublicKeys, RevealRequest


def _refuse_unless_secure(federation: Federation) -> None:
    if not federation_config(federation).secure_aggregation:
        raise conflict(
            "not_secure_aggregation",
            "this federation does not use secure aggregation; its nodes upload plain parameters and have no "
            "keys to exchange or seeds to reveal",
        )


def put_public_key(orchestrator: Orchestrator, node: NodeCredential, body: PublicKeyIn) -> PublicKeyOut:
    """Store the caller's X25519 public key (AdvertiseKeys): the same key again is a no-op, another one
    refused."""
    try:
        secagg.check_public_key(secure.unb64(body.public_key))
    except secagg.SecAggError as exc:
        raise ApiError(422, "invalid_public_key", f"the public key is refused: {exc}") from exc
    with orchestrator.transaction(node.federation_id) as tx:
        _refuse_unless_secure(tx.federation)
        refuse_if_over(tx.federation, "it takes no more keys")
        row = tx.session.get(Node, node.node_id)
        if row is None:
            raise not_found("this node no longer exists")
        if row.public_key == body.public_key:
            return PublicKeyOut(node=row.name, public_key=row.public_key, stored=False)
        if row.public_key is not None:
            raise conflict(
                "key_already_set",
                f"node {row.name!r} already sent another public key, and its peers may have masked against "
                "it; a node keeps one key per federation (its private key lives in the node's state "
                "directory: restore it, or register the node in a new federation)",
            )
        row.public_key = body.public_key
        tx.event("public_key", {"node": row.name})
        return PublicKeyOut(node=row.name, public_key=body.public_key, stored=True)


def public_keys_of(session: Session, node: NodeCredential) -> PublicKeys:
    federation = federation_of(session, node)
    return PublicKeys(public_keys=secure.public_keys(session, federation.id))


def reveal(
    orchestrator: Orchestrator, node: NodeCredential, step_id: int, body: RevealRequest
) -> CompleteResult:
    """A survivor's seeds for its reveal step (Unmasking): checked against the step, stored, fed as
    `RevealDone`. The same answer again is answered as the first time; a different one is refused."""
    seeds = body.model_dump(mode="json")["shares"]
    with step_transaction(orchestrator, node, step_id) as (tx, step):
        federation = tx.federation
        if step.kind != "reveal":
            raise conflict(
                "not_a_reveal_step",
                f"step {step_id} is a {step.kind} step; shares are revealed only to a reveal step, which a "
                "node gets after a masked phase closes",
            )
        stored = tx.session.scalars(
            select(SeedReveal).where(
                SeedReveal.federation_id == federation.id,
                SeedReveal.round == step.round,
                SeedReveal.phase == step.phase,
                SeedReveal.node == node.node_name,
            )
        ).one_or_none()
        if step.status == "done":
            if stored is not None and stored.seeds == seeds:
                return answer(step, federation)
            raise conflict(
                "already_revealed",
                f"step {step_id} was already answered with other shares; a survivor answers once, since two "
                "answers could together unmask one upload",
            )
        refuse_if_closed(step, federation)
        masking = step.spec.secure
        if set(body.shares) != set(masking):
            raise ApiError(
                422,
                "invalid_reveal",
                f"the reveal must hold an answer for exactly the models {sorted(masking)} of this step; it "
                f"holds {sorted(body.shares)}",
            )
        for model, entry in body.shares.items():
            check_answer(model, masking[model], node.node_name, entry)
        tx.session.add(
            SeedReveal(
                federation_id=federation.id,
                round=step.round,
                phase=step.phase,
                node=node.node_name,
                seeds=seeds,
            )
        )
        mark_done(tx, step, node, {"revealed": sorted(seeds)})
        try:
            tx.handle(RevealDone(node.node_name, step.round, step.phase))
        except ProtocolError as exc:
            raise conflict(exc.code, f"the round schedule refused this reveal: {exc}") from exc
        return answer(step, federation)
