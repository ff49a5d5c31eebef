"""The HTTP API of the environment model (mounted by the app under /api).

Projects, environments, the elements of each blueprint collection (applications,
databases, ...: domain.blueprint.COLLECTIONS) and variables are plain CRUD; secrets
are write-only (a PUT stores a value, everything else sees metadata); blueprints are
imported as YAML or JSON and exported back. Every route needs `Authorization: Bearer
<token>`: the admin token from settings, an admin token from the store, or a token scoped
to one project (403 elsewhere).

The app provides `app.state.store` (store.Store) and `app.state.sealer`
(engine.sealing.Sealer); `app.state.admin_token` overrides the admin token setting.

Errors are JSON `ErrorBody`s naming the object and field. Request validation errors are
rendered here without the rejected input, so a secret sent with a typo never comes back
in a response (FastAPI's default 422 echoes the input).
"""

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.exceptions import HTTPException  # what FastAPI raises for unreadable bodies

from domain.blueprint import (
    COLLECTIONS,
    AppliesTo,
    Blueprint,
    BlueprintCollection,
    DnsName,
    Environment,
    Isolation,
    VariableKind,
    VariableScope,
)
from domain.blueprint_file import BlueprintFileError, dump_blueprint, field_path, parse_blueprint
from domain.clusters import CLUSTER_NAME, MAX_KUBECONFIG_BYTES
from engine.sealing import Sealer
from starter.bodies import MAX_DEPTH, depth
from store import (
    AuditEntry,
    ClusterMetadata,
    Collection,
    ImportResult,
    ImportSummary,
    Invalid,
    NotFound,
    Page,
    ProjectRecord,
    ProjectSpec,
    ScopedVariable,
    SecretMetadata,
    Store,
    StoreError,
    TokenRecord,
    VariableRef,
)

log = logging.getLogger(__name__)

MAX_BLUEPRINT_BYTES = 1024 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


# ---------------------------------------------------------------------------- error bodies


class FieldError(BaseModel):
    field: str = Field(description="Where: body.scope, query.limit, applications[0].name, ...")
    message: str
    type: str


class ErrorBody(BaseModel):
    error: Literal[
        "unauthorized", "forbidden", "not_found", "conflict", "invalid", "too_large",
        "unsupported_media_type",
    ]
    message: str
    object: str | None = Field(None, description="The object the error is about")
    field: str | None = Field(None, description="The field the error is about")
    errors: list[FieldError] | None = Field(None, description="Every invalid field")


class ApiError(Exception):
    def __init__(self, status: int, body: ErrorBody, headers: dict[str, str] | None = None):
        super().__init__(body.message)
        self.status, self.body, self.headers = status, body, headers


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, ErrorBody(error="unauthorized", message=message),
                    {"WWW-Authenticate": "Bearer"})


def _forbidden(message: str, object: str | None = None) -> ApiError:
    return ApiError(403, ErrorBody(error="forbidden", message=message, object=object))


_STATUS = {"not_found": 404, "conflict": 409, "invalid": 422}


def _field_errors(errors: Any, prefix: tuple[str, ...] = ()) -> list[FieldError]:
    # Only loc, msg and type: never `input` or `ctx`, which may hold what was sent.
    return [
        FieldError(field=field_path((*prefix, *e["loc"])),
                   message=str(e["msg"]).removeprefix("Value error, "), type=str(e["type"]))
        for e in errors
    ]


def _invalid(errors: list[FieldError], message: str | None = None) -> JSONResponse:
    summary = message or "; ".join(f"{e.field}: {e.message}" for e in errors)
    body = ErrorBody(error="invalid", message=summary,
                     field=errors[0].field if errors else None, errors=errors)
    return JSONResponse(body.model_dump(mode="json"), status_code=422)


class ApiRoute(APIRoute):
    """Turns store, auth and validation errors into ErrorBody responses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as error:
                return JSONResponse(error.body.model_dump(mode="json"), status_code=error.status,
                                    headers=error.headers)
            except StoreError as error:
                body = ErrorBody(error=error.code, message=error.message,  # type: ignore[arg-type]
                                 object=error.object, field=error.field)
                return JSONResponse(body.model_dump(mode="json"), status_code=_STATUS[error.code])
            except RequestValidationError as error:
                return _invalid(_field_errors(error.errors()))
            except HTTPException as error:
                if error.status_code != 400:
                    raise
                # FastAPI's "There was an error parsing the body" (e.g. not UTF-8).
                return _invalid([FieldError(field="body", message=str(error.detail),
                                            type="body_unreadable")])
            except ValidationError as error:  # a model built in a handler from path + body
                return _invalid(_field_errors(error.errors(include_input=False), ("body",)))

        return route_handler


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "Missing or invalid token", 403: "The token may not do this",
            404: "Not found", 409: "Conflicts with what is stored", 422: "Invalid request"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


router = APIRouter(route_class=ApiRoute, responses=_responses(401, 422))


# ---------------------------------------------------------------------------- dependencies


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
        raise _unauthorized("send `Authorization: Bearer <token>`")
    token = credentials.credentials
    admin = _admin_token(request)
    if admin is not None and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(admin=True, project=None, actor="admin")
    record = await store.authenticate(token)
    if record is None:
        raise _unauthorized("the token is not valid (unknown or revoked)")
    return Principal(admin=record.admin, project=record.project,
                     actor=f"token:{record.id}:{record.name}")


Auth = Annotated[Principal, Depends(authenticate)]
ProjectName = Annotated[str, Path(description="Project name", max_length=63)]


async def project_access(project: ProjectName, principal: Auth) -> Principal:
    if not principal.admin and principal.project != project:
        raise _forbidden(f"this token is for project {principal.project!r}, not {project!r}",
                         object=f"project {project!r}")
    return principal


async def admin_only(principal: Auth) -> Principal:
    if not principal.admin:
        raise _forbidden("this needs an admin token")
    return principal


ProjectAuth = Annotated[Principal, Depends(project_access)]
AdminAuth = Annotated[Principal, Depends(admin_only)]
StoreDep = Annotated[Store, Depends(get_store)]
BIGINT = 2**63 - 1  # PostgreSQL's bigint: larger numbers cannot name anything stored
Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=BIGINT, description="Items to skip")]
Key = Annotated[str, Path(pattern=KEY_PATTERN, max_length=128, description="Variable key")]


def variable_ref(
    key: Key,
    scope: Annotated[VariableScope, Query()] = VariableScope.project,
    environment: Annotated[str | None, Query(description="For scope environment")] = None,
    application: Annotated[str | None, Query(description="For scope application")] = None,
    applies_to: Annotated[AppliesTo, Query()] = AppliesTo.both,
) -> VariableRef:
    try:
        return VariableRef(key=key, scope=scope, environment=environment,
                           application=application, applies_to=applies_to)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in error.errors(include_input=False)]
        ) from None


RefDep = Annotated[VariableRef, Depends(variable_ref)]


# ---------------------------------------------------------------------------- projects


@router.get("/projects", response_model=Page[ProjectRecord], tags=["projects"])
async def list_projects(
    principal: Auth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[ProjectRecord]:
    """Every project (admin), or the token's own project."""
    only = None if principal.admin else principal.project
    return await store.list_projects(limit=limit, offset=offset, only=only)


@router.post("/projects", status_code=201, response_model=ProjectRecord, tags=["projects"],
             responses=_responses(403, 409))
async def create_project(spec: ProjectSpec, principal: AdminAuth, store: StoreDep) -> ProjectRecord:
    return await store.create_project(spec, principal.actor)


@router.get("/projects/{project}", response_model=ProjectRecord, tags=["projects"],
            responses=_responses(403, 404))
async def get_project(project: ProjectName, _: ProjectAuth, store: StoreDep) -> ProjectRecord:
    return await store.get_project(project)


@router.put("/projects/{project}", response_model=ProjectRecord, tags=["projects"],
            responses=_responses(403, 404, 409))
async def update_project(
    project: ProjectName, spec: ProjectSpec, principal: ProjectAuth, store: StoreDep
) -> ProjectRecord:
    return await store.update_project(project, spec, principal.actor)


@router.delete("/projects/{project}", status_code=204, response_class=Response,
               tags=["projects"], responses=_responses(403, 404))
async def delete_project(project: ProjectName, principal: AdminAuth, store: StoreDep) -> None:
    """Delete the project with everything it holds, secrets and tokens included."""
    await store.delete_project(project, principal.actor)


# ---------------------------------------------- environments and the blueprint collections


def _placement(environment: Environment) -> tuple[Any, ...]:
    """Where an environment's previews run, when that is not the shared place."""
    dedicated = environment.isolation in (Isolation.cluster, Isolation.account)
    return (environment.isolation if dedicated else None, environment.cluster.name,
            environment.cloud_account)


SHARED = _placement(Environment())


async def _guard_placement(principal: Principal, store: Store, project: str,
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
    raise _forbidden(
        "only an admin token may place an environment on a dedicated cluster or cloud "
        "account (environment.isolation, .cluster, .cloud_account)",
        object=f"environment {environment.name!r} of project {project!r}")


def _collection_routes(
    path: str, label: str, model: Any, collection: Callable[[Store], Collection[Any]]
) -> None:
    """List/create/get/replace/delete routes for one kind of named project document."""
    tag: list[str | Enum] = [path]

    async def list_items(
        project: ProjectName, _: ProjectAuth, store: StoreDep, limit: Limit = 50,
        offset: Offset = 0,
    ) -> Any:
        return await collection(store).list(project, limit=limit, offset=offset)

    async def create_item(
        project: ProjectName, item: Annotated[model, Body()],  # type: ignore[valid-type]
        principal: ProjectAuth, store: StoreDep,
    ) -> Any:
        if isinstance(item, Environment):
            await _guard_placement(principal, store, project, item)
        return await collection(store).create(project, item, principal.actor)

    async def get_item(
        project: ProjectName, name: Annotated[str, Path()], _: ProjectAuth, store: StoreDep
    ) -> Any:
        return await collection(store).get(project, name)

    async def replace_item(
        project: ProjectName, name: Annotated[str, Path()],
        item: Annotated[model, Body()],  # type: ignore[valid-type]
        principal: ProjectAuth, store: StoreDep,
    ) -> Any:
        if isinstance(item, Environment):
            await _guard_placement(principal, store, project, item, name)
        return await collection(store).replace(project, name, item, principal.actor)

    async def delete_item(
        project: ProjectName, name: Annotated[str, Path()], principal: ProjectAuth,
        store: StoreDep,
    ) -> None:
        await collection(store).delete(project, name, principal.actor)

    base, one = f"/projects/{{project}}/{path}", f"/projects/{{project}}/{path}/{{name}}"
    router.add_api_route(base, list_items, methods=["GET"], response_model=Page[model],
                         tags=tag, name=f"list_{path}", summary=f"List {path}",
                         responses=_responses(403, 404))
    router.add_api_route(base, create_item, methods=["POST"], status_code=201,
                         response_model=model, tags=tag, name=f"create_{label}",
                         summary=f"Create a {label}", responses=_responses(403, 404, 409))
    router.add_api_route(one, get_item, methods=["GET"], response_model=model, tags=tag,
                         name=f"get_{label}", summary=f"Get a {label}",
                         responses=_responses(403, 404))
    router.add_api_route(one, replace_item, methods=["PUT"], response_model=model, tags=tag,
                         name=f"replace_{label}", summary=f"Replace a {label}",
                         responses=_responses(403, 404))
    router.add_api_route(one, delete_item, methods=["DELETE"], status_code=204,
                         response_class=Response, tags=tag, name=f"delete_{label}",
                         summary=f"Delete a {label}", responses=_responses(403, 404, 409))


def _elements(kind: BlueprintCollection) -> Callable[[Store], Collection[Any]]:
    """The store's collection of this kind (bound now, not when the loop has moved on)."""
    return lambda store: store.collections[kind.field]


_collection_routes("environments", "environment", Environment, lambda store: store.environments)
for _kind in COLLECTIONS:
    _collection_routes(_kind.path, _kind.label, _kind.model, _elements(_kind))


# ---------------------------------------------------------------------------- variables


class VariableWrite(BaseModel):
    """A variable's value and where it applies (the key is in the path)."""

    model_config = ConfigDict(extra="forbid")
    value: str = ""
    scope: VariableScope = VariableScope.project
    environment: DnsName | None = None
    application: str | None = None
    kind: VariableKind = VariableKind.value
    applies_to: AppliesTo = AppliesTo.both


@router.get("/projects/{project}/variables", response_model=Page[ScopedVariable],
            tags=["variables"], responses=_responses(403, 404))
async def list_variables(
    project: ProjectName, _: ProjectAuth, store: StoreDep,
    key: Annotated[str | None, Query()] = None,
    scope: Annotated[VariableScope | None, Query()] = None,
    environment: Annotated[str | None, Query()] = None,
    application: Annotated[str | None, Query()] = None,
    limit: Limit = 50, offset: Offset = 0,
) -> Page[ScopedVariable]:
    return await store.list_variables(project, key=key, scope=scope, environment=environment,
                                      application=application, limit=limit, offset=offset)


@router.post("/projects/{project}/variables", status_code=201, response_model=ScopedVariable,
             tags=["variables"], responses=_responses(403, 404, 409))
async def create_variable(
    project: ProjectName, variable: ScopedVariable, principal: ProjectAuth, store: StoreDep
) -> ScopedVariable:
    """Create a variable; 409 if one with the same key, scope and target exists."""
    return await store.create_variable(project, variable, principal.actor)


@router.put("/projects/{project}/variables/{key}", response_model=ScopedVariable,
            tags=["variables"], responses={201: {"model": ScopedVariable,
                                                 "description": "Created"},
                                           **_responses(403, 404, 409)})
async def set_variable(
    project: ProjectName, key: Key, body: VariableWrite, response: Response,
    principal: ProjectAuth, store: StoreDep,
) -> ScopedVariable:
    """Create (201) or replace (200) the variable with this key, scope and target."""
    variable = ScopedVariable(key=key, **body.model_dump())
    stored, created = await store.set_variable(project, variable, principal.actor)
    response.status_code = 201 if created else 200
    return stored


@router.get("/projects/{project}/variables/{key}", response_model=ScopedVariable,
            tags=["variables"], responses=_responses(403, 404))
async def get_variable(
    project: ProjectName, ref: RefDep, _: ProjectAuth, store: StoreDep
) -> ScopedVariable:
    return await store.get_variable(project, ref)


@router.delete("/projects/{project}/variables/{key}", status_code=204, response_class=Response,
               tags=["variables"], responses=_responses(403, 404, 409))
async def delete_variable(
    project: ProjectName, ref: RefDep, principal: ProjectAuth, store: StoreDep
) -> None:
    await store.delete_variable(project, ref, principal.actor)


# ---------------------------------------------------------------------------- secrets


class SecretWrite(BaseModel):
    """A secret value (write-only: no response ever contains it) and where it applies."""

    model_config = ConfigDict(extra="forbid")
    value: SecretStr = Field(max_length=65536, description="The value; never returned")
    scope: VariableScope = VariableScope.project
    environment: DnsName | None = None
    application: str | None = None
    applies_to: AppliesTo = AppliesTo.both


@router.get("/projects/{project}/secrets", response_model=Page[SecretMetadata],
            tags=["secrets"], responses=_responses(403, 404))
async def list_secrets(
    project: ProjectName, _: ProjectAuth, store: StoreDep,
    key: Annotated[str | None, Query()] = None, limit: Limit = 50, offset: Offset = 0,
) -> Page[SecretMetadata]:
    """The project's secrets: metadata only."""
    return await store.secret_metadata(project, key=key, limit=limit, offset=offset)


@router.put("/projects/{project}/secrets/{key}", status_code=201, response_model=SecretMetadata,
            tags=["secrets"],
            responses={201: {"description": "Created; metadata only"},
                       204: {"description": "Replaced (version incremented)"},
                       **_responses(403, 404, 409)})
async def put_secret(
    project: ProjectName, key: Key, body: SecretWrite, principal: ProjectAuth,
    store: StoreDep, sealer: Annotated[Sealer, Depends(get_sealer)],
) -> Any:
    """Seal and store a value: 201 with metadata when new, 204 when replaced."""
    log.debug("put secret %s of project %s by %s", key, project, principal.actor)
    metadata, created = await store.put_secret(
        project, key, body.value.get_secret_value(), body.scope, body.application,
        body.applies_to, principal.actor, environment=body.environment, sealer=sealer,
    )
    if not created:
        return Response(status_code=204)
    return metadata


@router.get("/projects/{project}/secrets/{key}", response_model=SecretMetadata,
            tags=["secrets"], responses=_responses(403, 404))
async def get_secret(
    project: ProjectName, ref: RefDep, _: ProjectAuth, store: StoreDep
) -> SecretMetadata:
    """Metadata of one secret (never its value)."""
    return await store.get_secret_metadata(project, ref)


@router.delete("/projects/{project}/secrets/{key}", status_code=204, response_class=Response,
               tags=["secrets"], responses=_responses(403, 404, 409))
async def delete_secret(
    project: ProjectName, ref: RefDep, principal: ProjectAuth, store: StoreDep
) -> None:
    await store.delete_secret(project, ref, principal.actor)


class Rewrapped(BaseModel):
    rewrapped: int = Field(description="Sealed values (secrets, cluster kubeconfigs) whose "
                           "data key was wrapped again")
    key_id: str = Field(description="The master key that now wraps every secret")


@router.post("/secrets/rewrap", response_model=Rewrapped, tags=["secrets"],
             responses=_responses(403))
async def rewrap_secrets(
    principal: AdminAuth, store: StoreDep, sealer: Annotated[Sealer, Depends(get_sealer)],
) -> Rewrapped:
    """After a master-key rotation (or a switch to KMS): wrap every secret's data key with
    the current master key. Values are never decrypted; run it until it answers 0."""
    count = await store.rewrap_secrets(sealer, principal.actor)
    # With KMS, the current id may take a DescribeKey call: not on the event loop.
    return Rewrapped(rewrapped=count, key_id=await asyncio.to_thread(lambda: sealer.current_id))


# ---------------------------------------------------------------------------- clusters

ClusterName = Annotated[str, Path(pattern=CLUSTER_NAME, max_length=63,
                                  description="Name that blueprints use in cluster.name")]


class ClusterWrite(BaseModel):
    """A dedicated cluster's kubeconfig (write-only: no response ever contains it)."""

    model_config = ConfigDict(extra="forbid")
    kubeconfig: SecretStr = Field(max_length=MAX_KUBECONFIG_BYTES,
                                  description="The kubeconfig file's text; never returned")
    context: str | None = Field(None, max_length=253,
                                description="Context to use; default: its current-context")


@router.put("/clusters/{name}", status_code=201, response_model=ClusterMetadata,
            tags=["clusters"],
            responses={201: {"description": "Created; metadata only"},
                       204: {"description": "Replaced (version incremented)"},
                       **_responses(403)})
async def put_cluster(
    name: ClusterName, body: ClusterWrite, principal: AdminAuth, store: StoreDep,
    sealer: Annotated[Sealer, Depends(get_sealer)],
) -> Any:
    """Seal and store the kubeconfig of a dedicated cluster (`isolation: cluster`): the
    workers of that cluster reach it without a file of their own."""
    metadata, created = await store.put_cluster(
        name, body.kubeconfig.get_secret_value(), body.context, principal.actor, sealer=sealer)
    return metadata if created else Response(status_code=204)


@router.get("/clusters", response_model=Page[ClusterMetadata], tags=["clusters"],
            responses=_responses(403))
async def list_clusters(
    _: AdminAuth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[ClusterMetadata]:
    """Stored clusters: metadata only."""
    return await store.list_clusters(limit=limit, offset=offset)


@router.delete("/clusters/{name}", status_code=204, response_class=Response,
               tags=["clusters"], responses=_responses(403, 404))
async def delete_cluster(name: ClusterName, principal: AdminAuth, store: StoreDep) -> None:
    await store.delete_cluster(name, principal.actor)


# ---------------------------------------------------------------------------- blueprints

_BLUEPRINT_BODY = {
    "requestBody": {
        "required": True,
        "description": "A blueprint (preview.yaml) as YAML or JSON",
        "content": {
            "application/yaml": {"schema": {"$ref": "#/components/schemas/Blueprint"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/Blueprint"}},
        },
    }
}


class _BlueprintInvalid(ApiError):
    def __init__(self, errors: list[FieldError], filename: str) -> None:
        message = "; ".join(e.message if e.type == "blueprint" else f"{filename}: {e.field}: "
                            f"{e.message}" for e in errors)
        super().__init__(422, ErrorBody(error="invalid", message=message,
                                        field=errors[0].field if errors else None,
                                        errors=errors))


async def _read_blueprint(request: Request, filename: str) -> Blueprint:
    body = await request.body()
    if len(body) > MAX_BLUEPRINT_BYTES:
        raise ApiError(413, ErrorBody(error="too_large", message=(
            f"a blueprint is at most {MAX_BLUEPRINT_BYTES} bytes")))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise Invalid(f"{filename}: the blueprint is not UTF-8 text", field="body") from None
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise Invalid(f"{filename}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}",
                          field="body") from None
        except (ValueError, RecursionError):  # a huge integer, or nesting past the stack
            data = None
            too_big = True
        else:
            too_big = depth(data) > MAX_DEPTH
        if too_big:
            raise Invalid(f"{filename}: invalid JSON: nested more than {MAX_DEPTH} levels deep "
                          "or a number of more than 4300 digits", field="body")
        try:
            return Blueprint.model_validate(data)
        except ValidationError as error:
            errors = _field_errors(error.errors(include_input=False))
            raise _BlueprintInvalid(errors, filename) from None
    if content_type and content_type not in YAML_TYPES:
        raise ApiError(415, ErrorBody(
            error="unsupported_media_type", field="content-type",
            message=f"send the blueprint as application/yaml or application/json, "
                    f"not {content_type}"))
    try:
        return parse_blueprint(text, filename)
    except BlueprintFileError as error:
        errors = [FieldError(field=p.field or "body", message=str(p), type="blueprint")
                  for p in error.problems]
        raise _BlueprintInvalid(errors, filename) from None


@router.post("/blueprints", response_model=ImportResult, tags=["blueprints"],
             openapi_extra=_BLUEPRINT_BODY,
             responses={201: {"model": ImportResult, "description": "Project created"},
                        413: {"model": ErrorBody, "description": "Blueprint too large"},
                        415: {"model": ErrorBody, "description": "Neither YAML nor JSON"},
                        **_responses(403, 409)})
async def import_blueprint(
    request: Request, response: Response, principal: Auth, store: StoreDep,
    filename: Annotated[str, Query(description="Named in error messages")] = "preview.yaml",
) -> ImportSummary:
    """Create or update a project from a blueprint: 201 when created, 200 when updated."""
    blueprint = await _read_blueprint(request, filename)
    name = blueprint.project.name
    if not principal.admin and principal.project != name:
        raise _forbidden(f"this token is for project {principal.project!r}, not {name!r}; "
                         "only an admin token can register a new project",
                         object=f"project {name!r}")
    await _guard_placement(principal, store, name, blueprint.environment)
    result = await store.import_blueprint(blueprint, principal.actor)
    response.status_code = 201 if result.created else 200
    return result


@router.get("/projects/{project}/blueprint", response_model=Blueprint, tags=["blueprints"],
            responses={200: {"content": {"application/yaml": {}},
                             "description": "The blueprint, as JSON or (Accept or format) YAML"},
                       **_responses(403, 404, 409)})
async def export_blueprint(
    request: Request, project: ProjectName, _: ProjectAuth, store: StoreDep,
    format: Annotated[Literal["json", "yaml"] | None, Query()] = None,
) -> Any:
    """The project's source environment as a blueprint; secret values are never in it."""
    blueprint = await store.export_blueprint(project)
    wants_yaml = format == "yaml" or (
        format is None and "yaml" in request.headers.get("accept", "")
    )
    if wants_yaml:
        return Response(dump_blueprint(blueprint), media_type="application/yaml")
    return blueprint


# ---------------------------------------------------------------------------- tokens, audit


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, description="What the token is for")
    project: str | None = Field(None, description="Scope it to this project; None: admin")


class TokenCreated(TokenRecord):
    token: str = Field(description="The token; shown once, only its SHA-256 is stored")


@router.post("/tokens", status_code=201, response_model=TokenCreated, tags=["tokens"],
             responses=_responses(403, 404))
async def create_token(body: TokenCreate, principal: AdminAuth, store: StoreDep) -> TokenCreated:
    token, record = await store.create_token(body.name, body.project, principal.actor)
    return TokenCreated(token=token, **record.model_dump())


@router.get("/tokens", response_model=Page[TokenRecord], tags=["tokens"],
            responses=_responses(403))
async def list_tokens(
    _: AdminAuth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[TokenRecord]:
    return await store.list_tokens(limit=limit, offset=offset)


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response, tags=["tokens"],
               responses=_responses(403, 404))
async def delete_token(
    token_id: Annotated[int, Path(ge=1, le=BIGINT)], principal: AdminAuth, store: StoreDep
) -> None:
    await store.delete_token(token_id, principal.actor)


@router.get("/projects/{project}/audit", response_model=Page[AuditEntry], tags=["audit"],
            responses=_responses(403))
async def project_audit(
    project: ProjectName, _: ProjectAuth, store: StoreDep, limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEntry]:
    """Who did what in this project, newest first (never values)."""
    return await store.audit_entries(project=project, limit=limit, offset=offset)


@router.get("/audit", response_model=Page[AuditEntry], tags=["audit"], responses=_responses(403))
async def audit(
    _: AdminAuth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[AuditEntry]:
    return await store.audit_entries(limit=limit, offset=offset)


__all__ = ["ErrorBody", "Principal", "router"]
