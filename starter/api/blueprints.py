"""Blueprints (preview.yaml) imported as YAML or JSON, and exported back."""

import json
from typing import Annotated, Any, Literal

from fastapi import Query, Request, Response
from pydantic import ValidationError

from domain.blueprint import Blueprint
from domain.blueprint_file import BlueprintFileError, dump_blueprint, parse_blueprint
from starter.api.auth import Auth, ProjectAuth, StoreDep, guard_placement
from starter.api.errors import (
    ApiError,
    ErrorBody,
    FieldError,
    api_router,
    error_responses,
    field_errors,
    forbidden,
)
from starter.api.params import ProjectName
from starter.bodies import MAX_DEPTH, depth
from store import ImportResult, ImportSummary, Invalid

MAX_BLUEPRINT_BYTES = 1024 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")

router = api_router()

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


def _too_big(filename: str) -> Invalid:
    return Invalid(f"{filename}: invalid JSON: nested more than {MAX_DEPTH} levels deep or "
                   "a number of more than 4300 digits", field="body")


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
            raise _too_big(filename) from None
        if depth(data) > MAX_DEPTH:
            raise _too_big(filename)
        try:
            return Blueprint.model_validate(data)
        except ValidationError as error:
            errors = field_errors(error.errors(include_input=False))
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
                        **error_responses(403, 409)})
async def import_blueprint(
    request: Request, response: Response, principal: Auth, store: StoreDep,
    filename: Annotated[str, Query(description="Named in error messages")] = "preview.yaml",
) -> ImportSummary:
    """Create or update a project from a blueprint: 201 when created, 200 when updated."""
    blueprint = await _read_blueprint(request, filename)
    name = blueprint.project.name
    if not principal.admin and principal.project != name:
        raise forbidden(f"this token is for project {principal.project!r}, not {name!r}; "
                        "only an admin token can register a new project",
                        object=f"project {name!r}")
    await guard_placement(principal, store, name, blueprint.environment)
    result = await store.import_blueprint(blueprint, principal.actor)
    response.status_code = 201 if result.created else 200
    return result


@router.get("/projects/{project}/blueprint", response_model=Blueprint, tags=["blueprints"],
            responses={200: {"content": {"application/yaml": {}},
                             "description": "The blueprint, as JSON or (Accept or format) YAML"},
                       **error_responses(403, 404, 409)})
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
