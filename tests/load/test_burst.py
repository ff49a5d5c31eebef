"""A burst of pull requests opened at once, on the real stack: every preview reaches
Ready (or, past the policy's max_live_previews, fails with the quota's message), and
closing them all leaves no namespace, database or preview slot behind.

Temporal dev server, the Kubernetes control plane and PostgreSQL (store and preview
databases); the worker runs in this process, webhooks go through the starter's app.
The blueprint is small (1 application, 1 empty database) to keep the burst quick;
bench/burst.py runs the same code with 100 previews of a bigger blueprint.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client

from bench.burst import blueprint, close_all, run_burst
from bench.common import leftovers, post_webhook
from domain.naming import environment_id
from engine.sealing import Sealer
from engine.settings import Settings
from starter.app import create_app
from store import Store
from worker import Resources, Target, build_worker
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.kube, pytest.mark.slow]

SECRET = "load-webhook-secret"
BURST = 10  # previews opened at once, with max_live_previews = BURST
LIMIT, OVER_LIMIT = 3, 6  # a burst of OVER_LIMIT against max_live_previews = LIMIT
TIMEOUT = 240


@pytest.fixture(scope="module")
async def stack(
    postgres_server: Any, kube_cluster: Any, temporal_client: Client, test_settings: Settings
) -> AsyncIterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    store_url = await postgres_server.new_database(f"load_{tag}")
    settings = test_settings.model_copy(update={
        "task_queue": f"load-{tag}",
        "database_url": store_url,
        "preview_database_url": postgres_server.admin_url,
        "kubeconfig": str(kube_cluster.kubeconfig),
        "github_webhook_secret": SecretStr(SECRET),
        "blueprint_source": "store",
    })
    repos = {"burst": f"load-{tag}/burst", "quota": f"load-{tag}/quota"}
    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    await store.migrate()
    await store.import_blueprint(blueprint("small", repos["burst"], BURST), actor="load")
    await store.import_blueprint(blueprint("small", repos["quota"], LIMIT), actor="load")

    resources = Resources()
    timeouts = ActivityTimeouts(heartbeat_seconds=30, max_attempts=5, max_interval_seconds=2)
    worker = await build_worker(temporal_client, settings, Target(), resources)
    app = create_app(settings, temporal_client, store, timeouts=timeouts)
    async with worker, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://starter") as http:

        async def send(payload: dict[str, Any]) -> dict[str, Any]:
            return await post_webhook(http, payload, SECRET)

        yield {"settings": settings, "send": send, "repos": repos}
    await resources.close()
    await store.close()


def numbers(count: int) -> list[int]:
    base = uuid.uuid4().int % 10**5 + 1
    return list(range(base, base + count))


async def test_burst_within_the_limit_all_ready_then_nothing_left(
    stack: dict[str, Any], temporal_client: Client
) -> None:
    repo, settings = stack["repos"]["burst"], stack["settings"]
    prs = numbers(BURST)
    envs = [environment_id(repo, n) for n in prs]
    burst = await run_burst(stack["send"], temporal_client, repo, prs, TIMEOUT)
    assert burst.numbers("ready") == prs, {n: o.error for n, o in burst.outcomes.items()}
    # Everything exists, seen from outside: namespaces, databases, one slot each.
    live = await leftovers(settings, envs)
    assert live["namespaces"] == sorted(envs)
    assert len(live["databases"]) == BURST
    assert live["slots"] == sorted(envs)

    await close_all(stack["send"], temporal_client, repo, prs, TIMEOUT)
    assert await leftovers(settings, envs) == {"namespaces": [], "databases": [], "slots": []}


async def test_burst_over_the_limit_refuses_the_rest_with_the_quota_message(
    stack: dict[str, Any], temporal_client: Client
) -> None:
    repo, settings = stack["repos"]["quota"], stack["settings"]
    prs = numbers(OVER_LIMIT)
    burst = await run_burst(stack["send"], temporal_client, repo, prs, TIMEOUT)
    ready, failed = burst.numbers("ready"), burst.numbers("failed")
    assert len(ready) == LIMIT and len(failed) == OVER_LIMIT - LIMIT, burst.outcomes
    for n in failed:
        error = burst.outcomes[n].error or ""
        assert f"already has {LIMIT} live previews" in error, error
        assert "max_live_previews" in error, error
    # A refused preview built nothing: the slot step gates every other step.
    live = await leftovers(settings, [environment_id(repo, n) for n in prs])
    assert live["namespaces"] == sorted(environment_id(repo, n) for n in ready)
    assert live["slots"] == sorted(environment_id(repo, n) for n in ready)
    assert len(live["databases"]) == LIMIT

    await close_all(stack["send"], temporal_client, repo, prs, TIMEOUT)
    assert await leftovers(settings, [environment_id(repo, n) for n in prs]) == {
        "namespaces": [], "databases": [], "slots": []}
