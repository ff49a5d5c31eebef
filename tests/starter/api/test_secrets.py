"""The secret routes (starter.api.secrets): write-only, and rewrapped under a new master key."""

from __future__ import annotations

import base64
import logging

import asyncpg
import httpx
import pytest

from engine.keyring import Keyring
from engine.sealing import KmsMasterKey, Sealer
from stack.postgres import PostgresServer
from store import Store
from tests.plugins.moto import MotoServer
from tests.starter.api_support import (
    PROJECT,
    SEALER,
    SECRET,
    assert_error,
    auth,
    build_app,
    import_example,
    project_token,
)


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
                 422, "invalid", "unknown application or job 'ghost'")
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
