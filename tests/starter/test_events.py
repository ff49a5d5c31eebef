"""Real GitHub webhook bodies mapped to lifecycle operations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from starter.events import Deploy, Destroy, Ignore, PayloadError, github_operation, gitlab_operation

FIXTURES = Path(__file__).parents[1] / "fixtures" / "github-webhooks"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["pull_request.opened", "pull_request.reopened",
                                  "pull_request.synchronize", "pull_request.ready_for_review",
                                  "pull_request.labeled", "pull_request.converted_to_draft",
                                  "pull_request.opened.with-organization"])
def test_pull_request_changes_deploy_the_pr_as_it_is(name: str) -> None:
    payload = fixture(name)
    op = github_operation("pull_request", payload)
    assert isinstance(op, Deploy)
    pr = op.pull_request
    assert pr.repository == payload["repository"]["full_name"]
    assert pr.number == payload["pull_request"]["number"]
    assert pr.head_sha == payload["pull_request"]["head"]["sha"]
    assert pr.is_draft == bool(payload["pull_request"]["draft"])
    assert pr.labels == tuple(label["name"] for label in payload["pull_request"]["labels"])
    assert pr.updated_at is not None


def test_closed_destroys() -> None:
    op = github_operation("pull_request", fixture("pull_request.closed"))
    assert isinstance(op, Destroy) and op.reason == "pull request closed"
    merged = fixture("pull_request.closed")
    merged["pull_request"]["merged"] = True
    op = github_operation("pull_request", merged)
    assert isinstance(op, Destroy) and op.reason == "pull request merged"


def test_other_events_are_ignored_with_a_reason() -> None:
    assert github_operation("push", fixture("push")) == Ignore(
        "event 'push' does not affect previews")
    payload = fixture("pull_request.opened") | {"action": "assigned"}
    op = github_operation("pull_request", payload)
    assert isinstance(op, Ignore) and "assigned" in op.reason


def test_fork_is_detected() -> None:
    payload = fixture("pull_request.opened")
    payload["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    op = github_operation("pull_request", payload)
    assert isinstance(op, Deploy) and op.pull_request.is_fork


@pytest.mark.parametrize("mutate, field", [
    (lambda p: p.pop("pull_request"), "pull_request"),
    (lambda p: p["pull_request"]["head"].pop("sha"), "pull_request.head.sha"),
    (lambda p: p["pull_request"].__setitem__("number", "x"), "number"),
    (lambda p: p["pull_request"]["head"].__setitem__("sha", "not-hex"), "pull_request.head.sha"),
    (lambda p: p["pull_request"].__setitem__("head", []), "pull_request.head must be an object"),
    (lambda p: p.__setitem__("action", ["opened"]), "action must be a string"),
])
def test_malformed_payload_names_the_field(mutate: Any, field: str) -> None:
    payload = fixture("pull_request.opened")
    mutate(payload)
    with pytest.raises(PayloadError, match=field.replace(".", r"\.")):
        github_operation("pull_request", payload)


def gitlab_payload(action: str) -> dict[str, Any]:
    return {
        "object_kind": "merge_request",
        "user": {"username": "root"},
        "project": {"path_with_namespace": "group/sub/app"},
        "labels": [{"title": "preview"}],
        "object_attributes": {
            "iid": 5, "action": action, "source_branch": "feat", "target_branch": "main",
            "source_project_id": 1, "target_project_id": 1, "title": "Feat",
            "last_commit": {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"},
            "updated_at": "2026-01-01 10:00:00 UTC", "draft": False,
        },
    }


def test_gitlab_merge_requests_map_like_github() -> None:
    op = gitlab_operation("Merge Request Hook", gitlab_payload("open"))
    assert isinstance(op, Deploy)
    assert op.pull_request.repository == "group/sub/app" and op.pull_request.number == 5
    assert op.pull_request.labels == ("preview",) and op.pull_request.updated_at is not None
    assert isinstance(gitlab_operation("Merge Request Hook", gitlab_payload("merge")), Destroy)
    assert isinstance(gitlab_operation("Merge Request Hook", gitlab_payload("approved")), Ignore)
    assert isinstance(gitlab_operation("Push Hook", {"object_kind": "push"}), Ignore)
