"""What the codec tests share: a real store for the app's delivery log, and an encrypted
payload to decode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client

from stack.postgres import PostgresServer
from store import Store


@pytest.fixture(scope="module")
async def store(postgres_server: PostgresServer) -> AsyncIterator[Store]:
    pool = await asyncpg.create_pool(await postgres_server.new_database("codec"),
                                     min_size=1, max_size=2)
    yield Store(pool)
    await pool.close()


@pytest.fixture
async def sealed(temporal_client: Client) -> tuple[Payload, str]:
    """A plain payload, and the Payloads JSON the Web UI would post for it encrypted."""
    codec = temporal_client.data_converter.payload_codec
    assert codec is not None
    [plain] = temporal_client.data_converter.payload_converter.to_payloads(
        [{"password": "hunter2"}])
    body = json_format.MessageToJson(Payloads(payloads=await codec.encode([plain])))
    assert "hunter2" not in body
    return plain, body
