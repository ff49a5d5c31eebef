"""Fixtures of the HTTP API tests: a real PostgreSQL store per module, an in-process
client of the app over it, a fresh project, and the app in a real uvicorn server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from stack.ports import free_port
from stack.postgres import PostgresServer
from store import Store
from tests.plugins.postgres import migrated_store
from tests.starter.api_support import SEALER, auth, build_app, import_example


@pytest.fixture(scope="module")
async def database_url(postgres_server: PostgresServer) -> str:
    return await postgres_server.new_database("api_test")


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await migrated_store(database_url, SEALER)
    yield store
    await store.close()


@pytest.fixture(scope="module")
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test/api") as client:
        yield client


@pytest.fixture
async def project(client: httpx.AsyncClient) -> AsyncIterator[str]:
    """A fresh project from the example blueprint."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    response = await import_example(client, name, f"acme/{name}")
    assert response.status_code == 201, response.text
    yield name
    await client.delete(f"/projects/{name}", headers=auth())


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
