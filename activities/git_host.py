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

Errors: 5xx, 429, 408, rate-limited 403 and network errors are retried (with the host's
Retry-After as the next delay when it gives one). Other 4xx are raised non-retryable with
the host's message, except 404/422: the pull request or commit is gone (closed, deleted,
force-pushed away), so that part of the feedback is skipped with a warning. Feedback is
best effort and never the reason an environment fails.

Tokens and JWTs are only ever put in a request header: never logged, never in an error.
"""

from __future__ import annotations

import base64
import binascii
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.github_app import GitHubApp
from domain.contract import LIST_CHANGED_FILES, PUBLISH_FEEDBACK, READ_REPOSITORY_FILE
from domain.feedback import (
    STATUS_CONTEXT,
    ChangedFilesRequest,
    CommitState,
    DeploymentState,
    Feedback,
    RepositoryFileRequest,
    commit_state,
    deployment_environment,
    deployment_state,
    is_our_comment,
    render_comment,
)
from engine.settings import Settings

GIT_HOST_REJECTED = "GitHostRejected"  # non-retryable: a person must fix token or access
GIT_HOST_UNAVAILABLE = "GitHostUnavailable"  # retryable: outage, rate limit, network

DEFAULT_GITLAB_API_URL = "https://gitlab.com/api/v4"
PER_PAGE = 100
MAX_PAGES = 50  # 5000 comments: far beyond any real pull request; stops a paging loop
MAX_RETRY_DELAY = timedelta(minutes=15)
_RETRYABLE = {408, 429}
# GitLab keeps one pending/running status per name; posting the same state again fails.
_GITLAB_STATES: dict[CommitState, str] = {
    "pending": "running",
    "success": "success",
    "failure": "failed",
    "error": "failed",
}

logger = activity.logger


class _Gone(Exception):
    """404/422: the pull request, project or commit no longer exists (or is not visible)."""


class _Unauthorized(ApplicationError):
    """401: the host refused the credential (a GitHub App's token may just be revoked)."""


@dataclass(frozen=True)
class _Host:
    name: str  # "GitHub" or "GitLab", for messages
    api_url: str  # without trailing slash
    headers: dict[str, str]  # sent with every request, the credential aside
    credential: Callable[[str], dict[str, str]]  # token → its header
    token: str  # the configured token; "" when a GitHub App makes one per repository
    advice: str  # what a person checks when the host refuses a call

    def url(self, path: str) -> str:
        return f"{self.api_url}{path}"


class _Api:
    """One host's REST API over a client, with one credential: status handling and
    pagination."""

    def __init__(self, client: httpx.AsyncClient, host: _Host, token: str | None = None) -> None:
        self._client = client
        self._host = host
        self._token = host.token if token is None else token

    def with_token(self, token: str) -> _Api:
        return _Api(self._client, self._host, token)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        accept: frozenset[int] = frozenset(),
        authorization: str | None = None,
    ) -> httpx.Response:
        """One call; `authorization` replaces the token's header (a GitHub App's JWT)."""
        url = path if path.startswith(("http://", "https://")) else self._host.url(path)
        where = f"{method} {urlsplit(url).path}"
        headers = dict(self._host.headers)
        if authorization is not None:
            headers["Authorization"] = authorization
        elif self._token:
            headers.update(self._host.credential(self._token))
        try:
            response = await self._client.request(
                method, url, json=json, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            # The exception text holds the URL at most, never headers; scrub anyway.
            raise ApplicationError(
                self.scrub(f"{self._host.name} unreachable for {where}: {exc!r}", authorization),
                type=GIT_HOST_UNAVAILABLE,
            ) from None
        status = response.status_code
        if response.is_success or status in accept:
            return response
        message = self.scrub(_api_message(response), authorization)
        if status in (404, 422):
            raise _Gone(f"{where}: {status} {message}")
        if status >= 500 or status in _RETRYABLE or _rate_limited(response):
            raise ApplicationError(
                f"{self._host.name} {where} failed with {status}: {message}",
                type=GIT_HOST_UNAVAILABLE,
                next_retry_delay=_retry_after(response),
            )
        raise (_Unauthorized if status == 401 else ApplicationError)(
            f"{self._host.name} rejected {where} with {status}: {message}. {self._host.advice}",
            type=GIT_HOST_REJECTED,
            non_retryable=True,
        )

    async def paginate(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a listing, following the Link header (both hosts send one)."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        query: dict[str, Any] | None = {**params, "per_page": PER_PAGE}
        for _ in range(MAX_PAGES):
            if url is None:
                return items
            response = await self.request("GET", url, params=query)
            page = response.json()
            if not isinstance(page, list):
                raise ApplicationError(
                    f"{self._host.name} returned a non-list page for {urlsplit(url).path}",
                    type=GIT_HOST_UNAVAILABLE,
                )
            items.extend(item for item in page if isinstance(item, dict))
            url = response.links.get("next", {}).get("url")
            query = None  # the next link carries the query
            if url is not None and not _same_origin(url, self._host.api_url):
                # Never send the token to a host other than the configured API.
                raise ApplicationError(
                    f"{self._host.name} pagination pointed outside {self._host.api_url}",
                    type=GIT_HOST_REJECTED,
                    non_retryable=True,
                )
        logger.warning("Stopped listing %s after %d pages", path, MAX_PAGES)
        return items

    def scrub(self, text: str, *more: str | None) -> str:
        for secret in (self._token, self._host.token, *more):
            if secret:
                text = text.replace(secret, "***")
                if secret.startswith("Bearer "):  # a JWT: the header without its scheme
                    text = text.replace(secret.removeprefix("Bearer "), "***")
        return text


def _api_message(response: httpx.Response) -> str:
    """The host's own explanation: GitHub and GitLab both send {"message": ...}."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "error_description", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


def _rate_limited(response: httpx.Response) -> bool:
    # GitHub answers an exhausted or secondary rate limit with 403, not 429.
    return response.status_code == 403 and (
        response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
    )


def _retry_after(response: httpx.Response) -> timedelta | None:
    seconds: float | None = None
    retry_after = response.headers.get("retry-after", "")
    reset = response.headers.get("x-ratelimit-reset", "")
    if retry_after.isdigit():
        seconds = float(retry_after)
    elif response.headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        seconds = float(reset) - time.time()
    if seconds is None:
        return None
    return min(timedelta(seconds=max(seconds, 1.0)), MAX_RETRY_DELAY)


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _secret(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


@cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~70 ms: do it once, not for every client.
    return httpx.create_ssl_context()


def _default_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=_tls_context(), timeout=httpx.Timeout(15.0, connect=5.0))


_GITHUB_HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
    "User-Agent": "preview-engine",
}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _private_token(token: str) -> dict[str, str]:
    return {"PRIVATE-TOKEN": token}


class FeedbackActivities:
    """Publishes a preview's state on its pull (merge) request.

    GitHub: the GitHub App of the settings when one is configured (`app` overrides it),
    else the personal token. GitLab's URL and token are constructor arguments until
    Settings has `gitlab_api_url` / `gitlab_token`; when Settings has them they are used.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        app: GitHubApp | None = None,
        gitlab_api_url: str | None = None,
        gitlab_token: SecretStr | str | None = None,
        client_factory: Callable[[], httpx.AsyncClient] = _default_client,
    ) -> None:
        self._app = app or GitHubApp.from_settings(settings)
        github_token = "" if self._app else _secret(settings.github_token)
        self._github: _Host | None = (
            _Host(
                name="GitHub",
                api_url=settings.github_api_url.rstrip("/"),
                headers=_GITHUB_HEADERS,
                credential=_bearer,
                token=github_token,
                advice=(
                    f"Check that GitHub App {self._app.app_id} is installed on this repository "
                    "with write access to pull requests, commit statuses and deployments."
                    if self._app else "Check the token's access to this repository."
                ),
            )
            if self._app or github_token
            else None
        )
        gitlab_url = (
            gitlab_api_url or getattr(settings, "gitlab_api_url", None) or DEFAULT_GITLAB_API_URL
        )
        token = _secret(gitlab_token) or _secret(getattr(settings, "gitlab_token", None))
        self._gitlab: _Host | None = (
            _Host(
                name="GitLab",
                api_url=str(gitlab_url).rstrip("/"),
                headers={"User-Agent": "preview-engine"},
                credential=_private_token,
                token=token,
                advice="Check the token's access to this repository.",
            )
            if token
            else None
        )
        self._client_factory = client_factory

    @activity.defn(name=PUBLISH_FEEDBACK.name)
    async def publish_feedback(self, feedback: Feedback) -> None:
        host = self._github if feedback.provider == "github" else self._gitlab
        if host is None:
            logger.info(
                "Pull request feedback disabled for %s: no %s token configured",
                feedback.repository,
                feedback.provider,
            )
            return
        async with self._client_factory() as client:
            api = _Api(client, host)
            if feedback.provider == "gitlab":
                await _skip_if_gone(_gitlab_note(api, feedback), "note", feedback)
                await _skip_if_gone(_gitlab_status(api, feedback), "commit status", feedback)
                await _skip_if_gone(_gitlab_environment(api, feedback), "environment", feedback)
            elif self._app is None:
                await _publish_on_github(api, feedback)
            else:
                await self._publish_as_app(api, feedback)

    def _host_for(self, provider: str, without: str) -> _Host:
        """The host a request goes to; without its credentials, a non-retryable error:
        `without` (with `{provider}` in it) and what to set."""
        host = self._github if provider == "github" else self._gitlab
        if host is None:
            raise ApplicationError(
                f"{without.format(provider=provider)}: set PREVIEW_{provider.upper()}_TOKEN "
                "(or a GitHub App)", type=GIT_HOST_REJECTED, non_retryable=True)
        return host

    @activity.defn(name=LIST_CHANGED_FILES.name)
    async def list_changed_files(self, request: ChangedFilesRequest) -> list[str]:
        """Every path the PR adds, changes, removes or renames (both names of a rename),
        for the blueprint's path filters."""
        host = self._host_for(request.provider, f"the blueprint of {request.repository} "
                              "filters by path, and the engine has no {provider} credentials "
                              "to list a pull request's files")
        async with self._client_factory() as client:
            api = _Api(client, host)
            if request.provider == "gitlab":
                items = await api.paginate(f"/projects/{quote(request.repository, safe='')}"
                                           f"/merge_requests/{request.pr_number}/diffs", {})
                names = ("new_path", "old_path")
            else:
                if self._app is not None:
                    api = api.with_token(await self._app.token(api, request.repository))
                items = await api.paginate(
                    f"/repos/{request.repository}/pulls/{request.pr_number}/files", {})
                names = ("filename", "previous_filename")
        paths = {item[name] for item in items for name in names
                 if isinstance(item.get(name), str)}
        return sorted(paths)[: request.max_files]

    @activity.defn(name=READ_REPOSITORY_FILE.name)
    async def read_repository_file(self, request: RepositoryFileRequest) -> str:
        """A file's text at a commit: GitHub's contents API, GitLab's repository files
        API (both answer base64). A file that is not there is a user's error, named."""
        host = self._host_for(request.provider, f"the blueprint of {request.repository} "
                              f"reads {request.path} from the repository, and the engine has "
                              "no {provider} credentials")
        where = f"{request.path} of {request.repository} at {request.ref[:12]}"
        async with self._client_factory() as client:
            api = _Api(client, host)
            if request.provider == "gitlab":
                path = (f"/projects/{quote(request.repository, safe='')}/repository/files/"
                        f"{quote(request.path, safe='')}")
            else:
                if self._app is not None:
                    api = api.with_token(await self._app.token(api, request.repository))
                path = f"/repos/{request.repository}/contents/{quote(request.path)}"
            try:
                answer = (await api.request("GET", path, params={"ref": request.ref})).json()
            except _Gone:
                raise ApplicationError(f"there is no file {where}", type=GIT_HOST_REJECTED,
                                       non_retryable=True) from None
        if not isinstance(answer, dict) or answer.get("encoding") != "base64" or (
                answer.get("type", "file") != "file"):
            raise ApplicationError(f"{where} is not a file", type=GIT_HOST_REJECTED,
                                   non_retryable=True)
        try:
            return base64.b64decode(answer.get("content") or "").decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApplicationError(f"{where} is not UTF-8 text", type=GIT_HOST_REJECTED,
                                   non_retryable=True) from None

    async def _publish_as_app(self, api: _Api, feedback: Feedback) -> None:
        assert self._app is not None
        for attempt in (1, 2):
            token = await self._app.token(api, feedback.repository)
            try:
                await _publish_on_github(api.with_token(token), feedback)
                return
            except _Unauthorized:
                # A cached token GitHub no longer takes (installation suspended or
                # removed, token revoked): drop it and try once with a fresh one.
                self._app.forget(repositories=[feedback.repository])
                if attempt == 2:
                    raise
                logger.info("GitHub refused the cached token of GitHub App %s; renewing it",
                            self._app.app_id)


async def _publish_on_github(api: _Api, feedback: Feedback) -> None:
    await _skip_if_gone(_github_comment(api, feedback), "comment", feedback)
    await _skip_if_gone(_github_status(api, feedback), "commit status", feedback)
    await _skip_if_gone(_github_deployment(api, feedback), "deployment", feedback)


async def _skip_if_gone(step: Awaitable[None], what: str, feedback: Feedback) -> None:
    try:
        await step
    except _Gone as gone:
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


async def _github_comment(api: _Api, feedback: Feedback) -> None:
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


async def _github_status(api: _Api, feedback: Feedback) -> None:
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


async def _github_deployment(api: _Api, feedback: Feedback) -> None:
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
    api: _Api, feedback: Feedback, deployment_id: int, state: DeploymentState
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


async def _retire_deployments(api: _Api, feedback: Feedback, *, keep: int | None) -> None:
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


async def _gitlab_note(api: _Api, feedback: Feedback) -> None:
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


async def _gitlab_status(api: _Api, feedback: Feedback) -> None:
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
        message = api.scrub(_api_message(response))
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


async def _gitlab_environment(api: _Api, feedback: Feedback) -> None:
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
