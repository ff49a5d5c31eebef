"""A real OCI registry for the test session, with token authentication (stack/registry.py).

The registry runs in `auth: token` mode and trusts one EC key (a JWKS file). The token
service is ours, on loopback: it checks Basic credentials, grants the scopes the user
may have, signs the JWT with that key, and records every call, so the tests see the
whole flow a hosted registry (Docker Hub, GHCR, Harbor) puts a client through:
401 challenge → token request → HEAD with the Bearer token.

`registry.push("team/web", tag)` pushes a tiny one-layer image with crane.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from stack import registry as stack_registry
from stack.ports import free_port

SERVICE = "preview-test-registry"
ISSUER = "preview-test-token-service"
KEY_ID = "preview-test-key"
PULLER = ("puller", "puller-password")  # what the engine is given: pull only
PUSHER = ("pusher", "pusher-password")  # what CI (the test) pushes with


@dataclass(frozen=True)
class TokenCall:
    user: str | None  # None: no or wrong credentials
    scopes: tuple[str, ...]
    status: int


@dataclass
class TokenService:
    """The registry's token realm: Basic credentials in, a signed JWT out."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    users: dict[str, tuple[str, frozenset[str]]] = field(default_factory=lambda: {
        PULLER[0]: (PULLER[1], frozenset({"pull"})),
        PUSHER[0]: (PUSHER[1], frozenset({"pull", "push"})),
    })
    calls: list[TokenCall] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "ES256"}]}

    def calls_since(self, mark: int) -> list[TokenCall]:
        with self._lock:
            return self.calls[mark:]

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)

    def answer(self, target: str, authorization: str) -> tuple[int, dict[str, Any]]:
        query = parse_qsl(urlsplit(target).query)
        scopes = tuple(s for name, value in query if name == "scope" for s in value.split())
        user = self._user(authorization)
        status = 401 if user is None else 200
        with self._lock:
            self.calls.append(TokenCall(user, scopes, status))
        if user is None:
            return 401, {"details": "wrong or missing credentials"}
        allowed = self.users[user][1]
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = sorted(set(actions.split(",")) & allowed)
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "iat": now, "nbf": now,
                  "exp": now + 300, "jti": uuid.uuid4().hex, "access": access}
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KEY_ID})
        return 200, {"token": token, "access_token": token, "expires_in": 300,
                     "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}

    def _user(self, authorization: str) -> str | None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        known = self.users.get(user)
        return user if known is not None and known[0] == password else None

    def start(self) -> TokenService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                status, body = service.answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the calls are recorded

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A name, not 127.0.0.1: crane refuses realms given as private or loopback IP
        # literals (an SSRF guard), as it should against a hosted registry.
        self.url = f"http://localhost:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="registry-token-service", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class LoopbackRegistry:
    """The distribution registry with our token service in front of it."""

    def __init__(self, state_dir: Path) -> None:
        self.tokens = TokenService().start()
        jwks = state_dir / "jwks.json"
        jwks.write_text(json.dumps(self.tokens.jwks()))
        auth = stack_registry.TokenAuth(realm=self.tokens.url, service=SERVICE, issuer=ISSUER,
                                        jwks=jwks)
        self.server = stack_registry.Registry(state_dir / "registry", auth=auth)
        self._state_dir = state_dir
        self._docker_config: Path | None = None
        self._layer = 0

    @property
    def host(self) -> str:
        return self.server.host

    def start(self) -> LoopbackRegistry:
        for attempt in range(3):
            try:
                self.server.start()
                break
            except RuntimeError:
                # The port was free when picked; a neighbour may have bound it since.
                if attempt == 2 or "address already in use" not in self.server.log_tail():
                    raise
                self.server.port = free_port()
        self._docker_config = stack_registry.docker_config(
            self._state_dir / "docker", self.host, *PUSHER)
        return self

    def stop(self) -> None:
        self.server.stop()
        self.tokens.stop()

    def credentials(self, user: str = PULLER[0], password: str = PULLER[1]) -> SecretStr:
        """PREVIEW_REGISTRY_CREDENTIALS for this registry."""
        return SecretStr(json.dumps({self.host: f"{user}:{password}"}))

    def settings_update(self) -> dict[str, Any]:
        """Settings fields that point the engine at this registry, image checks on."""
        return {"check_images": True, "registry_plain_http": [self.host],
                "registry_credentials": self.credentials()}

    def push(self, repository: str, tag: str) -> str:
        """Push a tiny one-layer image as `<host>/<repository>:<tag>`; its digest."""
        self._layer += 1
        layer = self._state_dir / f"layer-{self._layer}.tar"
        content = f"{repository}:{tag}\n".encode()
        with tarfile.open(layer, "w") as tar:
            info = tarfile.TarInfo("image.txt")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        ref = f"{self.host}/{repository}:{tag}"
        stack_registry.crane(["append", "-f", str(layer), "-t", ref],
                             docker_config_dir=self._docker_config)
        return stack_registry.crane(["digest", ref], docker_config_dir=self._docker_config)


@pytest.fixture(scope="session")
def registry() -> Iterator[LoopbackRegistry]:
    if not stack_registry.is_built():
        if shutil.which("go") is None:
            pytest.skip("registry and crane not built and no `go` to build them "
                        "(`make registry`)")
        stack_registry.build()
    state = Path(tempfile.mkdtemp(prefix="preview-test-registry-"))
    server = LoopbackRegistry(state).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
