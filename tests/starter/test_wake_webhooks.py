"""CI and registry webhooks wake previews waiting for an image: `workflow_run` and
`check_suite` completed, `registry_package` / `package` published signal `recheck` to the
running previews they concern, on a real Temporal server (no worker: the signal is seen
in each workflow's history)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from domain.naming import workflow_id
from domain.pull_request import PullRequest
from engine.settings import Settings
from starter.app import wake_query
from starter.events import Ignore, PayloadError, WakeWaiting, github_wake
from tests.starter.test_webhooks import headers, http, settings, store
from workflows.preview import (
    HEAD_SHA,
    PR_NUMBER,
    REPOSITORY,
    PreviewEnvironmentWorkflow,
    PreviewInput,
)

__all__ = ["http", "settings", "store"]  # fixtures shared with test_webhooks

SHA_A = "a" * 40
SHA_B = "b" * 40


async def start_preview(client: Client, settings: Settings, repository: str, number: int,
                        sha: str) -> WorkflowHandle[Any, Any]:
    """A preview's workflow with the search attributes a running one has published
    (no worker runs it here: its first task would upsert the same ones)."""
    pr = PullRequest(repository=repository, number=number, head_sha=sha, branch="feature")
    return await client.start_workflow(
        PreviewEnvironmentWorkflow.run, PreviewInput(pull_request=pr),
        id=workflow_id(repository, number), task_queue=settings.task_queue,
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(REPOSITORY, repository.lower()),
            SearchAttributePair(PR_NUMBER, number),
            SearchAttributePair(HEAD_SHA, sha),
        ]),
    )


async def visible(client: Client, repository: str, count: int) -> None:
    """Visibility is eventually consistent: wait (bounded) until the started previews
    are listed, so the webhook's query can find them."""
    query = wake_query(WakeWaiting(repository, "test"))
    deadline = time.monotonic() + 30
    while True:
        found = [wf async for wf in client.list_workflows(query)]
        if len(found) >= count:
            return
        assert time.monotonic() < deadline, f"only {len(found)} of {count} previews listed"
        await asyncio.sleep(0.1)  # polling a condition with a deadline


async def rechecks(handle: WorkflowHandle[Any, Any]) -> int:
    count = 0
    async for event in handle.fetch_history_events():
        if (event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                and event.workflow_execution_signaled_event_attributes.signal_name
                == "recheck"):
            count += 1
    return count


def ci_event(event: str, repository: str, sha: str, *, action: str = "completed",
             pull_requests: tuple[tuple[str, int], ...] = ()) -> bytes:
    """The fields GitHub sends in a workflow_run / check_suite event that we read."""
    prs = [{"number": number, "head": {"sha": sha},
            "base": {"ref": "main", "repo": {"url": f"https://api.github.com/repos/{repo}"}}}
           for repo, number in pull_requests]
    return json.dumps({
        "action": action,
        "repository": {"full_name": repository},
        event: {"head_sha": sha, "status": "completed", "conclusion": "success",
                "pull_requests": prs},
    }).encode()


def package_event(repository: str, event: str = "registry_package",
                  action: str = "published") -> bytes:
    return json.dumps({
        "action": action,
        "repository": {"full_name": repository},
        event: {"name": "web", "ecosystem": "CONTAINER",
                "package_version": {"container_metadata": {"tag": {"name": SHA_A}}}},
    }).encode()


async def send(http: httpx.AsyncClient, event: str, body: bytes) -> httpx.Response:
    return await http.post("/webhooks/github", content=body, headers=headers(body, event))


@dataclass(frozen=True)
class Previews:
    """Two previews of one repository at different commits, and one of another
    repository at the first preview's commit."""

    repository: str
    handles: dict[str, WorkflowHandle[Any, Any]]

    async def woken(self) -> dict[str, int]:
        return {name: await rechecks(handle) for name, handle in self.handles.items()}


@pytest.fixture
async def previews(temporal_client: Client, settings: Settings) -> Previews:
    repo = f"Acme/Shop-{uuid.uuid4().hex[:8]}"  # the attribute is lowercased, events not
    other = f"acme/other-{uuid.uuid4().hex[:8]}"
    handles = {
        "a": await start_preview(temporal_client, settings, repo, 1, SHA_A),
        "b": await start_preview(temporal_client, settings, repo, 2, SHA_B),
        "other": await start_preview(temporal_client, settings, other, 1, SHA_A),
    }
    await visible(temporal_client, repo, 2)
    await visible(temporal_client, other, 1)
    return Previews(repo, handles)


@pytest.mark.parametrize("event", ["workflow_run", "check_suite"])
async def test_ci_completed_wakes_the_previews_of_that_commit(
    http: httpx.AsyncClient, previews: Previews, event: str
) -> None:
    answer = await send(http, event, ci_event(event, previews.repository, SHA_A))

    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "woken" and answer.json()["woken"] == 1
    assert await previews.woken() == {"a": 1, "b": 0, "other": 0}


async def test_ci_completed_wakes_the_pull_requests_it_names(
    http: httpx.AsyncClient, previews: Previews
) -> None:
    """A redeploy waits for a new commit while its HEAD_SHA is still the deployed one:
    the run's pull request list finds it. PRs of other repositories are not ours."""
    repo = previews.repository
    new_sha = "c" * 40
    body = ci_event("workflow_run", repo, new_sha,
                    pull_requests=((repo, 2), ("someone/else", 1)))

    answer = await send(http, "workflow_run", body)

    assert answer.json()["woken"] == 1
    assert await previews.woken() == {"a": 0, "b": 1, "other": 0}


@pytest.mark.parametrize("event", ["registry_package", "package"])
async def test_package_published_wakes_every_preview_of_the_repository(
    http: httpx.AsyncClient, previews: Previews, event: str
) -> None:
    answer = await send(http, event, package_event(previews.repository, event))

    assert answer.status_code == 202
    assert answer.json()["woken"] == 2
    assert await previews.woken() == {"a": 1, "b": 1, "other": 0}


async def test_ended_previews_are_not_woken(
    http: httpx.AsyncClient, previews: Previews,
    temporal_client: Client,
) -> None:
    await previews.handles["b"].terminate("closed for the test")
    query = wake_query(WakeWaiting(previews.repository, "test"))
    deadline = time.monotonic() + 30
    while len([wf async for wf in temporal_client.list_workflows(query)]) != 1:
        assert time.monotonic() < deadline, "terminated preview still listed as running"
        await asyncio.sleep(0.1)  # polling a condition with a deadline

    answer = await send(http, "registry_package", package_event(previews.repository))

    assert answer.json()["woken"] == 1
    assert await previews.woken() == {"a": 1, "b": 0, "other": 0}


@pytest.mark.parametrize(("event", "body"), [
    ("workflow_run", lambda repo: ci_event("workflow_run", repo, SHA_A, action="requested")),
    ("check_suite", lambda repo: ci_event("check_suite", repo, SHA_A, action="rerequested")),
    ("registry_package", lambda repo: package_event(repo, action="deleted")),
])
async def test_other_actions_wake_nothing(
    http: httpx.AsyncClient, previews: Previews, event: str,
    body: Any,
) -> None:
    answer = await send(http, event, body(previews.repository))

    assert answer.status_code == 202
    assert answer.json()["outcome"] == "ignored" and answer.json()["woken"] is None
    assert await previews.woken() == {"a": 0, "b": 0, "other": 0}


@pytest.mark.parametrize(("payload", "says"), [
    ({"action": "completed", "repository": {"full_name": "acme/shop"}, "workflow_run": {}},
     "workflow_run.head_sha"),
    ({"action": "completed", "repository": {"full_name": "acme/shop"},
      "workflow_run": {"head_sha": "abc' OR 1=1"}}, "workflow_run.head_sha"),
    ({"action": "completed", "repository": {"full_name": "acme/shop' OR 'x'='x"},
      "workflow_run": {"head_sha": SHA_A}}, "repository.full_name"),
    ({"action": "completed", "workflow_run": {"head_sha": SHA_A}}, "repository"),
])
async def test_bad_payloads_are_400_naming_the_field(
    http: httpx.AsyncClient, payload: dict[str, Any], says: str
) -> None:
    body = json.dumps(payload).encode()
    answer = await send(http, "workflow_run", body)
    assert answer.status_code == 400
    assert says in answer.json()["detail"]


async def test_forged_wake_is_refused(http: httpx.AsyncClient) -> None:
    body = package_event("acme/shop")
    hdrs = headers(body, "registry_package", secret="not-the-secret")
    answer = await http.post("/webhooks/github", content=body, headers=hdrs)
    assert answer.status_code == 401


# -- the mapping alone ---------------------------------------------------------------------


def test_wake_mapping() -> None:
    run = json.loads(ci_event("workflow_run", "Acme/Shop", SHA_A,
                              pull_requests=(("acme/shop", 7), ("Acme/Shop", 7),
                                             ("fork/shop", 3))))
    assert github_wake("workflow_run", run) == WakeWaiting(
        "Acme/Shop", f"workflow_run completed for {SHA_A[:7]}", head_sha=SHA_A,
        pull_requests=(7,))
    assert isinstance(github_wake("workflow_run", {**run, "action": "requested"}), Ignore)
    assert github_wake("package", json.loads(package_event("acme/shop", "package"))) == \
        WakeWaiting("acme/shop", "package published")
    with pytest.raises(PayloadError, match="workflow_run must be an object"):
        github_wake("workflow_run", {**run, "workflow_run": []})


def test_wake_query_narrows_to_commit_or_pull_requests() -> None:
    base = ("WorkflowType = 'PreviewEnvironmentWorkflow' AND ExecutionStatus = 'Running' "
            "AND PreviewRepository = 'acme/shop'")
    assert wake_query(WakeWaiting("Acme/Shop", "x")) == base
    assert wake_query(WakeWaiting("acme/shop", "x", head_sha=SHA_A, pull_requests=(2, 5))) == (
        f"{base} AND (PreviewHeadSha = '{SHA_A}' OR PreviewPullRequest = 2 "
        "OR PreviewPullRequest = 5)")
