"""GitHub App authentication: the app's JWT, and installation tokens made from it.

The app proves who it is with a JWT (RS256, signed with the app's private key, at most
ten minutes long), trades it for an installation token (`POST /app/installations/{id}/
access_tokens`, valid for an hour) and calls the repository endpoints with that token.
The installation of a repository is configured or looked up once (`GET /repos/{owner}/
{repo}/installation`) and cached; a token is cached per installation until shortly
before it expires. Concurrent callers wait for one refresh instead of each making one.

`installation` and `installation_repositories` webhooks call `forget`; where they cannot
reach this process (the starter and the worker are separate processes), a cached
installation id is looked up again after LOOKUP_TTL, and a token GitHub refuses is
dropped by the caller (see activities/git_host/feedback.py).

Neither the JWT nor a token is ever logged or put in an error: errors name the app id and
the installation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from temporalio.exceptions import ApplicationError

from engine.settings import Settings

GITHUB_APP_REJECTED = "GitHubAppRejected"  # non-retryable: app id, key or installation wrong

JWT_BACKDATE = 60  # seconds: GitHub's advice against clock drift
JWT_LIFETIME = 600  # seconds from `iat`: GitHub refuses a JWT valid for longer
TOKEN_REFRESH_MARGIN = 300  # seconds before `expires_at` a token is replaced
LOOKUP_TTL = 3600  # seconds a repository's looked-up installation is trusted


class GitHubAppMisconfigured(ValueError):
    """The app settings are incomplete or the private key is unusable; names the setting."""


class AppApi(Protocol):
    """The slice of the Git host API client this module calls (activities/git_host/api.py)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        accept: frozenset[int] = frozenset(),
        authorization: str | None = None,
    ) -> httpx.Response: ...


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # epoch seconds


@dataclass(frozen=True)
class _Lookup:
    installation_id: int
    at: float  # epoch seconds


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _load_key(pem: str, setting: str) -> rsa.RSAPrivateKey:
    # A key pasted into an environment variable often arrives with literal "\n".
    if "\n" not in pem.strip() and "\\n" in pem:
        pem = pem.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        # Never the key's text in the message.
        raise GitHubAppMisconfigured(
            f"{setting} is not a PEM private key without a passphrase (the .pem file GitHub "
            "gives for the app)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise GitHubAppMisconfigured(f"{setting} is not an RSA key; GitHub Apps use RS256")
    return key


class GitHubApp:
    """One GitHub App: its JWT, and an installation token per installation."""

    def __init__(
        self,
        app_id: str,
        private_key_pem: str,
        *,
        installation_id: int | None = None,
        clock: Callable[[], float] = time.time,
        key_setting: str = "PREVIEW_GITHUB_APP_PRIVATE_KEY",
    ) -> None:
        self.app_id = app_id
        self._key = _load_key(private_key_pem, key_setting)
        self._configured = installation_id
        self._clock = clock
        self._tokens: dict[int, _Token] = {}
        self._lookups: dict[str, _Lookup] = {}  # lower-cased owner/name → installation
        self._token_locks: dict[int, asyncio.Lock] = {}
        self._lookup_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> GitHubApp | None:
        """The configured app, or None when no app id is set (personal tokens are used)."""
        pem = settings.github_app_private_key
        path = settings.github_app_private_key_file
        if not settings.github_app_id:
            if pem is not None or path is not None or settings.github_app_installation_id:
                raise GitHubAppMisconfigured(
                    "a GitHub App key or installation is set but PREVIEW_GITHUB_APP_ID is not")
            return None
        if pem is not None and path is not None:
            raise GitHubAppMisconfigured(
                "set one of PREVIEW_GITHUB_APP_PRIVATE_KEY and PREVIEW_GITHUB_APP_PRIVATE_KEY_FILE")
        if pem is not None:
            text, setting = pem.get_secret_value(), "PREVIEW_GITHUB_APP_PRIVATE_KEY"
        elif path is not None:
            setting = "PREVIEW_GITHUB_APP_PRIVATE_KEY_FILE"
            try:
                text = Path(path).read_text()
            except OSError as error:
                raise GitHubAppMisconfigured(
                    f"{setting}: cannot read {path}: {error.strerror}") from None
        else:
            raise GitHubAppMisconfigured(
                f"GitHub App {settings.github_app_id} has no private key: set "
                "PREVIEW_GITHUB_APP_PRIVATE_KEY_FILE (or PREVIEW_GITHUB_APP_PRIVATE_KEY)")
        return cls(settings.github_app_id, text,
                   installation_id=settings.github_app_installation_id, key_setting=setting)

    def jwt(self) -> str:
        """A fresh app JWT: issued a minute in the past, valid ten minutes from then."""
        now = int(self._clock())
        header = {"alg": "RS256", "typ": "JWT"}
        # `iss` a string (RFC 7519's StringOrURI): GitHub takes the app id or client id so.
        claims = {"iat": now - JWT_BACKDATE, "exp": now - JWT_BACKDATE + JWT_LIFETIME,
                  "iss": self.app_id}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def token(self, api: AppApi, repository: str) -> str:
        """An installation token that can act on `repository` (owner/name)."""
        installation, looked_up = await self._installation(api, repository)
        token = await self._installation_token(api, installation)
        if token is None and looked_up:
            # Uninstalled (and perhaps installed again under a new id) since the lookup.
            self.forget(installation_id=installation)
            installation, _ = await self._installation(api, repository)
            token = await self._installation_token(api, installation)
        if token is None:
            raise ApplicationError(
                f"installation {installation} of GitHub App {self.app_id} was not found: "
                + ("check PREVIEW_GITHUB_APP_INSTALLATION_ID" if self._configured else
                   f"was the app uninstalled from {repository}?"),
                type=GITHUB_APP_REJECTED,
                non_retryable=True,
            )
        return token

    def forget(self, *, installation_id: int | None = None,
               repositories: Iterable[str] = ()) -> None:
        """Drop what is cached for an installation and for repositories: their looked-up
        installation ids and those installations' tokens."""
        installations = {installation_id} if installation_id is not None else set()
        for repository in repositories:
            lookup = self._lookups.pop(repository.lower(), None)
            if lookup is not None:
                installations.add(lookup.installation_id)
            elif self._configured is not None:
                installations.add(self._configured)
        for name, lookup in list(self._lookups.items()):
            if lookup.installation_id in installations:
                del self._lookups[name]
        for installation in installations:
            self._tokens.pop(installation, None)

    # -- internals ---------------------------------------------------------------------

    async def _installation(self, api: AppApi, repository: str) -> tuple[int, bool]:
        """The installation for a repository, and whether it was looked up."""
        if self._configured is not None:
            return self._configured, False
        name = repository.lower()
        async with self._lookup_locks.setdefault(name, asyncio.Lock()):
            cached = self._lookups.get(name)
            if cached is not None and self._clock() - cached.at < LOOKUP_TTL:
                return cached.installation_id, True
            response = await self._as_app(api, "GET", f"/repos/{repository}/installation")
            if response.status_code == 404:
                raise ApplicationError(
                    f"GitHub App {self.app_id} is not installed on {repository}: install it on "
                    "the repository (or its owner), or set PREVIEW_GITHUB_APP_INSTALLATION_ID",
                    type=GITHUB_APP_REJECTED,
                    non_retryable=True,
                )
            installation = _number(response, "id", f"installation of {repository}")
            self._lookups[name] = _Lookup(installation, self._clock())
            return installation, True

    async def _installation_token(self, api: AppApi, installation: int) -> str | None:
        """A cached or fresh token; None when GitHub has no such installation."""
        async with self._token_locks.setdefault(installation, asyncio.Lock()):
            cached = self._tokens.get(installation)
            if cached is not None and cached.expires_at - TOKEN_REFRESH_MARGIN > self._clock():
                return cached.value
            response = await self._as_app(
                api, "POST", f"/app/installations/{installation}/access_tokens")
            if response.status_code == 404:
                return None
            body = response.json() if response.content else None
            value = body.get("token") if isinstance(body, dict) else None
            expires = body.get("expires_at") if isinstance(body, dict) else None
            try:
                expires_at = datetime.fromisoformat(str(expires)).timestamp()
            except ValueError:
                expires_at = None
            if not isinstance(value, str) or not value or expires_at is None:
                raise ApplicationError(
                    f"GitHub answered the token request of GitHub App {self.app_id} for "
                    f"installation {installation} without a token and expiry",
                    type=GITHUB_APP_REJECTED,
                    non_retryable=True,
                )
            # Used for this call even when it expires within the margin.
            self._tokens[installation] = _Token(value, expires_at)
            return value

    async def _as_app(self, api: AppApi, method: str, path: str) -> httpx.Response:
        response = await api.request(method, path, authorization=f"Bearer {self.jwt()}",
                                     accept=frozenset({401, 404}))
        if response.status_code == 401:
            raise ApplicationError(
                f"GitHub refused the JWT of GitHub App {self.app_id} for {method} {path}: "
                "check PREVIEW_GITHUB_APP_ID, that the private key is this app's, and the "
                "worker's clock",
                type=GITHUB_APP_REJECTED,
                non_retryable=True,
            )
        return response


def _number(response: httpx.Response, key: str, what: str) -> int:
    body = response.json() if response.content else None
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, int):
        raise ApplicationError(f"GitHub answered without the {what}",
                               type=GITHUB_APP_REJECTED, non_retryable=True)
    return value
