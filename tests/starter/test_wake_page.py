"""The ingress's default backend: a request for a host no preview serves gets a page
saying so (the waking of a sleeping preview is proven on the real node, in
tests/e2e/test_real_preview.py)."""

from __future__ import annotations

import httpx
import pytest

from domain.naming import DEFAULT_BACKEND_HEADER
from starter.wake import PREFIX, PREVIEW_HOST, page
from tests.starter.test_webhooks import http, settings, store

__all__ = ["http", "settings", "store"]  # fixtures shared with test_webhooks


@pytest.mark.parametrize("host", [
    "web-pr-987654.preview.localhost:8443",  # a preview's shape, but none is running
    "example.com",  # not a preview's shape at all
    "[::1]:80",
])
async def test_a_host_no_preview_serves_gets_a_404_page(http: httpx.AsyncClient,
                                                        host: str) -> None:
    answer = await http.get(f"{PREFIX}/some/path", headers={"Host": host})
    assert answer.status_code == 404
    assert "No preview here" in answer.text and "refresh" not in answer.text
    assert answer.headers["cache-control"] == "no-store"
    # Marked, so that the engine's check of a new route does not take it for the app.
    assert answer.headers[DEFAULT_BACKEND_HEADER] == "wake"


def test_the_pull_request_number_is_read_from_the_host() -> None:
    match = PREVIEW_HOST.match("api-pr-42.preview.example.com")
    assert match is not None and match.group(1) == "42"
    assert PREVIEW_HOST.match("api.preview.example.com") is None


def test_the_waking_page_reloads_itself_and_escapes_what_it_shows() -> None:
    shown = page("<b>x</b>", "it is <waking>", refresh=True)
    assert 'http-equiv="refresh"' in shown
    assert "<b>x</b>" not in shown and "&lt;waking&gt;" in shown
