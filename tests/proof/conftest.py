"""Shared pieces of the proof tests: a fresh store database, the whole starter app
in-process, and the checks that no workflow was started."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from engine.keyring import Keyring
from engine.sealing import Sealer
from engine.settings import Settings
from stack.postgres import PostgresServer
from starter.app import create_app
from store import Store

WEBHOOK_SECRET = "proof-webhook-secret"
GITLAB_TOKEN = "proof-gitlab-token"
CODEC_TOKEN = "proof-codec-token"
ADMIN_TOKEN = "proof-admin-token"
SEALER = Sealer(Keyring.parse("proof-1:" + base64.b64encode(b"p" * 32).decode()))


@pytest.fixture(scope="module")
async def proof_store(postgres_server: PostgresServer) -> AsyncIterator[Store]:
    url = await postgres_server.new_database("proof")
    store = await Store.connect(url, SEALER, max_size=4)
    await store.migrate()
    yield store
    await store.close()


@dataclass
class Starter:
    """The whole starter app (webhooks, codec, /api, /healthz), called in-process."""

    settings: Settings
    http: httpx.AsyncClient
    store: Store

    @property
    def task_queue(self) -> str:
        return self.settings.task_queue


def proof_settings(test_settings: Settings, queue_prefix: str) -> Settings:
    return test_settings.model_copy(
        update={
            # No worker polls this queue: a started workflow just waits, and is counted.
            "task_queue": f"{queue_prefix}-{uuid.uuid4().hex[:8]}",
            "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "gitlab_webhook_token": SecretStr(GITLAB_TOKEN),
            "codec_token": SecretStr(CODEC_TOKEN),
            "admin_token": SecretStr(ADMIN_TOKEN),
            "webhook_max_bytes": 1024 * 1024,
        }
    )


async def starter_for(
    settings: Settings, temporal_client: Client, store: Store
) -> tuple[httpx.AsyncClient, Any]:
    app = create_app(settings, temporal_client, store, store=store, sealer=SEALER)
    # raise_app_exceptions=False: an unhandled error is seen as the 500 a client gets.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://starter"), app


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return False
        raise
    return True


async def workflows_on_queue(client: Client, task_queue: str, timeout: float = 30) -> int:
    """How many workflows were ever started on `task_queue`, with visibility caught up.

    Visibility lags the starts by up to a second or so. A sentinel workflow is started
    last; once visibility shows it, it shows everything started before it on this
    single-node dev server. The sentinel is not counted, and is terminated.
    """
    sentinel = await client.start_workflow(
        "ProofSentinel", id=f"proof-sentinel-{uuid.uuid4().hex}", task_queue=task_queue
    )
    query = f"TaskQueue = '{task_queue}'"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            ids = [w.id async for w in client.list_workflows(query)]
            if sentinel.id in ids:
                return len(ids) - 1
            assert loop.time() < deadline, f"visibility did not show {sentinel.id} in {timeout}s"
            await asyncio.sleep(0.2)  # polling a condition with a deadline
    finally:
        await sentinel.terminate(reason="proof sentinel")


async def terminate_queue(client: Client, task_queue: str) -> None:
    """Tidy up the workflows a test started on its own queue (no worker ever ran them)."""
    async for info in client.list_workflows(f"TaskQueue = '{task_queue}' AND "
                                            "ExecutionStatus = 'Running'"):
        with contextlib.suppress(RPCError):  # it may have ended meanwhile
            await client.get_workflow_handle(info.id, run_id=info.run_id).terminate(
                reason="proof test done"
            )
