"""What the pull request sees: waits for images, path filters, and the teardown receipt,
over the recording inventory (the real registry and Git host have their own tests)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from domain.naming import Ownership, environment_id, workflow_id
from domain.resources import ApplicationSpec, NamespaceSpec
from starter import lifecycle
from tests.workflows.harness import BLUEPRINT, Harness, pull_request
from tests.workflows.inventory import spec_key
from workflows.preview import PreviewEnvironmentWorkflow, PreviewState

WEB_IMAGE = "image:registry.local/shop/web:{sha}"


async def test_a_preview_waits_for_its_image_and_says_so(
    temporal_client: Client, blueprint_dir: Path,
) -> None:
    harness = Harness(temporal_client, blueprint_dir)
    pr = pull_request(901, "9" * 40)
    harness.inventory.not_yet[WEB_IMAGE.format(sha=pr.head_sha)] = 2  # CI still building
    async with harness.worker():
        handle = await harness.deploy(pr)
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await lifecycle.destroy(temporal_client, pr.repository, pr.number, "done")
        await handle.result()
    assert status.waiting == [] and status.last_error is None
    waits = [f for f in harness.inventory.feedback if "waiting for" in f.message]
    assert waits and waits[0].state == "creating"
    assert f"waiting for {WEB_IMAGE.format(sha=pr.head_sha)}" in waits[0].message
    # Asked three times (twice "not yet"); nothing was undone on the way.
    checks = [c for c in harness.inventory.calls if c.startswith("ensure_image:image:"
                                                                 "registry.local/shop/web")]
    assert len(checks) == 3
    creates = harness.inventory.calls[:harness.inventory.calls.index(
        "ensure_ingress:ingress:web")]
    assert not [c for c in creates if c.startswith("remove_")]


async def test_recheck_wakes_a_waiting_step_before_its_timer(
    temporal_client: Client, blueprint_dir: Path,
) -> None:
    harness = Harness(temporal_client, blueprint_dir)
    pr = pull_request(902, "8" * 40)
    harness.inventory.not_yet[WEB_IMAGE.format(sha=pr.head_sha)] = 3
    async with harness.worker():
        handle = await harness.deploy(pr)
        await harness.wait_state(handle, lambda s: bool(s.waiting))
        await handle.signal(PreviewEnvironmentWorkflow.recheck)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        events = [e async for e in handle.fetch_history_events()]
        await lifecycle.destroy(temporal_client, pr.repository, pr.number, "done")
        await handle.result()
    signalled = next(i for i, e in enumerate(events)
                     if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                     and e.workflow_execution_signaled_event_attributes.signal_name == "recheck")
    check = next(i for i, e in enumerate(events) if i > signalled
                 and e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                 and e.activity_task_scheduled_event_attributes.activity_type.name
                 == "ensure_image")
    # The next check followed the signal, not a timer: no timer fired in between.
    assert EventType.EVENT_TYPE_TIMER_FIRED not in [e.event_type
                                                    for e in events[signalled:check]]


async def test_an_image_that_never_appears_fails_naming_it_and_undoes_everything(
    time_skipping_env: WorkflowEnvironment, blueprint_dir: Path,
) -> None:
    harness = Harness(time_skipping_env.client, blueprint_dir,
                      {**BLUEPRINT["policy"], "image_wait_minutes": 1})
    pr = pull_request(903, "7" * 40)
    harness.inventory.not_yet[WEB_IMAGE.format(sha=pr.head_sha)] = 10_000
    async with harness.worker():
        handle = await harness.deploy(pr)
        with time_skipping_env.auto_time_skipping_disabled():
            await harness.wait_state(handle, lambda s: bool(s.waiting))
        await time_skipping_env.sleep(timedelta(minutes=2))  # past the 1-minute wait
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.failed)
        undone = dict(harness.inventory.present)
        # Leave nothing running on the shared time-skipping server.
        await lifecycle.destroy(time_skipping_env.client, pr.repository, pr.number, "done")
        await handle.result()
    assert status.last_error is not None
    assert f"waiting for {WEB_IMAGE.format(sha=pr.head_sha)}" in status.last_error
    assert "gave up after 60 s" in status.last_error
    assert undone == {}, "the failed create undid everything before any destroy"
    assert "failed" in [f.state for f in harness.inventory.feedback]


async def test_a_pr_touching_only_ignored_paths_gets_no_preview(
    temporal_client: Client, blueprint_dir: Path,
) -> None:
    harness = Harness(temporal_client, blueprint_dir,
                      {**BLUEPRINT["policy"], "ignore_paths": ["docs/", "*.md"]})
    harness.inventory.changed = ["docs/setup.md", "README.md"]
    pr = pull_request(904)
    async with harness.worker():
        handle = await harness.deploy(pr)
        result = await handle.result()
    assert result.state == PreviewState.skipped and result.steps_total == 0
    assert harness.inventory.present == {}
    assert [c for c in harness.inventory.calls if not c.startswith("list_changed_files")] == []
    last = harness.inventory.feedback[-1]
    assert last.state == "skipped" and "none of the 2 changed files" in last.message


async def test_one_application_from_the_pr_and_the_others_from_the_base_image(
    temporal_client: Client, blueprint_dir: Path,
) -> None:
    apps = [{**app, "paths": [f"services/{app['name']}/"], "base_image_tag": "main-{base_sha}"}
            for app in BLUEPRINT["applications"]]
    harness = Harness(temporal_client, blueprint_dir, applications=apps)
    harness.inventory.changed = ["services/api/handlers.py"]
    pr = pull_request(905, "6" * 40, base_sha="5" * 40)
    async with harness.worker():
        handle = await harness.deploy(pr)
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        images = {spec.name: spec.image for spec in harness.inventory.present.values()
                  if isinstance(spec, ApplicationSpec)}
        await lifecycle.destroy(temporal_client, pr.repository, pr.number, "done")
        await handle.result()
    assert images == {"api": f"registry.local/shop/api:{'6' * 40}",
                      "web": f"registry.local/shop/web:main-{'5' * 40}",
                      "worker": f"registry.local/shop/worker:main-{'5' * 40}"}
    # The PR comment's resource list says which applications run the PR's code.
    lines = [line for line in status.resources if line.startswith("application")]
    assert any(line.startswith("application api at 6666666 (the PR's code)") for line in lines)
    assert any(line.startswith("application web from the base image main-5555555")
               for line in lines)


async def test_the_teardown_receipt_says_nothing_is_left_or_names_what_is(
    temporal_client: Client, blueprint_dir: Path,
) -> None:
    harness = Harness(temporal_client, blueprint_dir)
    clean, planted = pull_request(906), pull_request(907)
    async with harness.worker():
        for pr in (clean, planted):
            handle = await harness.deploy(pr)
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        # Made behind the engine's back, with the second preview's marks.
        env = environment_id(planted.repository, planted.number)
        stray = NamespaceSpec(owner=Ownership(environment=env), name=f"{env}-stray")
        harness.inventory.present[spec_key(stray)] = stray
        receipts = {}
        for pr in (clean, planted):
            await lifecycle.destroy(temporal_client, pr.repository, pr.number, "done")
            result = await harness.client.get_workflow_handle_for(
                PreviewEnvironmentWorkflow.run, workflow_id(pr.repository, pr.number)).result()
            receipts[pr.number] = result.receipt
    first, second = receipts[clean.number], receipts[planted.number]
    assert first is not None and first.clean and first.leftovers == []
    assert {"kubernetes:default", "postgres"} <= set(first.checked)
    assert "namespace " + environment_id(clean.repository, clean.number) in " ".join(
        first.removed)
    assert second is not None and not second.clean
    assert second.leftovers == [f"kubernetes:default: {spec_key(stray)}"]
    last = harness.inventory.feedback[-1]
    assert last.state == "destroyed" and last.receipt == second
