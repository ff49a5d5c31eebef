"""Real HTTP listeners on loopback for the codec tests: an ASGI app under uvicorn, a
recorder of the requests it gets, and an OIDC issuer that publishes its keys as JWKS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from stack.ports import free_port

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


@asynccontextmanager
async def serving(app: ASGIApp, port: int | None = None) -> AsyncIterator[str]:
    """`app` on a real listener at 127.0.0.1, in this event loop; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)  # polling a condition with a deadline
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class RequestLog:
    """Wraps an ASGI app and keeps the method, path and headers of every request under
    `prefix`, preflights included (a browser does not show those to Playwright)."""

    app: ASGIApp
    prefix: str
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            self.seen.append(Seen(scope["method"], scope["path"], scope["query_string"].decode(),
                                  {k.decode(): v.decode() for k, v in scope["headers"]}))
        await self.app(scope, receive, send)


class Issuer:
    """An OIDC provider's public half: discovery document and JWKS, and tokens it signs
    with an RSA (RS256) or EC (ES256) key of its own."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {
            "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec-1": ec.generate_private_key(ec.SECP256R1()),
        }
        self.url = ""
        self.jwks_fetches = 0
        self.app = FastAPI()
        self.app.get("/.well-known/openid-configuration")(self._discovery)
        self.app.get("/jwks")(self._jwks)

    def add_key(self, key_id: str) -> None:
        """A rotation: the issuer publishes a new key and signs with it."""
        self.keys[key_id] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    async def _discovery(self) -> dict[str, str]:
        return {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}

    async def _jwks(self) -> dict[str, list[dict[str, Any]]]:
        self.jwks_fetches += 1
        published = []
        for key_id, key in self.keys.items():
            jwk = (RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                   if isinstance(key, rsa.RSAPrivateKey)
                   else ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
            published.append({**jwk, "kid": key_id, "use": "sig"})
        return {"keys": published}

    def token(self, *, key_id: str = "rsa-1", audience: str = "preview-codec",
              issuer: str | None = None, lifetime: float = 300, signer: Any = None,
              drop: str = "") -> str:
        """A signed access token; `signer` replaces the published key (a forgery), `drop`
        leaves a claim out."""
        now = int(time.time())
        key = signer or self.keys[key_id]
        algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        body = {"iss": issuer or self.url, "aud": audience, "sub": "operator@example.com",
                "iat": now, "exp": now + int(lifetime)}
        body.pop(drop, None)
        return jwt.encode(body, key, algorithm=algorithm, headers={"kid": key_id})

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Issuer]:
        async with serving(self.app) as url:
            self.url = url
            yield self
