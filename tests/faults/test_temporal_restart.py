"""The Temporal server dies (kill -9) in the middle of a create and comes back on the
same port with the same SQLite file: the worker reconnects by itself and the
environment still reaches Ready; then it is destroyed and nothing is left."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from domain.naming import environment_id
from stack.temporal import TemporalDevServer
from starter import lifecycle
from tests.faults.support import (
    CONVERGE_TIMEOUT,
    FIRST_SHA,
    REPOSITORY,
    FaultStack,
    connect_when_healthy,
    converged,
    destroyed,
    kubectl,
    pull_request,
    search_state,
    unique_number,
    until,
)
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.slow, pytest.mark.kube]

TIMEOUTS = ActivityTimeouts(heartbeat_seconds=5, max_interval_seconds=2, max_attempts=20)
# How long the server stays dead: the fault itself, not a wait for anything.
OUTAGE_SECONDS = 3.0


async def test_temporal_server_restart_mid_create(fault_stack: FaultStack) -> None:
    stack = fault_stack
    state = Path(tempfile.mkdtemp(prefix="preview-faults-temporal-"))
    # Not the session's server: this one is killed.
    server = TemporalDevServer(state, headless=True)
    await asyncio.to_thread(server.start)
    settings = stack.settings.model_copy(update={
        "temporal_address": server.address, "task_queue": f"faults-{uuid.uuid4().hex[:8]}"})
    number = unique_number()
    env = environment_id(REPOSITORY, number)
    worker = stack.worker(None, "worker", settings)
    try:
        client = await connect_when_healthy(server.address, settings)
        await worker.start()
        handle = await lifecycle.deploy(client, pull_request(number, FIRST_SHA),
                                        task_queue=settings.task_queue, timeouts=TIMEOUTS)

        async def namespace_exists() -> bool:
            listed = await kubectl(stack.kube, "get", "ns", "-o", "name")
            return f"namespace/{env}" in listed.split()

        await until(namespace_exists, CONVERGE_TIMEOUT, f"namespace {env}")
        preview_state, _, _ = await search_state(handle)
        assert preview_state == "creating", "too late: the create is already over"

        await asyncio.to_thread(server.stop, kill=True)
        killed_at = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(server.start)
        print(f"temporal down for {time.monotonic() - killed_at:.1f}s")

        # The same client and the same worker process, both reconnected by themselves.
        await converged(stack, handle, FIRST_SHA, worker)
        assert worker.running, f"the worker did not survive the outage\n{worker.output}"
        print(f"ready {time.monotonic() - killed_at:.1f}s after the kill")
        assert await lifecycle.destroy(client, REPOSITORY, number, "closed")
        await destroyed(handle, worker)
    finally:
        await worker.stop()
        await asyncio.to_thread(server.stop)
        shutil.rmtree(state, ignore_errors=True)
    left = await stack.leftovers(number)
    assert left == [], f"left behind by {env}: {left}"
