"""The HTTP API and the `preview` commands over it, against a real PostgreSQL store.

Most tests call the ASGI app in-process (httpx ASGITransport); the CLI tests run the app
in a real uvicorn server on 127.0.0.1, as the commands would reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
import uvicorn
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from schemathesis import checks

from domain.blueprint import COLLECTIONS, BlueprintCollection
from domain.blueprint_file import parse_blueprint
from engine.keyring import Keyring
from engine.sealing import KmsMasterKey, Sealer
from stack.ports import free_port
from stack.postgres import PostgresServer
from starter import cli_api
from starter.api import router
from store import Page, Store
from tests.plugins.moto import MotoServer

EXAMPLE = Path(__file__).parents[2] / "examples" / "preview.yaml"
ADMIN = "admin-token-for-tests"
SECRET = "pa55-Wörd-never-to-be-seen-91b2"
SEALER = Sealer(Keyring.parse("k1:" + base64.b64encode(b"k" * 32).decode()))
PROJECT = "hello-world"


def build_app(store: Store | None = None) -> FastAPI:
    app = FastAPI(title="preview-engine")
    app.include_router(router, prefix="/api")
    app.state.sealer = SEALER
    app.state.admin_token = ADMIN
    if store is not None:
        app.state.store = store
    return app


@pytest.fixture(scope="module")
async def database_url(postgres_server: PostgresServer) -> str:
    return await postgres_server.new_database("api_test")


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    store = Store(pool, SEALER)
    await store.migrate()
    yield store
    await pool.close()


@pytest.fixture(scope="module")
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test/api") as client:
        yield client


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def import_example(client: httpx.AsyncClient, name: str = PROJECT,
                         repository: str = "Codertocat/Hello-World") -> httpx.Response:
    text = EXAMPLE.read_text().replace("name: hello-world", f"name: {name}").replace(
        "repository: Codertocat/Hello-World", f"repository: {repository}")
    return await client.post("/blueprints", content=text,
                             headers={**auth(), "Content-Type": "application/yaml"})


@pytest.fixture
async def project(client: httpx.AsyncClient) -> AsyncIterator[str]:
    """A fresh project from the example blueprint."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    response = await import_example(client, name, f"acme/{name}")
    assert response.status_code == 201, response.text
    yield name
    await client.delete(f"/projects/{name}", headers=auth())


async def project_token(client: httpx.AsyncClient, project: str) -> str:
    response = await client.post("/tokens", json={"name": "ci", "project": project},
                                 headers=auth())
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def assert_error(response: httpx.Response, status: int, error: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["message"]
    for fragment in fragments:
        assert fragment in json.dumps(body), (fragment, body)


# ---------------------------------------------------------------------------- auth


async def test_authentication_and_authorisation(client: httpx.AsyncClient, project: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"},
                    {"Authorization": "Bearer "}):
        response = await client.get("/projects", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"

    other = f"o-{uuid.uuid4().hex[:8]}"
    assert (await import_example(client, other, f"acme/{other}")).status_code == 201
    token = await project_token(client, project)
    # A project token sees and changes its own project only.
    listed = (await client.get("/projects", headers=auth(token))).json()
    assert [p["name"] for p in listed["items"]] == [project] and listed["total"] == 1
    assert (await client.get(f"/projects/{project}/applications",
                             headers=auth(token))).status_code == 200
    for method, path in [("GET", f"/projects/{other}"), ("GET", f"/projects/{other}/secrets"),
                         ("DELETE", f"/projects/{other}/applications/web"),
                         ("GET", "/projects/does-not-exist")]:
        response = await client.request(method, path, headers=auth(token))
        assert_error(response, 403, "forbidden", f"this token is for project '{project}'")
    # Admin-only operations.
    for method, path, body in [("POST", "/projects", {"name": "x", "repository": "a/x"}),
                               ("DELETE", f"/projects/{project}", None),
                               ("GET", "/tokens", None), ("GET", "/audit", None),
                               ("POST", "/tokens", {"name": "y", "project": project})]:
        response = await client.request(method, path, json=body, headers=auth(token))
        assert_error(response, 403, "forbidden", "admin token")
    await client.delete(f"/projects/{other}", headers=auth())


async def test_tokens(client: httpx.AsyncClient, project: str) -> None:
    created = (await client.post("/tokens", json={"name": "deploy", "project": project},
                                 headers=auth())).json()
    assert created["project"] == project and not created["admin"]
    token = created["token"]
    listed = (await client.get("/tokens", headers=auth())).json()
    assert created["id"] in [t["id"] for t in listed["items"]]
    assert token not in json.dumps(listed)
    assert (await client.get(f"/projects/{project}", headers=auth(token))).status_code == 200
    assert (await client.delete(f"/tokens/{created['id']}", headers=auth())).status_code == 204
    assert_error(await client.get(f"/projects/{project}", headers=auth(token)), 401,
                 "unauthorized")
    assert_error(await client.delete(f"/tokens/{created['id']}", headers=auth()), 404,
                 "not_found", f"token {created['id']}")
    assert_error(await client.post("/tokens", json={"name": "x", "project": "ghost"},
                                   headers=auth()), 404, "not_found", "project 'ghost'")
    admin = (await client.post("/tokens", json={"name": "ops"}, headers=auth())).json()
    assert admin["admin"] and (await client.get("/tokens", headers=auth(admin["token"]))
                               ).status_code == 200
    assert_error(await client.post("/tokens", json={"name": ""}, headers=auth()), 422,
                 "invalid", "body.name")


# ---------------------------------------------------------------------------- projects


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
    routes = {(route.path, method): route for route in router.routes
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


@pytest.mark.parametrize("kind", COLLECTIONS, ids=lambda kind: kind.field)
async def test_every_blueprint_collection_is_served(
    client: httpx.AsyncClient, project: str, kind: BlueprintCollection
) -> None:
    base = f"/projects/{project}/{kind.path}"
    imported = [item.model_dump(mode="json")
                for item in kind.items(parse_blueprint(EXAMPLE.read_text()))]
    listed = await client.get(base, params={"limit": 500}, headers=auth())
    assert listed.json()["items"] == imported
    copy = {**imported[0], "name": f"{imported[0]['name']}-copy"}
    created = await client.post(base, json=copy, headers=auth())
    assert created.status_code == 201 and created.json() == copy, created.text
    assert (await client.get(f"{base}/{copy['name']}", headers=auth())).json() == copy
    replaced = await client.put(f"{base}/{copy['name']}", json=copy, headers=auth())
    assert replaced.status_code == 200 and replaced.json() == copy
    assert (await client.delete(f"{base}/{copy['name']}", headers=auth())).status_code == 204
    listed = await client.get(base, params={"limit": 500}, headers=auth())
    assert listed.json()["items"] == imported


# ---------------------------------------------------------------------------- variables


async def test_variable_routes(client: httpx.AsyncClient, project: str) -> None:
    base = f"/projects/{project}/variables"
    body = {"key": "FEATURE_X", "value": "on", "scope": "application", "application": "api"}
    assert (await client.post(base, json=body, headers=auth())).status_code == 201
    assert_error(await client.post(base, json=body, headers=auth()), 409, "conflict",
                 "FEATURE_X (scope=application, application=api, applies_to=both)")
    put = await client.put(f"{base}/FEATURE_X", headers=auth(), json={
        "value": "off", "scope": "application", "application": "api"})
    assert put.status_code == 200 and put.json()["value"] == "off"
    put = await client.put(f"{base}/FEATURE_X", headers=auth(), json={
        "value": "beta", "applies_to": "previews"})
    assert put.status_code == 201
    listed = (await client.get(base, params={"key": "FEATURE_X"}, headers=auth())).json()
    assert sorted(v["value"] for v in listed["items"]) == ["beta", "off"]
    one = await client.get(f"{base}/FEATURE_X", headers=auth(),
                           params={"scope": "application", "application": "api"})
    assert one.status_code == 200 and one.json()["value"] == "off"
    assert_error(await client.get(f"{base}/FEATURE_X", headers=auth()), 404, "not_found",
                 "FEATURE_X (scope=project, applies_to=both)")
    assert_error(await client.get(f"{base}/FEATURE_X", params={"scope": "application"},
                                  headers=auth()), 422, "invalid", "needs `application`")
    assert_error(await client.put(f"{base}/bad-key", json={"value": "x"}, headers=auth()),
                 422, "invalid", "path.key")
    assert_error(await client.put(f"{base}/X", json={"value": "x", "scope": "application",
                                                     "application": "ghost"}, headers=auth()),
                 422, "invalid", "unknown application 'ghost'")
    assert_error(await client.put(f"{base}/LOOP", headers=auth(), json={
        "value": "LOOP", "kind": "alias"}), 422, "invalid", "cycle: LOOP -> LOOP")
    deleted = await client.delete(f"{base}/FEATURE_X", headers=auth(),
                                  params={"applies_to": "previews"})
    assert deleted.status_code == 204
    assert_error(await client.delete(f"{base}/FEATURE_X", headers=auth(),
                                     params={"applies_to": "previews"}), 404, "not_found")


# ---------------------------------------------------------------------------- secrets


async def test_secret_routes_are_write_only(
    client: httpx.AsyncClient, project: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = f"/projects/{project}/secrets"
    body = {"value": SECRET, "scope": "application", "application": "web"}
    created = await client.put(f"{base}/SESSION_SECRET", json=body, headers=auth())
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["updated_by"] == "admin"
    replaced = await client.put(f"{base}/SESSION_SECRET", json=body, headers=auth())
    assert replaced.status_code == 204 and replaced.content == b""
    await client.put(f"{base}/DB_PASSWORD", json={"value": SECRET}, headers=auth())

    meta = await client.get(f"{base}/SESSION_SECRET", headers=auth(),
                            params={"scope": "application", "application": "web"})
    assert meta.status_code == 200 and meta.json()["version"] == 2
    assert "value" not in meta.json() and "sealed" not in meta.json()
    listed = (await client.get(base, headers=auth())).json()
    assert [m["key"] for m in listed["items"]] == ["DB_PASSWORD", "SESSION_SECRET"]

    # Invalid bodies: the rejected input (the value) is never echoed back.
    for bad in ({"value": [SECRET]}, {"value": SECRET, "scope": "nope"},
                {"value": SECRET, "surprise": SECRET}, {"value": SECRET, "scope": "application"},
                {"value": {"nested": SECRET}}):
        response = await client.put(f"{base}/K", json=bad, headers=auth())
        assert response.status_code == 422, response.text
        assert SECRET not in response.text
    response = await client.put(f"{base}/K", content=f'{{"value": "{SECRET}"',
                                headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 422 and SECRET not in response.text
    assert_error(await client.put(f"{base}/NODE_ENV", json={"value": SECRET}, headers=auth()),
                 409, "conflict", "plain variable")
    assert_error(await client.put(f"{base}/K", json={"value": SECRET, "scope": "application",
                                                     "application": "ghost"}, headers=auth()),
                 422, "invalid", "unknown application 'ghost'")
    assert_error(await client.put("/projects/ghost/secrets/K", json={"value": SECRET},
                                  headers=auth()), 404, "not_found", "project 'ghost'")

    # Nothing readable anywhere holds the value: every GET route, the audit, the logs.
    ids = (await client.get("/tokens", headers=auth())).json()["items"]
    values = {"project": project, "name": "web", "key": "SESSION_SECRET",
              "token_id": str(ids[0]["id"]) if ids else "1"}
    spec = build_app().openapi()
    checked = 0
    for path, operations in spec["paths"].items():
        if "get" not in operations:
            continue
        url = path.removeprefix("/api")
        for name, value in values.items():
            url = url.replace("{" + name + "}", value)
        for params in ({}, {"scope": "application", "application": "web"}, {"format": "yaml"}):
            response = await client.get(url, params=params, headers=auth())
            assert SECRET not in response.text, url
            checked += 1
    assert checked >= 3 * 12
    audit = await client.get(f"/projects/{project}/audit", headers=auth())
    assert "secret.update" in audit.text and SECRET not in audit.text
    rows = await store.pool.fetch("SELECT row_to_json(a)::text FROM audit_log a")
    assert rows and all(SECRET not in r[0] for r in rows)
    assert SECRET not in caplog.text

    deleted = await client.delete(f"{base}/DB_PASSWORD", headers=auth())
    assert deleted.status_code == 204
    assert_error(await client.delete(f"{base}/DB_PASSWORD", headers=auth()), 404, "not_found",
                 "secret DB_PASSWORD")


# ---------------------------------------------------------------------------- blueprints


async def test_blueprint_import_and_export(client: httpx.AsyncClient, store: Store) -> None:
    name = f"bp-{uuid.uuid4().hex[:8]}"
    first = await import_example(client, name, f"acme/{name}")
    assert first.status_code == 201 and first.json() == {
        "project": name, "environment": "production", "created": True, "applications": 3,
        "databases": 1, "caches": 1, "variables": 8}
    again = await import_example(client, name, f"acme/{name}")
    assert again.status_code == 200 and not again.json()["created"]

    original = parse_blueprint(EXAMPLE.read_text().replace("name: hello-world", f"name: {name}")
                               .replace("Codertocat/Hello-World", f"acme/{name}"))
    as_json = await client.get(f"/projects/{name}/blueprint", headers=auth())
    assert as_json.headers["content-type"] == "application/json"
    assert parse_blueprint(as_json.text, "export.json") == original
    as_yaml = await client.get(f"/projects/{name}/blueprint",
                               headers={**auth(), "Accept": "application/yaml"})
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert parse_blueprint(as_yaml.text) == original

    # JSON in, and a project token may re-import its own project.
    token = await project_token(client, name)
    response = await client.post("/blueprints", content=as_json.text, headers={
        **auth(token), "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    other = as_yaml.text.replace(f"name: {name}", "name: someone-else")
    assert_error(await client.post("/blueprints", content=other, headers={
        **auth(token), "Content-Type": "application/yaml"}), 403, "forbidden", "admin token")
    await client.delete(f"/projects/{name}", headers=auth())


async def test_blueprint_errors(client: httpx.AsyncClient, project: str) -> None:
    bad = EXAMPLE.read_text().replace("ports: [8080]", "ports: [eighty]")
    response = await client.post("/blueprints", content=bad, params={"filename": "app/p.yaml"},
                                 headers={**auth(), "Content-Type": "application/yaml"})
    line = next(i for i, text in enumerate(bad.splitlines(), 1) if "eighty" in text)
    assert_error(response, 422, "invalid", f"app/p.yaml:{line}:",
                 "applications[1].ports[0]")
    assert response.json()["errors"][0]["field"] == "applications[1].ports[0]"
    assert_error(await client.post("/blueprints", content="project: [", headers={
        **auth(), "Content-Type": "application/yaml"}), 422, "invalid", "invalid YAML")
    assert_error(await client.post("/blueprints", content='{"project": {}}', headers={
        **auth(), "Content-Type": "application/json"}), 422, "invalid", "project.name",
        "applications")
    assert_error(await client.post("/blueprints", content="{", headers={
        **auth(), "Content-Type": "application/json"}), 422, "invalid", "invalid JSON")
    assert_error(await client.post("/blueprints", content="<xml/>", headers={
        **auth(), "Content-Type": "application/xml"}), 415, "unsupported_media_type")
    assert_error(await client.post("/blueprints", content=b"#" * (1024 * 1024 + 1), headers={
        **auth(), "Content-Type": "application/yaml"}), 413, "too_large")
    # Another project claiming a registered repository.
    text = EXAMPLE.read_text().replace("name: hello-world", "name: thief").replace(
        "Codertocat/Hello-World", f"acme/{project}")
    assert_error(await client.post("/blueprints", content=text, headers={
        **auth(), "Content-Type": "application/yaml"}), 409, "conflict", "already registered")
    assert_error(await client.get("/projects/ghost/blueprint", headers=auth()), 404,
                 "not_found")
    empty = f"e-{uuid.uuid4().hex[:6]}"
    await client.post("/projects", json={"name": empty, "repository": f"a/{empty}"},
                      headers=auth())
    assert_error(await client.get(f"/projects/{empty}/blueprint", headers=auth()), 409,
                 "conflict", "incomplete")
    await client.delete(f"/projects/{empty}", headers=auth())


# ---------------------------------------------------------------------------- OpenAPI


def test_openapi_is_complete() -> None:
    spec = build_app().openapi()
    schemas = spec["components"]["schemas"]
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 30
    assert len({op["operationId"] for _, _, op in operations}) == len(operations)

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for path, method, op in operations:
        responses = op["responses"]
        assert {"401", "422"} <= set(responses), (method, path)
        assert responses["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorBody")
        success = [code for code in responses if code.startswith("2")]
        assert success, (method, path)
        for code in success:
            if code != "204":
                assert "$ref" in json.dumps(responses[code].get("content", {})), (method, path)
        if "{project}" in path or path in ("/api/tokens", "/api/audit"):
            assert "403" in responses, (method, path)
        assert op.get("security") == [{"HTTPBearer": []}], (method, path)
    assert "SecretWrite" in schemas and "value" not in schemas["SecretMetadata"]["properties"]
    body = spec["paths"]["/api/blueprints"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/yaml", "application/json"}


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def live_api(database_url: str) -> Iterator[str]:
    """The API in a real uvicorn server on loopback; its own loop owns its pool."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        app.state.store = Store(pool, SEALER)
        await app.state.store.migrate()  # as the service does at start (a no-op if done)
        yield
        await pool.close()

    app = build_app()
    app.router.lifespan_context = lifespan
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)  # polling a condition with a deadline
    yield f"http://127.0.0.1:{port}/api"
    server.should_exit = True
    thread.join(timeout=10)


def run_cli(argv: list[str], url: str, token: str | None = ADMIN, stdin: str = "",
            monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    assert monkeypatch is not None
    if token is None:
        monkeypatch.delenv(cli_api.TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(cli_api.TOKEN_ENV, token)
    monkeypatch.setenv(cli_api.URL_ENV, url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    parser = argparse.ArgumentParser(prog="preview")
    cli_api.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


async def test_cli_commands(
    live_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"cli-{uuid.uuid4().hex[:6]}"
    source = tmp_path / "preview.yaml"
    source.write_text(EXAMPLE.read_text().replace("name: hello-world", f"name: {name}")
                      .replace("Codertocat/Hello-World", f"acme/{name}"))

    def cli(*argv: str, stdin: str = "", token: str | None = ADMIN) -> tuple[int, str, str]:
        status = run_cli(list(argv), live_api, token, stdin, monkeypatch)
        out, err = capsys.readouterr()
        return status, out, err

    # The CLI is synchronous (httpx.Client): run it off the event loop.
    async def acli(*argv: str, stdin: str = "", token: str | None = ADMIN
                   ) -> tuple[int, str, str]:
        return await asyncio.to_thread(cli, *argv, stdin=stdin, token=token)

    assert (await acli("blueprint", "import", str(source)))[0] == 0
    status, out, _ = await acli("projects", "list")
    assert status == 0 and out.startswith("NAME") and name in out
    status, out, _ = await acli("projects", "list", "--json")
    assert status == 0 and name in [p["name"] for p in json.loads(out)]
    status, out, _ = await acli("vars", "set", name, "GREETING=hello world", "--applies-to",
                                "previews")
    assert (status, out.strip()) == (0, "variable GREETING created")
    status, out, _ = await acli("vars", "list", name, "--key", "GREETING")
    assert status == 0 and "hello world" in out and "previews" in out
    status, out, _ = await acli("secrets", "set", name, "API_KEY", stdin=SECRET + "\n")
    assert (status, out.strip()) == (0, "secret API_KEY created")
    status, out, _ = await acli("secrets", "set", name, "API_KEY", stdin=SECRET + "\n")
    assert (status, out.strip()) == (0, "secret API_KEY updated")
    status, out, err = await acli("secrets", "list", name)
    assert status == 0 and "API_KEY" in out and SECRET not in out + err
    status, out, _ = await acli("blueprint", "export", name)
    assert status == 0 and parse_blueprint(out).project.name == name
    assert "GREETING" in out and SECRET not in out
    exported = tmp_path / "out.json"
    assert (await acli("blueprint", "export", name, "--format", "json", "-o",
                       str(exported)))[0] == 0
    assert json.loads(exported.read_text())["project"]["name"] == name
    status, out, _ = await acli("tokens", "create", "ci", "--project", name)
    assert status == 0 and out.strip().startswith("pvt_")
    assert (await acli("projects", "list", "--json", token=out.strip()))[0] == 0

    # Failures: a message and exit 1, no traceback.
    status, _, err = await acli("secrets", "set", name, "EMPTY", stdin="")
    assert status == 1 and "no value given" in err
    status, _, err = await acli("projects", "list", token=None)
    assert status == 1 and cli_api.TOKEN_ENV in err
    status, _, err = await acli("projects", "list", token="wrong")
    assert status == 1 and "not valid" in err
    status, _, err = await acli("vars", "set", name, "NOEQUALS")
    assert status == 1 and "KEY=VALUE" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(source.read_text().replace("replicas: 2", "replicas: lots"))
    status, _, err = await acli("blueprint", "import", str(broken))
    assert status == 1 and f"{broken}:" in err and "applications[0].replicas" in err
    status, _, err = await acli("projects", "delete", name)
    assert status == 1 and "--yes" in err
    assert (await acli("projects", "delete", name, "--yes"))[0] == 0
    assert SECRET not in caplog.text


def test_cli_validate_and_schema(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser(prog="preview")
    cli_api.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["blueprint", "validate", str(EXAMPLE)])
    assert args.func(args) == 0 and "valid blueprint" in capsys.readouterr().out
    target = tmp_path / "schema.json"
    args = parser.parse_args(["blueprint", "schema", "-o", str(target)])
    assert args.func(args) == 0
    committed = Path(__file__).parents[2] / "schema" / "preview.schema.json"
    assert target.read_text() == committed.read_text()
    assert yaml.safe_load(target.read_text())["title"] == "preview.yaml"


# ---------------------------------------------------------------------------- fuzzing

fuzz_schema = schemathesis.openapi.from_dict(build_app().openapi())


@pytest.mark.slow  # about a minute: schemathesis explores every operation
@fuzz_schema.parametrize()
@settings(max_examples=5, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case: Any, live_api: str) -> None:
    """Schema-generated requests (as admin): no 5xx, and every answer is documented.

    Not checked: that schema-valid data is accepted (names must be DNS labels and
    references must exist, which the schema cannot say), that unknown query parameters
    are refused (they are ignored), nor the `Allow` header of 405s (Starlette lists the
    methods of the first matching route only).
    """
    case.call_and_validate(
        base_url=live_api.removesuffix("/api"), headers=auth(),
        checks=[checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance,
                checks.response_headers_conformance],
    )


# ---------------------------------------------------------------------------- master keys


async def test_moving_secrets_to_a_kms_master_key(
    postgres_server: PostgresServer, moto_server: MotoServer,
) -> None:
    # A store of its own: every secret in it moves to KMS.
    url = await postgres_server.new_database("api_kms")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    store = Store(pool, SEALER)
    await store.migrate()
    kms = moto_server.client("kms")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    app = build_app(store)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test/api") as api:
            assert (await import_example(api)).status_code == 201
            put = await api.put(f"/projects/{PROJECT}/secrets/API_KEY", json={"value": SECRET},
                                headers=auth())
            assert put.status_code == 201 and put.json()["key_id"] == "k1"
            token = await project_token(api, PROJECT)
            assert_error(await api.post("/secrets/rewrap", headers=auth(token)), 403,
                         "forbidden", "admin")

            # The operator sets PREVIEW_KMS_KEY_ID and restarts: new secrets go to KMS,
            # and one call moves the old ones (without decrypting any value).
            app.state.sealer = Sealer(Keyring.parse("k1:" + base64.b64encode(b"k" * 32).decode()),
                                      KmsMasterKey(key_id, kms))
            answer = await api.post("/secrets/rewrap", headers=auth())
            assert answer.status_code == 200, answer.text
            key_arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
            assert answer.json() == {"rewrapped": 1, "key_id": f"kms:{key_arn}"}
            again = await api.post("/secrets/rewrap", headers=auth())
            assert again.json()["rewrapped"] == 0
            meta = await api.get(f"/projects/{PROJECT}/secrets/API_KEY", headers=auth())
            assert meta.json()["key_id"] == f"kms:{key_arn}" and SECRET not in meta.text
        # The local key is no longer needed to read it.
        kms_only = Sealer(Keyring.parse("other:" + base64.b64encode(b"o" * 32).decode()),
                          KmsMasterKey(key_id, kms))
        source = await store.source_environment("Codertocat/Hello-World")
        assert source is not None
        (secret,) = [s for s in source.secrets if s.key == "API_KEY"]
        assert kms_only.unseal(secret.sealed) == SECRET
        audit = await pool.fetch("SELECT * FROM audit_log WHERE action = 'secret.rewrap'")
        assert len(audit) == 1 and SECRET not in str(dict(audit[0]))
    finally:
        await pool.close()


async def test_cluster_kubeconfigs_are_write_only_and_admin_only(
    client: httpx.AsyncClient, project: str,
) -> None:
    from tests.store.test_store import KEY_DATA, KUBECONFIG

    name = f"c-{uuid.uuid4().hex[:6]}"
    token = await project_token(client, project)
    assert_error(await client.put(f"/clusters/{name}", json={"kubeconfig": KUBECONFIG},
                                  headers=auth(token)), 403, "forbidden", "admin")
    created = await client.put(f"/clusters/{name}", json={"kubeconfig": KUBECONFIG},
                               headers=auth())
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name and KEY_DATA not in created.text
    replaced = await client.put(f"/clusters/{name}",
                                json={"kubeconfig": KUBECONFIG, "context": "hipaa-ops"},
                                headers=auth())
    assert replaced.status_code == 204
    listed = await client.get("/clusters", headers=auth())
    assert listed.status_code == 200 and KEY_DATA not in listed.text
    (mine,) = [c for c in listed.json()["items"] if c["name"] == name]
    assert mine["version"] == 2 and mine["context"] == "hipaa-ops"

    bad = await client.put(f"/clusters/{name}", json={"kubeconfig": KUBECONFIG,
                                                      "context": "elsewhere"}, headers=auth())
    assert_error(bad, 422, "invalid", "context 'elsewhere' is not in the kubeconfig")
    assert KEY_DATA not in bad.text
    assert_error(await client.put("/clusters/Bad_Name", json={"kubeconfig": KUBECONFIG},
                                  headers=auth()), 422, "invalid")
    assert (await client.delete(f"/clusters/{name}", headers=auth())).status_code == 204
    assert_error(await client.delete(f"/clusters/{name}", headers=auth()), 404, "not_found")


async def test_only_an_admin_places_an_environment_on_a_dedicated_cluster_or_account(
    client: httpx.AsyncClient, project: str,
) -> None:
    token = await project_token(client, project)
    exported = (await client.get(f"/projects/{project}/blueprint", headers=auth())).json()

    async def import_as(who: str, environment: dict[str, Any]) -> httpx.Response:
        body = {**exported, "environment": {**exported["environment"], **environment}}
        return await client.post("/blueprints", json=body, headers=auth(who))

    hipaa = {"isolation": "cluster", "cluster": {"name": "hipaa"}}
    # Someone else's cluster, or someone else's account: not for a project token.
    assert_error(await import_as(token, hipaa), 403, "forbidden", "only an admin token")
    account = {"isolation": "account", "cloud_account": {
        "account_id": "222222222222", "role_arn": "arn:aws:iam::222222222222:role/p",
        "external_id": "guessed"}}
    assert_error(await import_as(token, account), 403, "forbidden", "dedicated")
    # The admin places it; the project's own token may then keep that placement...
    assert (await import_as(ADMIN, hipaa)).status_code == 200
    assert (await import_as(token, hipaa)).status_code == 200
    # ...but not move it elsewhere, by import or by editing the environment.
    assert_error(await import_as(token, {"cluster": {"name": "other"}, "isolation": "cluster"}),
                 403, "forbidden")
    env = (await client.get(f"/projects/{project}/environments/production",
                            headers=auth())).json()
    moved = {**env, "cluster": {"name": "bank"}}
    assert_error(await client.put(f"/projects/{project}/environments/production", json=moved,
                                  headers=auth(token)), 403, "forbidden")
    stored = await client.get(f"/projects/{project}/environments/production", headers=auth())
    assert stored.json()["cluster"]["name"] == "hipaa"
    # Nor by creating another environment there, or by isolation alone.
    other = {**env, "name": "staging", "kind": "staging"}
    assert_error(await client.post(f"/projects/{project}/environments", json=other,
                                   headers=auth(token)), 403, "forbidden")
    account_only = {**env, "isolation": "account", "cluster": {"name": "default"},
                    "cloud_account": account["cloud_account"]}
    assert_error(await client.put(f"/projects/{project}/environments/production",
                                  json=account_only, headers=auth(token)), 403, "forbidden")
    assert (await client.post(f"/projects/{project}/environments", json=other,
                              headers=auth())).status_code == 201  # an admin may
    # Back to the shared cluster is always allowed.
    shared = {**env, "isolation": "namespace", "cluster": {"name": "default"}}
    assert (await client.put(f"/projects/{project}/environments/production", json=shared,
                             headers=auth(token))).status_code == 200
