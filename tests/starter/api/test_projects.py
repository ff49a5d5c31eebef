"""Projects, their environments and the elements of every blueprint collection
(starter.api.projects)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from domain.blueprint import COLLECTIONS, BlueprintCollection, Chart
from domain.blueprint_file import parse_blueprint
from starter.api import projects
from store import Page
from tests.starter.api_support import EXAMPLE, assert_error, auth, build_app


async def test_project_routes(client: httpx.AsyncClient) -> None:
    name = f"n-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "repository": f"acme/{name}"}
    created = await client.post("/projects", json=body, headers=auth())
    assert created.status_code == 201 and created.json()["source_environment"] == "production"
    assert_error(await client.post("/projects", json=body, headers=auth()), 409, "conflict",
                 f"project '{name}' already exists")
    assert_error(await client.post("/projects", json={**body, "name": f"{name}-b",
                                                      "repository": f"ACME/{name}"},
                                   headers=auth()), 409, "conflict", "already registered")
    assert_error(await client.post("/projects", json={"name": "Bad Name", "repository": "a"},
                                   headers=auth()), 422, "invalid", "body.name",
                 "body.repository")
    assert_error(await client.post("/projects", content=b"\x80{", headers={
        **auth(), "Content-Type": "application/json"}), 422, "invalid", "body")
    got = await client.get(f"/projects/{name}", headers=auth())
    assert got.json()["repository"] == f"acme/{name}"
    updated = await client.put(f"/projects/{name}", headers=auth(), json={
        **body, "policy": {"ttl_hours": 12}, "network": {"base_domain": "pr.example.com"}})
    assert updated.status_code == 200
    assert updated.json()["policy"]["ttl_hours"] == 12
    assert_error(await client.put(f"/projects/{name}", json={**body, "name": "other"},
                                  headers=auth()), 422, "invalid", "renaming")
    assert_error(await client.get("/projects/ghost", headers=auth()), 404, "not_found",
                 "project 'ghost' not found")
    assert (await client.delete(f"/projects/{name}", headers=auth())).status_code == 204
    assert_error(await client.delete(f"/projects/{name}", headers=auth()), 404, "not_found")


async def test_pagination(client: httpx.AsyncClient) -> None:
    names = [f"page-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for name in names:
        await client.post("/projects", json={"name": name, "repository": f"a/{name}"},
                          headers=auth())
    first = (await client.get("/projects", params={"limit": 2}, headers=auth())).json()
    total = first["total"]
    assert total >= 3 and len(first["items"]) == 2 and first["limit"] == 2
    seen = []
    for offset in range(0, total, 2):
        page = (await client.get("/projects", params={"limit": 2, "offset": offset},
                                 headers=auth())).json()
        seen += [p["name"] for p in page["items"]]
    assert len(seen) == total and set(names) <= set(seen)
    assert_error(await client.get("/projects", params={"limit": 0}, headers=auth()), 422,
                 "invalid", "query.limit")
    assert_error(await client.get("/projects", params={"offset": -1}, headers=auth()), 422,
                 "invalid", "query.offset")
    for name in names:
        await client.delete(f"/projects/{name}", headers=auth())


# ---------------------------------------------- environments and the blueprint collections


@pytest.mark.parametrize(("path", "item", "change"), [
    ("environments", {"name": "staging", "kind": "staging"}, {"region": "us-east-1"}),
    ("applications", {"name": "admin", "image": "registry.local/hello/admin"}, {"replicas": 2}),
    ("databases", {"name": "cache", "mode": "container"}, {"snapshot_max_age_hours": 1}),
])
async def test_document_routes(
    client: httpx.AsyncClient, project: str, path: str, item: dict[str, Any],
    change: dict[str, Any],
) -> None:
    base, name = f"/projects/{project}/{path}", item["name"]
    created = await client.post(base, json=item, headers=auth())
    assert created.status_code == 201, created.text
    assert_error(await client.post(base, json=item, headers=auth()), 409, "conflict",
                 f"'{name}' of project '{project}' already exists")
    listed = (await client.get(base, headers=auth())).json()
    assert listed["items"][-1]["name"] == name and listed["total"] == len(listed["items"])
    assert (await client.get(f"{base}/{name}", headers=auth())).json() == created.json()
    replaced = await client.put(f"{base}/{name}", json={**item, **change}, headers=auth())
    assert replaced.status_code == 200
    assert all(replaced.json()[k] == v for k, v in change.items())
    assert_error(await client.put(f"{base}/{name}", json={**item, "bogus": 1}, headers=auth()),
                 422, "invalid", "body.bogus")
    assert_error(await client.post(base, json={**item, "name": "Not_DNS"}, headers=auth()),
                 422, "invalid", "body.name", "DNS-safe")
    assert_error(await client.put(f"{base}/ghost", json={**item, "name": "ghost"},
                                  headers=auth()), 404, "not_found", "'ghost'")
    assert (await client.delete(f"{base}/{name}", headers=auth())).status_code == 204
    assert_error(await client.get(f"{base}/{name}", headers=auth()), 404, "not_found",
                 f"'{name}' of project '{project}' not found")
    assert_error(await client.get(f"/projects/ghost/{path}", headers=auth()), 404, "not_found",
                 "project 'ghost'")


async def test_broken_references_are_refused(client: httpx.AsyncClient, project: str) -> None:
    assert_error(await client.delete(f"/projects/{project}/databases/main", headers=auth()),
                 409, "conflict", "'api' depends on 'main'")
    assert_error(await client.post(f"/projects/{project}/applications", headers=auth(),
                                   json={"name": "x", "image": "i", "depends_on": ["nope"]}),
                 422, "invalid", "'nope'")
    assert_error(await client.delete(f"/projects/{project}/environments/production",
                                     headers=auth()), 409, "conflict", "source environment")


def test_every_blueprint_collection_has_its_routes() -> None:
    """Each entry of COLLECTIONS gets list, create, get, replace and delete routes on its
    path, taking and giving its own model."""
    # The module's own router: starter.api.router lists the routers it includes, whose
    # routes FastAPI resolves lazily.
    routes = {(route.path, method): route for route in projects.router.routes
              if isinstance(route, APIRoute) for method in route.methods or ()}
    paths = build_app().openapi()["paths"]
    for kind in COLLECTIONS:
        base = f"/projects/{{project}}/{kind.path}"
        one = f"{base}/{{name}}"
        assert routes[(base, "GET")].response_model == Page[kind.model]  # type: ignore[name-defined]
        for path, method in ((base, "POST"), (one, "GET"), (one, "PUT")):
            assert routes[(path, method)].response_model is kind.model, (path, method)
        assert (one, "DELETE") in routes
        for path, method in ((base, "post"), (one, "put")):
            request = paths[f"/api{path}"][method]["requestBody"]
            body = request["content"]["application/json"]["schema"]
            assert body["$ref"] == f"#/components/schemas/{kind.model.__name__}"


NO_EXAMPLE = {"charts": Chart(name="hello", chart="oci://registry.local/charts/hello",
                              version="0.1.0").model_dump(mode="json")}


@pytest.mark.parametrize("kind", COLLECTIONS, ids=lambda kind: kind.field)
async def test_every_blueprint_collection_is_served(
    client: httpx.AsyncClient, project: str, kind: BlueprintCollection
) -> None:
    base = f"/projects/{project}/{kind.path}"
    imported = [item.model_dump(mode="json")
                for item in kind.items(parse_blueprint(EXAMPLE.read_text()))]
    listed = await client.get(base, params={"limit": 500}, headers=auth())
    assert listed.json()["items"] == imported
    # The example runs no chart (its applications are the demo's own): one of the chart
    # in examples/charts/hello stands in.
    sample = imported[0] if imported else NO_EXAMPLE[kind.field]
    copy = {**sample, "name": f"{sample['name']}-copy"}
    created = await client.post(base, json=copy, headers=auth())
    assert created.status_code == 201 and created.json() == copy, created.text
    assert (await client.get(f"{base}/{copy['name']}", headers=auth())).json() == copy
    replaced = await client.put(f"{base}/{copy['name']}", json=copy, headers=auth())
    assert replaced.status_code == 200 and replaced.json() == copy
    assert (await client.delete(f"{base}/{copy['name']}", headers=auth())).status_code == 204
    listed = await client.get(base, params={"limit": 500}, headers=auth())
    assert listed.json()["items"] == imported
