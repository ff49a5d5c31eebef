"""Projects, and the named documents each holds: environments and the elements of each
blueprint collection (applications, databases, ...: domain.blueprint.COLLECTIONS)."""

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

from fastapi import Body, Path, Response

from domain.blueprint import COLLECTIONS, BlueprintCollection, Environment
from starter.api.auth import AdminAuth, Auth, ProjectAuth, StoreDep, guard_placement
from starter.api.errors import api_router, error_responses
from starter.api.params import Limit, Offset, ProjectName
from store import Collection, Page, ProjectRecord, ProjectSpec, Store

router = api_router()


@router.get("/projects", response_model=Page[ProjectRecord], tags=["projects"])
async def list_projects(
    principal: Auth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[ProjectRecord]:
    """Every project (admin), or the token's own project."""
    only = None if principal.admin else principal.project
    return await store.list_projects(limit=limit, offset=offset, only=only)


@router.post("/projects", status_code=201, response_model=ProjectRecord, tags=["projects"],
             responses=error_responses(403, 409))
async def create_project(spec: ProjectSpec, principal: AdminAuth, store: StoreDep) -> ProjectRecord:
    return await store.create_project(spec, principal.actor)


@router.get("/projects/{project}", response_model=ProjectRecord, tags=["projects"],
            responses=error_responses(403, 404))
async def get_project(project: ProjectName, _: ProjectAuth, store: StoreDep) -> ProjectRecord:
    return await store.get_project(project)


@router.put("/projects/{project}", response_model=ProjectRecord, tags=["projects"],
            responses=error_responses(403, 404, 409))
async def update_project(
    project: ProjectName, spec: ProjectSpec, principal: ProjectAuth, store: StoreDep
) -> ProjectRecord:
    return await store.update_project(project, spec, principal.actor)


@router.delete("/projects/{project}", status_code=204, response_class=Response,
               tags=["projects"], responses=error_responses(403, 404))
async def delete_project(project: ProjectName, principal: AdminAuth, store: StoreDep) -> None:
    """Delete the project with everything it holds, secrets and tokens included."""
    await store.delete_project(project, principal.actor)


# ---------------------------------------------- environments and the blueprint collections


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
            await guard_placement(principal, store, project, item)
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
            await guard_placement(principal, store, project, item, name)
        return await collection(store).replace(project, name, item, principal.actor)

    async def delete_item(
        project: ProjectName, name: Annotated[str, Path()], principal: ProjectAuth,
        store: StoreDep,
    ) -> None:
        await collection(store).delete(project, name, principal.actor)

    base, one = f"/projects/{{project}}/{path}", f"/projects/{{project}}/{path}/{{name}}"
    router.add_api_route(base, list_items, methods=["GET"], response_model=Page[model],
                         tags=tag, name=f"list_{path}", summary=f"List {path}",
                         responses=error_responses(403, 404))
    router.add_api_route(base, create_item, methods=["POST"], status_code=201,
                         response_model=model, tags=tag, name=f"create_{label}",
                         summary=f"Create a {label}", responses=error_responses(403, 404, 409))
    router.add_api_route(one, get_item, methods=["GET"], response_model=model, tags=tag,
                         name=f"get_{label}", summary=f"Get a {label}",
                         responses=error_responses(403, 404))
    router.add_api_route(one, replace_item, methods=["PUT"], response_model=model, tags=tag,
                         name=f"replace_{label}", summary=f"Replace a {label}",
                         responses=error_responses(403, 404))
    router.add_api_route(one, delete_item, methods=["DELETE"], status_code=204,
                         response_class=Response, tags=tag, name=f"delete_{label}",
                         summary=f"Delete a {label}", responses=error_responses(403, 404, 409))


def _elements(kind: BlueprintCollection) -> Callable[[Store], Collection[Any]]:
    """The store's collection of this kind (bound now, not when the loop has moved on)."""
    return lambda store: store.collections[kind.field]


_collection_routes("environments", "environment", Environment, lambda store: store.environments)
for _kind in COLLECTIONS:
    _collection_routes(_kind.path, _kind.label, _kind.model, _elements(_kind))
