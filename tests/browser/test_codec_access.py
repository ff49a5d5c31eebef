"""/codec is closed to everyone its mode does not admit: CORS for the Web UI's origin only,
the codec token, OIDC access tokens checked against a real issuer's JWKS over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client

from engine.codec_auth import CodecGate, JwksCache
from engine.settings import InsecureSettings, Settings
from starter.app import create_app
from store import Store
from tests.browser.support import Issuer

UI = "http://127.0.0.1:8233"
TOKEN = "codec-token-of-this-test"


def app_client(app: Any, host: str = "127.0.0.1:8080") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


def decoded(answer: httpx.Response) -> Payload:
    assert answer.status_code == 200, answer.text
    payloads = Payloads()
    json_format.Parse(answer.text, payloads)
    [payload] = payloads.payloads
    return payload


def settings_for(test_settings: Settings, **changes: Any) -> Settings:
    return test_settings.model_copy(update={"codec_cors_origin": UI,
                                            "codec_token": SecretStr(TOKEN), **changes})


async def test_only_the_web_ui_origin_may_read_codec_answers(
    test_settings: Settings, temporal_client: Client, store: Store,
    sealed: tuple[Payload, str],
) -> None:
    plain, body = sealed
    app = create_app(settings_for(test_settings), temporal_client, store)
    # The preflight the Web UI 2.54 sends (observed in Chromium by test_web_ui).
    preflight = {"Origin": UI, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,x-namespace"}
    async with app_client(app) as http:
        answer = await http.options("/codec/decode?preserveStorageRefs=true", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == UI
        assert answer.headers["access-control-allow-credentials"] == "true"
        allowed = answer.headers["access-control-allow-headers"].lower()
        assert {"content-type", "x-namespace", "authorization",
                "authorization-extras"} <= {h.strip() for h in allowed.split(",")}

        for origin in ("http://evil.example", "http://127.0.0.1:8234", "http://localhost:8233"):
            answer = await http.options("/codec/decode", headers={**preflight, "Origin": origin})
            assert answer.status_code == 400
            assert "access-control-allow-origin" not in answer.headers
            # A request the browser sends without a preflight still gets no allow header,
            # so the page of another origin cannot read what was decoded.
            answer = await http.post(
                "/codec/decode", content=body, headers={
                    "Origin": origin, "Content-Type": "text/plain",
                    "Authorization": f"Bearer {TOKEN}"})
            assert "access-control-allow-origin" not in answer.headers

        answer = await http.post("/codec/decode", content=body, headers={
            "Origin": UI, "Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"})
        assert answer.headers["access-control-allow-origin"] == UI
        assert decoded(answer).data == plain.data


async def test_token_mode_wants_the_codec_token(
    test_settings: Settings, temporal_client: Client, store: Store,
    sealed: tuple[Payload, str], caplog: pytest.LogCaptureFixture,
) -> None:
    plain, body = sealed
    app = create_app(settings_for(test_settings, codec_auth="token"), temporal_client, store)
    caplog.set_level(logging.DEBUG)
    async with app_client(app) as http:
        for wrong in ({}, {"Authorization": "Bearer not-the-token"},
                      {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            answer = await http.post("/codec/decode", content=body, headers=wrong)
            assert answer.status_code == 401
            assert "Authorization: Bearer <codec token>" in answer.json()["detail"]
        answer = await http.post("/codec/decode", content=body,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        assert decoded(answer).data == plain.data
        answer = await http.post("/codec/encode", content=body)
        assert answer.status_code == 401
    assert "not-the-token" not in caplog.text and TOKEN not in caplog.text


async def test_none_mode_is_local_only(
    test_settings: Settings, temporal_client: Client, store: Store,
    sealed: tuple[Payload, str],
) -> None:
    plain, body = sealed
    with pytest.raises(InsecureSettings, match="PREVIEW_CODEC_AUTH=none"):
        create_app(settings_for(test_settings, codec_auth="none", profile="production"),
                   temporal_client, store)
    with pytest.raises(InsecureSettings, match="PREVIEW_LISTEN_HOST"):
        CodecGate(settings_for(test_settings, codec_auth="none", profile="local",
                               listen_host="0.0.0.0"))

    local = settings_for(test_settings, codec_auth="none", profile="local")
    app = create_app(local, temporal_client, store)
    async with app_client(app) as http:
        assert decoded(await http.post("/codec/decode", content=body)).data == plain.data
    # A page whose own host name was rebound to 127.0.0.1 reaches the port as that name.
    async with app_client(app, host="attacker.example:8080") as http:
        answer = await http.post("/codec/decode", content=body)
        assert answer.status_code == 401 and "loopback host" in answer.json()["detail"]


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    async with Issuer().serving() as served:
        yield served


def oidc_settings(test_settings: Settings, issuer: Issuer) -> Settings:
    return settings_for(test_settings, codec_auth="oidc", codec_oidc_issuer=issuer.url,
                        codec_oidc_audience="preview-codec")


async def test_oidc_mode_checks_the_access_token_against_the_issuers_keys(
    test_settings: Settings, temporal_client: Client, store: Store,
    sealed: tuple[Payload, str], issuer: Issuer, caplog: pytest.LogCaptureFixture,
) -> None:
    plain, body = sealed
    caplog.set_level(logging.DEBUG)
    app = create_app(oidc_settings(test_settings, issuer), temporal_client, store)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "X-Namespace": "default"}

    forger = Issuer()  # keys nobody published
    refused = {
        "": "TEMPORAL_CODEC_PASS_ACCESS_TOKEN",
        "not-a-jwt": "not a JWT",
        issuer.token(lifetime=-120): "expired",
        issuer.token(audience="another-api"): "audience preview-codec",
        issuer.token(issuer="https://other.example"): "not issued by",
        issuer.token(signer=forger.keys["rsa-1"]): "Signature verification failed",
        issuer.token(key_id="unknown", signer=forger.keys["rsa-1"]): "does not publish",
        issuer.token(drop="exp"): "exp",
        # HS256 "signed" with the published RSA key's bytes: the classic confusion.
        jwt_hs256_with_public_key(issuer): "alg",
    }
    async with app_client(app) as http:
        for token, reason in refused.items():
            answer = await http.post("/codec/decode", content=body,
                                     headers=bearer(token) if token else {})
            assert answer.status_code == 401, (reason, answer.text)
            assert reason in answer.json()["detail"], answer.json()
            assert answer.headers["www-authenticate"] == "Bearer"
        for key_id in ("rsa-1", "ec-1"):
            answer = await http.post("/codec/decode", content=body,
                                     headers=bearer(issuer.token(key_id=key_id)))
            assert decoded(answer).data == plain.data
    # Discovery once, keys once: cached across every request above (the unknown kid was
    # asked within the refetch interval, so it did not refetch either).
    assert issuer.jwks_fetches == 1
    for token in refused:
        assert not token or token not in caplog.text


async def test_oidc_keys_rotate_and_settings_are_required(
    test_settings: Settings, temporal_client: Client, store: Store,
    sealed: tuple[Payload, str], issuer: Issuer,
) -> None:
    plain, body = sealed
    settings = oidc_settings(test_settings, issuer)
    app = create_app(settings, temporal_client, store)
    app.state.codec_gate = CodecGate(settings, jwks=JwksCache(
        issuer.url, f"{issuer.url}/jwks", refetch_after=0))
    async with app_client(app) as http:
        token = issuer.token()
        assert decoded(await http.post("/codec/decode", content=body, headers={
            "Authorization": f"Bearer {token}"})).data == plain.data
        issuer.add_key("rsa-2")
        token = issuer.token(key_id="rsa-2")
        assert decoded(await http.post("/codec/decode", content=body, headers={
            "Authorization": f"Bearer {token}"})).data == plain.data
    assert issuer.jwks_fetches == 2

    with pytest.raises(InsecureSettings, match="PREVIEW_CODEC_OIDC_AUDIENCE"):
        CodecGate(settings.model_copy(update={"codec_oidc_audience": None}))

    # The issuer down before any key was fetched: 503 (retry), not a refusal.
    down = settings.model_copy(update={"codec_oidc_issuer": "http://127.0.0.1:9"})
    async with app_client(create_app(down, temporal_client, store)) as http:
        answer = await http.post("/codec/decode", content=body,
                                 headers={"Authorization": f"Bearer {issuer.token()}"})
        assert answer.status_code == 503 and "unavailable" in answer.text


def jwt_hs256_with_public_key(issuer: Issuer) -> str:
    """HS256 keyed with the published RSA key's PEM, as an attacker would sign by hand
    (PyJWT itself refuses to use a PEM as an HMAC secret)."""
    public = issuer.keys["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    claims = part(json.dumps({"iss": issuer.url, "aud": "preview-codec",
                              "exp": int(time.time()) + 300}).encode())
    mac = hmac.new(public, f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{part(mac)}"
