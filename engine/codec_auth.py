"""Who may call the starter's /codec, by PREVIEW_CODEC_AUTH.

- `token`: `Authorization: Bearer <PREVIEW_CODEC_TOKEN>` (CLIs, or an authenticating proxy
  that adds it upstream after signing the operator in).
- `oidc`: the access token the Temporal Web UI forwards in its "pass access token" mode, a
  JWT verified against the issuer's published keys (JWKS), its issuer and audience.
- `none`: anyone who reaches it; only in the local profile, on a loopback bind, and only for
  requests addressed to a loopback host name (so a page that rebinds its own DNS name to
  127.0.0.1 is not served). Browsers of other origins are kept out by CORS.

A refusal says what is missing and never repeats the credential it was given.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from engine.settings import InsecureSettings, Settings

# Asymmetric only: a JWKS is public, so an HMAC key published in it would let anyone sign.
ALGORITHMS = ["RS256", "ES256"]


class CodecAccessDenied(Exception):
    """A /codec request without the credential its mode needs (answered 401)."""


class IssuerUnavailable(Exception):
    """The OIDC issuer's keys could not be fetched: not the caller's fault (answered 503)."""


def same_secret(expected: str, given: str) -> bool:
    """Constant-time comparison that also takes header values with non-ASCII bytes."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bearer(headers: Mapping[str, str]) -> str:
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


class JwksCache:
    """The issuer's signing keys, fetched with httpx and kept for `ttl` seconds.

    A token signed by a key not seen yet triggers one early refetch (the issuer rotated its
    keys), at most every `refetch_after` seconds so bad tokens cannot hammer the issuer.
    """

    def __init__(self, issuer: str, jwks_url: str | None = None, *, ttl: float = 600,
                 refetch_after: float = 30, timeout: float = 5) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.ttl = ttl
        self.refetch_after = refetch_after
        self.timeout = timeout
        self._keys: jwt.PyJWKSet | None = None
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    async def key(self, key_id: str | None) -> jwt.PyJWK:
        async with self._lock:
            if self._keys is None or self._age() > self.ttl:
                await self._refresh()
            found = self._find(key_id)
            if found is None and self._age() > self.refetch_after:
                await self._refresh()
                found = self._find(key_id)
        if found is None:
            raise CodecAccessDenied(f"access token is signed by a key {self.issuer} does not "
                                    "publish")
        return found

    def _age(self) -> float:
        return time.monotonic() - self._fetched_at

    def _find(self, key_id: str | None) -> jwt.PyJWK | None:
        keys = self._keys.keys if self._keys else []
        if key_id is None:  # allowed only when the issuer has a single key
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.key_id == key_id), None)

    async def _refresh(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                url = self.jwks_url or await self._discover(http)
                answer = await http.get(url)
                answer.raise_for_status()
                self._keys = jwt.PyJWKSet.from_dict(answer.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as error:
            if self._keys is None:  # keep serving with the keys we had
                raise IssuerUnavailable(
                    f"keys of {self.issuer} unavailable: {type(error).__name__}") from error
        self._fetched_at = time.monotonic()

    async def _discover(self, http: httpx.AsyncClient) -> str:
        answer = await http.get(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
        answer.raise_for_status()
        url = answer.json().get("jwks_uri")
        if not isinstance(url, str):
            raise ValueError("openid-configuration has no jwks_uri")
        self.jwks_url = url
        return url


class CodecGate:
    """Admits or refuses one /codec request according to the settings' codec_auth mode."""

    def __init__(self, settings: Settings, *, jwks: JwksCache | None = None) -> None:
        self.mode = settings.codec_auth
        self._token = settings.codec_token.get_secret_value()
        self.issuer = settings.codec_oidc_issuer or ""
        self.audience = settings.codec_oidc_audience or ""
        if self.mode == "none" and (settings.profile != "local"
                                    or not _is_loopback(settings.listen_host)):
            raise InsecureSettings(
                "starter: PREVIEW_CODEC_AUTH=none is accepted only with PREVIEW_PROFILE=local "
                f"and a loopback PREVIEW_LISTEN_HOST (got {settings.profile}, "
                f"{settings.listen_host}); use token or oidc")
        if self.mode == "oidc" and not (self.issuer and self.audience):
            missing = [name for name, value in (("PREVIEW_CODEC_OIDC_ISSUER", self.issuer),
                                                ("PREVIEW_CODEC_OIDC_AUDIENCE", self.audience))
                       if not value]
            raise InsecureSettings(
                f"starter: PREVIEW_CODEC_AUTH=oidc needs {' and '.join(missing)}")
        self.jwks = jwks or (JwksCache(self.issuer, settings.codec_oidc_jwks_url)
                             if self.mode == "oidc" else None)

    async def admit(self, headers: Mapping[str, str], host: str) -> str:
        """Who the caller is (for the log); CodecAccessDenied when it may not decode."""
        if self.mode == "none":
            if not _is_loopback(host):
                raise CodecAccessDenied(
                    f"codec endpoint without authentication answers only requests to a "
                    f"loopback host, not {host!r}")
            return "local"
        if self.mode == "token":
            given = _bearer(headers)
            if not given or not same_secret(self._token, given):
                raise CodecAccessDenied(
                    "codec endpoint needs Authorization: Bearer <codec token>")
            return "codec-token holder"
        claims = await self._verified(_bearer(headers))
        return str(claims.get("sub", "?"))

    async def _verified(self, token: str) -> dict[str, Any]:
        if not token:
            raise CodecAccessDenied(
                f"codec endpoint needs Authorization: Bearer <access token from {self.issuer}> "
                "(Web UI: TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true, and an https codec endpoint)")
        assert self.jwks is not None
        try:
            key_id = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise CodecAccessDenied("access token is not a JWT") from None
        key = await self.jwks.key(key_id)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=ALGORITHMS, audience=self.audience, issuer=self.issuer,
                leeway=30, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise CodecAccessDenied("access token has expired") from None
        except jwt.InvalidAudienceError:
            raise CodecAccessDenied(f"access token is not for audience {self.audience}") from None
        except jwt.InvalidIssuerError:
            raise CodecAccessDenied(f"access token was not issued by {self.issuer}") from None
        except jwt.InvalidTokenError as error:  # PyJWT's messages never quote the token
            raise CodecAccessDenied(f"access token refused: {error}") from None
        return claims
