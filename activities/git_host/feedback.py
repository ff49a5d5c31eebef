"""Pull request feedback on GitHub and GitLab: one comment kept up to date, one commit
status, and a deployment (GitHub: one per preview and commit, in environment
`preview/pr-N`) or environment (GitLab: `preview/mr-N`, stopped when the preview goes).

Idempotent: the comment is found again by the hidden marker `render_comment` puts on its
first line (following pagination), created only when absent and edited only when its
body changed; the commit status is posted only when it differs from the current one; a
deployment is found again by environment, commit and the environment id in its payload,
and a deployment status is posted only when it differs from the latest one.

Authentication: a personal (or project) token, or on GitHub a GitHub App
(activities/github_app.py), whose installation token is made per repository.

Errors as activities/git_host/api.py says, except 404/422: the pull request or commit
is gone (closed, deleted, force-pushed away), so that part of the feedback is skipped
with a warning. Feedback is best effort and never the reason an environment fails.

Tokens and JWTs are only ever put in a request header: never logged, never in an error.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.git_host.api import (
    GIT_HOST_REJECTED,
    PER_PAGE,
    Api,
    GitHostClients,
    Gone,
    Unauthorized,
    api_message,
)
from domain.contract import PUBLISH_FEEDBACK
from domain.feedback import (
    STATUS_CONTEXT,
    CommitState,
    DeploymentState,
    Feedback,
    commit_state,
    deployment_environment,
    deployment_state,
    is_our_comment,
    render_comment,
)

# GitLab keeps one pending/running status per name; posting the same state again fails.
_GITLAB_STATES: dict[CommitState, str] = {
    "pending": "running",
    "success": "success",
    "failure": "failed",
    "error": "failed",
}

logger = activity.logger


class FeedbackActivities(GitHostClients):
    """Publishes a preview's state on its pull (merge) request.

    GitHub: the GitHub App of the settings when one is configured (`app` overrides it),
    else the personal token. GitLab's URL and token are constructor arguments until
    Settings has `gitlab_api_url` / `gitlab_token`; when Settings has them they are used.
    """

    @activity.defn(name=PUBLISH_FEEDBACK.name)
    async def publish_feedback(self, feedback: Feedback) -> None:
        host = self.github if feedback.provider == "github" else self.gitlab
        if host is None:
            logger.info(
                "Pull request feedback disabled for %s: no %s token configured",
                feedback.repository,
                feedback.provider,
            )
            return
        async with self.client_factory() as client:
            api = Api(client, host)
            if feedback.provider == "gitlab":
                await _skip_if_gone(_gitlab_note(api, feedback), "note", feedback)
                await _skip_if_gone(_gitlab_status(api, feedback), "commit status", feedback)
                await _skip_if_gone(_gitlab_environment(api, feedback), "environment", feedback)
            elif self.app is None:
                await _publish_on_github(api, feedback)
            else:
                await self._publish_as_app(api, feedback)

    async def _publish_as_app(self, api: Api, feedback: Feedback) -> None:
        assert self.app is not None
        for attempt in (1, 2):
            token = await self.app.token(api, feedback.repository)
            try:
                await _publish_on_github(api.with_token(token), feedback)
                return
            except Unauthorized:
                # A cached token GitHub no longer takes (installation suspended or
                # removed, token revoked): drop it and try once with a fresh one.
                self.app.forget(repositories=[feedback.repository])
                if attempt == 2:
                    raise
                logger.info("GitHub refused the cached token of GitHub App %s; renewing it",
                            self.app.app_id)


async def _publish_on_github(api: Api, feedback: Feedback) -> None:
    await _skip_if_gone(_github_comment(api, feedback), "comment", feedback)
    await _skip_if_gone(_github_status(api, feedback), "commit status", feedback)
    await _skip_if_gone(_github_deployment(api, feedback), "deployment", feedback)


async def _skip_if_gone(step: Awaitable[None], what: str, feedback: Feedback) -> None:
    try:
        await step
    except Gone as gone:
        logger.warning(
            "Skipped the %s on %s#%d: %s", what, feedback.repository, feedback.pr_number, gone
        )


def _find_ours(items: list[dict[str, Any]], feedback: Feedback) -> dict[str, Any] | None:
    # The oldest one wins, should a duplicate ever exist.
    for item in items:
        if isinstance(item.get("body"), str) and is_our_comment(
            item["body"], feedback.environment_id
        ):
            return item
    return None


async def _github_comment(api: Api, feedback: Feedback) -> None:
    repo = feedback.repository
    body = render_comment(feedback)
    listing = f"/repos/{repo}/issues/{feedback.pr_number}/comments"
    ours = _find_ours(await api.paginate(listing, {}), feedback)
    if ours is None:
        created = await api.request("POST", listing, json={"body": body})
        logger.info(
            "Commented on %s#%d (comment %s)", repo, feedback.pr_number, created.json().get("id")
        )
    elif ours["body"] != body:
        comment = f"/repos/{repo}/issues/comments/{ours['id']}"
        await api.request("PATCH", comment, json={"body": body})
        logger.info("Updated comment %s on %s#%d", ours["id"], repo, feedback.pr_number)


async def _github_status(api: Api, feedback: Feedback) -> None:
    repo, sha = feedback.repository, feedback.head_sha
    state, description = commit_state(feedback)
    wanted: dict[str, Any] = {
        "state": state,
        "description": description,
        "context": STATUS_CONTEXT,
    }
    if feedback.target_url:
        wanted["target_url"] = feedback.target_url
    # The combined status holds the latest status per context: skip a repeat, since
    # GitHub keeps every status posted (at most 1000 per commit and context).
    combined = (await api.request("GET", f"/repos/{repo}/commits/{sha}/status")).json()
    for current in combined.get("statuses") or []:
        if current.get("context") == STATUS_CONTEXT and _same_status(current, wanted, state):
            return
    await api.request("POST", f"/repos/{repo}/statuses/{sha}", json=wanted)
    logger.info("Set commit status %s on %s@%s", state, repo, sha[:12])


def _same_status(current: dict[str, Any], wanted: dict[str, Any], state: str) -> bool:
    return (
        (current.get("state") or current.get("status")) == state
        and (current.get("description") or "") == wanted["description"]
        and (current.get("target_url") or None) == wanted.get("target_url")
    )


def _is_our_deployment(deployment: dict[str, Any], feedback: Feedback) -> bool:
    payload = deployment.get("payload")
    return isinstance(payload, dict) and payload.get("environment_id") == feedback.environment_id


async def _github_deployment(api: Api, feedback: Feedback) -> None:
    """The deployment of this preview and commit, with a status for its state."""
    state = deployment_state(feedback)
    if state is None:
        return
    repo, environment = feedback.repository, deployment_environment(feedback)
    listing = f"/repos/{repo}/deployments"
    if state == "inactive":
        await _retire_deployments(api, feedback, keep=None)
        return
    found = await api.paginate(listing, {"environment": environment, "sha": feedback.head_sha})
    ours = next((d for d in found if _is_our_deployment(d, feedback)), None)
    if ours is None:
        ours = (await api.request("POST", listing, json={
            "ref": feedback.head_sha,
            "environment": environment,
            "transient_environment": True,
            "production_environment": False,
            "auto_merge": False,
            "required_contexts": [],
            "payload": {"environment_id": feedback.environment_id},
            "description": f"Preview environment {feedback.environment_id}",
        })).json()
        logger.info("Created deployment %s of %s@%s to %s",
                    ours.get("id"), repo, feedback.head_sha[:12], environment)
    await _deployment_status(api, feedback, ours["id"], state)
    if state == "success":
        # GitHub's auto_inactive leaves transient environments alone: retire the
        # deployments of earlier commits here.
        await _retire_deployments(api, feedback, keep=ours["id"])


async def _deployment_status(
    api: Api, feedback: Feedback, deployment_id: int, state: DeploymentState
) -> None:
    path = f"/repos/{feedback.repository}/deployments/{deployment_id}/statuses"
    wanted: dict[str, Any] = {"state": state, "description": commit_state(feedback)[1]}
    if state == "success" and feedback.target_url:
        wanted["environment_url"] = feedback.target_url
    latest = (await api.request("GET", path, params={"per_page": 1})).json()
    if latest and isinstance(latest[0], dict) and (
        latest[0].get("state") == state
        and (latest[0].get("environment_url") or None) == wanted.get("environment_url")
        and (latest[0].get("description") or "") == wanted["description"]
    ):
        return
    await api.request("POST", path, json=wanted)
    logger.info("Deployment %s of %s is %s", deployment_id, feedback.repository, state)


async def _retire_deployments(api: Api, feedback: Feedback, *, keep: int | None) -> None:
    """Mark this preview's deployments inactive (shown as destroyed), but `keep`."""
    response = await api.request(
        "GET", f"/repos/{feedback.repository}/deployments",
        params={"environment": deployment_environment(feedback), "per_page": PER_PAGE},
    )
    # Newest first; every deployment older than an inactive one was retired with it, so
    # the first page is enough and the walk stops there.
    for deployment in response.json():
        if deployment.get("id") == keep or not _is_our_deployment(deployment, feedback):
            continue
        path = f"/repos/{feedback.repository}/deployments/{deployment['id']}/statuses"
        latest = (await api.request("GET", path, params={"per_page": 1})).json()
        if latest and latest[0].get("state") == "inactive":
            break
        await api.request("POST", path, json={
            "state": "inactive", "description": commit_state(feedback)[1]})
        logger.info("Deployment %s of %s is inactive", deployment["id"], feedback.repository)


def _project(feedback: Feedback) -> str:
    # GitLab takes "group/sub/name" as one path segment, with its slashes encoded.
    return quote(feedback.repository, safe="")


async def _gitlab_note(api: Api, feedback: Feedback) -> None:
    body = render_comment(feedback)
    listing = f"/projects/{_project(feedback)}/merge_requests/{feedback.pr_number}/notes"
    notes = await api.paginate(listing, {"sort": "asc", "order_by": "created_at"})
    ours = _find_ours([note for note in notes if not note.get("system")], feedback)
    if ours is None:
        created = await api.request("POST", listing, json={"body": body})
        logger.info(
            "Noted on %s!%d (note %s)",
            feedback.repository,
            feedback.pr_number,
            created.json().get("id"),
        )
    elif ours["body"] != body:
        await api.request("PUT", f"{listing}/{ours['id']}", json={"body": body})
        logger.info("Updated note %s on %s!%d", ours["id"], feedback.repository, feedback.pr_number)


async def _gitlab_status(api: Api, feedback: Feedback) -> None:
    project, sha = _project(feedback), feedback.head_sha
    github_state, description = commit_state(feedback)
    state = _GITLAB_STATES[github_state]
    wanted: dict[str, Any] = {"state": state, "name": STATUS_CONTEXT, "description": description}
    if feedback.target_url:
        wanted["target_url"] = feedback.target_url
    statuses = await api.paginate(
        f"/projects/{project}/repository/commits/{sha}/statuses", {"name": STATUS_CONTEXT}
    )
    ours = [s for s in statuses if s.get("name") == STATUS_CONTEXT]
    latest = max(ours, key=lambda s: int(s.get("id") or 0), default=None)
    if latest is not None and _same_status(latest, wanted, state):
        return
    response = await api.request(
        "POST", f"/projects/{project}/statuses/{sha}", json=wanted, accept=frozenset({400})
    )
    if response.status_code == 400:
        message = api.scrub(api_message(response))
        # Posting the state an active status already has ("Cannot transition status via
        # :run from :running") means a retry after our earlier post: converged.
        if "cannot transition status" in message.lower():
            logger.info("Commit status on %s@%s already %s", feedback.repository, sha[:12], state)
            return
        raise ApplicationError(
            f"GitLab rejected the commit status with 400: {message}",
            type=GIT_HOST_REJECTED,
            non_retryable=True,
        )
    logger.info("Set commit status %s on %s@%s", state, feedback.repository, sha[:12])


async def _gitlab_environment(api: Api, feedback: Feedback) -> None:
    """The merge request's environment: created with the preview, given its URL when
    ready, stopped when the preview is gone."""
    if feedback.state not in ("creating", "updating", "ready", "destroyed"):
        return
    name = deployment_environment(feedback)
    listing = f"/projects/{_project(feedback)}/environments"
    found = [e for e in await api.paginate(listing, {"name": name}) if e.get("name") == name]
    environment = found[0] if found else None
    if feedback.state == "destroyed":
        if environment is not None and environment.get("state") == "available":
            await api.request("POST", f"{listing}/{environment['id']}/stop")
            logger.info("Stopped environment %s of %s", name, feedback.repository)
        return
    if environment is not None and environment.get("state") != "available":
        # A stopped environment cannot be made available again through the API (only a
        # CI deployment does that): replace it.
        await api.request("DELETE", f"{listing}/{environment['id']}")
        environment = None
    url = feedback.target_url if feedback.state == "ready" else None
    if environment is None:
        body: dict[str, Any] = {"name": name, "tier": "development"}
        if url:
            body["external_url"] = url
        await api.request("POST", listing, json=body)
        logger.info("Created environment %s of %s", name, feedback.repository)
    elif url and environment.get("external_url") != url:
        await api.request("PUT", f"{listing}/{environment['id']}", json={"external_url": url})
        logger.info("Environment %s of %s is at %s", name, feedback.repository, url)
