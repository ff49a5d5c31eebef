"""Webhook event → lifecycle operation. Pure: no I/O, so every mapping is unit-tested.

Every pull-request event that changes what the PR *is* (opened, new commits, labels,
draft state) becomes `Deploy` with the PR as it is now; the workflow applies the
project's policy (opt-in/out labels, drafts, forks) to decide whether it builds.
Closing becomes `Destroy`. Anything else is ignored with a reason.
"""

from __future__ import annotations

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
        if not isinstance(value, dict) or key not in value:
            raise PayloadError(f"missing field {'.'.join(path[: i + 1])}")
        value = value[key]
    return value


def _pull_request(make: Any, where: str) -> PullRequest:
    try:
        return make()
    except ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PayloadError(f"{where}: field {loc}: {first['msg']}") from None
    except (TypeError, AttributeError) as error:
        raise PayloadError(f"{where}: unexpected shape ({error})") from None


def github_pull_request(payload: dict[str, Any]) -> PullRequest:
    pr = _field(payload, "pull_request")
    head_repo = (pr.get("head") or {}).get("repo") or {}
    base_repo = _field(payload, "repository", "full_name")
    return _pull_request(lambda: PullRequest(
        provider="github",
        repository=base_repo,
        number=_field(payload, "pull_request", "number"),
        head_sha=_field(payload, "pull_request", "head", "sha"),
        branch=_field(payload, "pull_request", "head", "ref"),
        base_branch=pr.get("base", {}).get("ref", ""),
        title=pr.get("title") or "",
        author=(pr.get("user") or {}).get("login", ""),
        url=pr.get("html_url") or "",
        # A deleted fork has no head repo: treat it as a fork, the careful choice.
        is_fork=head_repo.get("full_name") != base_repo,
        is_draft=bool(pr.get("draft")),
        labels=tuple(label["name"] for label in pr.get("labels") or [] if "name" in label),
        updated_at=pr.get("updated_at"),
    ), "pull_request")


def github_operation(event: str, payload: dict[str, Any]) -> Operation:
    if event != "pull_request":
        return Ignore(f"event {event!r} does not affect previews")
    action = payload.get("action")
    if action == "closed":
        pr = github_pull_request(payload)
        merged = bool(payload["pull_request"].get("merged"))
        return Destroy(pr, "pull request merged" if merged else "pull request closed")
    if action in GITHUB_DEPLOY_ACTIONS:
        return Deploy(github_pull_request(payload))
    return Ignore(f"pull_request action {action!r} does not affect previews")


def _gitlab_time(value: str | None) -> str | None:
    """GitLab writes `2026-01-01 10:00:00 UTC`; pydantic wants ISO 8601."""
    return value.replace(" UTC", "+00:00") if value else None


def gitlab_operation(event: str, payload: dict[str, Any]) -> Operation:
    """GitLab merge request hooks: same lifecycle, GitLab's field names."""
    if event != "Merge Request Hook" or payload.get("object_kind") != "merge_request":
        return Ignore(f"event {event!r} does not affect previews")
    attrs = _field(payload, "object_attributes")
    action = attrs.get("action")
    source = attrs.get("source_project_id")
    target = attrs.get("target_project_id")
    pr = _pull_request(lambda: PullRequest(
        provider="gitlab",
        repository=_field(payload, "project", "path_with_namespace"),
        number=_field(payload, "object_attributes", "iid"),
        head_sha=_field(payload, "object_attributes", "last_commit", "id"),
        branch=attrs.get("source_branch", ""),
        base_branch=attrs.get("target_branch", ""),
        title=attrs.get("title") or "",
        author=(payload.get("user") or {}).get("username", ""),
        url=attrs.get("url") or "",
        is_fork=source != target,
        is_draft=bool(attrs.get("draft") or attrs.get("work_in_progress")),
        labels=tuple(label["title"] for label in payload.get("labels") or [] if "title" in label),
        updated_at=_gitlab_time(attrs.get("updated_at")),
    ), "object_attributes")
    if action in ("close", "merge"):
        return Destroy(pr, "merge request closed" if action == "close" else "merge request merged")
    if action in ("open", "reopen", "update"):
        return Deploy(pr)
    return Ignore(f"merge request action {action!r} does not affect previews")
