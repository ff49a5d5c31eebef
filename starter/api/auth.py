"""Who is calling, and what they may do: the dependencies every route declares.

Every route needs `Authorization: Bearer <token>`: the admin token from settings, an
admin token from the store, or a token scoped to one project (403 elsewhere).
"""

import hmac
import os
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from domain.blueprint import Environment, Isolation
from engine.sealing import Sealer
from starter.api.errors import forbidden, unauthorized
from starter.api.params import ProjectName
from store import NotFound, Store


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_sealer(request: Request) -> Sealer:
    sealer: Sealer = request.app.state.sealer
    return sealer


def _admin_token(request: Request) -> str | None:
    """app.state.admin_token, else settings.admin_token, else PREVIEW_ADMIN_TOKEN."""
    token = getattr(request.app.state, "admin_token", None)
    if token is None:
        settings = getattr(request.app.state, "settings", None)
        if settings is None:
            from engine.settings import get_settings

            settings = get_settings()
        token = getattr(settings, "admin_token", None)
    if token is None:
        token = os.environ.get("PREVIEW_ADMIN_TOKEN")
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    return token or None  # an empty setting must never match an empty header


class Principal(BaseModel):
    """Who is calling: an admin, or a token scoped to one project."""

    model_config = ConfigDict(frozen=True)
    admin: bool
    project: str | None
    actor: str = Field(description="What audit records name (never the token)")


_bearer = HTTPBearer(auto_error=False, description="An API token: admin or project-scoped")


async def authenticate(
    request: Request,
    store: Annotated[Store, Depends(get_store)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("send `Authorization: Bearer <token>`")
    token = credentials.credentials
    admin = _admin_token(request)
    if admin is not None and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(admin=True, project=None, actor="admin")
    record = await store.authenticate(token)
    if record is None:
        raise unauthorized("the token is not valid (unknown or revoked)")
    return Principal(admin=record.admin, project=record.project,
                     actor=f"token:{record.id}:{record.name}")


Auth = Annotated[Principal, Depends(authenticate)]


async def project_access(project: ProjectName, principal: Auth) -> Principal:
    if not principal.admin and principal.project != project:
        raise forbidden(f"this token is for project {principal.project!r}, not {project!r}",
                        object=f"project {project!r}")
    return principal


async def admin_only(principal: Auth) -> Principal:
    if not principal.admin:
        raise forbidden("this needs an admin token")
    return principal


ProjectAuth = Annotated[Principal, Depends(project_access)]
AdminAuth = Annotated[Principal, Depends(admin_only)]
StoreDep = Annotated[Store, Depends(get_store)]
SealerDep = Annotated[Sealer, Depends(get_sealer)]


def _placement(environment: Environment) -> tuple[Any, ...]:
    """Where an environment's previews run, when that is not the shared place."""
    dedicated = environment.isolation in (Isolation.cluster, Isolation.account)
    return (environment.isolation if dedicated else None, environment.cluster.name,
            environment.cloud_account)


SHARED = _placement(Environment())


async def guard_placement(principal: Principal, store: Store, project: str,
                          environment: Environment, name: str | None = None) -> None:
    """A dedicated cluster or cloud account is another tenant's unless an admin says so:
    a project token may keep the placement it was given, never choose one."""
    wanted = _placement(environment)
    if principal.admin or wanted == SHARED:
        return
    try:
        stored = await store.environments.get(project, name or environment.name)
    except NotFound:
        stored = None
    if stored is not None and _placement(stored) == wanted:
        return
    raise forbidden(
        "only an admin token may place an environment on a dedicated cluster or cloud "
        "account (environment.isolation, .cluster, .cloud_account)",
        object=f"environment {environment.name!r} of project {project!r}")
