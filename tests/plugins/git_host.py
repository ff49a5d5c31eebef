"""A real local HTTP server standing in for GitHub and GitLab in tests.

It implements the few REST endpoints the feedback activity uses, with in-memory state
and the hosts' own rules where they matter (pagination with a Link header, token check,
GitHub's 140-character status description, GitLab's refusal to post a pending/running
status in the state it already has). Every call is recorded; `fail_next` makes the next
calls fail with a given status.

GitHub is served at `.url`, GitLab's API at `.gitlab_url` (`.url` + `/api/v4`).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import pytest

from stack.ports import free_port

Reply = tuple[int, dict[str, str], Any]

GITHUB_STATES = {"pending", "success", "failure", "error"}
GITLAB_STATES = {"pending", "running", "success", "failed", "canceled"}
GITLAB_EVENTS = {"pending": "enqueue", "running": "run", "success": "succeed",
                 "failed": "drop", "canceled": "cancel"}  # fmt: skip
BOT = "preview-bot"


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # raw (still percent-encoded) path, without the query
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    json: Any


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
    # (provider, repository, sha) → statuses, oldest first
    _statuses: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- what tests use -------------------------------------------------------------
    @property
    def gitlab_url(self) -> str:
        return f"{self.url}/api/v4"

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

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
            self._statuses.clear()
            self._failures.clear()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> GitHost:
        host = self

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
                data = json.dumps(body).encode()
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
        with self._lock:
            self._calls.append(Call(method, path, query, headers, None if body is ... else body))
            for failure in self._failures:
                if failure.path_contains is None or failure.path_contains in path:
                    self._failures.remove(failure)
                    return failure.status, failure.headers, {"message": failure.message}
            if body is ...:
                return 400, {}, {"message": "Problems parsing JSON"}
            gitlab = path.startswith("/api/v4/")
            if not self._authorised(headers, gitlab):
                message = "401 Unauthorized" if gitlab else "Bad credentials"
                return 401, {}, {"message": message}
            for pattern, verb, handler in self._routes():
                match = pattern.match(path)
                if match and verb == method:
                    return handler(match, query, body)
            return 404, {}, {"message": "Not Found"}

    def _authorised(self, headers: dict[str, str], gitlab: bool) -> bool:
        accepted = {f"Bearer {self.token}", f"token {self.token}"}
        if gitlab and headers.get("private-token") == self.token:
            return True
        return headers.get("authorization") in accepted

    def _routes(self) -> list[tuple[re.Pattern[str], str, Callable[..., Reply]]]:
        gh = r"^/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"
        gl = r"^/api/v4/projects/(?P<project>[^/]+)"  # one segment: slashes must be encoded
        table: list[tuple[str, str, Callable[..., Reply]]] = [
            (gh + r"/issues/(?P<n>\d+)/comments$", "GET", self._gh_list_comments),
            (gh + r"/issues/(?P<n>\d+)/comments$", "POST", self._gh_create_comment),
            (gh + r"/issues/comments/(?P<id>\d+)$", "PATCH", self._gh_edit_comment),
            (gh + r"/statuses/(?P<sha>[0-9a-f]{7,64})$", "POST", self._gh_create_status),
            (gh + r"/commits/(?P<ref>[^/]+)/status$", "GET", self._gh_combined_status),
            (gl + r"/merge_requests/(?P<n>\d+)/notes$", "GET", self._gl_list_notes),
            (gl + r"/merge_requests/(?P<n>\d+)/notes$", "POST", self._gl_create_note),
            (gl + r"/merge_requests/(?P<n>\d+)/notes/(?P<id>\d+)$", "PUT", self._gl_edit_note),
            (gl + r"/statuses/(?P<sha>[0-9a-f]{7,64})$", "POST", self._gl_create_status),
            (gl + r"/repository/commits/(?P<sha>[0-9a-f]+)/statuses$", "GET",
             self._gl_list_statuses),
        ]  # fmt: skip
        return [(re.compile(p), verb, h) for p, verb, h in table]

    # GitHub
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


@pytest.fixture(scope="module")
def git_host_module() -> Iterator[GitHost]:
    """One Git host for a module whose tests share a running worker."""
    host = GitHost().start()
    try:
        yield host
    finally:
        host.stop()
