"""policy.max_live_previews, enforced by the preview-slot step on the real store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.control_plane.store import PreviewSlotActivities
from domain.naming import Ownership
from domain.resources import PreviewSlotSpec, StepInput
from stack.postgres import PostgresServer
from tests.plugins.postgres import migrated_store


@pytest.fixture(scope="module")
async def activities(postgres_server: PostgresServer) -> AsyncIterator[PreviewSlotActivities]:
    store = await migrated_store(await postgres_server.new_database("slots_test"))
    yield PreviewSlotActivities(store)
    await store.close()


def slot(repository: str, env: str, limit: int) -> StepInput:
    return StepInput(spec=PreviewSlotSpec(owner=Ownership(environment=env),
                                          repository=repository, max_live=limit))


async def test_limit_is_enforced_idempotent_and_released(activities: PreviewSlotActivities) -> None:
    repo, run = f"acme/{uuid.uuid4().hex[:6]}", ActivityEnvironment().run
    for i in range(2):
        out = await run(activities.claim_preview_slot, slot(repo, f"env-{i}", 2))
    # (environment ids are unique per repository and PR in real use)
        assert out.values["live_previews"] == str(i + 1)
    again = await run(activities.claim_preview_slot, slot(repo, "env-0", 2))
    assert again.values["live_previews"] == "2"  # a retry of a claimed slot is no new claim
    with pytest.raises(ApplicationError) as refused:
        await run(activities.claim_preview_slot, slot(repo, "env-2", 2))
    assert refused.value.type == "QuotaExceeded" and refused.value.non_retryable
    assert f"{repo} already has 2 live previews" in refused.value.message
    # Another repository has its own limit.
    await run(activities.claim_preview_slot, slot(f"{repo}-other", "env-x", 2))
    await run(activities.release_preview_slot, slot(repo, "env-0", 2))
    await run(activities.release_preview_slot, slot(repo, "env-0", 2))  # absent: fine
    out = await run(activities.claim_preview_slot, slot(repo, "env-2", 2))
    assert out.values["live_previews"] == "2"


async def test_concurrent_claims_never_exceed_the_limit(activities: PreviewSlotActivities) -> None:
    repo = f"acme/{uuid.uuid4().hex[:6]}"
    env = ActivityEnvironment()
    results = await asyncio.gather(
        *(env.run(activities.claim_preview_slot, slot(repo, f"{repo}-{i}", 5))
          for i in range(12)),
        return_exceptions=True)
    refused = [r for r in results if isinstance(r, ApplicationError)]
    assert len(refused) == 7 and len(results) - len(refused) == 5
