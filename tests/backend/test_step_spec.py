"""`Step.spec` is a typed `StepSpec` over the same stored JSON: rows written before the type existed read
as it, and rows written now hold exactly the JSON the orchestrator always wrote (no migration)."""

from __future__ import annotations

import json
from typing import Any

from api_support import Api
from sqlalchemy import select, text

from backend.models import Node, Step, StepSpec
from fedalign.protocol import Aggregate
from fedalign.protocol import StepSpec as ProtocolStep
from messaging.node_api import MaskContextOut, SecureSlot

MASKING = {
    "context": {"federation": "f", "round": 1, "phase": "disc1", "model": "D", "exchange": 0},
    "weights": {"alpha": 0.25, "omega": 0.75},
    "public_keys": {"alpha": "a" * 43 + "=", "omega": "o" * 43 + "="},
    "dropped": [],
}
TRAINING = {"downloads": {"D": "r0/init/D"}, "uploads": {"D": "r1/disc1/D/alpha"}, "seed": 7}
MASKED = {**TRAINING, "secure": {"D": {**MASKING, "threshold": 2}}}
# A masked step stored before threshold recovery existed: no threshold (read as 0).
MASKED_BEFORE_SHARES = {**TRAINING, "secure": {"D": MASKING}}
AGGREGATE = {
    "downloads": {},
    "uploads": {"D": "r1/disc1/D"},
    "seed": 0,
    "key": "r1/disc1/D",
    "inputs": {"alpha": "r1/disc1/D/alpha", "omega": "r1/disc1/D/omega"},
    "weights": {"alpha": 0.5, "omega": 0.5},
}
MASKED_AGGREGATE = {**AGGREGATE, "secure": {"D": {**MASKING, "threshold": 2, "answers": {}}}}


def stored_json(api: Api, step_id: int) -> dict[str, Any]:
    with api.services.db.read() as session:
        raw = session.execute(text("SELECT spec FROM steps WHERE id = :id"), {"id": step_id}).scalar_one()
    return raw if isinstance(raw, dict) else json.loads(raw)  # SQLite hands back the text


def add_steps(api: Api, specs: list[StepSpec]) -> list[int]:
    federation, _ = api.federation_with_nodes()
    with api.services.db.write() as session:
        node_id = session.scalars(select(Node.id).where(Node.federation_id == federation["id"])).first()
        rows = [
            Step(
                federation_id=federation["id"],
                node_id=node_id,
                round=1,
                phase="disc1",
                kind=f"k{i}",
                spec=spec,
            )
            for i, spec in enumerate(specs)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def test_a_spec_is_stored_as_the_json_the_orchestrator_always_wrote(api: Api) -> None:
    training = ProtocolStep(
        "alpha", 1, "disc1", "discriminator", {"D": "r0/init/D"}, {"D": "r1/disc1/D/alpha"}, 7
    )
    aggregate = Aggregate("r1/disc1/D", "D", AGGREGATE["inputs"], AGGREGATE["weights"], "omega")
    slot = SecureSlot(
        context=MaskContextOut(**MASKING["context"]),
        weights=MASKING["weights"],
        public_keys=MASKING["public_keys"],
        threshold=2,
        dropped=[],
    )
    specs = [
        StepSpec.of_step(training, {}),
        StepSpec.of_step(training, {"D": slot}),
        StepSpec.of_aggregate(aggregate, None),
        StepSpec.of_aggregate(aggregate, {"D": slot.model_copy(update={"answers": {}})}),
    ]
    ids = add_steps(api, specs)
    assert [stored_json(api, i) for i in ids] == [TRAINING, MASKED, AGGREGATE, MASKED_AGGREGATE]


def test_a_stored_spec_reads_as_a_typed_value_and_writes_back_unchanged(api: Api) -> None:
    stored = (TRAINING, MASKED, MASKED_AGGREGATE, MASKED_BEFORE_SHARES)
    ids = add_steps(api, [StepSpec.model_validate(s) for s in stored])
    with api.services.db.read() as session:
        training, masked, aggregate, before = (session.get(Step, i) for i in ids)
        assert training is not None and masked is not None and aggregate is not None and before is not None
        assert (training.spec.seed, training.spec.inputs, training.spec.secure) == (7, {}, {})
        assert masked.spec.secure["D"].context.phase == "disc1" and masked.spec.secure["D"].shares == {}
        assert masked.spec.secure["D"].threshold == 2 and before.spec.secure["D"].threshold == 0
        assert aggregate.spec.aggregate_key == "r1/disc1/D" and aggregate.spec.weights["omega"] == 0.5
    assert [stored_json(api, i) for i in ids] == list(stored)
