"""Whether a preview's URL answers from its application.

An ingress controller may publish an Ingress's address, and the endpoint controller mark
its pods ready, a moment before the controller routes the host: Traefik updates the
status while it builds a configuration and applies it after. Until then the host gets
the controller's 404 or its default backend (the engine's wake page). A check through
the route itself is the only sure sign that the URL on the pull request answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from activities.kubernetes.api import heartbeat, wait_while
from domain.naming import DEFAULT_BACKEND_HEADER
from domain.resources import UrlCheck

# What a controller answers when it has a route but no upstream to send it to.
NO_UPSTREAM = frozenset({502, 504})
# Per phase (connect, write, read): a check request must end well within the ingress
# step's heartbeat timeout, and the loop heartbeats before each request.
REQUEST_TIMEOUT = httpx.Timeout(1.5)


@dataclass(frozen=True)
class Answer:
    status: int
    start: str  # the body's first 200 characters
    default_backend: bool
    challenge: bool  # 401 with WWW-Authenticate: the route's own basic auth answered


def ask(url: str, check: UrlCheck, host: str | None = None) -> Answer:
    """GET `url` + the check's path (at connect_to if set), as `host` if given."""
    parts = urlsplit(url)
    target = urlunsplit(parts._replace(path=check.path, netloc=check.connect_to or parts.netloc))
    headers = {"Host": host or parts.netloc} if (host or check.connect_to) else {}
    # The check's own answer is all it needs: no redirect, no proxy from the worker's
    # environment, and not the certificate (it may still be being issued; nothing secret
    # is sent).
    answer = httpx.get(target, headers=headers, timeout=REQUEST_TIMEOUT, trust_env=False,
                       follow_redirects=False, verify=False)
    return Answer(answer.status_code, answer.text[:200],
                  DEFAULT_BACKEND_HEADER in answer.headers,
                  answer.status_code == 401 and "www-authenticate" in answer.headers)


def no_route(url: str, check: UrlCheck) -> Answer | None:
    """What the controller answers for a host it routes nowhere (its 404 page): an
    answer like it is not the application's. None if it could not be asked."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    try:
        return ask(url, check, host=f"no-route-{uuid.uuid4().hex[:12]}.invalid{port}")
    except httpx.HTTPError:
        return None


def why_not(url: str, check: UrlCheck, baseline: Answer | None) -> str:
    """Why `url` does not answer from its application yet, in words; empty once it does."""
    where = f"GET {url}{check.path}"
    try:
        answer = ask(url, check)
    except httpx.HTTPError as error:
        return f"{where}: {type(error).__name__}"
    if answer.default_backend:
        return f"{where}: the default backend answered ({answer.status}): no route yet"
    if answer.challenge:
        return ""  # the route's basic auth asks for credentials: the route is there
    if baseline is not None and (answer.status, answer.start) == (baseline.status,
                                                                  baseline.start):
        return f"{where}: {answer.status}, as for a host the ingress does not route"
    if answer.status in NO_UPSTREAM or (check.health and not 200 <= answer.status < 400):
        return f"{where}: {answer.status}"
    return ""


def wait_until_answering(urls: list[str], check: UrlCheck, delays: Iterator[float],
                         timeout: float = 120.0) -> None:
    """Until every URL answers from its application; retryable when one never does."""
    for url in urls:
        heartbeat({"checking": url})
        baseline = no_route(url, check)
        # Called within this iteration only, so the loop variables are the right ones.
        wait_while(lambda: why_not(url, check, baseline), delays,  # noqa: B023
                   timeout=timeout, what="",
                   advice="Does the ingress route this host, and does the worker reach it "
                   "(PREVIEW_PREVIEW_URL_CONNECT_TO)? Or turn PREVIEW_PREVIEW_URL_CHECK off")
