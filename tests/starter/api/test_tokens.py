"""The /tokens routes (starter.api.tokens): created, listed, revoked."""

from __future__ import annotations

import json

import httpx

from tests.starter.api_support import assert_error, auth


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
    # PostgreSQL's text cannot hold NUL: a clear 422 naming the field, not a 500 (found by
    # the OpenAPI fuzzer); a variable's value likewise.
    nul = await client.post("/tokens", json={"name": "a\u0000b"}, headers=auth())
    assert_error(nul, 422, "invalid", "body.name")
    assert "NUL" in nul.text
    assert_error(await client.put(f"/projects/{project}/variables/GREETING",
                                  json={"value": "hi\u0000"}, headers=auth()),
                 422, "invalid", "body.value")
