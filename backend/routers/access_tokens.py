"""Access tokens (coordinator only): issue one with a role and an organisation, list them, rotate or revoke
one. The coordinator's own credential rotates this way, without a restart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from backend.deps import ManageAccessTokens, ServicesDep
from backend.errors import responses
from backend.schemas.access_tokens import AccessTokenCreate, AccessTokenCreated, AccessTokenList
from backend.services import access_tokens

router = APIRouter(prefix="/api/v1/tokens", tags=["access tokens"])

TokenId = Annotated[str, Path(description="The access token's id (not the token itself).", max_length=36)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AccessTokenCreated,
    responses=responses(401, 403, 413, 422),
    summary="Issue an access token with a role and an organisation; shown once",
)
def create_access_token(
    body: AccessTokenCreate, services: ServicesDep, _access: ManageAccessTokens
) -> AccessTokenCreated:
    return access_tokens.create(services.db, body)


@router.get("", response_model=AccessTokenList, responses=responses(401, 403))
def list_access_tokens(services: ServicesDep, _access: ManageAccessTokens) -> AccessTokenList:
    """Every access token issued, revoked ones included (never the tokens themselves)."""
    return AccessTokenList(items=access_tokens.all_tokens(services.db))


@router.post(
    "/{token_id}/rotate",
    response_model=AccessTokenCreated,
    responses=responses(401, 403, 404, 409, 413, 422),
    summary="Rotate an access token: a new secret, shown once; the old one and its sessions end at once",
)
def rotate_access_token(
    services: ServicesDep, _access: ManageAccessTokens, token_id: TokenId
) -> AccessTokenCreated:
    return access_tokens.rotate(services.db, token_id)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422),
    summary="Revoke an access token: it and its dashboard sessions stop working at once",
)
def revoke_access_token(services: ServicesDep, _access: ManageAccessTokens, token_id: TokenId) -> None:
    access_tokens.revoke(services.db, token_id)
