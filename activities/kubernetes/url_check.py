"""Whether a preview's URL answers from its application.

An ingress controller may publish an Ingress's address, and the endpoint controller mark
its pods ready, a moment before the controller routes the host: Traefik updates the
status while it builds a configuration and applies it after. Until then the host gets
the controller's 404 or its default backend (the engine's wake page). A check through
the route itself is the only sure sign that the URL on the pull request answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
from temporalio.exceptions import ApplicationError

from activities.kubernetes.api import API_ERROR
from domain.naming import DEFAULT_BACKEND_HEADER
from domain.resources import UrlCheck

# What a controller answers for a host it does not route yet (or without upstream).
NOT_ROUTED = frozenset({404, 502, 503, 504})


def answer_of(url: str, check: UrlCheck, timeout: float = 5.0) -> str:
    """Why `url` does not answer from its application yet, in words; empty once it does."""
    parts = urlsplit(url)
    target = urlunsplit(parts._replace(path=check.path))
    headers = {}
    if check.connect_to:
        # Connect where the setting says; the Host header (and so the route) stays.
        headers["Host"] = parts.netloc
        target = urlunsplit(parts._replace(netloc=check.connect_to, path=check.path))
    try:
        # The check's own answer is all it needs: no redirect, no proxy from the
        # worker's environment, and not the certificate (it may still be being issued;
        # nothing secret is sent).
        answer = httpx.get(target, headers=headers, timeout=timeout, trust_env=False,
                           follow_redirects=False, verify=False)
    except httpx.HTTPError as error:
        return f"GET {url}{check.path}: {type(error).__name__}"
    status = answer.status_code
    if DEFAULT_BACKEND_HEADER in answer.headers:
        return f"GET {url}{check.path}: the default backend answered ({status}): no route yet"
    if (check.health and not 200 <= status < 400) or status in NOT_ROUTED:
        return f"GET {url}{check.path}: {status}"
    return ""


def wait_until_answering(urls: list[str], check: UrlCheck, delays: Iterator[float],
                         heartbeat: Callable[[object], None], timeout: float = 120.0) -> None:
    """Until every URL answers from its application; retryable when one never does."""
    deadline = time.monotonic() + timeout
    for url in urls:
        while why := answer_of(url, check):
            heartbeat({"waiting": why})
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{why} after {timeout:.0f}s. Does the ingress route this host, and does "
                    "the worker reach it (PREVIEW_PREVIEW_URL_CONNECT_TO)? Or turn "
                    "PREVIEW_PREVIEW_URL_CHECK off", type=API_ERROR)
            time.sleep(next(delays))
