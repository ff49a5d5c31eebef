"""Durable timers on the time-skipping server: nobody waits hours in real time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from starter import lifecycle
from tests.workflows.harness import Harness, pull_request
from workflows.preview import PreviewEnvironmentWorkflow, PreviewState, PreviewStatus


def redeployed(sha: str) -> Callable[[PreviewStatus], bool]:
    return lambda status: status.state == PreviewState.ready and status.head_sha == sha


async def test_time_to_live_destroys_the_environment(
    time_skipping_env: WorkflowEnvironment, blueprint_dir: Path
) -> None:
    # No resource checks: their 10-minute timer would be due within milliseconds of the end
    # of each 50-minute skip, as the deploy signal arrives. The time-skipping server fires it
    # while that signal's workflow task runs, then refuses the task's CancelTimer ("invalid
    # history builder state for action") and never retries the task: the run hangs
    # (temporalio/sdk-java#2606, #3088). Checks have a test of their own below.
    harness = Harness(time_skipping_env.client, blueprint_dir, resource_check_seconds=0)
    async with harness.worker():
        handle = await harness.deploy(pull_request(601))
        with time_skipping_env.auto_time_skipping_disabled():
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        # Activity keeps it alive past the inactivity limit (1 h), until the TTL (2 h).
        for sha in ("2" * 40, "3" * 40):
            await time_skipping_env.sleep(timedelta(minutes=50))
            await harness.deploy(pull_request(601, sha))
            # Each redeploy done before time moves on: its steps take wall time, and a
            # skip while they run would count against its activity (not deterministic).
            with time_skipping_env.auto_time_skipping_disabled():
                await harness.wait_state(handle, redeployed(sha))
        result = await handle.result()  # skips time to the TTL
    assert result.state == PreviewState.destroyed
    assert harness.inventory.present == {}
    assert harness.inventory.feedback[-1].message == "destroyed: time-to-live expired"


async def test_inactivity_destroys_and_extend_ttl_is_honoured(
    time_skipping_env: WorkflowEnvironment, blueprint_dir: Path
) -> None:
    harness = Harness(time_skipping_env.client, blueprint_dir)
    async with harness.worker():
        handle = await harness.deploy(pull_request(602))
        with time_skipping_env.auto_time_skipping_disabled():
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        before = (await handle.query(PreviewEnvironmentWorkflow.status)).expires_at
        after = await handle.execute_update(PreviewEnvironmentWorkflow.extend, 5)
        assert before is not None and after.expires_at == before + timedelta(hours=5)
        result = await handle.result()
    assert result.state == PreviewState.destroyed
    assert harness.inventory.feedback[-1].message == "destroyed: no activity for 1 h"
    assert harness.inventory.present == {}


async def test_idle_preview_sleeps_then_wakes_on_request(
    time_skipping_env: WorkflowEnvironment, blueprint_dir: Path
) -> None:
    harness = Harness(time_skipping_env.client, blueprint_dir, policy={
        "ttl_hours": 48, "inactivity_hours": 24, "sleep_after_idle_hours": 2})
    async with harness.worker():
        handle = await harness.deploy(pull_request(603))
        with time_skipping_env.auto_time_skipping_disabled():
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await time_skipping_env.sleep(timedelta(hours=3))
        status = await handle.query(PreviewEnvironmentWorkflow.status)
        assert status.state == PreviewState.sleeping
        assert set(harness.inventory.scaled.values()) == {0}
        await handle.signal(PreviewEnvironmentWorkflow.wake)
        with time_skipping_env.auto_time_skipping_disabled():
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await lifecycle.destroy(harness.client, "acme/shop", 603, "done")
        await handle.result()
    assert harness.inventory.present == {}


async def test_a_resource_removed_behind_its_back_is_reported_and_put_back(
    time_skipping_env: WorkflowEnvironment, blueprint_dir: Path
) -> None:
    """Its namespace and database removed by someone else: within one check interval the
    preview says so (status, pull request) instead of staying ready; a deploy of the same
    commit makes them again, and what lives in the namespace with them."""
    harness = Harness(time_skipping_env.client, blueprint_dir)
    inventory = harness.inventory
    async with harness.worker():
        handle = await harness.deploy(pull_request(604))
        with time_skipping_env.auto_time_skipping_disabled():
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await time_skipping_env.sleep(timedelta(minutes=11))  # a check: all there
        assert (await handle.query(PreviewEnvironmentWorkflow.status)).state == "ready"
        assert any(call.startswith("check_namespace:") for call in inventory.calls)

        namespace = next(key for key in inventory.present if key.startswith("namespace:"))
        database = next(key for key in inventory.present if key.startswith("postgres_clone:"))
        del inventory.present[namespace], inventory.present[database]  # behind its back
        await time_skipping_env.sleep(timedelta(minutes=11))
        status = await handle.query(PreviewEnvironmentWorkflow.status)
        assert status.state == PreviewState.degraded
        assert status.last_error is not None
        assert f"{namespace} is gone" in status.last_error
        assert f"{database} is gone" in status.last_error
        assert "preview deploy acme/shop 604 " + "a" * 40 in status.last_error
        assert not any(line.startswith("namespace ") for line in status.resources)
        assert inventory.feedback[-1].state == "degraded"
        assert f"{namespace} is gone" in inventory.feedback[-1].message

        made_before = len([c for c in inventory.calls if c.startswith("ensure_config_map:")])
        await harness.deploy(pull_request(604))  # the same commit
        with time_skipping_env.auto_time_skipping_disabled():
            status = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert namespace in inventory.present and database in inventory.present
        # What lives in the namespace was applied again, not skipped as unchanged.
        made_after = len([c for c in inventory.calls if c.startswith("ensure_config_map:")])
        assert made_after == made_before + 6  # web, api, worker and the three jobs
        assert status.last_error is None and inventory.feedback[-1].state == "ready"
        await lifecycle.destroy(harness.client, "acme/shop", 604, "done")
        await handle.result()
    assert inventory.present == {}
