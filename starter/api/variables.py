"""A project's variables: plain values or aliases, by key, scope and target."""

from typing import Annotated

from fastapi import Query, Response
from pydantic import BaseModel, ConfigDict

from domain.blueprint import AppliesTo, DnsName, VariableKind, VariableScope
from starter.api.auth import ProjectAuth, StoreDep
from starter.api.errors import api_router, error_responses
from starter.api.params import Key, Limit, Offset, ProjectName, RefDep, Text
from store import Page, ScopedVariable

router = api_router()


class VariableWrite(BaseModel):
    """A variable's value and where it applies (the key is in the path)."""

    model_config = ConfigDict(extra="forbid")
    value: Text = ""
    scope: VariableScope = VariableScope.project
    environment: DnsName | None = None
    application: Text | None = None
    kind: VariableKind = VariableKind.value
    applies_to: AppliesTo = AppliesTo.both


@router.get("/projects/{project}/variables", response_model=Page[ScopedVariable],
            tags=["variables"], responses=error_responses(403, 404))
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
             tags=["variables"], responses=error_responses(403, 404, 409))
async def create_variable(
    project: ProjectName, variable: ScopedVariable, principal: ProjectAuth, store: StoreDep
) -> ScopedVariable:
    """Create a variable; 409 if one with the same key, scope and target exists."""
    return await store.create_variable(project, variable, principal.actor)


@router.put("/projects/{project}/variables/{key}", response_model=ScopedVariable,
            tags=["variables"], responses={201: {"model": ScopedVariable,
                                                 "description": "Created"},
                                           **error_responses(403, 404, 409)})
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
            tags=["variables"], responses=error_responses(403, 404))
async def get_variable(
    project: ProjectName, ref: RefDep, _: ProjectAuth, store: StoreDep
) -> ScopedVariable:
    return await store.get_variable(project, ref)


@router.delete("/projects/{project}/variables/{key}", status_code=204, response_class=Response,
               tags=["variables"], responses=error_responses(403, 404, 409))
async def delete_variable(
    project: ProjectName, ref: RefDep, principal: ProjectAuth, store: StoreDep
) -> None:
    await store.delete_variable(project, ref, principal.actor)
