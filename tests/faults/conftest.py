"""Fixtures of the fault tests: one store, one Route53 zone, one blueprint per module."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client

from activities.control_plane.planning import plan_options
from domain.plan import plan_preview
from engine.settings import Settings
from tests.faults.support import (
    REPOSITORY,
    FaultStack,
    hosted_zone,
    import_blueprint,
    make_store,
    plan_for,
    pull_request,
)


@pytest.fixture(scope="module")
async def fault_stack(
    postgres_server: Any,
    moto_server: Any,
    kube_cluster: Any,
    temporal_client: Client,
    test_settings: Settings,
) -> AsyncIterator[FaultStack]:
    store_db = f"faults_{uuid.uuid4().hex[:8]}"
    zone_id = hosted_zone(moto_server)
    settings = test_settings.model_copy(update={
        "task_queue": f"faults-{uuid.uuid4().hex[:6]}",
        "database_url": postgres_server.url(store_db),
        "preview_database_url": postgres_server.admin_url,
        "aws_endpoint_url": moto_server.endpoint_url,
        "kubeconfig": str(kube_cluster.kubeconfig),
        "github_token": None,  # no pull request feedback: not what these tests are about
        "blueprint_source": "store",
    })
    store = await make_store(postgres_server.admin_url, settings.database_url, settings)
    await import_blueprint(store, zone_id)
    # The plan the tests derive their boundaries from is the one the worker will run.
    source = await store.source_environment(REPOSITORY)
    assert source is not None
    pr = pull_request(1, "a" * 40)
    options = plan_options(settings)
    assert (plan_preview(source.blueprint, pr, source.secrets, options).keys()
            == plan_for(pr, zone_id, options).keys())
    stack = FaultStack(settings=settings, store=store, zone_id=zone_id,
                       postgres=postgres_server, moto=moto_server, kube=kube_cluster,
                       client=temporal_client)
    try:
        yield stack
    finally:
        await store.close()
