"""Calling GitHub and GitLab: the engine's credentials for each, and one REST client
that handles status codes, retries and pagination the same way for both.

Errors: 5xx, 429, 408, rate-limited 403 and network errors are retried (with the host's
Retry-After as the next delay when it gives one). Other 4xx are raised non-retryable with
the host's message, except 404/422 (`Gone`): the caller decides what a missing pull
request, commit or file means.

Tokens and JWTs are only ever put in a request header: never logged, never in an error.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.github_app import GitHubApp
from engine.settings import Settings

GIT_HOST_REJECTED = "GitHostRejected"  # non-retryable: a person must fix token or access
GIT_HOST_UNAVAILABLE = "GitHostUnavailable"  # retryable: outage, rate limit, network

DEFAULT_GITLAB_API_URL = "https://gitlab.com/api/v4"
PER_PAGE = 100
MAX_PAGES = 50  # 5000 comments: far beyond any real pull request; stops a paging loop
MAX_RETRY_DELAY = timedelta(minutes=15)
RETRYABLE = {408, 429}

logger = activity.logger


class Gone(Exception):
    """404/422: the pull request, project or commit no longer exists (or is not visible)."""


class Unauthorized(ApplicationError):
    """401: the host refused the credential (a GitHub App's token may just be revoked)."""


@dataclass(frozen=True)
class Host:
    name: str  # "GitHub" or "GitLab", for messages
    api_url: str  # without trailing slash
    headers: dict[str, str]  # sent with every request, the credential aside
    credential: Callable[[str], dict[str, str]]  # token → its header
    token: str  # the configured token; "" when a GitHub App makes one per repository
    advice: str  # what a person checks when the host refuses a call

    def url(self, path: str) -> str:
        return f"{self.api_url}{path}"


class Api:
    """One host's REST API over a client, with one credential: status handling and
    pagination."""

    def __init__(self, client: httpx.AsyncClient, host: Host, token: str | None = None) -> None:
        self._client = client
        self._host = host
        self._token = host.token if token is None else token

    def with_token(self, token: str) -> Api:
        return Api(self._client, self._host, token)

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
        message = self.scrub(api_message(response), authorization)
        if status in (404, 422):
            raise Gone(f"{where}: {status} {message}")
        if status >= 500 or status in RETRYABLE or rate_limited(response):
            raise ApplicationError(
                f"{self._host.name} {where} failed with {status}: {message}",
                type=GIT_HOST_UNAVAILABLE,
                next_retry_delay=retry_after(response),
            )
        raise (Unauthorized if status == 401 else ApplicationError)(
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
            if url is not None and not same_origin(url, self._host.api_url):
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


def api_message(response: httpx.Response) -> str:
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


def rate_limited(response: httpx.Response) -> bool:
    # GitHub answers an exhausted or secondary rate limit with 403, not 429.
    return response.status_code == 403 and (
        response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
    )


def retry_after(response: httpx.Response) -> timedelta | None:
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


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def secret_text(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


@cache
def tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~70 ms: do it once, not for every client.
    return httpx.create_ssl_context()


def default_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(15.0, connect=5.0))


GITHUB_HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
    "User-Agent": "preview-engine",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def private_token(token: str) -> dict[str, str]:
    return {"PRIVATE-TOKEN": token}


class GitHostClients:
    """The engine's hosts: GitHub through the GitHub App of the settings when one is
    configured (`app` overrides it), else the personal token; GitLab's URL and token are
    constructor arguments until Settings has `gitlab_api_url` / `gitlab_token`; when
    Settings has them they are used. A host without credentials is None."""

    def __init__(
        self,
        settings: Settings,
        *,
        app: GitHubApp | None = None,
        gitlab_api_url: str | None = None,
        gitlab_token: SecretStr | str | None = None,
        client_factory: Callable[[], httpx.AsyncClient] = default_client,
    ) -> None:
        self.app = app or GitHubApp.from_settings(settings)
        github_token = "" if self.app else secret_text(settings.github_token)
        self.github: Host | None = (
            Host(
                name="GitHub",
                api_url=settings.github_api_url.rstrip("/"),
                headers=GITHUB_HEADERS,
                credential=bearer,
                token=github_token,
                advice=(
                    f"Check that GitHub App {self.app.app_id} is installed on this repository "
                    "with write access to pull requests, commit statuses and deployments."
                    if self.app else "Check the token's access to this repository."
                ),
            )
            if self.app or github_token
            else None
        )
        gitlab_url = (
            gitlab_api_url or getattr(settings, "gitlab_api_url", None) or DEFAULT_GITLAB_API_URL
        )
        token = secret_text(gitlab_token) or secret_text(getattr(settings, "gitlab_token", None))
        self.gitlab: Host | None = (
            Host(
                name="GitLab",
                api_url=str(gitlab_url).rstrip("/"),
                headers={"User-Agent": "preview-engine"},
                credential=private_token,
                token=token,
                advice="Check the token's access to this repository.",
            )
            if token
            else None
        )
        self.client_factory = client_factory


    def host_for(self, provider: str, without: str) -> Host:
        """The host a request goes to; without its credentials, a non-retryable error:
        `without` (with `{provider}` in it) and what to set."""
        host = self.github if provider == "github" else self.gitlab
        if host is None:
            raise ApplicationError(
                f"{without.format(provider=provider)}: set PREVIEW_{provider.upper()}_TOKEN "
                "(or a GitHub App)", type=GIT_HOST_REJECTED, non_retryable=True)
        return host

    @asynccontextmanager
    async def reading(self, provider: str, repository: str, without: str,
                      ) -> AsyncIterator[Api]:
        """An API client to read `repository` with (a GitHub App's token is made for
        that repository); `without`: as for host_for."""
        host = self.host_for(provider, without)
        async with self.client_factory() as client:
            api = Api(client, host)
            if provider == "github" and self.app is not None:
                api = api.with_token(await self.app.token(api, repository))
            yield api
