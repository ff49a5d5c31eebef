"""Temporal for tests: the real dev server (restartable) and the time-skipping server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from engine.client import data_converter
from engine.settings import Settings
from stack.temporal import SEARCH_ATTRIBUTES, TemporalDevServer, test_server_binary


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[TemporalDevServer]:
    state = Path(tempfile.mkdtemp(prefix="preview-test-temporal-"))
    server = TemporalDevServer(state, headless=True).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def test_settings(temporal_server: TemporalDevServer) -> Settings:
    # Fake nodes pull no image: only the registry tests check that images exist.
    return Settings(temporal_address=temporal_server.address, check_images=False)


@pytest.fixture(scope="session")
async def temporal_client(temporal_server: TemporalDevServer, test_settings: Settings) -> Client:
    return await Client.connect(
        temporal_server.address, data_converter=data_converter(test_settings)
    )


@pytest.fixture(scope="session")
async def time_skipping_env(test_settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_binary(),
        data_converter=data_converter(test_settings),
    )
    await register_search_attributes(env.client)
    try:
        yield env
    finally:
        await env.shutdown()


async def register_search_attributes(client: Client) -> None:
    kinds = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
             "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT}
    await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=client.namespace,
        search_attributes={name: kinds[kind] for name, kind in SEARCH_ATTRIBUTES.items()},
    ))
