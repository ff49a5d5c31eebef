"""A real local HTTP server standing in for GitHub and GitLab in tests.

It implements the few REST endpoints the feedback activity uses, with in-memory state
and the hosts' own rules where they matter (pagination with a Link header, token check,
GitHub's 140-character status description, GitLab's refusal to post a pending/running
status in the state it already has, GitHub's auto_inactive that skips transient
environments). Every call is recorded; `fail_next` makes the next calls fail with a
given status.

A GitHub App (`install_app`) is checked as GitHub does: its JWT against the app's public
key (signature, issuer, `exp` in the future and at most ten minutes after `iat`), and
repository calls accept only installation tokens it issued, unexpired, for a repository
of that installation. Time is `clock` (a test may move it); tokens live `token_lifetime`.

GitHub is served at `.url`, GitLab's API at `.gitlab_url` (`.url` + `/api/v4`).

Every GitHub request is checked against GitHub's published REST description
(tests/contract/descriptions.py): one that matches no operation, or whose parameters or
JSON body the operation's schema refuses, is answered 400 with the reasons and recorded
in `violations`; the `git_host` / `git_host_module` fixtures then fail the test at
teardown, naming the request, the test that was running and what is wrong. (A 400 alone
could pass unnoticed: feedback is best effort and never fails a preview.) GitLab
publishes no description that covers the endpoints used here (see tests/contract).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from stack.ports import free_port
from tests.contract.descriptions import rest_description, rest_violations
from tests.gitlab_environments import GitLabEnvironments
from tests.repository_files import RepositoryFiles

Reply = tuple[int, dict[str, str], Any]

GITHUB_STATES = {"pending", "success", "failure", "error"}
GITLAB_STATES = {"pending", "running", "success", "failed", "canceled"}
GITLAB_EVENTS = {"pending": "enqueue", "running": "run", "success": "succeed",
                 "failed": "drop", "canceled": "cancel"}  # fmt: skip
DEPLOYMENT_STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending",
                     "success"}
BOT = "preview-bot"


def app_key_pair() -> tuple[str, rsa.RSAPublicKey]:
    """A GitHub App's private key (PEM, as GitHub hands it out) and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


@dataclass
class _App:
    app_id: str
    public_key: rsa.RSAPublicKey
    installations: dict[int, set[str]]  # installation id → owner/name it may act on
    tokens: dict[str, tuple[int, float]] = field(default_factory=dict)  # → (id, expires)


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # raw (still percent-encoded) path, without the query
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    json: Any


@dataclass(frozen=True)
class Violation:
    """A request GitHub's REST description does not allow."""

    test: str  # the test running when it came (PYTEST_CURRENT_TEST)
    method: str
    path: str
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return f"[{self.test}] " + "; ".join(self.problems)


@dataclass
class _Failure:
    status: int
    path_contains: str | None
    headers: dict[str, str]
    message: str


@dataclass
class GitHost:
    token: str = field(default_factory=lambda: f"test-token-{secrets.token_hex(12)}")
    max_per_page: int = 100  # lower it to exercise pagination with few items
    url: str = ""
    _calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    # (provider, repository, number) → comments / notes, oldest first
    _comments: dict[tuple[str, str, int], list[dict[str, Any]]] = field(default_factory=dict)
    _files: dict[tuple[str, str, int], list[dict[str, Any]]] = field(default_factory=dict)
    # (provider, repository, sha) → statuses, oldest first
    _statuses: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _violations: list[Violation] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    token_lifetime: float = 3600.0  # seconds an installation token is valid
    _app: _App | None = None
    _deployments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by repo
    _deployment_statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    # Files of repositories at commits (a blueprint's Compose file): `files.put(...)`.
    files: RepositoryFiles = field(init=False)
    gitlab_environments: GitLabEnvironments = field(init=False)

    def __post_init__(self) -> None:
        self.files = RepositoryFiles(lambda: self.url, self._page)
        self.gitlab_environments = GitLabEnvironments(self._ids, self._page)

    # --- what tests use -------------------------------------------------------------
    @property
    def gitlab_url(self) -> str:
        return f"{self.url}/api/v4"

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    @property
    def violations(self) -> list[Violation]:
        """GitHub requests the REST description does not allow, oldest first."""
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[Violation]:
        """The violations so far, forgotten: for a test that sends a wrong request on
        purpose and asserts what was found."""
        with self._lock:
            taken, self._violations[:] = list(self._violations), []
            return taken

    def assert_no_violations(self) -> None:
        violations = self.take_violations()
        assert not violations, (
            "requests to the GitHub stand-in that GitHub's REST description does not allow "
            "(each was answered 400):\n" + "\n".join(f"  - {v}" for v in violations))

    def calls_to(self, method: str, path_contains: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and path_contains in c.path]

    def comments(self, repo: str, n: int, provider: str = "github") -> list[dict[str, Any]]:
        """GitHub issue comments or GitLab MR notes, oldest first."""
        with self._lock:
            return [dict(c) for c in self._comments.get((provider, repo, n), [])]

    def statuses(self, repo: str, sha: str, provider: str = "github") -> list[dict[str, Any]]:
        """Every commit status posted (GitLab: updated in place while active), oldest first."""
        with self._lock:
            return [dict(s) for s in self._statuses.get((provider, repo, sha), [])]

    def deployments(self, repo: str) -> list[dict[str, Any]]:
        """GitHub deployments, oldest first, each with its statuses (oldest first)."""
        with self._lock:
            return [{**d, "statuses": [dict(s) for s in self._deployment_statuses[d["id"]]]}
                    for d in self._deployments.get(repo, [])]

    def environments(self, project: str) -> list[dict[str, Any]]:
        """GitLab environments of a project, oldest first."""
        with self._lock:
            return self.gitlab_environments.of(project)

    def install_app(
        self, app_id: str, public_key: rsa.RSAPublicKey, installations: dict[int, list[str]]
    ) -> None:
        with self._lock:
            self._app = _App(app_id, public_key,
                             {i: set(repos) for i, repos in installations.items()})

    def uninstall(self, installation: int) -> None:
        """Delete an installation: its tokens stop working at once, as on GitHub."""
        with self._lock:
            assert self._app is not None
            self._app.installations.pop(installation, None)
            for token, (owner, _) in list(self._app.tokens.items()):
                if owner == installation:
                    del self._app.tokens[token]

    def seed_comment(
        self, repo: str, n: int, body: str, *, user: str = "someone", provider: str = "github"
    ) -> int:
        with self._lock:
            return self._add_comment(provider, repo, n, body, user)["id"]

    def fail_next(
        self,
        n: int,
        status: int,
        *,
        path_contains: str | None = None,
        headers: dict[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        """The next n calls (whose path contains `path_contains`, if given) fail."""
        with self._lock:
            self._failures += [
                _Failure(status, path_contains, dict(headers or {}), message or f"fault {status}")
                for _ in range(n)
            ]

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._comments.clear()
            self._files.clear()
            self._statuses.clear()
            self._failures.clear()
            self._deployments.clear()
            self._deployment_statuses.clear()
            self.gitlab_environments.clear()
            self.files.clear()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> GitHost:
        host = self
        # Read GitHub's description now (once per process): a missing `make openapi` fails
        # the fixture at once (DescriptionMissing), and no engine call waits for the read.
        rest_description()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm
                # and delayed ACKs add ~40 ms to every call.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, extra, body = host.handle(self.command, self.path, headers, raw)
                except Exception as exc:  # a bug in the fake must show, not hang the client
                    status, extra, body = 500, {}, {"message": f"fake git host: {exc!r}"}
                data = b"" if status == 204 else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the calls are recorded; stderr noise helps nobody

        for attempt in range(5):
            port = free_port()
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:  # taken between free_port() and bind: pick another
                if attempt == 4:
                    raise
        assert self._server is not None
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon stop() takes effect
            name="git-host",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the fake hosts -------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = parts.path, dict(parse_qsl(parts.query))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ...
        problems = [] if body is ... else self._contract_problems(method, path, parts.query, body)
        with self._lock:
            self._calls.append(Call(method, path, query, headers, None if body is ... else body))
            if problems:
                test = os.environ.get("PYTEST_CURRENT_TEST", "outside a test")
                self._violations.append(Violation(test, method, path, tuple(problems)))
                return 400, {}, {"message": "Not in GitHub's REST description (tests/contract): "
                                 + "; ".join(problems)}  # fmt: skip
            for failure in self._failures:
                if failure.path_contains is None or failure.path_contains in path:
                    self._failures.remove(failure)
                    return failure.status, failure.headers, {"message": failure.message}
            if body is ...:
                return 400, {}, {"message": "Problems parsing JSON"}
            refusal = self._refusal(path, headers)
            if refusal is not None:
                return refusal
            for pattern, verb, handler in self._routes():
                match = pattern.match(path)
                if match and verb == method:
                    return handler(match, query, body)
            return 404, {}, {"message": "Not Found"}

    @staticmethod
    def _contract_problems(method: str, path: str, query: str, body: Any) -> list[str]:
        """What GitHub's REST description says is wrong with a GitHub request."""
        if path.startswith("/api/v4/"):
            return []  # GitLab: no usable description (tests/contract/test_github_descriptions)
        return rest_violations(method, path, parse_qsl(query), body)

    def _refusal(self, path: str, headers: dict[str, str]) -> Reply | None:
        """Why a call's credential is refused, as the host says it; None when accepted."""
        authorization = headers.get("authorization") or ""
        if path.startswith("/api/v4/"):
            if self.token in (headers.get("private-token"), authorization.removeprefix("Bearer ")):
                return None
            return 401, {}, {"message": "401 Unauthorized"}
        if path.startswith("/app/") or re.match(r"^/repos/[^/]+/[^/]+/installation$", path):
            why = self._jwt_refusal(authorization.removeprefix("Bearer "))
            return None if why is None else (401, {}, {"message": why})
        if authorization in (f"Bearer {self.token}", f"token {self.token}"):
            return None
        issued = self._app.tokens.get(authorization.removeprefix("Bearer ")) if self._app else None
        if issued is None or issued[1] <= self.clock():
            return 401, {}, {"message": "Bad credentials"}
        repo = re.match(r"^/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)", path)
        assert self._app is not None
        if repo is None or (f"{repo['owner']}/{repo['name']}"
                            not in self._app.installations.get(issued[0], set())):
            return 404, {}, {"message": "Not Found"}  # GitHub hides what a token cannot see
        return None

    def _jwt_refusal(self, token: str) -> str | None:
        if self._app is None:
            return "Integration not found"
        try:
            claims = jwt.decode(token, self._app.public_key, algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "require": ["iat", "exp", "iss"]})
        except jwt.InvalidTokenError:
            return "A JSON web token could not be decoded"
        now = self.clock()
        if not isinstance(claims["exp"], int) or claims["exp"] <= now:
            return ("'Expiration time' claim ('exp') must be a numeric value representing the "
                    "future time at which the assertion expires")
        if not isinstance(claims["iat"], int) or claims["iat"] > now + 60:
            return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"  # noqa: E501
        if claims["exp"] - claims["iat"] > 600:
            return "'Expiration time' claim ('exp') is too far in the future"
        if str(claims["iss"]) != self._app.app_id:
            return "Integration not found"
        return None

    def _routes(self) -> list[tuple[re.Pattern[str], str, Callable[..., Reply]]]:
        gh = r"^/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"
        gl = r"^/api/v4/projects/(?P<project>[^/]+)"  # one segment: slashes must be encoded
        table: list[tuple[str, str, Callable[..., Reply]]] = [
            (gh + r"/issues/(?P<n>\d+)/comments$", "GET", self._gh_list_comments),
            (gh + r"/issues/(?P<n>\d+)/comments$", "POST", self._gh_create_comment),
            (gh + r"/issues/comments/(?P<id>\d+)$", "PATCH", self._gh_edit_comment),
            (gh + r"/statuses/(?P<sha>[0-9a-f]{7,64})$", "POST", self._gh_create_status),
            (gh + r"/commits/(?P<ref>[^/]+)/status$", "GET", self._gh_combined_status),
            (gh + r"/installation$", "GET", self._gh_repo_installation),
            (r"^/app/installations/(?P<id>\d+)/access_tokens$", "POST", self._gh_access_token),
            (gh + r"/deployments$", "GET", self._gh_list_deployments),
            (gh + r"/deployments$", "POST", self._gh_create_deployment),
            (gh + r"/deployments/(?P<id>\d+)/statuses$", "GET", self._gh_list_deployment_statuses),
            (gh + r"/deployments/(?P<id>\d+)/statuses$", "POST",
             self._gh_create_deployment_status),
            (gh + r"/pulls/(?P<n>\d+)/files$", "GET", self._gh_list_files),
            (gl + r"/merge_requests/(?P<n>\d+)/diffs$", "GET", self._gl_list_diffs),
            (gl + r"/merge_requests/(?P<n>\d+)/notes$", "GET", self._gl_list_notes),
            (gl + r"/merge_requests/(?P<n>\d+)/notes$", "POST", self._gl_create_note),
            (gl + r"/merge_requests/(?P<n>\d+)/notes/(?P<id>\d+)$", "PUT", self._gl_edit_note),
            (gl + r"/statuses/(?P<sha>[0-9a-f]{7,64})$", "POST", self._gl_create_status),
            (gl + r"/repository/commits/(?P<sha>[0-9a-f]+)/statuses$", "GET",
             self._gl_list_statuses),
            *self.gitlab_environments.routes(gl),
            *self.files.routes(gh, gl),
        ]  # fmt: skip
        return [(re.compile(p), verb, h) for p, verb, h in table]

    # GitHub
    def set_changed_files(self, repo: str, n: int, files: list[dict[str, Any]],
                          provider: str = "github") -> None:
        """The files a PR changes, as the host lists them (GitHub: filename and, for a
        rename, previous_filename; GitLab: new_path and old_path)."""
        self._files[(provider, repo, n)] = files

    def _gh_list_files(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        repo = f"{m['owner']}/{m['name']}"
        return self._page(self._files.get(("github", repo, int(m["n"])), []), m, query, 30)

    def _gl_list_diffs(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        repo = unquote(m["project"])
        return self._page(self._files.get(("gitlab", repo, int(m["n"])), []), m, query, 20)

    def _gh_list_comments(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        repo = f"{m['owner']}/{m['name']}"
        return self._page(self._comments.get(("github", repo, int(m["n"])), []), m, query, 30)

    def _gh_create_comment(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return 422, {}, {"message": "Validation Failed"}
        repo = f"{m['owner']}/{m['name']}"
        return 201, {}, self._add_comment("github", repo, int(m["n"]), body["body"], BOT)

    def _gh_edit_comment(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return 422, {}, {"message": "Validation Failed"}
        repo = f"{m['owner']}/{m['name']}"
        for (provider, r, _n), items in self._comments.items():
            for comment in items:
                if provider == "github" and r == repo and comment["id"] == int(m["id"]):
                    if comment["user"]["login"] != BOT:
                        return 403, {}, {"message": "Must have admin rights to Repository."}
                    comment["body"] = body["body"]
                    return 200, {}, comment
        return 404, {}, {"message": "Not Found"}

    def _gh_create_status(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if (
            not isinstance(body, dict)
            or body.get("state") not in GITHUB_STATES
            or len(body.get("description") or "") > 140
            or not re.match(r"^https?://", body.get("target_url") or "http://")
        ):
            return 422, {}, {"message": "Validation Failed"}
        status = {
            "id": next(self._ids),
            "state": body["state"],
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "context": body.get("context") or "default",
        }
        repo = f"{m['owner']}/{m['name']}"
        self._statuses.setdefault(("github", repo, m["sha"]), []).append(status)
        return 201, {}, status

    def _gh_combined_status(self, m: re.Match[str], _: dict[str, str], __: Any) -> Reply:
        repo = f"{m['owner']}/{m['name']}"
        latest: dict[str, dict[str, Any]] = {}
        for status in self._statuses.get(("github", repo, m["ref"]), []):
            latest[status["context"]] = status
        states = {s["state"] for s in latest.values()}
        combined = (
            "failure" if states & {"failure", "error"}
            else "pending" if "pending" in states or not states
            else "success"
        )  # fmt: skip
        statuses = list(reversed(latest.values()))
        return 200, {}, {"state": combined, "sha": m["ref"], "statuses": statuses,
                         "total_count": len(statuses)}  # fmt: skip

    # GitHub App
    def _gh_repo_installation(self, m: re.Match[str], _: dict[str, str], __: Any) -> Reply:
        repo = f"{m['owner']}/{m['name']}"
        assert self._app is not None  # the JWT check let this through
        for installation, repos in self._app.installations.items():
            if repo in repos:
                return 200, {}, {"id": installation, "app_id": self._app.app_id}
        return 404, {}, {"message": "Not Found"}

    def _gh_access_token(self, m: re.Match[str], _: dict[str, str], __: Any) -> Reply:
        assert self._app is not None
        installation = int(m["id"])
        if installation not in self._app.installations:
            return 404, {}, {"message": "Not Found"}
        token = f"ghs_{secrets.token_hex(18)}"
        expires = int(self.clock() + self.token_lifetime)
        self._app.tokens[token] = (installation, expires)
        expires_at = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {}, {"token": token, "expires_at": expires_at,
                         "repository_selection": "selected"}

    # GitHub deployments
    def _gh_list_deployments(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        found = [d for d in reversed(self._deployments.get(f"{m['owner']}/{m['name']}", []))
                 if all(d[k] == query[k] for k in ("sha", "ref", "environment", "task")
                        if k in query)]
        return self._page(found, m, query, 30)

    def _gh_create_deployment(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
            return 422, {}, {"message": "Invalid request. \"ref\" wasn't supplied."}
        deployment = {
            "id": next(self._ids), "sha": body["ref"], "ref": body["ref"],
            "task": body.get("task", "deploy"), "payload": body.get("payload", {}),
            "environment": body.get("environment", "production"),
            "description": body.get("description"),
            "transient_environment": bool(body.get("transient_environment", False)),
            "production_environment": bool(body.get("production_environment",
                                                    body.get("environment") == "production")),
            "required_contexts": body.get("required_contexts"),
            "auto_merge": body.get("auto_merge", True),
        }
        self._deployments.setdefault(f"{m['owner']}/{m['name']}", []).append(deployment)
        self._deployment_statuses[deployment["id"]] = []
        return 201, {}, deployment

    def _deployment(self, m: re.Match[str]) -> dict[str, Any] | None:
        return next((d for d in self._deployments.get(f"{m['owner']}/{m['name']}", [])
                     if d["id"] == int(m["id"])), None)

    def _gh_list_deployment_statuses(
        self, m: re.Match[str], query: dict[str, str], _: Any
    ) -> Reply:
        if self._deployment(m) is None:
            return 404, {}, {"message": "Not Found"}
        return self._page(list(reversed(self._deployment_statuses[int(m["id"])])), m, query, 30)

    def _gh_create_deployment_status(
        self, m: re.Match[str], _: dict[str, str], body: Any
    ) -> Reply:
        deployment = self._deployment(m)
        if deployment is None:
            return 404, {}, {"message": "Not Found"}
        if (
            not isinstance(body, dict)
            or body.get("state") not in DEPLOYMENT_STATES
            or len(body.get("description") or "") > 140
            or not re.match(r"^https?://", body.get("environment_url") or "http://")
        ):
            return 422, {}, {"message": "Validation Failed"}
        status = {"id": next(self._ids), "state": body["state"],
                  "description": body.get("description") or "",
                  "environment_url": body.get("environment_url") or ""}  # fmt: skip
        self._deployment_statuses[deployment["id"]].append(status)
        if body["state"] == "success" and body.get("auto_inactive", True):
            # As GitHub: only earlier non-transient, non-production deployments of the
            # environment whose latest state is success.
            for other in self._deployments[f"{m['owner']}/{m['name']}"]:
                history = self._deployment_statuses[other["id"]]
                if (other["id"] < deployment["id"] and
                        other["environment"] == deployment["environment"] and
                        not other["transient_environment"] and
                        not other["production_environment"] and
                        history and history[-1]["state"] == "success"):
                    history.append({"id": next(self._ids), "state": "inactive",
                                    "description": "", "environment_url": ""})
        return 201, {}, status

    # GitLab
    def _gl_list_notes(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        key = ("gitlab", unquote(m["project"]), int(m["n"]))
        return self._page(self._comments.get(key, []), m, query, 20)

    def _gl_create_note(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or not body.get("body"):
            return 400, {}, {"message": "400 Bad request - body is missing"}
        note = self._add_comment("gitlab", unquote(m["project"]), int(m["n"]), body["body"], BOT)
        return 201, {}, note

    def _gl_edit_note(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or not body.get("body"):
            return 400, {}, {"message": "400 Bad request - body is missing"}
        key = ("gitlab", unquote(m["project"]), int(m["n"]))
        for note in self._comments.get(key, []):
            if note["id"] == int(m["id"]):
                if note["author"]["username"] != BOT:
                    return 403, {}, {"message": "403 Forbidden"}
                note["body"] = body["body"]
                return 200, {}, note
        return 404, {}, {"message": "404 Not found"}

    def _gl_create_status(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or body.get("state") not in GITLAB_STATES:
            return 400, {}, {"message": "state does not have a valid value"}
        name = body.get("name") or body.get("context") or "default"
        statuses = self._statuses.setdefault(("gitlab", unquote(m["project"]), m["sha"]), [])
        # GitLab reuses the pending/running status of that name and moves it to the new
        # state; moving it to the state it has is refused.
        active = next(
            (s for s in reversed(statuses)
             if s["name"] == name and s["status"] in ("pending", "running")),
            None,
        )  # fmt: skip
        if active is not None and active["status"] == body["state"]:
            event = GITLAB_EVENTS[body["state"]]
            return 400, {}, {
                "message": f"Cannot transition status via :{event} from :{active['status']} "
                f'(Reason(s): Status cannot transition via "{event}")'
            }  # fmt: skip
        status = active if active is not None else {"id": next(self._ids), "name": name}
        status.update(
            status=body["state"],
            description=body.get("description"),
            target_url=body.get("target_url"),
            sha=m["sha"],
        )
        if active is None:
            statuses.append(status)
        return 201, {}, status

    def _gl_list_statuses(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        statuses = self._statuses.get(("gitlab", unquote(m["project"]), m["sha"]), [])
        if query.get("name"):
            statuses = [s for s in statuses if s["name"] == query["name"]]
        if query.get("all") not in ("true", "1"):
            latest: dict[str, dict[str, Any]] = {}
            for status in statuses:
                latest[status["name"]] = status
            statuses = list(latest.values())
        return self._page(statuses, m, query, 20)

    # shared
    def _add_comment(
        self, provider: str, repo: str, n: int, body: str, user: str
    ) -> dict[str, Any]:
        comment_id = next(self._ids)
        if provider == "github":
            comment: dict[str, Any] = {
                "id": comment_id,
                "body": body,
                "user": {"login": user},
                "html_url": f"{self.url}/{repo}/pull/{n}#issuecomment-{comment_id}",
            }
        else:
            comment = {"id": comment_id, "body": body, "author": {"username": user},
                       "system": False}  # fmt: skip
        self._comments.setdefault((provider, repo, n), []).append(comment)
        return comment

    def _page(
        self, items: list[dict[str, Any]], m: re.Match[str], query: dict[str, str], default: int
    ) -> Reply:
        per_page = max(1, min(int(query.get("per_page") or default), self.max_per_page))
        page = max(1, int(query.get("page") or 1))
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(p: int, rel: str) -> str:
            return f'<{self.url}{m.string}?{urlencode({**query, "page": p})}>; rel="{rel}"'

        if page < last:
            links.append(link(page + 1, "next"))
        if page > 1:
            links.append(link(page - 1, "prev"))
        links.append(link(last, "last"))
        return 200, {"Link": ", ".join(links)}, [dict(i) for i in chunk]


@pytest.fixture
def git_host() -> Iterator[GitHost]:
    host = GitHost().start()
    try:
        yield host
    finally:
        host.stop()
    host.assert_no_violations()  # a wrong request fails the test that caused it


@pytest.fixture(scope="module")
def git_host_module() -> Iterator[GitHost]:
    """One Git host for a module whose tests share a running worker."""
    host = GitHost().start()
    try:
        yield host
    finally:
        host.stop()
    host.assert_no_violations()  # at the module's end; each violation names its test
