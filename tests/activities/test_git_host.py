"""publish_feedback against a real local HTTP server standing in for GitHub and GitLab."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git_host import (
    GIT_HOST_REJECTED,
    GIT_HOST_UNAVAILABLE,
    FeedbackActivities,
    GitHostClients,
    RepositoryActivities,
)
from domain.feedback import (
    Feedback,
    TeardownReceipt,
    comment_marker,
    commit_state,
    render_comment,
)
from engine.settings import Settings
from stack.ports import free_port
from tests.plugins.git_host import BOT, GitHost

SHA = "0123456789abcdef0123456789abcdef01234567"
ENV = "shop-pr-7-abc123"
URLS = {"web": "https://web.shop-pr-7.preview.example.com", "api": "https://api.example"}


def feedback(**overrides: Any) -> Feedback:
    values: dict[str, Any] = {
        "provider": "github",
        "repository": "acme/shop",
        "pr_number": 7,
        "head_sha": SHA,
        "state": "creating",
        "urls": {},
        "environment_id": ENV,
    }
    return Feedback(**(values | overrides))


def make(git_host: GitHost, *, token: str | None = "", gitlab_token: str | None = "",
         kind: type[GitHostClients] = FeedbackActivities) -> Any:
    """The activities wired to the fake host; token "" means the host's own token."""
    settings = Settings(
        github_api_url=git_host.url,
        github_token=git_host.token if token == "" else token,
    )
    return kind(
        settings,
        gitlab_api_url=git_host.gitlab_url,
        gitlab_token=git_host.token if gitlab_token == "" else gitlab_token,
    )


def reader(git_host: GitHost, *, token: str | None = "") -> RepositoryActivities:
    """The reads of the PR's repository, wired to the fake host."""
    acts: RepositoryActivities = make(git_host, token=token, kind=RepositoryActivities)
    return acts


async def publish(acts: FeedbackActivities, fb: Feedback) -> None:
    await ActivityEnvironment().run(acts.publish_feedback, fb)


async def publish_error(acts: FeedbackActivities, fb: Feedback) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await publish(acts, fb)
    return caught.value


# --- GitHub ---------------------------------------------------------------------------


async def test_comment_is_created_once_then_edited_in_place(git_host: GitHost) -> None:
    acts = make(git_host)
    await publish(acts, feedback(state="creating"))
    ready = feedback(state="ready", urls=URLS)
    await publish(acts, ready)

    comments = git_host.comments("acme/shop", 7)
    assert len(comments) == 1
    assert comments[0]["body"] == render_comment(ready)
    assert len(git_host.calls_to("POST", "/issues/7/comments")) == 1
    patches = git_host.calls_to("PATCH", f"/issues/comments/{comments[0]['id']}")
    assert len(patches) == 1

    # Same state again: nothing to change, nothing sent but the reads.
    await publish(acts, ready)
    assert len(git_host.calls_to("PATCH")) == 1
    # The comment, two commit statuses, one deployment and its two statuses.
    assert len(git_host.calls_to("POST")) == 6
    assert len(git_host.calls_to("POST", "/deployments")) == 3
    assert len(git_host.comments("acme/shop", 7)) == 1
    assert [s["state"] for s in git_host.statuses("acme/shop", SHA)] == ["pending", "success"]

    for call in git_host.calls:
        assert call.headers["authorization"] == f"Bearer {git_host.token}"
        assert call.headers["accept"] == "application/vnd.github+json"


async def test_our_comment_is_found_on_a_later_page(git_host: GitHost) -> None:
    git_host.max_per_page = 2
    quoting = git_host.seed_comment("acme/shop", 7, f"> {comment_marker(ENV)}\n> quoted")
    git_host.seed_comment("acme/shop", 7, "looks good")
    other_env = git_host.seed_comment("acme/shop", 7, comment_marker("other-env") + "\nx", user=BOT)
    ours = git_host.seed_comment("acme/shop", 7, comment_marker(ENV) + "\nold body", user=BOT)
    git_host.seed_comment("acme/shop", 7, "another one")

    ready = feedback(state="ready", urls=URLS)
    await publish(make(git_host), ready)

    listing = git_host.calls_to("GET", "/issues/7/comments")
    assert [c.query.get("page", "1") for c in listing] == ["1", "2", "3"]
    assert git_host.calls_to("POST", "/comments") == []
    assert [c.path for c in git_host.calls_to("PATCH")] == [
        f"/repos/acme/shop/issues/comments/{ours}"
    ]
    bodies = {c["id"]: c["body"] for c in git_host.comments("acme/shop", 7)}
    assert bodies[ours] == render_comment(ready)
    assert bodies[quoting].startswith("> ")
    assert bodies[other_env].endswith("\nx")
    assert len(bodies) == 5


@pytest.mark.parametrize(
    ("state", "message", "expected", "has_target"),
    [
        ("creating", "", "pending", False),
        ("ready", "", "success", True),
        ("failed", "step database: timeout", "failure", True),
        ("destroyed", "", "success", False),
    ],
)
async def test_commit_status_is_posted_with_the_right_state(
    git_host: GitHost, state: str, message: str, expected: str, has_target: bool
) -> None:
    urls = {} if state == "creating" else URLS
    fb = feedback(state=state, message=message, urls=urls)
    await publish(make(git_host), fb)

    posts = git_host.calls_to("POST", f"/repos/acme/shop/statuses/{SHA}")
    assert len(posts) == 1
    body = posts[0].json
    assert body["state"] == expected
    assert body["context"] == "preview-engine"
    assert body["description"] == commit_state(fb)[1]
    if message:
        assert message in body["description"]
    if has_target:
        assert body["target_url"] == URLS["web"]  # the first (primary) app
    else:
        assert "target_url" not in body


async def test_5xx_is_retryable_and_the_retry_converges(git_host: GitHost) -> None:
    acts = make(git_host)
    git_host.fail_next(1, 502, path_contains="/statuses/")
    error = await publish_error(acts, feedback())
    assert not error.non_retryable
    assert error.type == GIT_HOST_UNAVAILABLE
    assert "502" in str(error)
    assert len(git_host.comments("acme/shop", 7)) == 1  # the comment went before the fault

    await publish(acts, feedback())  # what Temporal's retry does
    assert len(git_host.comments("acme/shop", 7)) == 1
    assert len(git_host.calls_to("POST", "/comments")) == 1
    assert [s["state"] for s in git_host.statuses("acme/shop", SHA)] == ["pending"]


async def test_429_is_retryable_after_the_hosts_delay(git_host: GitHost) -> None:
    git_host.fail_next(1, 429, headers={"Retry-After": "7"})
    error = await publish_error(make(git_host), feedback())
    assert not error.non_retryable
    assert error.next_retry_delay == timedelta(seconds=7)


async def test_rate_limited_403_is_retryable_other_403_is_not(git_host: GitHost) -> None:
    acts = make(git_host)
    git_host.fail_next(1, 403, headers={"X-RateLimit-Remaining": "0"}, message="rate limit")
    assert not (await publish_error(acts, feedback())).non_retryable

    git_host.fail_next(1, 403, message="Resource not accessible by integration")
    error = await publish_error(acts, feedback())
    assert error.non_retryable
    assert error.type == GIT_HOST_REJECTED
    assert "Resource not accessible by integration" in str(error)


async def test_401_is_not_retryable_and_carries_the_api_message(git_host: GitHost) -> None:
    wrong = "wrong-token-0123456789"
    error = await publish_error(make(git_host, token=wrong), feedback())
    assert error.non_retryable
    assert error.type == GIT_HOST_REJECTED
    assert "401" in str(error)
    assert "Bad credentials" in str(error)
    assert wrong not in str(error)
    assert len(git_host.calls) == 1  # stopped at the first refusal


async def test_gone_pull_request_skips_the_comment_but_sets_the_status(
    git_host: GitHost,
) -> None:
    git_host.fail_next(1, 404, path_contains="/issues/7/comments")
    await publish(make(git_host), feedback())
    assert git_host.comments("acme/shop", 7) == []
    assert [s["state"] for s in git_host.statuses("acme/shop", SHA)] == ["pending"]


async def test_unreachable_host_is_retryable(git_host: GitHost) -> None:
    settings = Settings(github_api_url=f"http://127.0.0.1:{free_port()}", github_token="t-123456")
    error = await publish_error(FeedbackActivities(settings), feedback())
    assert not error.non_retryable
    assert error.type == GIT_HOST_UNAVAILABLE


async def test_without_a_token_nothing_is_sent(
    git_host: GitHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    acts = make(git_host, token=None, gitlab_token=None)
    await publish(acts, feedback())
    await publish(acts, feedback(provider="gitlab"))
    assert git_host.calls == []
    assert caplog.text.count("feedback disabled") == 2


async def test_the_token_never_appears_in_logs_or_errors(
    git_host: GitHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    acts = make(git_host)
    errors: list[ApplicationError] = []

    await publish(acts, feedback())
    await publish(acts, feedback(state="ready", urls=URLS))
    git_host.fail_next(1, 500)
    errors.append(await publish_error(acts, feedback(state="failed")))
    # A host that echoes the token back in its error must not get it into our message.
    git_host.fail_next(1, 400, message=f"token {git_host.token} is not valid here")
    errors.append(await publish_error(acts, feedback(state="failed")))
    git_host.fail_next(1, 400, path_contains="/statuses/", message=f"bad {git_host.token}")
    errors.append(
        await publish_error(acts, feedback(provider="gitlab", repository="acme/platform/shop"))
    )
    await publish(acts, feedback(provider="gitlab", repository="acme/platform/shop"))

    assert "HTTP Request" in caplog.text  # httpx did log every request
    assert "Commented on acme/shop#7" in caplog.text
    assert git_host.token not in caplog.text
    for record in caplog.records:
        assert git_host.token not in str(record.args)
    for error in errors:
        assert git_host.token not in str(error)
        assert "***" in str(error) or "500" in str(error)


# --- GitHub deployments ---------------------------------------------------------------

SHA2 = "fedcba9876543210fedcba9876543210fedcba98"


def deployment_states(git_host: GitHost, repo: str = "acme/shop") -> dict[str, list[str]]:
    return {d["sha"]: [s["state"] for s in d["statuses"]] for d in git_host.deployments(repo)}


async def test_deployment_statuses_follow_the_whole_lifecycle(git_host: GitHost) -> None:
    acts = make(git_host)
    await publish(acts, feedback(state="creating"))
    await publish(acts, feedback(state="ready", urls=URLS))
    await publish(acts, feedback(state="ready", urls=URLS))  # a repeat posts nothing
    assert deployment_states(git_host) == {SHA: ["in_progress", "success"]}

    await publish(acts, feedback(state="updating", head_sha=SHA2, urls=URLS))
    # The old commit's deployment keeps serving while the new one is made.
    assert deployment_states(git_host) == {SHA: ["in_progress", "success"],
                                           SHA2: ["in_progress"]}
    await publish(acts, feedback(state="ready", head_sha=SHA2, urls=URLS))
    assert deployment_states(git_host) == {SHA: ["in_progress", "success", "inactive"],
                                           SHA2: ["in_progress", "success"]}
    await publish(acts, feedback(state="destroying", head_sha=SHA2))
    await publish(acts, feedback(state="destroyed", head_sha=SHA2))
    await publish(acts, feedback(state="destroyed", head_sha=SHA2))  # a repeat posts nothing
    assert deployment_states(git_host) == {SHA: ["in_progress", "success", "inactive"],
                                           SHA2: ["in_progress", "success", "inactive"]}

    first, second = git_host.deployments("acme/shop")
    for deployment, sha in ((first, SHA), (second, SHA2)):
        assert deployment["ref"] == sha
        assert deployment["environment"] == "preview/pr-7"
        assert deployment["transient_environment"] is True
        assert deployment["production_environment"] is False
        assert deployment["auto_merge"] is False
        assert deployment["required_contexts"] == []
        assert deployment["payload"] == {"environment_id": ENV}
        assert ENV in deployment["description"]
        success = next(s for s in deployment["statuses"] if s["state"] == "success")
        assert success["environment_url"] == URLS["web"]
        assert success["description"] == "Preview environment ready"
        assert all(s["environment_url"] == "" for s in deployment["statuses"]
                   if s["state"] != "success")
    assert len(git_host.calls_to("POST", "/repos/acme/shop/deployments")) == 2 + 6


async def test_failed_preview_fails_its_deployment(git_host: GitHost) -> None:
    acts = make(git_host)
    await publish(acts, feedback(state="creating"))
    await publish(acts, feedback(state="failed", message="step database: timeout"))
    [deployment] = git_host.deployments("acme/shop")
    assert [s["state"] for s in deployment["statuses"]] == ["in_progress", "failure"]
    assert "step database: timeout" in deployment["statuses"][-1]["description"]


async def test_deployment_is_found_again_after_a_fault(git_host: GitHost) -> None:
    acts = make(git_host)
    # The deployment is created, then its first status call fails.
    git_host.fail_next(1, 503, path_contains="/deployments/")
    assert not (await publish_error(acts, feedback(state="creating"))).non_retryable
    assert deployment_states(git_host) == {SHA: []}
    await publish(acts, feedback(state="creating"))  # Temporal's retry
    assert deployment_states(git_host) == {SHA: ["in_progress"]}
    assert len(git_host.deployments("acme/shop")) == 1


async def test_other_deployments_of_the_environment_are_left_alone(git_host: GitHost) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {git_host.token}"}) as http:
        theirs = (await http.post(f"{git_host.url}/repos/acme/shop/deployments", json={
            "ref": SHA, "environment": "preview/pr-7", "transient_environment": True,
            "payload": {"environment_id": "other"},
        })).json()
        await http.post(f"{git_host.url}/repos/acme/shop/deployments/{theirs['id']}/statuses",
                        json={"state": "success"})
    acts = make(git_host)
    await publish(acts, feedback(state="ready", urls=URLS))
    await publish(acts, feedback(state="destroyed"))
    states = [[s["state"] for s in d["statuses"]] for d in git_host.deployments("acme/shop")]
    assert states == [["success"], ["success", "inactive"]]


# --- one comment through the whole life of a preview ----------------------------------

CLEAN = TeardownReceipt(
    finished_at=datetime(2026, 3, 1, 10, 15, tzinfo=UTC),
    removed=["namespace shop-pr-7", "database clone shop_pr_7"],
    checked=["kubernetes:default", "postgres:preview"],
)
LEFT = CLEAN.model_copy(update={
    "leftovers": ["kubernetes:default: configmap shop-pr-7/planted"],
    "unchecked": ["aws:eu-west-1: AccessDenied"],
})


@pytest.mark.parametrize(("provider", "repo"), [("github", "acme/shop"),
                                                ("gitlab", "acme/platform/shop")])
@pytest.mark.parametrize("receipt", [CLEAN, LEFT], ids=["clean", "leftovers"])
async def test_one_comment_is_edited_from_create_to_teardown_receipt(
    git_host: GitHost, provider: str, repo: str, receipt: TeardownReceipt
) -> None:
    acts = make(git_host)
    lifecycle = [
        feedback(provider=provider, repository=repo, state="creating"),
        feedback(provider=provider, repository=repo, state="ready", urls=URLS),
        feedback(provider=provider, repository=repo, state="updating", head_sha=SHA2),
        feedback(provider=provider, repository=repo, state="ready", head_sha=SHA2, urls=URLS),
        feedback(provider=provider, repository=repo, state="destroying", head_sha=SHA2),
        feedback(provider=provider, repository=repo, state="destroyed", head_sha=SHA2,
                 receipt=receipt),
    ]
    for fb in lifecycle:
        await publish(acts, fb)
        [comment] = git_host.comments(repo, 7, provider=provider)
        assert comment["body"] == render_comment(fb)
    body = git_host.comments(repo, 7, provider=provider)[0]["body"]
    assert len(git_host.calls_to("POST", "/comments" if provider == "github" else "/notes")) == 1
    assert "**Removed at:** 2026-03-01T10:15Z" in body
    assert "- namespace shop-pr-7" in body
    if receipt.clean:
        assert "**Nothing left behind** (checked: kubernetes:default, postgres:preview)." in body
    else:
        assert "- kubernetes:default: configmap shop-pr-7/planted" in body
        assert "- aws:eu-west-1: AccessDenied" in body
        assert "orphan sweeper" in body
    if provider == "github":
        assert {d["sha"]: d["statuses"][-1]["state"] for d in git_host.deployments(repo)} == {
            SHA: "inactive", SHA2: "inactive"}
    else:
        [environment] = git_host.environments(repo)
        assert environment["state"] == "stopped"


# --- GitLab ---------------------------------------------------------------------------

GL_REPO = "acme/platform/shop"
GL_PATH = "/api/v4/projects/acme%2Fplatform%2Fshop"


async def test_gitlab_note_is_created_once_then_edited_and_status_follows(
    git_host: GitHost,
) -> None:
    acts = make(git_host)
    await publish(acts, feedback(provider="gitlab", repository=GL_REPO))
    ready = feedback(provider="gitlab", repository=GL_REPO, state="ready", urls=URLS)
    await publish(acts, ready)
    await publish(acts, ready)

    notes = git_host.comments(GL_REPO, 7, provider="gitlab")
    assert len(notes) == 1
    assert notes[0]["body"] == render_comment(ready)
    assert len(git_host.calls_to("POST", f"{GL_PATH}/merge_requests/7/notes")) == 1
    assert [c.path for c in git_host.calls_to("PUT", "/notes/")] == [
        f"{GL_PATH}/merge_requests/7/notes/{notes[0]['id']}"
    ]
    # running → success moves the one active status; the repeat posts nothing.
    statuses = git_host.statuses(GL_REPO, SHA, provider="gitlab")
    assert [(s["name"], s["status"]) for s in statuses] == [("preview-engine", "success")]
    assert statuses[0]["target_url"] == URLS["web"]
    assert len(git_host.calls_to("POST", f"{GL_PATH}/statuses/{SHA}")) == 2
    for call in git_host.calls:
        assert call.headers["private-token"] == git_host.token
        assert "authorization" not in call.headers


async def test_gitlab_note_is_found_on_a_later_page(git_host: GitHost) -> None:
    git_host.max_per_page = 2
    for text in ("first", "second", "third"):
        git_host.seed_comment(GL_REPO, 7, text, provider="gitlab")
    ours = git_host.seed_comment(
        GL_REPO, 7, comment_marker(ENV) + "\nold", user=BOT, provider="gitlab"
    )
    ready = feedback(provider="gitlab", repository=GL_REPO, state="ready", urls=URLS)
    await publish(make(git_host), ready)

    assert git_host.calls_to("POST", "/notes") == []
    assert [c.path for c in git_host.calls_to("PUT")] == [
        f"{GL_PATH}/merge_requests/7/notes/{ours}"
    ]
    assert len(git_host.comments(GL_REPO, 7, provider="gitlab")) == 4


async def test_gitlab_same_state_with_other_description_converges(git_host: GitHost) -> None:
    # An active "running" status of ours whose text differs (an earlier engine version,
    # or a post whose response was lost): GitLab refuses running → running with 400.
    async with httpx.AsyncClient() as client:
        seeded = await client.post(
            f"{git_host.gitlab_url}/projects/acme%2Fplatform%2Fshop/statuses/{SHA}",
            json={"state": "running", "name": "preview-engine", "description": "older text"},
            headers={"PRIVATE-TOKEN": git_host.token},
        )
    assert seeded.status_code == 201
    await publish(make(git_host), feedback(provider="gitlab", repository=GL_REPO))
    posts = git_host.calls_to("POST", f"/statuses/{SHA}")
    assert len(posts) == 2  # ours was refused as a repeat, and that is success
    assert [s["status"] for s in git_host.statuses(GL_REPO, SHA, provider="gitlab")] == ["running"]


async def test_gitlab_5xx_retryable_and_401_not(git_host: GitHost) -> None:
    fb = feedback(provider="gitlab", repository=GL_REPO)
    git_host.fail_next(1, 503)
    error = await publish_error(make(git_host), fb)
    assert not error.non_retryable and error.type == GIT_HOST_UNAVAILABLE

    error = await publish_error(make(git_host, gitlab_token="wrong-gitlab-token"), fb)
    assert error.non_retryable and error.type == GIT_HOST_REJECTED
    assert "401 Unauthorized" in str(error)
    assert "wrong-gitlab-token" not in str(error)


async def test_gitlab_environment_gets_its_url_and_is_stopped_then_replaced(
    git_host: GitHost,
) -> None:
    acts = make(git_host)
    await publish(acts, feedback(provider="gitlab", repository=GL_REPO))
    [environment] = git_host.environments(GL_REPO)
    assert environment["name"] == "preview/mr-7"
    assert environment["state"] == "available" and environment["external_url"] is None

    ready = feedback(provider="gitlab", repository=GL_REPO, state="ready", urls=URLS)
    await publish(acts, ready)
    await publish(acts, ready)
    assert git_host.environments(GL_REPO) == [{**environment, "external_url": URLS["web"]}]
    assert len(git_host.calls_to("PUT", f"{GL_PATH}/environments/")) == 1

    gone = feedback(provider="gitlab", repository=GL_REPO, state="destroyed")
    await publish(acts, gone)
    await publish(acts, gone)
    assert [e["state"] for e in git_host.environments(GL_REPO)] == ["stopped"]
    assert len(git_host.calls_to("POST", "/stop")) == 1

    # Reopened: a stopped environment cannot be restarted through the API, so it is
    # replaced by a new one of the same name.
    await publish(acts, feedback(provider="gitlab", repository=GL_REPO))
    [again] = git_host.environments(GL_REPO)
    assert again["name"] == "preview/mr-7" and again["state"] == "available"
    assert again["id"] != environment["id"]
    assert len(git_host.calls_to("POST", f"{GL_PATH}/environments")) == 3  # 2 + one stop
