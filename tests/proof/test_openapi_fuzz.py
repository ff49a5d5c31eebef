"""The starter's whole OpenAPI (webhooks, codec, /api, /healthz) fuzzed in-process, and
the codec endpoints fuzzed with the right token.

tests/starter/api/test_openapi.py already fuzzes /api with an admin token; here every operation
of the whole app is called *without* valid credentials (schemathesis makes up the
signature, token and Authorization headers it sends), positive and negative
generation: never a 5xx, answers conform to the schema where the schema documents the
status, nothing but healthz answers 2xx, and no workflow is started.

Requests go through httpx's ASGI transport in the test's own event loop (the app's
Temporal client and asyncpg pool live there), and schemathesis validates the answers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import schemathesis
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter

from engine.codec import ENCODING, KEY_ID
from engine.settings import Settings
from starter.app import create_app
from store import Store
from tests.proof.conftest import (
    CODEC_TOKEN,
    Starter,
    proof_settings,
    starter_for,
    workflows_on_queue,
)
from tests.proof.webhook_payloads import json_values

pytestmark = pytest.mark.slow  # about a minute: every operation, two generation modes

BASE_URL = "http://starter"


@pytest.fixture(scope="module")
async def whole_app(
    test_settings: Settings, temporal_client: Client, proof_store: Store
) -> AsyncIterator[tuple[Starter, Any]]:
    settings = proof_settings(test_settings, "proof-openapi")
    http, app = await starter_for(settings, temporal_client, proof_store)
    async with http:
        yield Starter(settings, http, proof_store), app


_SCHEMAS: dict[int, Any] = {}


def _schema(app: Any) -> Any:
    if id(app) not in _SCHEMAS:  # parsing the OpenAPI once per app
        _SCHEMAS[id(app)] = schemathesis.openapi.from_dict(app.openapi())
    return _SCHEMAS[id(app)]


def _request_kwargs(case: Any) -> dict[str, Any]:
    """schemathesis' requests-style kwargs, for httpx."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    headers = {name: value.encode("latin-1") if isinstance(value, str) else value
               for name, value in (kwargs.pop("headers", None) or {}).items()}
    sent: dict[str, Any] = {"method": kwargs["method"], "url": kwargs["url"],
                            "headers": headers, "params": kwargs.get("params")}
    if kwargs.get("cookies"):
        sent["cookies"] = kwargs["cookies"]
    if "json" in kwargs:
        sent["json"] = kwargs["json"]
    data = kwargs.get("data")
    if isinstance(data, (bytes, str)):
        sent["content"] = data
    elif data is not None:
        sent["data"] = data
    return sent


WITHOUT_STATUS_CHECK = [checks.not_a_server_error, checks.content_type_conformance,
                        checks.response_schema_conformance,
                        checks.response_headers_conformance]


def _operations(app: Any) -> list[str]:
    spec = app.openapi()
    return sorted(f"{method.upper()} {path}" for path, ops in spec["paths"].items()
                  for method in ops)


async def _fuzz_operation(
    starter: Starter, app: Any, label: str, checks_to_run: list[Any], examples: int
) -> dict[int, int]:
    """Run `examples` generated requests (half negative) against one operation."""
    method, path = label.split(" ", 1)
    operation = _schema(app)[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))
    statuses: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def generate(case: Any) -> None:
        cases.append(case)

    cases: list[Any] = []
    generate()  # generation only; the calls below run in this test's event loop
    for case in cases:
        answer = await starter.http.request(**_request_kwargs(case))
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        case.validate_response(answer, checks=checks_to_run)
        if path != "/healthz":
            assert 400 <= answer.status_code < 500, (label, answer.status_code, answer.text)
    return statuses


class _NoTemporal:
    """Enough of a client for create_app to build its OpenAPI at collection time."""

    data_converter = DataConverter.default


@pytest.mark.parametrize("label", _operations(
    create_app(Settings(), _NoTemporal(), None)))  # type: ignore[arg-type]
async def test_every_operation_without_credentials_is_refused_cleanly(
    whole_app: tuple[Starter, Any], label: str
) -> None:
    starter, app = whole_app
    statuses = await _fuzz_operation(starter, app, label, WITHOUT_STATUS_CHECK, examples=25)
    print(f"{label}: {statuses}")
    if label != "GET /healthz":
        assert set(statuses) <= {401, 404, 405, 413, 415, 422}, statuses


async def test_nothing_started_a_workflow(
    whole_app: tuple[Starter, Any], temporal_client: Client
) -> None:
    """After every generated request above (file order)."""
    starter, _ = whole_app
    assert await workflows_on_queue(temporal_client, starter.task_queue) == 0


@pytest.mark.parametrize(("label", "headers"), [
    ("POST /webhooks/github", {"x-github-event": "pull_request", "x-github-delivery": "d-1"}),
    ("POST /webhooks/gitlab", {"x-gitlab-event": "Merge Request Hook"}),
    ("POST /codec/decode", {}),
    ("POST /codec/encode", {}),
], ids=lambda v: v if isinstance(v, str) else "")
async def test_webhook_and_codec_refusals_are_documented(
    whole_app: tuple[Starter, Any], label: str, headers: dict[str, str]
) -> None:
    starter, app = whole_app
    method, path = label.split(" ", 1)
    case = _schema(app)[path][method].Case(headers=headers)
    answer = await starter.http.request(**_request_kwargs(case))
    assert answer.status_code == 401, answer.text
    case.validate_response(answer, checks=[checks.status_code_conformance])


# ---------------------------------------------------------------------------- the codec

TOKEN = {"Authorization": f"Bearer {CODEC_TOKEN}"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


raw_payloads = st.builds(
    lambda metadata, data: {"metadata": {k: _b64(v) for k, v in metadata.items()},
                            "data": _b64(data)},
    st.dictionaries(st.sampled_from(["encoding", "messageType", "x"]),
                    st.sampled_from([b"json/plain", b"binary/null", b"", b"\xff"])
                    | st.binary(max_size=20), max_size=3),
    st.binary(max_size=200),
)
codec_bodies = st.one_of(
    # Any UTF-8 text (bytes that are not UTF-8: pinned by test_codec_non_utf8_body_is_400).
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(raw_payloads, max_size=4).map(lambda p: json.dumps({"payloads": p}).encode()),
    st.lists(raw_payloads, max_size=2).map(
        lambda p: json.dumps({"payloads": p, "unknown": 1}).encode()),
)


def _claims_ciphertext(body: bytes) -> bool:
    """Whether a payload in `body` says it is encrypted (hypothesis finds ENCODING in the
    codec's source and uses it)."""
    payloads = Payloads()
    try:
        json_format.Parse(body, payloads)
    except Exception:
        return False
    return any(p.metadata.get("encoding") == ENCODING for p in payloads.payloads)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=codec_bodies, direction=st.sampled_from(["encode", "decode"]))
async def test_codec_with_the_token_never_gets_a_5xx(
    whole_app: tuple[Starter, Any], body: bytes, direction: str
) -> None:
    """Anything but ciphertext (that is pinned below): 200, or 400 saying what is wrong."""
    starter, _ = whole_app
    if direction == "decode" and _claims_ciphertext(body):
        return  # pinned by test_codec_decode_of_bad_ciphertext_is_400
    answer = await starter.http.post(f"/codec/{direction}", content=body, headers=TOKEN)
    assert answer.status_code in (200, 400), (answer.status_code, answer.text[:300])
    if answer.status_code == 400:
        assert "Payloads JSON" in answer.json()["detail"]
    else:
        json_format.Parse(answer.text, Payloads())


async def _encrypted(client: Client, text: str = "hello") -> Payload:
    codec = client.data_converter.payload_codec
    assert codec is not None
    [plain] = client.data_converter.payload_converter.to_payloads([text])
    [sealed] = await codec.encode([plain])
    return sealed


async def test_codec_round_trip_with_the_token(
    whole_app: tuple[Starter, Any], temporal_client: Client
) -> None:
    starter, _ = whole_app
    sealed = await _encrypted(temporal_client, "round trip")
    body = json_format.MessageToJson(Payloads(payloads=[sealed]))
    answer = await starter.http.post("/codec/decode", content=body, headers=TOKEN)
    assert answer.status_code == 200, answer.text
    decoded = Payloads()
    json_format.Parse(answer.text, decoded)
    assert json.loads(decoded.payloads[0].data) == "round trip"


def _tampered(kind: str, sealed: Payload) -> Payload:
    payload = Payload()
    payload.CopyFrom(sealed)
    if kind == "flipped-byte":
        data = bytearray(payload.data)
        data[-1] ^= 1
        payload.data = bytes(data)
    elif kind == "truncated":
        payload.data = payload.data[:5]
    elif kind == "unknown-key-id":
        payload.metadata[KEY_ID] = b"nobody-1"
    elif kind == "no-key-id":
        del payload.metadata[KEY_ID]
    elif kind == "key-id-not-utf8":
        payload.metadata[KEY_ID] = b"\xff\xfe"
    elif kind == "encrypted-but-empty":
        payload.Clear()
        payload.metadata["encoding"] = ENCODING
    return payload


@pytest.mark.parametrize("kind", ["flipped-byte", "truncated", "unknown-key-id", "no-key-id",
                                  "key-id-not-utf8", "encrypted-but-empty"])
async def test_codec_decode_of_bad_ciphertext_is_400(
    whole_app: tuple[Starter, Any], temporal_client: Client, kind: str
) -> None:
    starter, _ = whole_app
    payload = _tampered(kind, await _encrypted(temporal_client))
    body = json_format.MessageToJson(Payloads(payloads=[payload]))
    answer = await starter.http.post("/codec/decode", content=body, headers=TOKEN)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])


@pytest.mark.parametrize("direction", ["encode", "decode"])
async def test_codec_non_utf8_body_is_400(
    whole_app: tuple[Starter, Any], direction: str
) -> None:
    starter, _ = whole_app
    answer = await starter.http.post(f"/codec/{direction}", content=b'{"payloads": "\xff"}',
                                     headers=TOKEN)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])


async def test_codec_without_the_token_is_401_whatever_the_body(
    whole_app: tuple[Starter, Any], temporal_client: Client
) -> None:
    starter, _ = whole_app
    body = json_format.MessageToJson(Payloads(payloads=[await _encrypted(temporal_client)]))
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Basic {CODEC_TOKEN}"},
                    {"Authorization": f"Bearer {CODEC_TOKEN}x"},
                    {"Authorization": f"bearer {CODEC_TOKEN}"[:-1]}):
        for direction in ("encode", "decode"):
            answer = await starter.http.post(f"/codec/{direction}", content=body,
                                             headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
            assert "hello" not in answer.text
