"""A federation's initial parameters and their model manifest document, stored with it.

Round 0 starts from one safetensors file holding every tensor of G, T and D (``G.<name>``, ...) and the
manifest document that describes it (`fedalign.initial_parameters`). Where they come from:

- a built-in architecture without ``model.init_checkpoint``: the server builds both when the federation is
  created, with ``fedalign init-model``'s code (`fedalign.initial_parameters.build_initial`), so a served
  run starts from the simulator's bits;
- a plug-in architecture (an import path or an entry-point name), or a checkpoint: the creator runs
  ``fedalign init-model`` where the architecture is installed and uploads both files
  (``PUT .../initial-model/manifest``, then ``PUT .../initial-model/parameters``). The server never
  imports a plug-in: it checks the parameters against the document, and every later upload too
  (`backend.services.manifests`). A built-in federation may take an upload as well (a pretrained start);
  its document must then be the server's own build of the architecture.

The parameters are the artifact ``initial`` (content-addressed like every other) until the start, when
(`InitialiseModels`) the file is split into round 0's aggregates ``r0/init/G``, ``r0/init/T`` and
``r0/init/D`` and itself removed; the document stays, as the federation's ``model_manifest`` column.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.database import lock_blob
from backend.errors import ApiError, conflict
from backend.models import Artifact, Federation
from backend.schemas.federations import InitialModelOut
from backend.services.store import Staged
from fedalign.architecture_names import BUILTINS
from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig
from fedalign.initial_parameters import InitialParameters, build_initial
from fedalign.model_manifest import ModelManifest, ModelManifestDocument, first_difference
from fedalign.model_names import MODELS
from fedalign.protocol import effective_local_policy, initial_keys

if TYPE_CHECKING:  # the orchestrator imports this module to load round 0
    from backend.services.orchestrator import Orchestrator, Transaction

INITIAL_KEY = "initial"
INITIAL_KIND = "initial"
INITIAL_PHASE = "initial"


def federation_config(federation: Federation) -> FederationConfig:
    return FederationConfig.model_validate(federation.config)


def server_builds(config: FederationConfig) -> bool:
    """Whether the server builds the initial parameters itself: a built-in architecture, and no checkpoint
    (``init_checkpoint`` names a file on the creator's machine, which the server never reads)."""
    return config.architecture in BUILTINS and config.model.init_checkpoint is None


def upload_limit(max_upload_bytes: int) -> int:
    """The largest initial-parameters file: G, T and D together, each at most one upload's size."""
    return max_upload_bytes * len(MODELS)


def initial_inputs(config: FederationConfig) -> str:
    """What the initial parameters and their document depend on, as one string: two federations with the
    same can share them (a clone)."""
    context = ArchitectureContext.of(config)
    return json.dumps(
        {
            "architecture": config.architecture,
            "input_shape": list(context.input_shape),
            "num_classes": context.num_classes,
            "options": dict(context.options),
            "hidden": context.hidden,
            "normalization": context.normalization,
            "conditional": context.conditional,
            "seed": config.seed,
            "init_checkpoint": config.model.init_checkpoint,
            "policy": effective_local_policy(config),
        },
        sort_keys=True,
    )


# ------------------------------------------------------------------------------------------------ checks


def check_size(manifest: ModelManifest, max_upload_bytes: int) -> None:
    """422 when a model (or the published one, G and T with their local tensors) could never be uploaded."""
    sizes = {m: manifest.models[m].nbytes for m in MODELS}
    sizes["the published model (G and T)"] = sizes["G"] + sizes["T"]
    for what, size in sizes.items():
        if size > max_upload_bytes:
            name = f"model {what}" if what in MODELS else what
            raise ApiError(
                422,
                "model_too_large",
                f"{name} of this federation holds {size} bytes, over the server's upload limit of "
                f"{max_upload_bytes} bytes (FEDALIGN_MAX_UPLOAD_BYTES): its nodes could never upload it; "
                "choose smaller models or raise the limit",
            )


def _unbuildable(config: FederationConfig, exc: Exception) -> ApiError:
    return ApiError(
        422,
        "invalid_model",
        f"the federation's models cannot be built from its settings (architecture "
        f"{config.architecture!r}, model {config.model.model_dump(mode='json')}): {exc}",
    )


def builtin_manifest(config: FederationConfig) -> ModelManifest:
    """A built-in architecture's document under the federation's settings, built on the meta device (no
    values, nothing allocated); 422 when the settings do not fit the architecture."""
    try:
        # Meta device only: settings that no meta build takes are refused, never built for real (an
        # input_shape that asks for petabytes would be allocated by the fallback).
        return ModelManifest.for_config(config, real_fallback=False)
    except Exception as exc:  # ArchitectureError, and torch's own errors for sizes no layer takes
        raise _unbuildable(config, exc) from exc


def build(config: FederationConfig, max_upload_bytes: int) -> InitialParameters:
    """A built-in federation's initial parameters, as ``fedalign init-model`` builds them. The size is
    checked on the meta device first: nothing large is allocated for settings no node could use."""
    check_size(builtin_manifest(config), max_upload_bytes)
    try:
        return build_initial(config)
    except Exception as exc:
        raise _unbuildable(config, exc) from exc


def _refuse_unless_created(federation: Federation) -> None:
    if federation.status != "created":
        raise conflict(
            "already_started",
            f"federation {federation.name!r} is {federation.status}; its initial model is fixed once it "
            "starts (clone it to start from another)",
        )


# ------------------------------------------------------------------------------------------------ storing


def _stored(session: Session, federation_id: str) -> Artifact | None:
    return session.scalars(
        select(Artifact).where(Artifact.federation_id == federation_id, Artifact.key == INITIAL_KEY)
    ).one_or_none()


def _put(tx: Transaction, staged: Staged) -> None:
    tx.put_artifact(INITIAL_KEY, staged, kind=INITIAL_KIND, model="", round_=0, phase=INITIAL_PHASE)


def store_built(tx: Transaction, initial: InitialParameters) -> None:
    """Store what the server built: the document and the parameters."""
    tx.federation.model_manifest = initial.manifest.to_json()
    _put(tx, tx.store.stage_bytes(initial.to_bytes()))


def attach_built(orchestrator: Orchestrator, federation_id: str, initial: InitialParameters) -> None:
    with orchestrator.transaction(federation_id) as tx:
        store_built(tx, initial)


def put_manifest(
    orchestrator: Orchestrator, federation_id: str, document: ModelManifestDocument, max_upload_bytes: int
) -> InitialModelOut:
    """Store the creator's manifest document. A document other than the stored one drops the stored
    parameters (they were checked against the old one); the same one again changes nothing."""
    manifest = ModelManifest.from_document(document)
    with orchestrator.transaction(federation_id) as tx:
        federation = tx.federation
        _refuse_unless_created(federation)
        config = federation_config(federation)
        if manifest.architecture != config.architecture:
            raise ApiError(
                422,
                "architecture_mismatch",
                f"the manifest is of architecture {manifest.architecture!r}, the federation's is "
                f"{config.architecture!r}; run `fedalign init-model` on this federation's config",
            )
        check_size(manifest, max_upload_bytes)
        if config.architecture in BUILTINS:
            # The server can build a built-in's document itself: an upload must be exactly that.
            difference = first_difference(builtin_manifest(config), manifest)
            if difference is not None:
                raise ApiError(
                    422,
                    "manifest_mismatch",
                    "the manifest does not describe built-in architecture "
                    f"{config.architecture!r} under this federation's settings (compared with the server's "
                    f"own build, named 'this node' here): {difference}",
                )
        if federation.model_manifest == manifest.to_json():
            return initial_model_out(federation, _stored(tx.session, federation.id))
        federation.model_manifest = manifest.to_json()
        stored = _stored(tx.session, federation.id)
        if stored is not None:
            tx.after.garbage.add(stored.sha256)
            tx.session.delete(stored)
        tx.event("initial_model", {"manifest": True, "parameters": False})
        return initial_model_out(federation, None)


def manifest_for_upload(session: Session, federation: Federation) -> ModelManifest:
    """The document initial parameters are checked against (before the body is read)."""
    _refuse_unless_created(federation)
    if federation.model_manifest is None:
        raise conflict(
            "no_model_manifest",
            f"upload the manifest document first (PUT /api/v1/federations/{federation.id}/initial-model/"
            "manifest, the JSON file `fedalign init-model` writes): the parameters are checked against it",
        )
    return ModelManifest.from_json(federation.model_manifest)


def put_parameters(
    orchestrator: Orchestrator, federation_id: str, checked_against: ModelManifest, staged: Staged
) -> InitialModelOut:
    """Store validated initial parameters, if the document they were checked against is still the one."""
    with orchestrator.transaction(federation_id) as tx:
        federation = tx.federation
        _refuse_unless_created(federation)
        if federation.model_manifest != checked_against.to_json():
            raise conflict(
                "manifest_changed",
                "the manifest document changed while the parameters were uploading; upload them again",
            )
        _put(tx, staged)
        tx.event("initial_model", {"manifest": True, "parameters": True})
        return initial_model_out(federation, _stored(tx.session, federation.id))


def ensure_ready(tx: Transaction, config: FederationConfig, max_upload_bytes: int) -> None:
    """Before the start: both stored (a built-in's are built now if they are not), else 409 saying what to
    upload."""
    federation = tx.federation
    stored = _stored(tx.session, federation.id)
    if federation.model_manifest is not None and stored is not None:
        return
    if server_builds(config):
        try:
            store_built(tx, build(config, max_upload_bytes))
        except ApiError as exc:
            raise conflict(exc.code, f"the federation cannot start: {exc.message}") from exc
        return
    missing = [
        what
        for what, present in (
            ("the manifest document", federation.model_manifest is not None),
            ("the initial parameters", stored is not None),
        )
        if not present
    ]
    why = (
        f"architecture {config.architecture!r} is a plug-in, which the server never imports"
        if config.architecture not in BUILTINS
        else "its model.init_checkpoint is a file on the creator's machine, which the server never reads"
    )
    raise conflict(
        "no_initial_model",
        f"federation {federation.name!r} cannot start without {' and '.join(missing)}: {why}. Run "
        "`fedalign init-model CONFIG -o init.safetensors` where the architecture is installed, then PUT "
        f"init.manifest.json to /api/v1/federations/{federation.id}/initial-model/manifest and "
        f"init.safetensors to /api/v1/federations/{federation.id}/initial-model/parameters",
        {"missing": ["manifest" if "manifest" in m else "parameters" for m in missing]},
    )


def take(tx: Transaction) -> InitialParameters:
    """The stored initial parameters, read and checked against the document, for round 0's aggregates; the
    file itself is removed (round 0's aggregates hold every tensor of it from now on)."""
    stored = _stored(tx.session, tx.federation.id)
    manifest_json = tx.federation.model_manifest
    if stored is None or manifest_json is None:  # pragma: no cover - start checks both (ensure_ready)
        raise conflict("no_initial_model", "the federation has no initial parameters")
    initial = InitialParameters.read(tx.store.path(stored.sha256), ModelManifest.from_json(manifest_json))
    tx.after.garbage.add(stored.sha256)
    tx.session.delete(stored)
    return initial


def copy(orchestrator: Orchestrator, source_id: str, target_id: str) -> bool:
    """Give a clone the original's initial model, when both depend on the same settings; False if not.

    Before the original started, its file is shared (content-addressed: one file, two rows); after, it is
    put together again from the original's round 0 aggregates, which hold every tensor of it."""
    with orchestrator.db.read() as session:
        original = session.get(Federation, source_id)
        if original is None:
            return False
        document = original.model_manifest
        inputs = initial_inputs(federation_config(original))
        stored = _stored(session, source_id)
        shared = (stored.sha256, stored.size) if stored is not None else None
        round0 = {
            a.model: a.sha256
            for a in session.scalars(
                select(Artifact).where(
                    Artifact.federation_id == source_id, Artifact.key.in_(list(initial_keys().values()))
                )
            )
        }
    if document is None:
        return False
    staged: Staged | None = None
    if shared is None and set(round0) == set(MODELS):
        states = {m: orchestrator.store.load(round0[m]) for m in MODELS}
        data = InitialParameters(states, ModelManifest.from_json(document)).to_bytes()
        staged = orchestrator.store.stage_bytes(data)
    try:
        with orchestrator.transaction(target_id) as tx:
            clone = tx.federation
            if initial_inputs(federation_config(clone)) != inputs:
                return False
            clone.model_manifest = document
            if staged is not None:
                _put(tx, staged)
                staged = None  # adopted by the store
            elif shared is not None:
                sha, size = shared
                lock_blob(tx.session, sha)  # the original's file stays while this row commits
                if tx.store.exists(sha):
                    tx.session.add(
                        Artifact(
                            federation_id=clone.id,
                            key=INITIAL_KEY,
                            sha256=sha,
                            size=size,
                            model="",
                            kind=INITIAL_KIND,
                            round=0,
                            phase=INITIAL_PHASE,
                        )
                    )
            return True
    finally:
        if staged is not None:
            staged.discard()


# ------------------------------------------------------------------------------------------------ views


def _out(has_manifest: bool, stored: Artifact | None, started: bool) -> InitialModelOut:
    # Once started, round 0's aggregates hold the parameters (and the file is gone).
    present = {"manifest": has_manifest or started, "parameters": stored is not None or started}
    missing: list[Any] = [what for what, there in present.items() if not there]
    return InitialModelOut(
        ready=not missing,
        missing=missing,
        sha256=stored.sha256 if stored is not None else None,
        size=stored.size if stored is not None else None,
    )


def initial_model_out(federation: Federation, stored: Artifact | None) -> InitialModelOut:
    return _out(federation.model_manifest is not None, stored, federation.status != "created")


def initial_models_of(session: Session, federation_ids: list[str]) -> dict[str, InitialModelOut]:
    """Each federation's `InitialModelOut`, in two queries (the documents are not loaded)."""
    if not federation_ids:
        return {}
    rows = session.execute(
        select(Federation.id, Federation.model_manifest.is_not(None), Federation.status).where(
            Federation.id.in_(federation_ids)
        )
    ).all()
    documents = {fid: (bool(has), status != "created") for fid, has, status in rows}
    stored = {
        a.federation_id: a
        for a in session.scalars(
            select(Artifact).where(Artifact.federation_id.in_(federation_ids), Artifact.key == INITIAL_KEY)
        )
    }
    out = {}
    for fid in federation_ids:
        has_manifest, started = documents.get(fid, (False, False))
        out[fid] = _out(has_manifest, stored.get(fid), started)
    return out
