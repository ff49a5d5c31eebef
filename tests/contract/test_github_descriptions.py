"""The GitHub stand-in's traffic and the webhook bodies the tests send, against the API
descriptions GitHub publishes (tests/contract/descriptions.py).

- Requests: every GitHub request any test's engine sends to the stand-in is checked by
  the stand-in itself (tests/plugins/git_host.py); here, that the check refuses what it
  must, says why, and fails the test through the fixture.
- Webhooks: every fixture under tests/fixtures/github-webhooks (and shared/fixtures when
  it is there) against the schema of its event and action; the starter tests' helpers
  that build bodies, with the arguments those tests give them; and that the check refuses
  a broken body, naming what is wrong.

GitLab is not checked: GitLab's OpenAPI descriptions (doc/api/openapi/openapi_v3.yaml,
and the deprecated openapi_v2.yaml) live only in GitLab's repository and on its site, and
no package on the registries these machines reach ships them; for webhook payloads GitLab
publishes no machine-readable description at all, only documentation with examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.git_host import FeedbackActivities
from domain.feedback import Feedback
from engine.settings import Settings
from tests.contract.descriptions import (
    ROOT,
    rest_description,
    rest_violations,
    webhook_description,
    webhook_violations,
)
from tests.plugins.git_host import GitHost
from tests.starter.test_installation_webhooks import installation_event
from tests.starter.test_wake_webhooks import ci_event, package_event
from tests.starter.test_webhooks import body_of

SHA = "0123456789abcdef0123456789abcdef01234567"
OURS = ROOT / "tests" / "fixtures" / "github-webhooks"
SHARED = ROOT.parent / "shared" / "fixtures" / "github-webhooks"  # tests/domain reads it
REPO_FIXTURES = sorted(OURS.glob("*.json"))
FIXTURES = REPO_FIXTURES + sorted(SHARED.glob("*.json"))



def event_of(path: Path) -> str:
    return path.name.split(".")[0]  # <event>.<action>[.<variant>].json


def fixture_id(path: Path) -> str:
    return f"{path.parents[2].name}/{path.name}"  # tests/… or shared/…


# --- the descriptions ------------------------------------------------------------------
def test_the_installed_descriptions_are_the_pinned_ones() -> None:
    pins = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    for package, description in (("@octokit/openapi", rest_description()),
                                 ("@octokit/openapi-webhooks", webhook_description())):
        assert description.version == pins[package] == lock[f"node_modules/{package}"][
            "version"], f"{package}: run `make openapi`"


# --- requests to the GitHub stand-in ---------------------------------------------------
def test_a_wrong_body_type_is_named() -> None:
    problems = rest_violations("POST", f"/repos/acme/shop/statuses/{SHA}", {},
                               {"state": "success", "description": 140})  # fmt: skip
    assert problems == [
        f"POST /repos/acme/shop/statuses/{SHA} (POST /repos/{{owner}}/{{repo}}/statuses/"
        "{sha}): body.description: 140 is not of type 'string'"]


def test_an_unknown_path_or_method_is_named() -> None:
    assert rest_violations("GET", "/repos/acme/shop/previews", {}, None) == [
        "GET /repos/acme/shop/previews: no path of GitHub's REST description matches"]
    assert rest_violations("DELETE", f"/repos/acme/shop/statuses/{SHA}", {}, None) == [
        f"DELETE /repos/acme/shop/statuses/{SHA}: GitHub's REST description has no DELETE "
        "operation for this path"]


def test_what_github_would_silently_ignore_is_named() -> None:
    """A misspelt field or filter: GitHub ignores it, so only this check can see it."""
    where = "POST /repos/acme/shop/deployments (POST /repos/{owner}/{repo}/deployments)"
    assert rest_violations("POST", "/repos/acme/shop/deployments", {},
                           {"ref": SHA, "enviroment": "preview/pr-7"}) == [
        f"{where}: body.enviroment: not a property GitHub's schema describes here"]
    listing = "GET /repos/acme/shop/deployments (GET /repos/{owner}/{repo}/deployments)"
    assert rest_violations("GET", "/repos/acme/shop/deployments",
                           [("environment", "preview/pr-7"), ("state", "active"),
                            ("per_page", "many")], None) == [
        f"{listing}: Query parameter error: per_page (Failed to cast value to integer "
        "type: many)",
        f"{listing}: query parameter 'state' is not a parameter of this operation"]


@pytest.fixture
def host() -> Iterator[GitHost]:
    """A stand-in without the fixture's teardown check: these tests send wrong requests
    on purpose and look at what it recorded."""
    host = GitHost().start()
    yield host
    host.stop()


def test_the_stand_in_answers_400_records_and_fails_the_test(host: GitHost) -> None:
    answer = httpx.post(f"{host.url}/repos/acme/shop/issues/7/comments",
                        json={"body": ["not", "a", "string"]},
                        headers={"Authorization": f"Bearer {host.token}"})  # fmt: skip
    reason = "body.body: ['not', 'a', 'string'] is not of type 'string'"
    assert answer.status_code == 400 and reason in answer.json()["message"]
    assert host.comments("acme/shop", 7) == []  # refused before the fake acted on it
    [violation] = host.violations
    assert violation.test == os.environ["PYTEST_CURRENT_TEST"]
    assert (violation.method, violation.path) == ("POST", "/repos/acme/shop/issues/7/comments")
    with pytest.raises(AssertionError, match="GitHub's REST description does not allow") as e:
        host.assert_no_violations()
    assert reason in str(e.value) and "test_the_stand_in_answers_400" in str(e.value)
    host.assert_no_violations()  # reported once


async def test_what_the_engine_sends_is_checked_and_passes(host: GitHost) -> None:
    """Feedback through a whole preview life, as the engine sends it: every request is
    one GitHub describes (the same holds in every test through the fixtures)."""
    acts = FeedbackActivities(Settings(github_api_url=host.url,
                                       github_token=host.token))
    urls = {"web": "http://web-pr-7.preview.localhost"}
    for state, extra in (("creating", {}), ("ready", {"urls": urls}), ("destroyed", {})):
        feedback = Feedback(repository="acme/shop", pr_number=7, head_sha=SHA, state=state,
                            environment_id="shop-pr-7-abc123", **extra)
        await ActivityEnvironment().run(acts.publish_feedback, feedback)
    sent = {(c.method, c.path.split("/")[4]) for c in host.calls}
    assert {("POST", "issues"), ("POST", "statuses"), ("POST", "deployments")} <= sent
    assert host.violations == []


# --- webhook bodies --------------------------------------------------------------------
@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_every_webhook_fixture_is_a_body_github_describes(path: Path) -> None:
    payload = json.loads(path.read_text())
    if "action" in payload:  # the file name says the action the body carries
        assert path.name.split(".")[1] == payload["action"]
    violations = webhook_violations(event_of(path), payload)
    if path.is_relative_to(SHARED):
        # Bodies given to the project (octokit's 2019 examples, not ours to edit): GitHub
        # has sent `has_discussions` in repositories since 2022 and its description
        # requires it; ours have it. Nothing else may differ.
        violations = [v for v in violations
                      if not v.endswith("'has_discussions' is a required property")]
    assert violations == []


@pytest.mark.parametrize("path", REPO_FIXTURES, ids=fixture_id)
def test_the_starter_tests_bodies_from_fixtures_stay_as_described(path: Path) -> None:
    """tests/starter/test_webhooks.py's body_of renumbers the pull request per test."""
    payload = json.loads(body_of(path.name.removesuffix(".json")))
    assert webhook_violations(event_of(path), payload) == []


def _minimal_bodies() -> list[tuple[str, bytes]]:
    """The bodies the starter tests build by hand, with the arguments they give (the
    fields the starter reads, not all GitHub sends): checked as partial bodies."""
    repo = "acme/shop"
    return [
        ("installation", installation_event("deleted", repositories=[{"full_name": repo}])),
        ("installation", installation_event("created", repositories=[
            {"full_name": repo}, {"full_name": "acme/web"}, {"id": 3}])),
        ("installation", installation_event("suspend")),
        ("installation_repositories", installation_event(
            "removed", repository_selection="selected", repositories_added=[],
            repositories_removed=[{"id": 1, "full_name": repo}])),
        ("installation_repositories", installation_event(
            "added", repositories_added=[{"full_name": "a/b"}],
            repositories_removed=[{"full_name": "c/d"}])),
        ("workflow_run", ci_event("workflow_run", repo, SHA, pull_requests=((repo, 3),))),
        ("workflow_run", ci_event("workflow_run", repo, SHA, action="requested")),
        ("check_suite", ci_event("check_suite", repo, SHA)),
        ("check_suite", ci_event("check_suite", repo, SHA, action="rerequested")),
        ("registry_package", package_event(repo)),
        ("package", package_event(repo, "package")),
    ]


@pytest.mark.parametrize(("event", "body"), _minimal_bodies(),
                         ids=lambda v: v if isinstance(v, str) else "")  # fmt: skip
def test_the_starter_tests_minimal_bodies_use_github_names_and_types(
    event: str, body: bytes
) -> None:
    assert webhook_violations(event, json.loads(body), partial=True) == []


def opened() -> dict[str, Any]:
    return json.loads((OURS / "pull_request.opened.json").read_text())


def test_a_webhook_body_without_a_required_field_is_refused_naming_it() -> None:
    payload = opened()
    del payload["pull_request"]["head"]["sha"]
    payload["number"] = str(payload["number"])
    assert webhook_violations("pull_request", payload) == [
        "pull-request-opened: payload.number: '2' is not of type 'integer'",
        "pull-request-opened: payload.pull_request.head: 'sha' is a required property"]


def test_a_webhook_event_github_does_not_send_is_refused() -> None:
    assert webhook_violations("pull_request", {**opened(), "action": "merged"}) == [
        "GitHub's webhook description has no 'pull_request' event with action 'merged'"]


def test_a_partial_body_with_a_misspelt_or_mistyped_field_is_refused() -> None:
    payload = json.loads(package_event("acme/shop"))
    payload["registry_package"]["ecosystem"] = 3
    payload["registry_package"]["package_version"]["container_metadata"]["tags"] = (
        payload["registry_package"]["package_version"]["container_metadata"].pop("tag"))
    assert webhook_violations("registry_package", payload, partial=True) == [
        "registry-package-published: payload.registry_package.ecosystem: 3 is not of type "
        "'string'",
        "registry-package-published: payload.registry_package.package_version."
        "container_metadata.tags: not a property GitHub's schema describes here"]
