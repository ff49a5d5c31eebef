"""The Temporal Web UI, in headless Chromium, shows a preview's payloads decoded.

A dev server with its UI, whose codec endpoint is the starter app on a real loopback
listener (the browser calls it, not the UI server); one preview workflow run by a worker
over the recording activities; then the workflow page, as an operator opens it.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowHandle

from engine.client import connect
from engine.settings import Settings
from stack.ports import free_port
from stack.temporal import TemporalDevServer, workflow_page
from starter.app import create_app
from store import Store
from tests.browser.support import RequestLog, serving
from tests.workflows.harness import BLUEPRINT, Harness, pull_request

TITLE = f"Decoded in the browser {uuid.uuid4().hex[:8]}"
SHA = "c0dec" + uuid.uuid4().hex[:35]
CODEC_ERROR = "Codec Server could not connect"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def ui_server() -> Any:
    state = Path(tempfile.mkdtemp(prefix="preview-test-ui-"))
    codec_port = free_port()
    server = TemporalDevServer(state, codec_endpoint=f"http://127.0.0.1:{codec_port}/codec")
    server.start()
    try:
        yield server, codec_port
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
async def preview(
    ui_server: tuple[TemporalDevServer, int], store: Store, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[TemporalDevServer, RequestLog, WorkflowHandle[Any, Any]]]:
    """The local stack's codec setup (local profile, codec_auth=none), one preview Ready."""
    server, codec_port = ui_server
    settings = Settings(temporal_address=server.address, profile="local", codec_auth="none",
                        codec_cors_origin=server.ui_url, listen_port=codec_port)
    client = await connect(settings)
    requests = RequestLog(create_app(settings, client, store), prefix="/codec")
    blueprints = tmp_path_factory.mktemp("blueprints")
    (blueprints / "shop.yaml").write_text(yaml.safe_dump(BLUEPRINT))
    harness = Harness(client, blueprints)
    async with serving(requests, port=codec_port), harness.worker():
        handle = await harness.deploy(pull_request(uuid.uuid4().int % 10**6 + 1, sha=SHA,
                                                   title=TITLE))
        await harness.wait_state(handle, lambda status: status.state == "ready")
        yield server, requests, handle


async def test_the_workflow_page_shows_input_and_step_summaries_decoded(
    chromium: Path, preview: tuple[TemporalDevServer, RequestLog, WorkflowHandle[Any, Any]],
) -> None:
    from playwright.async_api import async_playwright

    server, requests, handle = preview
    # What the Temporal server holds is ciphertext: only the codec can show the title.
    raw = await Client.connect(server.address)
    history = await raw.get_workflow_handle(handle.id).fetch_history()
    assert TITLE not in history.to_json() and "ensure namespace" not in history.to_json()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium),
                                                   args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1400})
            # The UI polls for ever: it never reaches networkidle.
            await page.goto(workflow_page(server.ui_url, "default", handle.id),
                            wait_until="domcontentloaded")
            # The banner's text is also in a hidden element: count the visible ones only.
            title = page.get_by_text(TITLE).filter(visible=True)
            banner = page.get_by_text(CODEC_ERROR).filter(visible=True)
            # Whichever comes first: the decoded input, or the UI giving up on the codec.
            await title.or_(banner).first.wait_for(timeout=60_000)
            assert await banner.count() == 0, f"the UI shows {CODEC_ERROR!r}"
            await page.get_by_text(f'"head_sha": "{SHA}"').first.wait_for(timeout=10_000)
            namespace_step = page.get_by_text("ensure_namespace • ensure namespace shop-pr-")
            await namespace_step.first.wait_for(timeout=30_000)
            assert await banner.count() == 0, f"the UI shows {CODEC_ERROR!r}"
        finally:
            await browser.close()

    # How the UI called the codec (the contract the CORS setup and modes are built on).
    decodes = [seen for seen in requests.seen if seen.path == "/codec/decode"]
    posts = [seen for seen in decodes if seen.method == "POST"]
    preflights = [seen for seen in decodes if seen.method == "OPTIONS"]
    assert posts and all(seen.query == "preserveStorageRefs=true" for seen in posts)
    assert all(seen.headers.get("origin") == server.ui_url
               and seen.headers.get("x-namespace") == "default" for seen in posts)
    assert preflights and "x-namespace" in preflights[0].headers[
        "access-control-request-headers"]
