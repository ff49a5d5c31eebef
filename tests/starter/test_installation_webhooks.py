"""GitHub App `installation` / `installation_repositories` webhooks: signed ones drop what
the app caches for the installation and repositories they name; forged ones do nothing.

The app is real (activities/github_app.py) and fills its caches against the local GitHub
stand-in, so "dropped" is seen as a new lookup and a new token on the next feedback."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.git_host import FeedbackActivities
from activities.github_app import GitHubApp
from domain.feedback import Feedback
from engine.settings import Settings
from starter.app import create_app
from starter.events import InstallationChanged, PayloadError, github_installation_change
from store import Store
from tests.plugins.git_host import GitHost, app_key_pair
from tests.starter.test_webhooks import SECRET, headers, settings, store

__all__ = ["settings", "store"]  # fixtures shared with test_webhooks

KEY_PEM, PUBLIC_KEY = app_key_pair()
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def app(git_host: GitHost) -> GitHubApp:
    git_host.install_app("4242", PUBLIC_KEY, {77: ["acme/shop", "acme/web"], 90: ["other/x"]})
    return GitHubApp("4242", KEY_PEM, clock=time.time)


@pytest.fixture
async def http(
    settings: Settings, temporal_client: Client, store: Store, app: GitHubApp
) -> AsyncIterator[httpx.AsyncClient]:
    starter = create_app(settings, temporal_client, store, installations=app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=starter), base_url="http://starter"
    ) as client:
        yield client


async def publish(git_host: GitHost, app: GitHubApp, repository: str) -> None:
    acts = FeedbackActivities(Settings(github_api_url=git_host.url), app=app)
    feedback = Feedback(repository=repository, pr_number=1, head_sha=SHA, state="creating",
                        environment_id="shop-pr-1-abc123")
    await ActivityEnvironment().run(acts.publish_feedback, feedback)


def app_calls(git_host: GitHost) -> list[str]:
    return [c.path for c in git_host.calls
            if c.path.endswith("/installation") or c.path.startswith("/app/")]


def installation_event(action: str, **fields: Any) -> bytes:
    return json.dumps({"action": action, "sender": {"login": "octocat"},
                       "installation": {"id": 77, "app_id": 4242, "account": {"login": "acme"}},
                       **fields}).encode()


async def test_repositories_removed_drops_their_installation_and_token(
    http: httpx.AsyncClient, git_host: GitHost, app: GitHubApp
) -> None:
    await publish(git_host, app, "acme/shop")
    await publish(git_host, app, "other/x")
    assert len(app_calls(git_host)) == 4  # a lookup and a token each

    body = installation_event("removed", repository_selection="selected",
                              repositories_added=[],
                              repositories_removed=[{"id": 1, "full_name": "acme/shop"}])
    answer = await http.post("/webhooks/github", content=body,
                             headers=headers(body, "installation_repositories"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "installation"
    assert "installation 77 removed" in answer.json()["detail"]

    git_host.reset()
    await publish(git_host, app, "acme/shop")
    await publish(git_host, app, "other/x")  # another installation: still cached
    assert app_calls(git_host) == ["/repos/acme/shop/installation",
                                   "/app/installations/77/access_tokens"]


async def test_installation_deleted_drops_every_repository_of_it(
    http: httpx.AsyncClient, git_host: GitHost, app: GitHubApp
) -> None:
    await publish(git_host, app, "acme/shop")
    await publish(git_host, app, "acme/web")
    body = installation_event("deleted", repositories=[{"full_name": "acme/shop"}])
    answer = await http.post("/webhooks/github", content=body,
                             headers=headers(body, "installation"))
    assert answer.status_code == 202 and answer.json()["outcome"] == "installation"
    git_host.reset()
    await publish(git_host, app, "acme/web")  # not named by the event, but of installation 77
    assert app_calls(git_host) == ["/repos/acme/web/installation",
                                   "/app/installations/77/access_tokens"]


@pytest.mark.parametrize("forge", ["wrong-secret", "missing", "tampered"])
async def test_a_forged_installation_event_is_refused_and_changes_nothing(
    http: httpx.AsyncClient, git_host: GitHost, app: GitHubApp, forge: str
) -> None:
    await publish(git_host, app, "acme/shop")
    body = installation_event("deleted", repositories=[{"full_name": "acme/shop"}])
    sent, hdrs = body, headers(body, "installation",
                               secret="not-the-secret" if forge == "wrong-secret" else SECRET)
    if forge == "missing":
        del hdrs["X-Hub-Signature-256"]
    if forge == "tampered":
        sent = body.replace(b'"deleted"', b'"suspend"')
    answer = await http.post("/webhooks/github", content=sent, headers=hdrs)
    assert answer.status_code == 401
    git_host.reset()
    await publish(git_host, app, "acme/shop")
    assert app_calls(git_host) == []  # still cached


async def test_a_malformed_installation_event_says_which_field(
    http: httpx.AsyncClient,
) -> None:
    body = json.dumps({"action": "created", "installation": {"id": "77"}}).encode()
    answer = await http.post("/webhooks/github", content=body,
                             headers=headers(body, "installation"))
    assert answer.status_code == 400
    assert "installation.id" in answer.json()["detail"]


async def test_without_an_app_the_event_is_accepted_and_says_so(
    settings: Settings, temporal_client: Client, store: Store
) -> None:
    starter = create_app(settings, temporal_client, store)
    body = installation_event("created", repositories=[{"full_name": "acme/shop"}])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=starter),
                                 base_url="http://starter") as client:
        answer = await client.post("/webhooks/github", content=body,
                                   headers=headers(body, "installation"))
    assert answer.status_code == 202
    assert "no GitHub App cache" in answer.json()["detail"]


def test_installation_payloads_map_to_the_repositories_they_name() -> None:
    created = json.loads(installation_event("created", repositories=[
        {"full_name": "acme/shop"}, {"full_name": "acme/web"}, {"id": 3}]))
    assert github_installation_change("installation", created) == InstallationChanged(
        "created", 77, ("acme/shop", "acme/web"))
    moved = json.loads(installation_event("added", repositories_added=[{"full_name": "a/b"}],
                                          repositories_removed=[{"full_name": "c/d"}]))
    assert github_installation_change("installation_repositories", moved).repositories == (
        "a/b", "c/d")
    suspended = json.loads(installation_event("suspend"))
    assert github_installation_change("installation", suspended).repositories == ()
    with pytest.raises(PayloadError, match="repositories must be a list"):
        github_installation_change("installation", {**created, "repositories": "all"})
    with pytest.raises(PayloadError, match="missing field installation"):
        github_installation_change("installation", {"action": "created"})
