"""The control-plane store (PostgreSQL) is down: a webhook gets 503, nothing starts and
nothing is recorded; once it is back, GitHub's redelivery (same X-GitHub-Delivery)
starts the preview and the delivery is recorded once, with its outcome.

A real, dedicated PostgreSQL server is stopped and started again on the same port and
data folder; the store's connection pool is the one it had before the outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain.naming import workflow_id
from engine.settings import Settings
from stack.postgres import PostgresServer
from starter.app import create_app
from store import Store
from tests.faults.support import REPOSITORY, unique_number

pytestmark = [pytest.mark.slow, pytest.mark.kube]

FIXTURES = Path(__file__).parents[1] / "fixtures" / "github-webhooks"
WEBHOOK_SECRET = "faults-webhook-secret"


def opened(number: int) -> bytes:
    payload = json.loads((FIXTURES / "pull_request.opened.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = number
    payload["repository"]["full_name"] = REPOSITORY
    return json.dumps(payload).encode()


def headers(body: bytes, delivery: str) -> dict[str, str]:
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


async def workflow_status(client: Client, wid: str) -> WorkflowExecutionStatus | None:
    try:
        return (await client.get_workflow_handle(wid).describe()).status
    except RPCError as error:
        assert error.status == RPCStatusCode.NOT_FOUND, error
        return None


async def test_store_down_then_redelivery(temporal_client: Client,
                                          test_settings: Settings) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="preview-faults-store-"))
    os.chmod(data_dir, 0o755)  # the server runs as `postgres` when we are root
    server = PostgresServer(data_dir)  # the store's own server: this one is stopped
    await asyncio.to_thread(server.start)
    admin = await asyncpg.connect(server.admin_url)
    await admin.execute('CREATE DATABASE "control"')
    await admin.close()
    store = await Store.connect(server.url("control"))
    await store.migrate()
    settings = test_settings.model_copy(update={
        "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
        "task_queue": f"faults-{uuid.uuid4().hex[:8]}",  # no worker: the start is enough
    })
    number = unique_number()
    wid = workflow_id(REPOSITORY, number)
    body, delivery = opened(number), str(uuid.uuid4())
    app = create_app(settings, temporal_client, store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://starter") as http:
            await asyncio.to_thread(server.stop)

            answer = await http.post("/webhooks/github", content=body,
                                     headers=headers(body, delivery))
            assert answer.status_code == 503, answer.text
            assert answer.headers.get("Retry-After"), "a 503 should say when to retry"
            assert "retry" in answer.json()["detail"]
            assert await workflow_status(temporal_client, wid) is None

            await asyncio.to_thread(server.start)  # same port, same data

            # GitHub's redelivery: the same delivery id, the same body.
            answer = await http.post("/webhooks/github", content=body,
                                     headers=headers(body, delivery))
            assert answer.status_code == 202, answer.text
            assert answer.json()["outcome"] == "deployed"
            assert answer.json()["workflow_id"] == wid
            assert await workflow_status(temporal_client, wid) == WorkflowExecutionStatus.RUNNING

            # Acted on once: another redelivery is a duplicate.
            again = await http.post("/webhooks/github", content=body,
                                    headers=headers(body, delivery))
            assert again.status_code == 202 and again.json()["outcome"] == "duplicate"

        # Recorded once, completely: nothing from the attempt that got the 503.
        rows = await store.pool.fetch("SELECT delivery_id, event, outcome "
                                      "FROM webhook_deliveries")
        assert [dict(r) for r in rows] == [
            {"delivery_id": delivery, "event": "pull_request", "outcome": "deployed"}]
        # One start, one deploy signal, whatever the retries.
        history = await temporal_client.get_workflow_handle(wid).fetch_history()
        signals = [e for e in history.events
                   if e.HasField("workflow_execution_signaled_event_attributes")]
        assert len(signals) == 1
    finally:
        if await workflow_status(temporal_client, wid) == WorkflowExecutionStatus.RUNNING:
            await temporal_client.get_workflow_handle(wid).terminate(reason="test over")
        await store.close()
        await asyncio.to_thread(server.stop)
        shutil.rmtree(data_dir, ignore_errors=True)
