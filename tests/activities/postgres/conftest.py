"""The shop's golden copy, made once for the preview-database and golden-copy tests."""

from __future__ import annotations

import pytest

from activities.postgres import GoldenCopyActivities, PostgresAccess, PreviewDatabaseActivities
from domain.golden import GoldenRefreshRequest
from stack.postgres import PostgresServer
from tests.activities.postgres.shop import (
    ALL_RULES,
    KEY,
    SEALER,
    SOURCE,
    Golden,
    build_source,
    fresh_database,
)


@pytest.fixture(scope="package")
async def golden(postgres_server: PostgresServer) -> Golden:
    source_url = await fresh_database(postgres_server, "pgt_source_shop")
    await build_source(source_url)
    access = PostgresAccess(postgres_server.admin_url, SEALER, KEY)
    copies = GoldenCopyActivities(access)
    generation = await copies.refresh_golden_copy(
        GoldenRefreshRequest(source_url=source_url, source_name=SOURCE, masking=ALL_RULES))
    return Golden(PreviewDatabaseActivities(access), copies, source_url, generation)
