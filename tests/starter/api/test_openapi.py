"""The API's OpenAPI document: complete, and every answer to generated requests
documented in it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.starter.api_support import auth, build_app


def test_openapi_is_complete() -> None:
    spec = build_app().openapi()
    schemas = spec["components"]["schemas"]
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 30
    assert len({op["operationId"] for _, _, op in operations}) == len(operations)

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for path, method, op in operations:
        responses = op["responses"]
        assert {"401", "422"} <= set(responses), (method, path)
        assert responses["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorBody")
        success = [code for code in responses if code.startswith("2")]
        assert success, (method, path)
        for code in success:
            if code != "204":
                assert "$ref" in json.dumps(responses[code].get("content", {})), (method, path)
        if "{project}" in path or path in ("/api/tokens", "/api/audit"):
            assert "403" in responses, (method, path)
        assert op.get("security") == [{"HTTPBearer": []}], (method, path)
    assert "SecretWrite" in schemas and "value" not in schemas["SecretMetadata"]["properties"]
    body = spec["paths"]["/api/blueprints"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/yaml", "application/json"}


fuzz_schema = schemathesis.openapi.from_dict(build_app().openapi())


@pytest.mark.slow  # about a minute: schemathesis explores every operation
@fuzz_schema.parametrize()
@settings(max_examples=5, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case: Any, live_api: str) -> None:
    """Schema-generated requests (as admin): no 5xx, and every answer is documented.

    Not checked: that schema-valid data is accepted (names must be DNS labels and
    references must exist, which the schema cannot say), that unknown query parameters
    are refused (they are ignored), nor the `Allow` header of 405s (Starlette lists the
    methods of the first matching route only).
    """
    case.call_and_validate(
        base_url=live_api.removesuffix("/api"), headers=auth(),
        checks=[checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance,
                checks.response_headers_conformance],
    )
