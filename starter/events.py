"""Webhook event → lifecycle operation. Pure: no I/O, so every mapping is unit-tested.

Every pull-request event that changes what the PR *is* (opened, new commits, labels,
draft state) becomes `Deploy` with the PR as it is now; the workflow applies the
project's policy (opt-in/out labels, drafts, forks) to decide whether it builds.
Closing becomes `Destroy`. Anything else is ignored with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from domain.pull_request import PullRequest


class PayloadError(ValueError):
    """The body is JSON but not the payload this event promises; says which field."""


@dataclass(frozen=True)
class Deploy:
    pull_request: PullRequest


@dataclass(frozen=True)
class Destroy:
    pull_request: PullRequest
    reason: str


@dataclass(frozen=True)
class Ignore:
    reason: str


Operation = Deploy | Destroy | Ignore

GITHUB_DEPLOY_ACTIONS = {
    "opened", "reopened", "synchronize", "ready_for_review", "converted_to_draft",
    "labeled", "unlabeled",
}


def _field(payload: Any, *path: str) -> Any:
    value = payload
    for i, key in enumerate(path):
        if not isinstance(value, dict):
            raise PayloadError(f"field {'.'.join(path[:i]) or 'body'} must be an object")
        if key not in value:
            raise PayloadError(f"missing field {'.'.join(path[: i + 1])}")
        value = value[key]
    return value


def _optional(payload: Any, *path: str, default: Any = "") -> Any:
    """A field that may be absent; present but of the wrong shape is still an error."""
    try:
        value = _field(payload, *path)
    except PayloadError as error:
        if str(error).startswith("missing field"):
            return default
        raise
    return default if value is None else value


def _list(payload: Any, *path: str) -> list[Any]:
    value = _optional(payload, *path, default=[])
    if not isinstance(value, list):
        raise PayloadError(f"field {'.'.join(path)} must be a list")
    return value


def _action(payload: dict[str, Any], *path: str) -> str:
    action = _optional(payload, *path)
    if not isinstance(action, str):
        raise PayloadError(f"field {'.'.join(path)} must be a string")
    return action


def _pull_request(fields: dict[str, tuple[str, Any]]) -> PullRequest:
    """Build the model; an invalid value is reported by its path in the payload."""
    try:
        return PullRequest(**{name: value for name, (_, value) in fields.items()})
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        where = fields[name][0] if name in fields else name
        message = first["msg"].removeprefix("Value error, ")
        raise PayloadError(f"field {where}: {message}" if where else message) from None


def github_pull_request(payload: dict[str, Any]) -> PullRequest:
    pr = "pull_request"
    base_repo = _field(payload, "repository", "full_name")
    head_repo = _optional(payload, pr, "head", "repo", default={})
    head_name = head_repo.get("full_name") if isinstance(head_repo, dict) else None
    labels = [label.get("name") for label in _list(payload, pr, "labels")
              if isinstance(label, dict) and isinstance(label.get("name"), str)]
    return _pull_request({
        "provider": ("", "github"),
        "repository": ("repository.full_name", base_repo),
        "number": (f"{pr}.number", _field(payload, pr, "number")),
        "head_sha": (f"{pr}.head.sha", _field(payload, pr, "head", "sha")),
        "branch": (f"{pr}.head.ref", _field(payload, pr, "head", "ref")),
        "base_branch": (f"{pr}.base.ref", _optional(payload, pr, "base", "ref")),
        "base_sha": (f"{pr}.base.sha", _optional(payload, pr, "base", "sha", default=None)),
        "title": (f"{pr}.title", _optional(payload, pr, "title")),
        "author": (f"{pr}.user.login", _optional(payload, pr, "user", "login")),
        "url": (f"{pr}.html_url", _optional(payload, pr, "html_url")),
        # A deleted fork has no head repo: treat it as a fork, the careful choice.
        "is_fork": ("", head_name != base_repo),
        "is_draft": (f"{pr}.draft", bool(_optional(payload, pr, "draft", default=False))),
        "labels": (f"{pr}.labels", tuple(labels)),
        "updated_at": (f"{pr}.updated_at", _optional(payload, pr, "updated_at", default=None)),
    })


def github_operation(event: str, payload: dict[str, Any]) -> Operation:
    if event != "pull_request":
        return Ignore(f"event {event!r} does not affect previews")
    action = _action(payload, "action")
    if action == "closed":
        pr = github_pull_request(payload)
        merged = bool(_optional(payload, "pull_request", "merged", default=False))
        return Destroy(pr, "pull request merged" if merged else "pull request closed")
    if action in GITHUB_DEPLOY_ACTIONS:
        return Deploy(github_pull_request(payload))
    return Ignore(f"pull_request action {action!r} does not affect previews")


def _gitlab_time(value: Any) -> Any:
    """GitLab writes `2026-01-01 10:00:00 UTC`; pydantic wants ISO 8601."""
    return value.replace(" UTC", "+00:00") if isinstance(value, str) else value


def gitlab_operation(event: str, payload: dict[str, Any]) -> Operation:
    """GitLab merge request hooks: same lifecycle, GitLab's field names."""
    if event != "Merge Request Hook" or payload.get("object_kind") != "merge_request":
        return Ignore(f"event {event!r} does not affect previews")
    attrs = "object_attributes"
    _field(payload, attrs)
    action = _action(payload, attrs, "action")
    labels = [label.get("title") for label in _list(payload, "labels")
              if isinstance(label, dict) and isinstance(label.get("title"), str)]
    source = _optional(payload, attrs, "source_project_id", default=None)
    target = _optional(payload, attrs, "target_project_id", default=None)
    pr = _pull_request({
        "provider": ("", "gitlab"),
        "repository": ("project.path_with_namespace",
                       _field(payload, "project", "path_with_namespace")),
        "number": (f"{attrs}.iid", _field(payload, attrs, "iid")),
        "head_sha": (f"{attrs}.last_commit.id", _field(payload, attrs, "last_commit", "id")),
        "branch": (f"{attrs}.source_branch", _optional(payload, attrs, "source_branch")),
        "base_branch": (f"{attrs}.target_branch", _optional(payload, attrs, "target_branch")),
        "title": (f"{attrs}.title", _optional(payload, attrs, "title")),
        "author": ("user.username", _optional(payload, "user", "username")),
        "url": (f"{attrs}.url", _optional(payload, attrs, "url")),
        "is_fork": ("", source != target),
        "is_draft": (f"{attrs}.draft", bool(_optional(payload, attrs, "draft", default=False)
                                             or _optional(payload, attrs, "work_in_progress",
                                                          default=False))),
        "labels": ("labels", tuple(labels)),
        "updated_at": (f"{attrs}.updated_at",
                       _gitlab_time(_optional(payload, attrs, "updated_at", default=None))),
    })
    if action in ("close", "merge"):
        return Destroy(pr, "merge request closed" if action == "close" else "merge request merged")
    if action in ("open", "reopen", "update"):
        return Deploy(pr)
    return Ignore(f"merge request action {action!r} does not affect previews")


# -- GitHub App installations ------------------------------------------------------------

INSTALLATION_EVENTS = frozenset({"installation", "installation_repositories"})


@dataclass(frozen=True)
class InstallationChanged:
    """A GitHub App installation changed: what is cached for it and its repositories
    (installation ids, tokens) may be stale."""

    action: str
    installation_id: int
    repositories: tuple[str, ...]  # owner/name named by the event


def github_installation_change(event: str, payload: dict[str, Any]) -> InstallationChanged:
    """`installation` (created, deleted, suspend, ...) or `installation_repositories`
    (added, removed)."""
    action = _action(payload, "action")
    installation = _field(payload, "installation", "id")
    if not isinstance(installation, int) or isinstance(installation, bool):
        raise PayloadError("field installation.id must be an integer")
    keys = (("repositories",) if event == "installation"
            else ("repositories_added", "repositories_removed"))
    names = [repo["full_name"] for key in keys for repo in _list(payload, key)
             if isinstance(repo, dict) and isinstance(repo.get("full_name"), str)]
    return InstallationChanged(action, installation, tuple(names))


# -- CI and registry events that wake waiting previews -----------------------------------

# event -> the actions that mean "an image may exist now"
WAKE_EVENTS: dict[str, frozenset[str]] = {
    "workflow_run": frozenset({"completed"}),
    "check_suite": frozenset({"completed"}),
    # GitHub sends `registry_package` to older hooks and `package` to newer ones.
    "registry_package": frozenset({"published", "updated"}),
    "package": frozenset({"published", "updated"}),
}
GITHUB_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class WakeWaiting:
    """CI finished or an image was published: previews of `repository` that wait for an
    image ask their registry again now instead of at their next timer.

    `head_sha` and `pull_requests` narrow it to the previews of that commit or those pull
    requests (CI events); neither set means every preview of the repository."""

    repository: str
    reason: str
    head_sha: str | None = None
    pull_requests: tuple[int, ...] = ()


def _repository(payload: dict[str, Any]) -> str:
    name = _field(payload, "repository", "full_name")
    if not isinstance(name, str) or not GITHUB_REPOSITORY.match(name):
        raise PayloadError("field repository.full_name must be owner/name")
    return name


def _own_pull_requests(run: dict[str, Any], repository: str) -> tuple[int, ...]:
    """Numbers of the run's pull requests opened on `repository`: GitHub also lists pull
    requests of other repositories whose head is the same commit."""
    own = f"/repos/{repository}".lower()
    numbers = []
    for pr in _list(run, "pull_requests"):
        base = pr.get("base") if isinstance(pr, dict) else None
        repo = base.get("repo") if isinstance(base, dict) else None
        url = repo.get("url") if isinstance(repo, dict) else None
        number = pr.get("number") if isinstance(pr, dict) else None
        if (isinstance(url, str) and url.lower().endswith(own)
                and isinstance(number, int) and not isinstance(number, bool)):
            numbers.append(number)
    return tuple(sorted(set(numbers)))


def github_wake(event: str, payload: dict[str, Any]) -> WakeWaiting | Ignore:
    """`workflow_run` / `check_suite` completed, `registry_package` / `package` published
    or updated → wake the previews they may concern; other actions are ignored."""
    action = _action(payload, "action")
    if action not in WAKE_EVENTS[event]:
        return Ignore(f"{event} action {action!r} does not wake previews")
    repository = _repository(payload)
    if event in ("registry_package", "package"):
        return WakeWaiting(repository, f"{event} {action}")
    run = _field(payload, event)
    if not isinstance(run, dict):
        raise PayloadError(f"field {event} must be an object")
    sha = _field(payload, event, "head_sha")
    if not isinstance(sha, str) or not COMMIT_SHA.match(sha):
        raise PayloadError(f"field {event}.head_sha must be a 40-character commit sha")
    return WakeWaiting(repository, f"{event} {action} for {sha[:7]}", head_sha=sha,
                       pull_requests=_own_pull_requests(run, repository))
