"""What the tests of the HTTP API share: the app as tests build it, tokens, the example
blueprint, and the check of an ErrorBody answer."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
from fastapi import FastAPI

from engine.keyring import Keyring
from engine.sealing import Sealer
from starter.api import router
from store import Store

EXAMPLE = Path(__file__).parents[2] / "examples" / "preview.yaml"
ADMIN = "admin-token-for-tests"
SECRET = "pa55-Wörd-never-to-be-seen-91b2"
SEALER = Sealer(Keyring.parse("k1:" + base64.b64encode(b"k" * 32).decode()))
PROJECT = "hello-world"


def build_app(store: Store | None = None) -> FastAPI:
    app = FastAPI(title="preview-engine")
    app.include_router(router, prefix="/api")
    app.state.sealer = SEALER
    app.state.admin_token = ADMIN
    if store is not None:
        app.state.store = store
    return app


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def import_example(client: httpx.AsyncClient, name: str = PROJECT,
                         repository: str = "Codertocat/Hello-World") -> httpx.Response:
    text = EXAMPLE.read_text().replace("name: hello-world", f"name: {name}").replace(
        "repository: Codertocat/Hello-World", f"repository: {repository}")
    return await client.post("/blueprints", content=text,
                             headers={**auth(), "Content-Type": "application/yaml"})


async def project_token(client: httpx.AsyncClient, project: str) -> str:
    response = await client.post("/tokens", json={"name": "ci", "project": project},
                                 headers=auth())
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def assert_error(response: httpx.Response, status: int, error: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["message"]
    for fragment in fragments:
        assert fragment in json.dumps(body), (fragment, body)
