"""Pull request feedback on GitHub and GitLab: one comment kept up to date, one commit status.

Idempotent: the comment is found again by the hidden marker `render_comment` puts on its
first line (following pagination), created only when absent and edited only when its
body changed; the commit status is posted only when it differs from the current one.

Errors: 5xx, 429, 408, rate-limited 403 and network errors are retried (with the host's
Retry-After as the next delay when it gives one). Other 4xx are raised non-retryable with
the host's message, except 404/422: the pull request or commit is gone (closed, deleted,
force-pushed away), so that part of the feedback is skipped with a warning. Feedback is
best effort and never the reason an environment fails.

The token is only ever put in a request header: never logged, never in an error.
"""

from __future__ import annotations

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

from domain.contract import PUBLISH_FEEDBACK
from domain.feedback import (
    STATUS_CONTEXT,
    CommitState,
    Feedback,
    commit_state,
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


@dataclass(frozen=True)
class _Host:
    name: str  # "GitHub" or "GitLab", for messages
    api_url: str  # without trailing slash
    auth_headers: dict[str, str]
    token: str  # only to scrub it from any text that could reach a log or an error

    def url(self, path: str) -> str:
        return f"{self.api_url}{path}"


class _Api:
    """One host's REST API over a client: status handling and pagination."""

    def __init__(self, client: httpx.AsyncClient, host: _Host) -> None:
        self._client = client
        self._host = host

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        url = path if path.startswith(("http://", "https://")) else self._host.url(path)
        where = f"{method} {urlsplit(url).path}"
        try:
            response = await self._client.request(
                method, url, json=json, params=params, headers=self._host.auth_headers
            )
        except httpx.TransportError as exc:
            # The exception text holds the URL at most, never headers; scrub anyway.
            raise ApplicationError(
                self.scrub(f"{self._host.name} unreachable for {where}: {exc!r}"),
                type=GIT_HOST_UNAVAILABLE,
            ) from None
        status = response.status_code
        if response.is_success or status in accept:
            return response
        message = self.scrub(_api_message(response))
        if status in (404, 422):
            raise _Gone(f"{where}: {status} {message}")
        if status >= 500 or status in _RETRYABLE or _rate_limited(response):
            raise ApplicationError(
                f"{self._host.name} {where} failed with {status}: {message}",
                type=GIT_HOST_UNAVAILABLE,
                next_retry_delay=_retry_after(response),
            )
        raise ApplicationError(
            f"{self._host.name} rejected {where} with {status}: {message}. "
            "Check the token's access to this repository.",
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

    def scrub(self, text: str) -> str:
        return text.replace(self._host.token, "***") if self._host.token else text


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


class FeedbackActivities:
    """Publishes a preview's state on its pull (merge) request.

    GitLab's URL and token are constructor arguments until Settings has
    `gitlab_api_url` / `gitlab_token`; when Settings has them they are used.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        gitlab_api_url: str | None = None,
        gitlab_token: SecretStr | str | None = None,
        client_factory: Callable[[], httpx.AsyncClient] = _default_client,
    ) -> None:
        github_token = _secret(settings.github_token)
        self._github: _Host | None = (
            _Host(
                name="GitHub",
                api_url=settings.github_api_url.rstrip("/"),
                auth_headers={
                    "Authorization": f"Bearer {github_token}",
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28",
                    "User-Agent": "preview-engine",
                },
                token=github_token,
            )
            if github_token
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
                auth_headers={"PRIVATE-TOKEN": token, "User-Agent": "preview-engine"},
                token=token,
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
            if feedback.provider == "github":
                await _skip_if_gone(_github_comment(api, feedback), "comment", feedback)
                await _skip_if_gone(_github_status(api, feedback), "commit status", feedback)
            else:
                await _skip_if_gone(_gitlab_note(api, feedback), "note", feedback)
                await _skip_if_gone(_gitlab_status(api, feedback), "commit status", feedback)


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
