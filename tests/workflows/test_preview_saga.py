"""The lifecycle workflow's saga logic on a real Temporal dev server.

Resource activities are the recording Inventory; the source environment comes from a
real blueprint file through the real BlueprintFileActivities.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError

from domain.blueprint import Blueprint
from domain.naming import workflow_id
from domain.plan import plan_preview
from domain.pull_request import PullRequest
from stack.temporal import TemporalDevServer, temporal_cli
from starter import lifecycle
from tests.workflows.harness import BLUEPRINT, FAST, Harness, pull_request
from tests.workflows.inventory import spec_key
from workflows.preview import PreviewEnvironmentWorkflow, PreviewState, PreviewStatus


@pytest.fixture
async def harness(temporal_client: Client, blueprint_dir: Path) -> AsyncIterator[Harness]:
    yield Harness(temporal_client, blueprint_dir)


def expected_resources(pr: PullRequest) -> set[str]:
    """What a preview leaves in the world: steps with something to remove (an image check
    makes nothing)."""
    bp = Blueprint.model_validate(BLUEPRINT)
    return {spec_key(step.spec) for step in plan_preview(bp, pr).steps if step.absent}


async def test_create_then_destroy_leaves_nothing(harness: Harness) -> None:
    pr = pull_request(101)
    async with harness.worker():
        handle = await harness.deploy(pr)
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert set(harness.inventory.present) == expected_resources(pr)
        planned = plan_preview(Blueprint.model_validate(BLUEPRINT), pr).steps
        assert status.steps_done == status.steps_total == len(planned)
        assert set(status.urls) == {"web", "api"}
        assert status.urls["web"] == "http://web-pr-101.preview.localhost"

        await lifecycle.destroy(harness.client, pr.repository, pr.number, "test")
        result = await handle.result()
    assert result.state == PreviewState.destroyed
    assert harness.inventory.present == {}
    assert [f.state for f in harness.inventory.feedback][-1] == "destroyed"
    # The destroy job ran (it is run by its removal) before anything else was removed,
    # and the deploy and first-deploy jobs before any application rolled out.
    calls = harness.inventory.calls
    removals = [c for c in calls if c.startswith("remove_")]
    assert removals[0] == "remove_job:job:farewell", removals
    first_app = next(i for i, c in enumerate(calls) if c.startswith("ensure_application"))
    assert calls.index("run_job:job:migrate") < first_app
    assert calls.index("run_job:job:seed") < first_app


STEP_KEYS = [
    s.key for s in plan_preview(Blueprint.model_validate(BLUEPRINT), pull_request(1)).steps
]


@pytest.mark.parametrize("failing_key", STEP_KEYS)
async def test_failure_at_any_create_step_undoes_everything(
    harness: Harness, failing_key: str
) -> None:
    pr = pull_request(200 + STEP_KEYS.index(failing_key))
    step = plan_preview(Blueprint.model_validate(BLUEPRINT), pr).step(failing_key)
    harness.inventory.fail_if.append(lambda name, spec: name == step.present
                                     and spec_key(spec) == spec_key(step.spec))
    async with harness.worker():
        handle = await harness.deploy(pr)
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.failed)
    assert harness.inventory.present == {}, "a failed create must leave nothing behind"
    assert status.last_error is not None
    assert failing_key in status.last_error and "injected failure" in status.last_error
    assert harness.inventory.feedback[-1].state == "failed"
    # The failing step itself was undone too (undo registered before do).
    if step.absent:
        assert f"{step.absent}:{spec_key(step.spec)}" in harness.inventory.calls


async def test_redeploy_rolls_new_commit_and_failed_redeploy_restores(harness: Harness) -> None:
    first, second, third = (
        pull_request(300, "1" * 40),
        pull_request(300, "2" * 40),
        pull_request(300, "3" * 40),
    )
    async with harness.worker():
        handle = await harness.deploy(first)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await harness.deploy(second)
        await harness.wait_state(handle, lambda s: s.head_sha == second.head_sha)
        images = {k: getattr(v, "image", None) for k, v in harness.inventory.present.items()}
        assert images["application:web"] == f"registry.local/shop/web:{'2' * 40}"

        harness.inventory.fail_if.append(
            lambda name, spec: (
                name == "ensure_application"
                and getattr(spec, "image", "").endswith("3" * 40)
                and getattr(spec, "name", "") == "web"
            )
        )
        await harness.deploy(third)
        status = await harness.wait_state(handle, lambda s: s.last_error is not None)
        assert status.state == PreviewState.ready and status.head_sha == second.head_sha
        images = {k: getattr(v, "image", None) for k, v in harness.inventory.present.items()}
        # The failed step and every step changed with it are back at the old commit.
        assert images["application:web"] == f"registry.local/shop/web:{'2' * 40}"
        assert images["application:api"] == f"registry.local/shop/api:{'2' * 40}"
        assert set(harness.inventory.present) == expected_resources(first)
        await lifecycle.destroy(harness.client, first.repository, first.number, "done")
        await handle.result()
    assert harness.inventory.present == {}


async def test_burst_of_commits_deploys_only_the_newest(harness: Harness) -> None:
    shas = [str(i) * 40 for i in range(1, 6)]
    # Signals arrive while no worker runs, as in a burst: one workflow task sees them all.
    handle = await harness.deploy(pull_request(400, shas[0]))
    for sha in shas[1:]:
        await harness.deploy(pull_request(400, sha))
    async with harness.worker():
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        app_images = [
            getattr(s, "image", "")
            for s in harness.inventory.present.values()
            if getattr(s, "kind", "") == "application"
        ]
        assert app_images and all(img.endswith(shas[-1]) for img in app_images)
        web_deploys = [
            c for c in harness.inventory.calls if c == "ensure_application:application:web"
        ]
        assert len(web_deploys) == 1, "intermediate commits must not deploy"
        await lifecycle.destroy(harness.client, "acme/shop", 400, "done")
        await handle.result()


async def test_duplicate_and_reordered_deliveries(
    harness: Harness, temporal_client: Client
) -> None:
    from datetime import UTC, datetime

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    opened = pull_request(500, "1" * 40, updated_at=t0)
    newer = pull_request(500, "2" * 40, updated_at=t0 + timedelta(minutes=5))
    async with harness.worker():
        handle = await harness.deploy(newer)  # synchronize delivered before opened
        await harness.deploy(opened)  # the older, reordered delivery
        await harness.deploy(newer)  # and a duplicate
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert status.head_sha == newer.head_sha
        assert (
            len([c for c in harness.inventory.calls if c == "ensure_application:application:web"])
            == 1
        )

        # closed, then reopened: one live run at a time, and the reopened one is ready.
        await lifecycle.destroy(temporal_client, "acme/shop", 500, "closed")
        await handle.result()
        reopened = await harness.deploy(pull_request(500, "3" * 40))
        assert reopened.result_run_id != handle.result_run_id
        await harness.wait_state(reopened, lambda s: s.state == PreviewState.ready)
        running = [
            w
            async for w in temporal_client.list_workflows(
                f"WorkflowId = '{workflow_id('acme/shop', 500)}' AND ExecutionStatus = 'Running'"
            )
        ]
        assert len(running) <= 1
        await lifecycle.destroy(temporal_client, "acme/shop", 500, "done")
        await reopened.result()
        desc = await reopened.describe()
        assert desc.status == WorkflowExecutionStatus.COMPLETED


async def test_temporal_cli_destroy_signal_tears_down(
    harness: Harness, temporal_server: TemporalDevServer
) -> None:
    pr = pull_request(700)
    async with harness.worker():
        handle = await harness.deploy(pr)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        # An operator's command, exactly as the README gives it.
        subprocess.run(
            [temporal_cli(), "workflow", "signal", "--address", temporal_server.address,
             "--workflow-id", workflow_id(pr.repository, pr.number), "--name", "destroy",
             "--input", '{"reason": "operator"}'],
            check=True, capture_output=True, timeout=60,
        )
        result = await handle.result()
    assert result.state == PreviewState.destroyed
    assert harness.inventory.present == {}
    assert harness.inventory.feedback[-1].message == "destroyed: operator"


def has_sha(sha: str) -> Callable[[PreviewStatus], bool]:
    return lambda status: status.head_sha == sha


async def test_continue_as_new_keeps_history_bounded_and_state_intact(harness: Harness) -> None:
    pr = pull_request(800, "0" * 40)
    async with harness.worker():
        handle = await lifecycle.deploy(harness.client, pr, task_queue=harness.task_queue,
                                        timeouts=FAST, history_limit=150)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        first_run = (await handle.describe()).run_id
        for i in range(1, 8):
            sha = f"{i}" * 40
            await harness.deploy(pull_request(800, sha))
            await harness.wait_state(handle, has_sha(sha))
        latest = harness.client.get_workflow_handle(handle.id)
        description = await latest.describe()
        assert description.run_id != first_run, "history past the limit must continue as new"
        assert description.history_length < 300
        status = await latest.query("status")
        assert status["steps_done"] == len(plan_preview(Blueprint.model_validate(BLUEPRINT),
                                                        pr).steps)
        await lifecycle.destroy(harness.client, "acme/shop", 800, "done")
        result = await latest.result()
    assert result["state"] == "destroyed"
    assert harness.inventory.present == {}, "the carried ledger must tear everything down"


async def test_sleep_wake_and_a_commit_wakes_a_sleeping_preview(harness: Harness) -> None:
    pr = pull_request(900)
    async with harness.worker():
        handle = await harness.deploy(pr)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await handle.signal("sleep")
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.sleeping)
        assert status.asleep and harness.inventory.scaled == {"web": 0, "api": 0, "worker": 0}
        await handle.signal("wake")
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert harness.inventory.scaled == {"web": 1, "api": 1, "worker": 1}

        await handle.signal("sleep")
        await harness.wait_state(handle, lambda s: s.state == PreviewState.sleeping)
        await harness.deploy(pull_request(900))  # same commit, pushed again
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert harness.inventory.scaled == {"web": 1, "api": 1, "worker": 1}
        await lifecycle.destroy(harness.client, "acme/shop", 900, "done")
        await handle.result()
    assert harness.inventory.present == {}


async def test_a_sleeping_preview_runs_no_cache_either(temporal_client: Client,
                                                       blueprint_dir: Path) -> None:
    harness = Harness(temporal_client, blueprint_dir, None, caches=[{"name": "sessions"}])
    async with harness.worker():
        handle = await harness.deploy(pull_request(901))
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await handle.signal("sleep")
        await harness.wait_state(handle, lambda s: s.state == PreviewState.sleeping)
        cache = next(name for name in harness.inventory.scaled if "sessions" in name)
        assert harness.inventory.scaled[cache] == 0
        await handle.signal("wake")
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert harness.inventory.scaled[cache] == 1
        # The cache wakes before the applications that use it (the ledger's order).
        wakes = [c for c in harness.inventory.calls if c.startswith(("wake_cache", "wake_app"))]
        assert wakes[0].startswith("wake_cache")
        await lifecycle.destroy(harness.client, "acme/shop", 901, "done")
        await handle.result()


async def test_deploy_updates_keep_working_across_continue_as_new(harness: Harness) -> None:
    """An update arriving while the run waits to continue as new must not deadlock it."""
    async with harness.worker():
        handle = await lifecycle.deploy(harness.client, pull_request(810, "0" * 40),
                                        task_queue=harness.task_queue, timeouts=FAST,
                                        history_limit=120)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        first_run = (await handle.describe()).run_id
        latest = harness.client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                                        handle.id)
        refused = 0
        for i in range(1, 9):
            sha = f"{i}" * 40
            while True:  # a caller retries an update refused while the run winds down
                try:
                    status = await asyncio.wait_for(
                        latest.execute_update(PreviewEnvironmentWorkflow.deploy_and_wait,
                                              pull_request(810, sha)), timeout=60)
                    break
                except WorkflowUpdateFailedError as error:
                    assert "continuing as new" in str(error.cause)
                    refused += 1
            assert status.head_sha == sha
        last_run = (await latest.describe()).run_id
        await lifecycle.destroy(harness.client, "acme/shop", 810, "done")
        await latest.result()
    assert last_run != first_run, "the run should have continued as new at least once"
    assert harness.inventory.present == {}


async def test_reopened_while_tearing_down_builds_again_in_the_same_run(
    harness: Harness, temporal_client: Client
) -> None:
    async with harness.worker():
        handle = await harness.deploy(pull_request(510, "1" * 40))
        first = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        run_id = (await handle.describe()).run_id
        reached, release = harness.inventory.hold("remove_namespace")
        await lifecycle.destroy(temporal_client, "acme/shop", 510, "closed")
        await asyncio.wait_for(reached.wait(), 30)  # the last undo is in flight
        # Reopened now: the starter's signal-with-start lands on this run.
        await harness.deploy(pull_request(510, "2" * 40))
        release.set()

        again = await harness.wait_state(
            handle, lambda s: s.state == PreviewState.ready and s.head_sha == "2" * 40)
        assert (await handle.describe()).run_id == run_id
        assert again.steps_done == again.steps_total == first.steps_total
        assert again.last_error is None and again.urls == first.urls
        # Torn down completely, then built again from nothing: everything is back once.
        calls = harness.inventory.calls
        removed = [i for i, c in enumerate(calls) if c.startswith("remove_namespace:")]
        assert len(removed) == 1
        assert len([c for c in calls if c.startswith("ensure_namespace:")]) == 2
        rebuilt = calls[removed[0]:]
        assert {"ensure_namespace", "ensure_application", "ensure_database_clone"} <= {
            c.split(":")[0] for c in rebuilt}
        assert {key.split(":")[0] for key in harness.inventory.present} >= {
            "namespace", "application", "postgres_clone"}

        await lifecycle.destroy(temporal_client, "acme/shop", 510, "closed for good")
        result = await handle.result()
    assert result.state == PreviewState.destroyed
    assert harness.inventory.present == {}
