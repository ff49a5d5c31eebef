"""Blueprints imported as YAML or JSON and exported back (starter.api.blueprints)."""

from __future__ import annotations

import uuid

import httpx

from domain.blueprint_file import parse_blueprint
from store import Store
from tests.starter.api_support import EXAMPLE, assert_error, auth, import_example, project_token


async def test_blueprint_import_and_export(client: httpx.AsyncClient, store: Store) -> None:
    name = f"bp-{uuid.uuid4().hex[:8]}"
    first = await import_example(client, name, f"acme/{name}")
    assert first.status_code == 201 and first.json() == {
        "project": name, "environment": "production", "created": True, "applications": 3,
        "databases": 1, "caches": 1, "jobs": 3, "charts": 0, "variables": 8,
        # Which application holds which credentials: the public web none.
        "connections": {"web": [], "worker": ["DATABASE_URL", "DATABASE_URL_MAIN"],
                        "api": ["DATABASE_URL", "DATABASE_URL_MAIN", "REDIS_URL",
                                "REDIS_URL_SESSIONS"]}}
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
    for deep in ('{"a":' * 5000 + "1" + "}" * 5000, '{"a":' * 65 + "1" + "}" * 65,
                 '{"n": ' + "9" * 5000 + "}"):
        assert_error(await client.post("/blueprints", content=deep, headers={
            **auth(), "Content-Type": "application/json"}), 422, "invalid", "nested more than")
    assert_error(await client.post("/blueprints", content="a:\n" + "  - " * 3000 + "x",
                                   headers={**auth(), "Content-Type": "application/yaml"}),
                 422, "invalid", "invalid YAML")
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
