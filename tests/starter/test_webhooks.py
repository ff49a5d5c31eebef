"""The webhook service against real PostgreSQL (deliveries) and a real Temporal server."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from domain.naming import workflow_id
from engine.settings import Settings
from stack.postgres import PostgresServer
from starter.app import create_app
from store import Store
from tests.plugins.postgres import migrated_store

FIXTURES = Path(__file__).parents[1] / "fixtures" / "github-webhooks"
SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
async def store(postgres_server: PostgresServer) -> AsyncIterator[Store]:
    store = await migrated_store(await postgres_server.new_database("webhooks"), max_size=4)
    yield store
    await store.close()


@pytest.fixture
def settings(test_settings: Settings) -> Settings:
    return test_settings.model_copy(
        update={
            "github_webhook_secret": type(test_settings.github_webhook_secret)(SECRET),
            "task_queue": f"webhooks-{uuid.uuid4().hex[:6]}",  # no worker: workflows just wait
            "webhook_max_bytes": 64 * 1024,
        }
    )


@pytest.fixture
async def http(
    settings: Settings, temporal_client: Client, store: Store
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, temporal_client, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://starter"
    ) as client:
        yield client


def body_of(name: str, **changes: Any) -> bytes:
    payload = json.loads((FIXTURES / f"{name}.json").read_text())
    # A fresh PR number per test keeps workflows apart on the shared server.
    if "pull_request" in payload:
        payload["pull_request"]["number"] = payload["number"] = changes.pop(
            "number", uuid.uuid4().int % 10**6 + 1
        )
    payload.update(changes)
    return json.dumps(payload).encode()


def headers(
    body: bytes, event: str, *, secret: str = SECRET, delivery: str | None = None
) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }


async def workflow_exists(client: Client, body: bytes) -> bool:
    payload = json.loads(body)
    wid = workflow_id(payload["repository"]["full_name"], payload["number"])
    try:
        await client.get_workflow_handle(wid).describe()
    except RPCError as error:
        assert error.status == RPCStatusCode.NOT_FOUND
        return False
    return True


async def test_signed_opened_starts_the_preview(
    http: httpx.AsyncClient, temporal_client: Client
) -> None:
    body = body_of("pull_request.opened")
    answer = await http.post(
        "/webhooks/github", content=body, headers=headers(body, "pull_request")
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "deployed"
    assert await workflow_exists(temporal_client, body)


@pytest.mark.parametrize("forge", ["wrong-secret", "missing", "tampered"])
async def test_forged_or_missing_signature_starts_nothing(
    http: httpx.AsyncClient, temporal_client: Client, forge: str
) -> None:
    body = body_of("pull_request.opened")
    sent = body
    hdrs = headers(
        body, "pull_request", secret="not-the-secret" if forge == "wrong-secret" else SECRET
    )
    if forge == "missing":
        del hdrs["X-Hub-Signature-256"]
    if forge == "tampered":
        sent = body.replace(b'"opened"', b'"closed"')
    answer = await http.post("/webhooks/github", content=sent, headers=hdrs)
    assert answer.status_code == 401
    assert "X-Hub-Signature-256" in answer.json()["detail"]
    assert not await workflow_exists(temporal_client, body)


async def test_redelivery_is_acted_on_once(http: httpx.AsyncClient, store: Store) -> None:
    body = body_of("pull_request.opened")
    hdrs = headers(body, "pull_request", delivery=f"dup-{uuid.uuid4()}")
    first = await http.post("/webhooks/github", content=body, headers=hdrs)
    second = await http.post("/webhooks/github", content=body, headers=hdrs)
    assert first.json()["outcome"] == "deployed"
    assert second.status_code == 202 and second.json()["outcome"] == "duplicate"
    outcome = await store.pool.fetchval(
        "SELECT outcome FROM webhook_deliveries WHERE delivery_id = $1", hdrs["X-GitHub-Delivery"]
    )
    assert outcome == "deployed"


async def test_bad_bodies_get_clear_errors(http: httpx.AsyncClient) -> None:
    not_json = b"{not json"
    answer = await http.post(
        "/webhooks/github", content=not_json, headers=headers(not_json, "pull_request")
    )
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["detail"]

    missing = json.dumps({"action": "opened", "repository": {"full_name": "a/b"}}).encode()
    answer = await http.post(
        "/webhooks/github", content=missing, headers=headers(missing, "pull_request")
    )
    assert answer.status_code == 400 and "pull_request" in answer.json()["detail"]

    huge = b'{"zen": "' + b"x" * 70_000 + b'"}'
    answer = await http.post("/webhooks/github", content=huge, headers=headers(huge, "ping"))
    assert answer.status_code == 413

    body = body_of("pull_request.opened")
    hdrs = headers(body, "pull_request")
    del hdrs["X-GitHub-Delivery"]
    answer = await http.post("/webhooks/github", content=body, headers=hdrs)
    assert answer.status_code == 422 and "x-github-delivery" in answer.text.lower()


async def test_ping_push_and_closed_without_preview(http: httpx.AsyncClient) -> None:
    ping = body_of("ping")
    answer = await http.post("/webhooks/github", content=ping, headers=headers(ping, "ping"))
    assert answer.json()["outcome"] == "pong"
    push = body_of("push")
    answer = await http.post("/webhooks/github", content=push, headers=headers(push, "push"))
    assert answer.json() == {
        "outcome": "ignored",
        "detail": "event 'push' does not affect previews",
        "workflow_id": None,
        "woken": None,
    }
    closed = body_of("pull_request.closed")
    answer = await http.post(
        "/webhooks/github", content=closed, headers=headers(closed, "pull_request")
    )
    assert answer.json()["outcome"] == "ignored"


async def test_store_down_answers_503_and_redelivery_then_works(
    settings: Settings, temporal_client: Client, postgres_server: PostgresServer, store: Store
) -> None:
    url = await postgres_server.new_database("down")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    await pool.close()  # every query now fails, as when the store is unreachable
    body = body_of("pull_request.opened")
    hdrs = headers(body, "pull_request")
    down = create_app(settings, temporal_client, Store(pool))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=down), base_url="http://starter"
    ) as client:
        answer = await client.post("/webhooks/github", content=body, headers=hdrs)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert not await workflow_exists(temporal_client, body)

    up = create_app(settings, temporal_client, store)  # GitHub redelivers, same id
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=up), base_url="http://starter"
    ) as client:
        answer = await client.post("/webhooks/github", content=body, headers=hdrs)
    assert answer.json()["outcome"] == "deployed"
    assert await workflow_exists(temporal_client, body)


async def test_gitlab_token(http: httpx.AsyncClient, settings: Settings) -> None:
    payload = {
        "object_kind": "merge_request",
        "project": {"path_with_namespace": "g/app"},
        "object_attributes": {
            "iid": uuid.uuid4().int % 10**6 + 1,
            "action": "open",
            "last_commit": {"id": "a" * 40},
            "source_project_id": 1,
            "target_project_id": 1,
        },
    }
    body = json.dumps(payload).encode()
    good = {
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": settings.gitlab_webhook_token.get_secret_value(),
    }
    answer = await http.post(
        "/webhooks/gitlab", content=body, headers={**good, "X-Gitlab-Token": "wrong"}
    )
    assert answer.status_code == 401
    answer = await http.post("/webhooks/gitlab", content=body, headers=good)
    assert answer.status_code == 202 and answer.json()["outcome"] == "deployed"


async def test_codec_endpoint_needs_the_token_and_allows_only_the_ui(
    http: httpx.AsyncClient, settings: Settings, temporal_client: Client
) -> None:
    from google.protobuf import json_format
    from temporalio.api.common.v1 import Payloads

    codec = temporal_client.data_converter.payload_codec
    assert codec is not None
    [plain] = temporal_client.data_converter.payload_converter.to_payloads([{"pw": "hunter2"}])
    encoded = Payloads(payloads=await codec.encode([plain]))
    body = json_format.MessageToJson(encoded)
    assert "hunter2" not in body

    answer = await http.post("/codec/decode", content=body)
    assert answer.status_code == 401
    token = {"Authorization": f"Bearer {settings.codec_token.get_secret_value()}"}
    answer = await http.post("/codec/decode", content=body, headers=token)
    decoded = Payloads()
    json_format.Parse(answer.text, decoded)
    assert decoded.payloads[0].data == plain.data

    preflight = {
        "Access-Control-Request-Method": "POST",
        "Origin": settings.codec_cors_origin,
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    answer = await http.options("/codec/decode", headers=preflight)
    assert answer.headers["access-control-allow-origin"] == settings.codec_cors_origin
    answer = await http.options(
        "/codec/decode", headers={**preflight, "Origin": "http://evil.example"}
    )
    assert "access-control-allow-origin" not in answer.headers


async def test_a_delivery_left_unfinished_by_a_dead_starter_is_acted_on(
    http: httpx.AsyncClient, store: Store, temporal_client: Client
) -> None:
    body = body_of("pull_request.opened")
    hdrs = headers(body, "pull_request")
    delivery = hdrs["X-GitHub-Delivery"]
    # What a starter killed between recording and starting leaves behind.
    await store.pool.execute(
        "INSERT INTO webhook_deliveries (delivery_id, event, received_at)"
        " VALUES ($1, 'pull_request', now() - interval '5 minutes')", delivery)
    answer = await http.post("/webhooks/github", content=body, headers=hdrs)
    assert answer.json()["outcome"] == "deployed"
    assert await workflow_exists(temporal_client, body)
    # A fresh, unfinished row (a concurrent redelivery in flight) still counts as seen.
    body2 = body_of("pull_request.opened")
    hdrs2 = headers(body2, "pull_request")
    await store.pool.execute("INSERT INTO webhook_deliveries (delivery_id, event)"
                             " VALUES ($1, 'pull_request')", hdrs2["X-GitHub-Delivery"])
    answer = await http.post("/webhooks/github", content=body2, headers=hdrs2)
    assert answer.json()["outcome"] == "duplicate"


@pytest.mark.parametrize(("body", "why"), [
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
    (b'{"a":' * 65 + b"1" + b"}" * 65, "nested too deeply"),
    (b'{"number": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
])
async def test_every_body_the_json_parser_refuses_is_a_400(
    http: httpx.AsyncClient, body: bytes, why: str,
) -> None:
    """Validly signed, so only the body's shape decides: never a 500."""
    answer = await http.post("/webhooks/github", content=body,
                             headers=headers(body, "pull_request"))
    assert answer.status_code == 400, answer.text
    assert why in answer.json()["detail"]


async def test_a_branch_name_as_long_as_git_allows_gets_a_preview(
    http: httpx.AsyncClient, temporal_client: Client,
) -> None:
    """Three path components of 99 characters: legal in Git, and on GitHub."""
    branch = "/".join(["b" * 99] * 3)
    payload = json.loads(body_of("pull_request.opened"))
    payload["pull_request"]["head"]["ref"] = branch
    body = json.dumps(payload).encode()
    answer = await http.post("/webhooks/github", content=body,
                             headers=headers(body, "pull_request"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "deployed"
    handle = temporal_client.get_workflow_handle(answer.json()["workflow_id"])
    await handle.terminate("test done")  # no worker polls this queue
