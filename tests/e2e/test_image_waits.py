"""Previews wait for images CI has not pushed yet, against a real registry on loopback
(token authentication), a real worker in files mode and the Kubernetes control plane.

- An image pushed 20 s after the PR opened: the preview becomes Ready, nothing is undone,
  and the PR's commit status said it was waiting for that image.
- An image that never comes (`image_wait_minutes: 1`): the preview fails naming the
  image, and everything it made is removed.
- A `workflow_run completed` webhook wakes a waiting preview at once, long before its
  backed-off timer would have.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle

from domain.naming import environment_id
from domain.pull_request import PullRequest
from engine.settings import Settings
from starter import lifecycle
from starter.app import create_app
from store import Store
from tests.e2e.test_lifecycle import eventually, wait_for
from tests.plugins.registry import LoopbackRegistry
from worker import Resources, Target, build_worker
from workflows.preview import PreviewEnvironmentWorkflow, PreviewStatus
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.kube, pytest.mark.slow]

WAITS = "acme/image-waits"
NEVER = "acme/image-never"
WEBHOOK_SECRET = "image-waits-secret"
TIMEOUTS = ActivityTimeouts(heartbeat_seconds=30, max_attempts=3, max_interval_seconds=2)
PUSH_AFTER_SECONDS = 20


def blueprint(repository: str, registry: LoopbackRegistry, **policy: Any) -> dict[str, Any]:
    name = repository.split("/")[1]
    return {
        "project": {"name": name, "repository": repository},
        "applications": [{"name": "web", "image": f"{registry.host}/{name}/web"}],
        "policy": policy,
    }


@pytest.fixture(scope="module")
async def image_worker(postgres_server: Any, kube_cluster: Any, temporal_client: Client,
                       test_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                       moto_server: Any, git_host_module: Any, registry: LoopbackRegistry,
                       ) -> AsyncIterator[tuple[Settings, Store]]:
    folder = tmp_path_factory.mktemp("blueprints")
    (folder / "image-waits.yaml").write_text(yaml.safe_dump(blueprint(WAITS, registry)))
    (folder / "image-never.yaml").write_text(yaml.safe_dump(
        blueprint(NEVER, registry, image_wait_minutes=1)))
    settings = test_settings.model_copy(update={
        "task_queue": f"image-waits-{uuid.uuid4().hex[:6]}",
        "blueprint_source": "files",
        "blueprint_dir": str(folder),
        "database_url": await postgres_server.new_database("image_waits"),
        "preview_database_url": postgres_server.admin_url,
        "kubeconfig": str(kube_cluster.kubeconfig),
        "aws_endpoint_url": moto_server.endpoint_url,
        "github_api_url": git_host_module.url,
        "github_token": SecretStr(git_host_module.token),
        "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
        **registry.settings_update(),  # check_images on, plain HTTP, pull credentials
    })
    store = await Store.connect(settings.database_url)
    await store.migrate()
    resources = Resources()
    worker = await build_worker(temporal_client, settings, Target(), resources)
    async with worker:
        yield settings, store
    await resources.close()
    await store.close()


def new_pr(repository: str) -> PullRequest:
    number = uuid.uuid4().int % 10**5 + 1
    sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
    return PullRequest(repository=repository, number=number, head_sha=sha, branch="feature")


async def history(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return [event async for event in handle.fetch_history_events()]


def activity_types(events: list[HistoryEvent]) -> list[str]:
    return [e.activity_task_scheduled_event_attributes.activity_type.name for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]


def undo_activities(events: list[HistoryEvent]) -> list[str]:
    return [name for name in activity_types(events)
            if name.startswith(("remove_", "release_"))]


def waiting_statuses(git_host: Any, pr: PullRequest, image: str) -> list[str]:
    wanted = f"waiting for image {image}:{pr.head_sha[:12]}"
    return [s["description"] for s in git_host.statuses(pr.repository, pr.head_sha)
            if wanted in (s.get("description") or "")]


async def wait_for_state(handle: WorkflowHandle[Any, Any], state: str,
                         timeout: float) -> PreviewStatus:
    deadline = time.monotonic() + timeout
    while True:
        status: PreviewStatus = await handle.query(PreviewEnvironmentWorkflow.status)
        if status.state == state:
            return status
        assert time.monotonic() < deadline, f"not {state} in {timeout}s: {status}"
        await asyncio.sleep(0.5)  # polling a condition with a deadline


async def test_an_image_pushed_20s_after_the_pr_opened_gives_a_ready_preview(
    image_worker: tuple[Settings, Store], registry: LoopbackRegistry, git_host_module: Any,
    kube_cluster: Any, temporal_client: Client,
) -> None:
    settings, _ = image_worker
    pr = new_pr(WAITS)
    image = f"{registry.host}/image-waits/web"
    opened = time.monotonic()
    handle = await lifecycle.deploy(temporal_client, pr, task_queue=settings.task_queue,
                                    timeouts=TIMEOUTS)
    waiting = await wait_for(handle, lambda s: s.waiting, timeout=60)
    assert waiting.waiting == [f"waiting for image {image}:{pr.head_sha[:12]}"]
    assert waiting.state == "creating"

    # CI takes 20 s to build: the delay is the scenario, not a synchronisation.
    await asyncio.sleep(max(0.0, PUSH_AFTER_SECONDS - (time.monotonic() - opened)))
    registry.push("image-waits/web", pr.head_sha)

    status = await wait_for(handle, lambda s: s.state == "ready", timeout=120)
    assert status.waiting == [] and status.steps_done == status.steps_total
    env = environment_id(WAITS, pr.number)
    assert kube_cluster.kubectl("get", "deploy", "web", "-n", env, "-o",
                                "jsonpath={.spec.template.spec.containers[0].image}"
                                ) == f"{image}:{pr.head_sha}"
    events = await history(handle)
    assert undo_activities(events) == [], "something was undone on the way to Ready"
    assert activity_types(events).count("ensure_image") >= 2  # asked, waited, asked again
    assert waiting_statuses(git_host_module, pr, image), \
        git_host_module.statuses(pr.repository, pr.head_sha)

    await lifecycle.destroy(temporal_client, WAITS, pr.number, "image waits done")
    assert (await handle.result()).state == "destroyed"


async def test_an_image_that_never_comes_fails_naming_it_and_undoes_everything(
    image_worker: tuple[Settings, Store], registry: LoopbackRegistry, git_host_module: Any,
    kube_cluster: Any, temporal_client: Client,
) -> None:
    settings, _ = image_worker
    pr = new_pr(NEVER)
    image = f"{registry.host}/image-never/web"
    env = environment_id(NEVER, pr.number)
    handle = await lifecycle.deploy(temporal_client, pr, task_queue=settings.task_queue,
                                    timeouts=TIMEOUTS)
    await wait_for(handle, lambda s: s.waiting, timeout=60)
    # The namespace is made while the image is awaited: the undo must remove it.
    await eventually(lambda: kube_cluster.kubectl("get", "ns", "-o", "name"),
                     lambda names: f"namespace/{env}" in names)

    status = await wait_for_state(handle, "failed", timeout=150)  # image_wait_minutes: 1

    assert status.last_error is not None
    assert f"{image}:{pr.head_sha[:12]}" in status.last_error, status.last_error
    assert status.resources == [] and status.waiting == []
    assert "remove_namespace" in undo_activities(await history(handle))
    await eventually(lambda: kube_cluster.kubectl("get", "ns", "-o", "name"),
                     lambda names: f"namespace/{env}" not in names, timeout=60)
    statuses = await eventually(lambda: git_host_module.statuses(pr.repository, pr.head_sha),
                                lambda s: s and s[-1]["state"] == "failure")
    assert f"{image}:{pr.head_sha[:12]}" in statuses[-1]["description"]
    assert waiting_statuses(git_host_module, pr, image)

    await lifecycle.destroy(temporal_client, NEVER, pr.number, "image never came")
    assert (await handle.result()).state == "destroyed"


def timers(events: list[HistoryEvent]) -> dict[str, tuple[float, str]]:
    """timer id → (its timeout in seconds, how it ended: started | fired | canceled)."""
    found: dict[str, tuple[float, str]] = {}
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            attrs = e.timer_started_event_attributes
            found[attrs.timer_id] = (attrs.start_to_fire_timeout.ToTimedelta().total_seconds(),
                                     "started")
        elif e.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            timer = e.timer_fired_event_attributes.timer_id
            found[timer] = (found[timer][0], "fired")
        elif e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
            timer = e.timer_canceled_event_attributes.timer_id
            found[timer] = (found[timer][0], "canceled")
    return found


async def test_a_ci_webhook_wakes_a_waiting_preview_before_its_timer(
    image_worker: tuple[Settings, Store], registry: LoopbackRegistry, temporal_client: Client,
) -> None:
    settings, store = image_worker
    pr = new_pr(WAITS)
    handle = await lifecycle.deploy(temporal_client, pr, task_queue=settings.task_queue,
                                    timeouts=TIMEOUTS)
    # Wait until the backoff has reached a long timer (2, 4, 8, then 16 s).
    deadline = time.monotonic() + 90
    while True:
        pending = [(tid, secs) for tid, (secs, end) in timers(await history(handle)).items()
                   if end == "started" and secs >= 15]
        if pending:
            timer_id, timer_seconds = pending[0]
            break
        assert time.monotonic() < deadline, "the wait never reached a long timer"
        await asyncio.sleep(0.5)  # polling a condition with a deadline
    registry.push("image-waits/web", pr.head_sha)

    app = create_app(settings, temporal_client, store)
    body = json.dumps({"action": "completed", "repository": {"full_name": WAITS},
                       "workflow_run": {"head_sha": pr.head_sha, "conclusion": "success",
                                        "pull_requests": []}}).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://starter") as http:
        answer = await http.post("/webhooks/github", content=body, headers={
            "X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature, "Content-Type": "application/json"})
    assert answer.status_code == 202 and answer.json()["woken"] == 1, answer.text

    await wait_for(handle, lambda s: s.state == "ready", timeout=timer_seconds)
    # The long timer never fired: the webhook's signal ended the wait, not the clock.
    assert timers(await history(handle))[timer_id][1] == "canceled"

    await lifecycle.destroy(temporal_client, WAITS, pr.number, "woken early")
    assert (await handle.result()).state == "destroyed"
