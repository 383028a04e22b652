"""Secure aggregation in a served federation: REST nodes exchange keys through the API, upload masked
parameters, reveal seeds to reveal steps, and the aggregator (server or target) learns only the sum.

Each run is checked against the simulator (`fedalign.simulate`, which masks the same way in-process): the
masks cancel exactly in the ring, so a served secure run gives the simulator's secure run bit for bit, and
the plain run's numbers within the fixed-point encoding's rounding.
"""

from __future__ import annotations

import base64
import datetime as dt
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from api_support import RUN_TIMEOUT_S, Api, drive, runners_for, tiny_settings, write_vectors
from scipy import stats
from sqlalchemy import select
from test_api_aggregations import events_of
from test_api_end_to_end import served_rounds
from test_api_hostile_input import assert_refused, snapshot

from backend.models import Artifact, Federation, SeedReveal, Step
from backend.services.orchestrator import protocol_state
from fedalign import params, secagg, secagg_shares
from fedalign.config import FederationConfig
from fedalign.model_manifest import ModelManifest
from fedalign.node import NodeRuntime, initial_models
from fedalign.protocol import MODELS, Action, Deadline, Protocol, RunStep, submission_key
from fedalign.simulate import Simulator, simulate
from messaging.node_api import ShareAnswer
from workers.client import NodeClient, NodeRunner, Task

# Metrics of the secure and the plain run: aggregates differ by the fixed point's rounding (~1e-7), so a
# metric may move by as much only (a flipped prediction, >= 1/10 here, would fail this).
METRIC_TOLERANCE = 1e-4
# p-values of the statistical checks: each pools thousands of ring elements, so a real dependence gives
# p near 0, while uniform masks fail one by chance once in a million runs.
ALPHA = 1e-6
FAR = 1e6  # a masked value decoded on its own: magnitudes near 2^62 / 2^24; parameters here are below 10
SAMPLES = {"train": 40, "val": 10, "test": 10}


def secure_settings(**overrides: Any) -> dict[str, Any]:
    return tiny_settings(secure_aggregation=True, **overrides)


def config_of(settings: dict[str, Any], specs: dict[str, str], **overrides: Any) -> FederationConfig:
    roles = {"omega": "target"}
    nodes = [{"name": n, "role": roles.get(n, "source"), "dataset": s} for n, s in sorted(specs.items())]
    return FederationConfig.model_validate({**settings, **overrides, "nodes": nodes})


def expected_rounds(result: Any) -> dict[int, dict[str, Any]]:
    return {r.round: r.to_json() for r in result.rounds if r.metrics or r.nodes}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def record_plain_uploads(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """What each node's step produces before it is masked: submission key -> state (test-side only)."""
    plain: dict[str, dict[str, torch.Tensor]] = {}
    run = NodeRuntime.run

    def recording(runtime: NodeRuntime, step: Any, downloads: Any) -> Any:
        result = run(runtime, step, downloads)
        for slot, state in result.uploads.items():
            plain[submission_key(step.round, step.phase, slot, step.node)] = {
                k: v.clone() for k, v in state.items()
            }
        return result

    monkeypatch.setattr(NodeRuntime, "run", recording)
    return plain


def record_requests(api: Api) -> list[httpx.Request]:
    sent: list[httpx.Request] = []
    api.client.event_hooks["request"].append(sent.append)
    return sent


def sweep_past_deadline(api: Api) -> int:
    """One sweep as if the open phase's deadline had long passed; returns the deadlines it applied."""
    return api.services.sweeper.sweep_once(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).deadlines


def drive_with_deadlines(api: Api, runners: dict[str, NodeRunner]) -> None:
    """`drive`, but whenever no node has anything to do, the open phase's deadline passes."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not all(r.finished for r in runners.values()):
        # Checked on every pass: a step that fails and is retried forever also counts as progress.
        assert time.monotonic() < deadline, "the federation did not finish in time"
        if any([runner.step_once() for runner in runners.values()]):
            continue
        if not sweep_past_deadline(api):  # the phase waits for a server-side aggregation
            time.sleep(0.01)


def ring_uniform(values: list[torch.Tensor]) -> float:
    """p-value of a KS test that int64 ring elements are uniform over Z_2^64."""
    pooled = np.concatenate([v.flatten().numpy().view(np.uint64) for v in values]).astype(np.float64)
    return float(stats.kstest(pooled / 2.0**64, "uniform").pvalue)


def federation_row(api: Api, fid: str) -> tuple[list[Artifact], list[SeedReveal], Any]:
    with api.services.db.read() as session:
        artifacts = list(session.scalars(select(Artifact).where(Artifact.federation_id == fid)))
        reveals = list(session.scalars(select(SeedReveal).where(SeedReveal.federation_id == fid)))
        federation = session.get(Federation, fid)
        assert federation is not None
        state = protocol_state(federation)
        for row in (*artifacts, *reveals):
            session.expunge(row)
    return artifacts, reveals, state


def rebuilt_seeds(
    reveal_rows: list[SeedReveal], config: FederationConfig, protocol: Protocol
) -> dict[tuple[int, str, str], dict[str, secagg.SeedReveal]]:
    """(round, phase, model) -> each survivor's seeds, rebuilt from the holders' stored answers as the
    aggregator rebuilds them."""
    answers: dict[tuple[int, str, str], dict[str, secagg_shares.ShareReveal]] = {}
    for row in reveal_rows:
        for model, answer in row.seeds.items():
            decoded = ShareAnswer.model_validate(answer).decoded()
            answers.setdefault((row.round, row.phase, model), {})[row.node] = secagg_shares.ShareReveal(
                row.node, *decoded
            )
    rebuilt = {}
    for (round_, phase, model), held in answers.items():
        roster = protocol.roster_weights(round_, phase)[model]
        survivors = next(iter(held.values())).self_shares
        dropped = sorted(set(roster) - set(survivors))
        rebuilt[round_, phase, model] = secagg_shares.recover(
            roster, dropped, held, config.secure_threshold(len(roster))
        )
    return rebuilt


def assert_the_aggregator_learns_only_the_sum(
    api: Api, fid: str, config: FederationConfig, plain: dict[str, dict[str, torch.Tensor]]
) -> None:
    """Everything the aggregator holds (the stored uploads and the reveals) gives each round's sum and no
    single node's parameters."""
    artifacts, reveal_rows, state = federation_row(api, fid)
    store, protocol = api.services.store, Protocol(config, state)
    manifests = ModelManifest.for_config(config).models
    seeds_of = rebuilt_seeds(reveal_rows, config, protocol)
    # Nobody dropped: no holder revealed a share of any pairwise seed.
    assert all(not any(a["pair_shares"].values()) for r in reveal_rows for a in r.seeds.values())
    averaged = {k for k in plain if k.split("/")[2] in MODELS}
    submissions = {a.key: a for a in artifacts if a.kind == "submission"}
    assert set(submissions) == averaged and len(averaged) == 2 * (3 + 5)  # D x3; G x3, T x2 per round
    masked_values, unmasked_self, plain_values, masked_signed = [], [], [], []
    for key, artifact in submissions.items():
        upload = store.load(artifact.sha256)
        model, node = artifact.model, artifact.node or ""
        weight = protocol.roster_weights(artifact.round, artifact.phase)[model][node]
        assert set(upload) == set(plain[key])
        seeds = seeds_of[artifact.round, artifact.phase, model][node]
        assert seeds.pair_seeds == {}
        self_seed = seeds.self_seed
        for name, tensor in upload.items():
            assert tensor.dtype == torch.int64
            encoded = secagg.DEFAULT_FIXED_POINT.encode(plain[key][name], weight)
            assert float((tensor == encoded).double().mean()) < 0.01, (key, name)
            decoded = secagg.DEFAULT_FIXED_POINT.decode(tensor, weight, torch.float64)
            assert float((decoded - plain[key][name].double()).abs().median()) > FAR, (key, name)
            # With the node's own revealed self seed removed, its pairwise masks with the other survivors
            # still hide it: the reveals and one upload do not give that upload.
            without_self = tensor.clone()
            secagg._ring_add_(without_self, secagg.expand_mask(self_seed, name, tensor.shape), -1)
            unmasked_self.append(without_self)
            masked_values.append(tensor)
            plain_values.append(plain[key][name].double().flatten())
            masked_signed.append(tensor.double().flatten())
    assert ring_uniform(masked_values) > ALPHA
    assert ring_uniform(unmasked_self) > ALPHA
    correlation = stats.pearsonr(torch.cat(plain_values).numpy(), torch.cat(masked_signed).numpy())
    assert correlation.pvalue > ALPHA, correlation

    aggregates = [a for a in artifacts if a.kind == "aggregate" and a.round > 0]
    assert len(aggregates) == 2 * 3  # D, G, T per round
    for aggregate in aggregates:
        stored = store.load(aggregate.sha256)
        roster = protocol.roster_weights(aggregate.round, aggregate.phase)[aggregate.model]
        total = secagg.MaskedSum(manifests[aggregate.model], roster)
        for node in sorted(roster):
            total.offer(
                node,
                store.path(
                    submissions[
                        submission_key(aggregate.round, aggregate.phase, aggregate.model, node)
                    ].sha256
                ),
            )
        # Without the survivors' reveals the sum of every upload does not decode...
        for name, ring in total.buffers.items():
            decoded = secagg.DEFAULT_FIXED_POINT.decode(ring, total.total_weight(), torch.float64)
            assert float((decoded - stored[name].double()).abs().median()) > FAR, (aggregate.key, name)
        # ...and with them it is exactly what was aggregated.
        unmasked = total.unmask(seeds_of[aggregate.round, aggregate.phase, aggregate.model])
        assert unmasked.keys() == stored.keys()
        assert all(torch.equal(unmasked[name], stored[name]) for name in stored), aggregate.key


# ---------------------------------------------------------------------------------------------------------
# (a) and (b): both topologies give the simulator's numbers, and the aggregator sees masked uploads only


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_a_secure_served_federation_gives_the_simulators_numbers_from_masked_uploads_only(
    api: Api, vector_specs: Callable[[], dict[str, str]], monkeypatch: pytest.MonkeyPatch, aggregator: str
) -> None:
    plain_uploads = record_plain_uploads(monkeypatch)
    sent = record_requests(api)
    specs = vector_specs()
    settings = secure_settings(aggregator=aggregator)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    drive(runners)
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"

    config = config_of(settings, specs)
    reference = simulate(config)
    served = served_rounds(api, fid)
    # The masks cancel exactly in the ring: the simulator's secure run, bit for bit.
    assert served == expected_rounds(reference)
    model = api.request("GET", f"/api/v1/federations/{fid}/model")
    assert model.status_code == 200
    assert model.content == params.to_bytes(reference.models["target_model"])
    # And the plain run's numbers within the fixed point's rounding (the plain served run is the plain
    # simulation bit for bit: test_api_end_to_end.py).
    plain = simulate(config_of(settings, specs, secure_aggregation=False))
    plain_rounds = expected_rounds(plain)
    assert served.keys() == plain_rounds.keys()
    for r, record in plain_rounds.items():
        assert served[r]["metrics"] == pytest.approx(record["metrics"], abs=METRIC_TOLERANCE)
        for node, metrics in record["nodes"].items():
            assert served[r]["nodes"][node] == pytest.approx(metrics, abs=METRIC_TOLERANCE)
    for name, tensor in plain.models["target_model"].items():
        assert torch.allclose(reference.models["target_model"][name], tensor, atol=1e-5), name

    # Keys: the server relays each node's public key as the node sent it; no private key ever left a node.
    relayed = api.request("GET", "/api/v1/node/public-keys", token=tokens["beta"]).json()["public_keys"]
    keys = {name: runner.secagg.key_pair() for name, runner in runners.items() if runner.secagg}
    assert relayed == {name: b64(k.public_bytes) for name, k in keys.items()} and len(keys) == 3
    assert sent, "no request was recorded"
    for request in sent:
        body = request.content
        for k in keys.values():
            assert k.private_bytes() not in body and b64(k.private_bytes()).encode() not in body

    assert_the_aggregator_learns_only_the_sum(api, fid, config, plain_uploads)
    if aggregator == "target":
        # The target read the phase's reveals through its own aggregate steps, which no other node can claim.
        with api.services.db.read() as session:
            aggregate_steps = list(
                session.scalars(select(Step).where(Step.federation_id == fid, Step.kind == "aggregate"))
            )
            specs_of = [(s.id, s.model, s.spec) for s in aggregate_steps]
        assert len(specs_of) == 2 * 3
        for step_id, model, spec in specs_of:
            assert set(spec.secure[model].answers) == set(spec.inputs)
            claimed = api.request("POST", f"/api/v1/node/steps/{step_id}/claim", token=tokens["alpha"])
            assert claimed.status_code == 403, claimed.text


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_a_secure_served_federation_with_the_server_step_gives_the_simulators_numbers(
    api: Api, vector_specs: Callable[[], dict[str, str]], aggregator: str
) -> None:
    # The step is taken after the unmasking, on the sum the masks cancelled from.
    specs = vector_specs()
    hyperparameters = {
        **tiny_settings()["hyperparameters"],
        "source_extractor": "restart",
        "server_step": "target_share",
    }
    settings = secure_settings(aggregator=aggregator, hyperparameters=hyperparameters)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    drive(runners_for(api, tokens))
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"

    reference = simulate(config_of(settings, specs))
    assert served_rounds(api, fid) == expected_rounds(reference)
    model = api.request("GET", f"/api/v1/federations/{fid}/model")
    assert model.content == params.to_bytes(reference.models["target_model"])
    plain = simulate(config_of(settings, specs, hyperparameters={**hyperparameters, "server_step": "none"}))
    assert not torch.equal(plain.models["G"]["0.weight"], reference.models["G"]["0.weight"])


# ---------------------------------------------------------------------------------------------------------
# (c) a node that drops after masking


class SilentFromRound1(Simulator):
    """The simulator with ``gamma`` silent after its setup: every phase closes at the deadline without it."""

    def _carry_out(self, action: Action) -> list[Action]:
        if isinstance(action, RunStep) and action.step.node == "gamma" and action.step.round >= 1:
            return self._deadline()
        actions = super()._carry_out(action)
        return actions + self._deadline() if isinstance(action, RunStep) else actions

    def _deadline(self) -> list[Action]:
        state = self.protocol.state
        if state.finished or state.pending or state.round < 1:
            return []
        phase = self.protocol.phase
        waiting = set(self.protocol.participants(state.round, phase)) - set(state.done)
        return self.protocol.handle(Deadline(state.round, phase)) if waiting == {"gamma"} else []


@pytest.mark.parametrize("aggregator", ["server", "target"])
def test_a_node_that_drops_after_masking_leaves_the_survivors_average(
    api: Api, vector_specs: Callable[[], dict[str, str]], tmp_path: Path, aggregator: str
) -> None:
    """gamma joins (its key is relayed, so everyone masks against it), claims round 1's discriminator step
    and falls silent: each phase closes at its deadline without it, the survivors reveal their shares of
    the seeds with gamma (and no other), the aggregator (the server, or the target in its aggregate steps)
    unmasks the survivors' sum with them, and the run ends with the simulator's numbers driven through the
    same deadlines. gamma's masked upload, arriving after the deadline, is refused; it has nothing to
    reveal."""
    specs = {**vector_specs(), "gamma": write_vectors(tmp_path / "gamma.npz", 4, 0.6)}
    settings = secure_settings(min_sources=2, phase_deadline_s=60, aggregator=aggregator)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    tokens["gamma"] = api.register(fid, "gamma", "source", specs["gamma"])["token"]
    api.start(fid)
    runners = runners_for(api, tokens)
    for runner in runners.values():
        assert runner.step_once()  # setup: every key is relayed
    late = runners["gamma"].client.next_task()
    assert late is not None and (late.phase, sorted(late.secure)) == ("disc1", ["D"])
    assert sorted(late.secure["D"].public_keys) == ["alpha", "beta", "gamma", "omega"]
    # gamma trains and masks while the phase is open...
    masked, _ = runners["gamma"]._masked(late, "D", runners["gamma"]._train(late).uploads["D"])
    for name in ("alpha", "beta", "omega"):
        assert runners[name].step_once()
    assert sweep_past_deadline(api) == 1
    # ...and its upload arrives after the deadline: refused, nothing stored.
    before = snapshot(api)
    response = put(api, late.uploads["D"], tokens["gamma"], masked)
    assert_refused(api, response, before, 409)
    assert response.json()["error"]["code"] == "wrong_phase"
    alpha_reveal = api.task(tokens["alpha"])
    assert alpha_reveal is not None and alpha_reveal["kind"] == "reveal"
    assert alpha_reveal["secure"]["D"]["dropped"] == ["gamma"]
    share = b64(bytes(66))
    shares = {"D": {"x": 1, "self_shares": {"alpha": share}, "pair_shares": {"alpha": {"gamma": share}}}}
    before = snapshot(api)
    # A node that is not a survivor reveals nothing: it has no reveal step, and another's is not its own.
    for url, status in (
        (alpha_reveal["complete_url"], 403),
        (late.complete_url.replace("complete", "reveal"), 409),
    ):
        response = api.request("POST", url, token=tokens["gamma"], json={"shares": shares})
        assert_refused(api, response, before, status)
    runners["alpha"].run(Task.model_validate(alpha_reveal))
    drive_with_deadlines(api, {n: runners[n] for n in ("alpha", "beta", "omega")})
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"

    config = config_of(settings, specs)
    reference = SilentFromRound1(config).run()
    assert served_rounds(api, fid) == expected_rounds(reference)
    model = api.request("GET", f"/api/v1/federations/{fid}/model")
    assert model.status_code == 200 and model.content == params.to_bytes(reference.models["target_model"])
    by = {a["by"] for a in api.ok("GET", f"/api/v1/federations/{fid}/aggregations")["items"]}
    assert by == {"server" if aggregator == "server" else "omega"}
    closed = [e["payload"] for e in events_of(api, fid) if e["type"] == "phase_closed"]
    assert [(c["round"], c["phase"], c["missing"]) for c in closed] == [
        (r, p, ["gamma"]) for r in (1, 2) for p in ("disc1", "adapt", "eval")
    ]
    # One dropout list per phase, the same for every survivor; their reveals hold seeds with gamma only.
    with api.services.db.read() as session:
        reveal_steps = list(
            session.scalars(select(Step).where(Step.federation_id == fid, Step.kind == "reveal"))
        )
        dropped = {
            (s.round, s.phase, model, str(slot.dropped))
            for s in reveal_steps
            for model, slot in s.spec.secure.items()
        }
        rows = list(session.scalars(select(SeedReveal).where(SeedReveal.federation_id == fid)))
        assert {d[3] for d in dropped} == {"['gamma']"}
        assert len(reveal_steps) == len(rows) == 2 * (3 + 3)  # disc1: 3 survivors, adapt: 3 (G), per round
        assert all(
            set(pairs) == {"gamma"}
            for r in rows
            for a in r.seeds.values()
            for pairs in a["pair_shares"].values()
        )
        assert not session.scalars(
            select(Artifact).where(Artifact.federation_id == fid, Artifact.node == "gamma")
        ).all()
        # With the target aggregating, its aggregate steps unmasked the survivors' sum: each held the same
        # dropout list and every survivor's reveal, and gamma's upload was never an input.
        aggregates = list(
            session.scalars(select(Step).where(Step.federation_id == fid, Step.kind == "aggregate"))
        )
        masked = [(step.spec, slot) for step in aggregates for slot in step.spec.secure.values()]
        phases = {(step.round, step.phase) for step in aggregates if step.spec.secure}
        assert phases == (
            {(r, p) for r in (1, 2) for p in ("disc1", "adapt")} if aggregator == "target" else set()
        )
        for spec, slot in masked:  # T's average has the surviving sources only
            assert slot.dropped == ["gamma"] and set(slot.answers) == set(spec.inputs)
            assert {"alpha", "beta"} <= set(spec.inputs) <= {"alpha", "beta", "omega"}


# ---------------------------------------------------------------------------------------------------------
# A survivor that does not reveal; the node's keys and ledger on its machine


@pytest.mark.parametrize(("aggregator", "threshold"), [("server", None), ("target", None), ("server", 0.75)])
def test_a_survivor_lost_after_masking_is_unmasked_from_t_others_shares_and_fewer_stall_the_run(
    api: Api,
    vector_specs: Callable[[], dict[str, str]],
    tmp_path: Path,
    aggregator: str,
    threshold: float | None,
) -> None:
    """beta masks and uploads its discriminator, then its worker is gone before the Unmasking round. With
    the default threshold (2 of 3) alpha's and omega's shares rebuild beta's seeds at the deadline and the
    run goes on without beta's reveal; with 3 of 3 it stalls until beta answers. Either way the run ends
    with the simulator's numbers."""
    specs = vector_specs()
    extra = {} if threshold is None else {"secure_aggregation_threshold": threshold}
    settings = secure_settings(rounds=1, phase_deadline_s=60, aggregator=aggregator, **extra)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    state_dirs = {name: tmp_path / f"node-{name}" for name in tokens}

    def runner(name: str) -> NodeRunner:
        return NodeRunner(
            NodeClient("http://testserver", tokens[name], http=api.client), state_dir=state_dirs[name]
        )

    runners = {name: runner(name) for name in tokens}
    for r in runners.values():
        assert r.step_once()
    relayed = api.request("GET", "/api/v1/node/public-keys", token=tokens["alpha"]).json()["public_keys"]
    for name in tokens:
        key_file = state_dirs[name] / fid / f"{name}.x25519"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert relayed[name] == b64(secagg.KeyPair.from_private_bytes(key_file.read_bytes()).public_bytes)

    # beta's discriminator step runs, then its worker is replaced: the restarted one reuses the key and
    # masks and shares the step's saved result identically (the server answers "stored: false" and the
    # same completion; a different masked upload would be refused).
    task = runners["beta"].client.next_task()
    assert task is not None and task.kind == "discriminator"
    runners["beta"].run(task)
    restarted = runner("beta")
    assert restarted.secagg is not None and runners["beta"].secagg is not None
    assert restarted.secagg.key_pair().public_bytes == runners["beta"].secagg.key_pair().public_bytes
    restarted.run(task)
    for name in ("alpha", "omega"):
        assert runners[name].step_once()
    # alpha and omega reveal; beta (its worker gone again) does not, and the deadline passes.
    for name in ("alpha", "omega"):
        assert runners[name].step_once()
    assert sweep_past_deadline(api) == 1
    federation = api.ok("GET", f"/api/v1/federations/{fid}")
    if threshold is None:
        assert federation["status"] == "running"
        closed = [e["payload"] for e in events_of(api, fid) if e["type"] == "phase_closed"]
        assert closed[-1]["missing"] == ["beta"]
        assert "unmasked from the other survivors' shares" in closed[-1]["reason"]
        if aggregator == "target":  # the target unmasks from the two answers it is handed
            aggregate = runners["omega"].client.next_task()
            assert aggregate is not None and aggregate.kind == "aggregate"
            assert sorted(aggregate.secure["D"].answers) == ["alpha", "omega"]
            runners["omega"].run(aggregate)
        assert api.ok("GET", f"/api/v1/federations/{fid}")["phase"] == "adapt"
    else:
        assert federation["status"] == "stalled"
        assert "beta uploaded masked parameters" in federation["stall_reason"]
        assert "did not reveal" in federation["stall_reason"]
        assert "D: 2 of the 3 needed" in federation["stall_reason"]

    # The ledger on beta's machine: one masked value and one dropout list per context.
    ledger = state_dirs["beta"] / fid / "beta.secagg.json"
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
    context = secagg.MaskContext(**task.secure["D"].context.model_dump())
    with pytest.raises(secagg.SecAggError, match="already masked another upload"):
        restarted.secagg.record_mask(context, "0" * 64)
    restarted.secagg.record_reveal(context, [])
    with pytest.raises(secagg.SecAggError, match="will not answer a different one"):
        restarted.secagg.record_reveal(context, ["alpha"])

    # beta comes back (and reveals, if the run still waits for it): the run ends with the simulator's numbers.
    drive({**runners, "beta": restarted})
    assert api.ok("GET", f"/api/v1/federations/{fid}")["status"] == "finished"
    assert served_rounds(api, fid) == expected_rounds(simulate(config_of(settings, specs)))


# ---------------------------------------------------------------------------------------------------------
# (d) bad input


def random_masked(config: FederationConfig, model: str, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    manifest = secagg.masked_manifest(ModelManifest.for_config(config).models[model])
    return params.to_bytes(
        {s.name: torch.randint(-(2**62), 2**62, s.shape, generator=g, dtype=torch.int64) for s in manifest}
    )


def put(api: Api, url: str, token: str, body: bytes) -> Any:
    return api.request(
        "PUT", url, token=token, content=body, headers={"Content-Type": "application/octet-stream"}
    )


def test_secure_aggregation_is_accepted_when_it_can_work(api: Api) -> None:
    created = api.create_federation(**secure_settings(aggregator="target"))
    assert created["config"]["secure_aggregation"] is True
    refused = api.request("POST", "/api/v1/federations", json=secure_settings(min_sources=1))
    assert refused.status_code == 422 and "min_sources of at least 2" in refused.text
    api.register(created["id"], "alpha", "source")
    api.register(created["id"], "omega", "target")
    one_source = api.request("POST", f"/api/v1/federations/{created['id']}/start")
    assert one_source.status_code == 409 and "at least two source nodes" in one_source.text


def test_bad_secure_aggregation_input_gets_a_clear_4xx_and_changes_nothing(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    specs = vector_specs()
    settings = secure_settings(rounds=1)
    config = config_of(settings, specs)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    fid = federation["id"]
    api.start(fid)
    runners = runners_for(api, tokens)
    alpha, beta = tokens["alpha"], tokens["beta"]

    # Keys: setup does not complete without one; malformed ones are refused.
    setup = api.task(alpha)
    assert setup is not None and setup["kind"] == "setup"
    before = snapshot(api)
    response = api.request("POST", setup["complete_url"], token=alpha, json={"samples": SAMPLES})
    assert_refused(api, response, before, 409)
    assert response.json()["error"]["code"] == "missing_public_key"
    for bad in ("not base64 at all", b64(bytes(31)), b64(bytes(32)), b64(bytes(32))[:-1] + "!"):
        response = api.request("PUT", "/api/v1/node/public-key", token=alpha, json={"public_key": bad})
        assert_refused(api, response, before, 422)
    response = api.request("PUT", "/api/v1/node/public-key", token=alpha, json={"public_key": b64(bytes(32))})
    assert response.json()["error"]["code"] == "invalid_public_key"  # all zeros: a low-order point
    runners["alpha"].run(Task.model_validate(setup))
    assert runners["alpha"].secagg is not None
    own_key = b64(runners["alpha"].secagg.key_pair().public_bytes)
    other_key = b64(secagg.KeyPair.generate().public_bytes)
    before = snapshot(api)
    response = api.request("PUT", "/api/v1/node/public-key", token=alpha, json={"public_key": other_key})
    assert_refused(api, response, before, 409)
    assert response.json()["error"]["code"] == "key_already_set"
    again = api.request("PUT", "/api/v1/node/public-key", token=alpha, json={"public_key": own_key})
    assert again.status_code == 200 and again.json()["stored"] is False
    for name in ("beta", "omega"):
        assert runners[name].step_once()

    # Uploads to a masked phase: plain floats, the wrong integer type, a missing tensor.
    task = api.task(alpha)
    assert task is not None and task["kind"] == "discriminator" and set(task["secure"]) == {"D"}
    plain_d = initial_models(config)["D"]
    masked = secagg.masked_manifest(ModelManifest.for_config(config).models["D"])
    int32 = {s.name: torch.zeros(s.shape, dtype=torch.int32) for s in masked}
    missing = {s.name: torch.zeros(s.shape, dtype=torch.int64) for s in list(masked)[1:]}
    before = snapshot(api)
    for body, code in (
        (params.to_bytes(plain_d), "dtype_mismatch"),
        (params.to_bytes(int32), "dtype_mismatch"),
        (params.to_bytes(missing), "missing_tensor"),
    ):
        response = put(api, task["uploads"]["D"], alpha, body)
        assert_refused(api, response, before, 422)
        assert response.json()["error"]["code"] == code
    assert "secure aggregation" in put(api, task["uploads"]["D"], alpha, params.to_bytes(plain_d)).text

    # Completing a masked step: its sealed seed shares, one per roster node, each of the exact size.
    parsed = Task.model_validate(task)
    data, sealed = runners["alpha"]._masked(parsed, "D", runners["alpha"]._train(parsed).uploads["D"])
    assert put(api, task["uploads"]["D"], alpha, data).status_code == 200
    good = {h: b64(c) for h, c in sealed.items()}
    before = snapshot(api)
    for shares in (
        {},  # none
        {"D": {h: c for h, c in good.items() if h != "omega"}},  # a holder left out
        {"D": {**good, "zed": good["beta"]}},  # a stranger
        {"D": {**good, "beta": b64(base64.b64decode(good["beta"])[:-1])}},  # cut short
        {"D": good, "G": good},  # a slot that is not masked in this step
    ):
        response = api.request("POST", task["complete_url"], token=alpha, json={"shares": shares})
        assert_refused(api, response, before, 422)
        assert response.json()["error"]["code"] == "invalid_shares"
    response = api.request("POST", task["complete_url"], token=alpha, json={"shares": {"D": {"beta": "!!"}}})
    assert_refused(api, response, before, 422)
    api.ok("POST", task["complete_url"], token=alpha, json={"shares": {"D": good}})
    for name in ("beta", "omega"):
        assert runners[name].step_once()

    # Reveals: only to a reveal step, only one's own, exactly the listed models and dropped nodes.
    reveal_task = api.task(alpha)
    assert reveal_task is not None and reveal_task["kind"] == "reveal"
    assert reveal_task["complete_url"].endswith(f"/steps/{reveal_task['step_id']}/reveal")
    assert reveal_task["secure"]["D"]["dropped"] == []
    url = reveal_task["complete_url"]
    share = b64(bytes(range(66)))
    everyone = ("alpha", "beta", "omega")

    def answer(**changes: Any) -> dict[str, Any]:
        return {
            "x": 1,
            "self_shares": dict.fromkeys(everyone, share),
            "pair_shares": {n: {} for n in everyone},
        } | changes

    before = snapshot(api)
    for token, target, body, status in (
        (alpha, task["complete_url"].replace("complete", "reveal"), {"shares": {"D": answer()}}, 409),
        (beta, url, {"shares": {"D": answer()}}, 403),
        (alpha, url, {"shares": {"G": answer()}}, 422),
        (alpha, url, {"shares": {"D": answer(), "T": answer()}}, 422),
        # A share of a pairwise seed between two survivors would strip a survivor's masks: refused.
        (
            alpha,
            url,
            {"shares": {"D": answer(pair_shares={"alpha": {"beta": share}, "beta": {}, "omega": {}})}},
            422,
        ),
        (alpha, url, {"shares": {"D": answer(self_shares={"alpha": share, "beta": share})}}, 422),
        (alpha, url, {"shares": {"D": answer(x=2)}}, 422),  # alpha holds the first share, not the second
        (alpha, url, {"shares": {"D": answer(self_shares=dict.fromkeys(everyone, b64(bytes(65))))}}, 422),
        (alpha, url, {"shares": {"D": answer(self_shares=dict.fromkeys(everyone, share[:-2] + "=="))}}, 422),
        (alpha, url, {"seeds": {"D": {"self_seed": b64(bytes(32))}}}, 422),  # the old, direct reveal
        (alpha, url.replace("/reveal", "/complete"), {}, 409),
    ):
        assert_refused(api, api.request("POST", target, token=token, json=body), before, status)
    runners["alpha"].run(Task.model_validate(reveal_task))
    with api.services.db.read() as session:
        (row,) = session.scalars(select(SeedReveal).where(SeedReveal.federation_id == fid)).all()
        answered = dict(row.seeds)
    assert (
        api.request("POST", url, token=alpha, json={"shares": answered}).status_code == 200
    )  # the same again
    before = snapshot(api)
    response = api.request("POST", url, token=alpha, json={"shares": {"D": answer()}})
    assert_refused(api, response, before, 409)
    assert response.json()["error"]["code"] == "already_revealed"

    # A masked upload cannot be replaced by another (their difference would show through the same masks).
    for name in ("beta", "omega"):
        assert runners[name].step_once()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (adapt := api.task(alpha)) is None:  # the server aggregates D meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert adapt["phase"] == "adapt"
    assert put(api, adapt["uploads"]["G"], alpha, random_masked(config, "G", 1)).status_code == 200
    before = snapshot(api)
    response = put(api, adapt["uploads"]["G"], alpha, random_masked(config, "G", 2))
    assert_refused(api, response, before, 409)
    assert response.json()["error"]["code"] == "masked_upload_frozen"

    # And the other way round: a plain federation takes no masked upload, no key and no reveal.
    plain_federation, plain_tokens = api.federation_with_nodes(**tiny_settings())
    api.start(plain_federation["id"])
    for token in plain_tokens.values():
        setup = api.task(token)
        assert setup is not None
        api.ok("POST", setup["complete_url"], token=token, json={"samples": SAMPLES})
    plain_task = api.task(plain_tokens["alpha"])
    assert plain_task is not None and plain_task["secure"] == {}
    before = snapshot(api)
    response = put(api, plain_task["uploads"]["D"], plain_tokens["alpha"], random_masked(config, "D", 3))
    assert_refused(api, response, before, 422)
    assert "masked int64 uploads" in response.json()["error"]["message"]
    response = api.request(
        "PUT", "/api/v1/node/public-key", token=plain_tokens["alpha"], json={"public_key": own_key}
    )
    assert_refused(api, response, before, 409)
    assert response.json()["error"]["code"] == "not_secure_aggregation"
