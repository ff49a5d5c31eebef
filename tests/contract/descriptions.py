"""GitHub's published OpenAPI descriptions, and the checks the tests make against them.

The descriptions are the npm packages `@octokit/openapi` (REST API) and
`@octokit/openapi-webhooks` (webhook payloads) at the versions package-lock.json pins,
installed into node_modules/ by `make openapi` (a prerequisite of `make test`).

- `rest_violations(method, path, query, body)`: what is wrong with one request to
  api.github.com, by the REST description (openapi-core): no operation for the method and
  path, a path or query parameter or JSON body that does not match the operation's schema.
  Two checks are stricter than the description's schemas, because GitHub silently ignores
  what it does not know (a misspelt field or filter is a bug nobody would see): a query
  parameter the operation does not declare, and a body property its schema does not
  declare where it is (`_undeclared`; openapi-core's `additional_properties_default_policy
  ="forbid"` would do it too, at ~2 ms per schema per request, and it refuses `allOf`).
- `webhook_violations(event, payload)`: what is wrong with one webhook body, by the schema
  of that event and action (`X-GitHub-Event: pull_request` + `"action": "opened"` is the
  webhook `pull-request-opened`).

Each description is read once per process (the REST one is 13 MB of JSON) and a violation
is one line naming where (`body.state`, `payload.pull_request.head`) and what.

The `.deref` variant of the REST description is not used: it inlines every `$ref` and is
73 MB, about 420 MiB in memory against about 90 MiB, and openapi-core resolves `$ref`s
itself.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError
from jsonschema_path import SchemaPath
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.datatypes import PathOperationServer
from openapi_core.templating.paths.exceptions import (
    OperationNotFound,
    PathNotFound,
    PathsNotFound,
    ServerNotFound,
)
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.request.validators import V31WebhookRequestBodyValidator
from werkzeug.datastructures import Headers, ImmutableMultiDict

ROOT = Path(__file__).resolve().parents[2]
OCTOKIT = ROOT / "node_modules" / "@octokit"
REST_DESCRIPTION = OCTOKIT / "openapi" / "generated" / "api.github.com.json"
WEBHOOK_DESCRIPTION = OCTOKIT / "openapi-webhooks" / "generated" / "api.github.com.json"
# The REST description's one server: a request's path is matched below it, whatever
# address the stand-in listens on.
GITHUB_SERVER = "https://api.github.com"
MAX_MESSAGE = 300  # a schema error can quote a whole payload; a line is enough to act on


class DescriptionMissing(RuntimeError):
    """The npm packages are not installed: nothing can be checked."""


@dataclass(frozen=True)
class Description:
    api: OpenAPI
    version: str  # the npm package's version, which its info.version carries
    load_seconds: float  # reading the JSON and building the OpenAPI object
    # webhooks only: (X-GitHub-Event, action or None) → the description's webhook name
    webhooks: dict[tuple[str, str | None], str] = field(default_factory=dict)


@dataclass  # not frozen: openapi-core writes the path parameters it finds
class _Request:
    """One request as openapi-core reads it (its `Request` protocol)."""

    method: str  # lower case
    path: str
    parameters: RequestParameters
    body: bytes | None
    host_url: str = GITHUB_SERVER
    content_type: str = "application/json"


@dataclass  # not frozen: openapi-core writes the path parameters it finds
class _WebhookRequest:
    """One webhook delivery as openapi-core reads it (its `WebhookRequest` protocol)."""

    name: str
    body: bytes
    method: str = "post"
    content_type: str = "application/json"
    parameters: RequestParameters = field(default_factory=RequestParameters)


_load_lock = threading.Lock()  # the stand-in's handler threads ask at the same time
_loaded: dict[str, Description] = {}
_partial: list[tuple[OpenAPI, dict[str, Any]]] = []  # webhooks, for partial bodies
_rest_document: list[dict[str, Any]] = []  # the REST description as read, for `_undeclared`
# openapi-core caches resolved schemas lazily; the stand-in's handler threads validate
# one request at a time rather than rely on those caches being thread-safe (a few ms each).
_validate_lock = threading.Lock()


class _CachedPathFinder(APICallPathFinder):
    """openapi-core's finder, remembering: matching a URL against the description's 800
    paths takes ~6 ms, and the tests send the same URLs again and again."""

    _found: dict[tuple[str, str], PathOperationServer] = {}

    def find(self, method: str, name: str) -> PathOperationServer:
        key = (method, name)
        if key not in self._found:
            if len(self._found) > 10_000:  # shas and numbers vary: keep it bounded
                self._found.clear()
            self._found[key] = super().find(method, name)
        return self._found[key]


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DescriptionMissing(
            f"{path.relative_to(ROOT)} is missing: run `make openapi` (npm ci of the "
            "versions package-lock.json pins)"
        )
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def rest_description() -> Description:
    """The REST description, read once per process."""
    with _load_lock:
        if "rest" not in _loaded:
            started = time.perf_counter()
            document = _read(REST_DESCRIPTION)
            api = OpenAPI.from_dict(document, config=Config(
                # Checking GitHub's description itself takes minutes and is GitHub's job.
                spec_validator_cls=None,
                path_finder_cls=_CachedPathFinder,
            ))  # fmt: skip
            _loaded["rest"] = Description(api, document["info"]["version"],
                                          time.perf_counter() - started)  # fmt: skip
            _rest_document.append(document)
        return _loaded["rest"]


def webhook_description() -> Description:
    """The webhook description, read once per process, with its (event, action) index."""
    with _load_lock:
        if "webhooks" not in _loaded:
            started = time.perf_counter()
            document = _read(WEBHOOK_DESCRIPTION)
            api = OpenAPI.from_dict(document, config=Config(
                spec_validator_cls=None,
                # The body only: the tests send the headers the starter reads, not every
                # header GitHub sends (User-Agent, X-GitHub-Hook-ID…).
                webhook_request_validator_cls=V31WebhookRequestBodyValidator,
            ))  # fmt: skip
            # operationId is "<event>/<action>" with dashes ("pull-request/ready-for-
            # review") or "<event>" for events without actions (push, ping).
            index: dict[tuple[str, str | None], str] = {}
            for name, item in document["webhooks"].items():
                event, _, action = item["post"]["operationId"].partition("/")
                key = (event.replace("-", "_"), action.replace("-", "_") or None)
                assert key not in index, f"two webhooks for {key}: {index[key]}, {name}"
                index[key] = name
            _loaded["webhooks"] = Description(api, document["info"]["version"],
                                              time.perf_counter() - started, index)
        return _loaded["webhooks"]


def rest_violations(
    method: str, path: str, query: Mapping[str, str] | Sequence[tuple[str, str]], body: Any
) -> list[str]:
    """What GitHub's REST description says is wrong with this request; [] when nothing.

    `path` is the request's raw path below the API root, `body` its parsed JSON (None
    when it has none)."""
    description = rest_description()
    # The contents API's {path} is a file's path, folders and all ("deploy/compose.yml"),
    # sent with its slashes as GitHub's own clients do; a template parameter matches one
    # segment only, so the slashes are encoded for the match.
    path = re.sub(r"^(/repos/[^/]+/[^/]+/contents/)(.+)$",
                  lambda m: m[1] + m[2].replace("/", "%2F"), path)
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    request = _Request(
        method=method.lower(),
        path=path,
        parameters=RequestParameters(query=ImmutableMultiDict(pairs), header=Headers(),
                                     cookie=ImmutableMultiDict()),
        body=None if body is None else json.dumps(body).encode(),
    )
    where = f"{method.upper()} {path}"
    with _validate_lock:
        try:
            found = _CachedPathFinder(description.api.spec).find(
                request.method, f"{GITHUB_SERVER}{path}")
        except (PathNotFound, PathsNotFound, ServerNotFound):
            return [f"{where}: no path of GitHub's REST description matches"]
        except OperationNotFound:
            return [f"{where}: GitHub's REST description has no {method.upper()} operation "
                    "for this path"]
        pattern = found.path_result.pattern
        problems = [line for error in description.api.iter_apicall_request_errors(request)
                    for line in _lines(error, "body")]
        declared = {p["name"] for p in _parameters(found.path, found.operation)
                    if p["in"] == "query"}
    problems += [f"query parameter {name!r} is not a parameter of this operation"
                 for name in dict(pairs) if name not in declared]
    if body is not None:
        operation = _rest_document[0]["paths"][pattern][request.method]
        schema = (operation.get("requestBody", {}).get("content", {})
                  .get("application/json", {}).get("schema"))
        if schema is not None:
            problems += _undeclared(_rest_document[0], [schema], body, "body")
    return [f"{where} ({method.upper()} {pattern}): {p}" for p in problems]


def webhook_violations(event: str, payload: Any, *, partial: bool = False) -> list[str]:
    """What GitHub's webhook description says is wrong with this body of `event` (the
    X-GitHub-Event header), one line per problem; [] when nothing.

    `partial`: the body carries only some of the fields GitHub sends (a test's minimal
    body): no field is required, but each one present must be one the schema describes
    at that place, with the type and values it allows."""
    description = webhook_description()
    action = payload.get("action") if isinstance(payload, dict) else None
    name = description.webhooks.get((event, action if isinstance(action, str) else None))
    if name is None:
        return [f"GitHub's webhook description has no {event!r} event with action "
                f"{action!r}"]
    api, document = _partial_webhooks() if partial else (description.api, {})
    request = _WebhookRequest(name, json.dumps(payload).encode())
    with _validate_lock:
        errors = list(api.iter_webhook_request_errors(request))
    problems = [line for error in errors for line in _lines(error, "payload")]
    if partial:
        schema = document["webhooks"][name]["post"]["requestBody"]["content"][
            "application/json"]["schema"]
        problems += _undeclared(document, [schema], payload, "payload")
    return [f"{name}: {p}" for p in problems]


def _partial_webhooks() -> tuple[OpenAPI, dict[str, Any]]:
    """The webhook description without `required`, and with `oneOf` read as `anyOf`
    (a partial body may fit several alternatives, which `oneOf` refuses)."""
    with _load_lock:
        if not _partial:
            document = _without_required(_read(WEBHOOK_DESCRIPTION))
            api = OpenAPI.from_dict(document, config=Config(
                spec_validator_cls=None,
                webhook_request_validator_cls=V31WebhookRequestBodyValidator,
            ))  # fmt: skip
            _partial.append((api, document))
        return _partial[0]


def _without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {("anyOf" if key == "oneOf" else key): _without_required(value)
                for key, value in node.items()
                if not (key == "required" and isinstance(value, list))}  # fmt: skip
    if isinstance(node, list):
        return [_without_required(value) for value in node]
    return node


def _undeclared(document: dict[str, Any], schemas: list[Any], value: Any, where: str
                ) -> list[str]:
    """The keys of `value` that none of `schemas` (alternatives) declares at their place.

    GitHub's schemas rarely close their objects, so the validator alone would take a
    misspelt field in a partial body for an extra one."""
    alternatives = _alternatives(document, schemas)
    if isinstance(value, list):
        items = [s["items"] for s in alternatives if isinstance(s.get("items"), dict)]
        return [p for i, item in enumerate(value)
                for p in _undeclared(document, items, item, f"{where}[{i}]")] if items else []
    if not isinstance(value, dict):
        return []
    declared: dict[str, list[Any]] = {}
    for schema in alternatives:
        if "properties" not in schema and schema.get("type") in (None, "object"):
            return []  # a free-form object: any key is GitHub's to send
        if schema.get("additionalProperties") not in (None, False):
            return []
        for key, sub in schema.get("properties", {}).items():
            declared.setdefault(key, []).append(sub)
    problems = []
    for key, sub_value in value.items():
        if key not in declared:
            problems.append(f"{where}.{key}: not a property GitHub's schema describes here")
        else:
            problems += _undeclared(document, declared[key], sub_value, f"{where}.{key}")
    return problems


def _alternatives(document: dict[str, Any], schemas: list[Any]) -> list[dict[str, Any]]:
    """Concrete schemas: `$ref`s followed, `allOf` / `anyOf` / `oneOf` members flattened
    (for names, each member declares some of the object's properties)."""
    found: list[dict[str, Any]] = []
    for schema in schemas:
        while isinstance(schema, dict) and "$ref" in schema:
            schema = _resolve(document, schema["$ref"])
        if not isinstance(schema, dict):
            continue
        members = [m for key in ("allOf", "anyOf", "oneOf") for m in schema.get(key, [])]
        own = {k: v for k, v in schema.items() if k not in ("allOf", "anyOf", "oneOf")}
        if members:
            found += _alternatives(document, members)
            if "properties" in own:
                found.append(own)
        else:
            found.append(own)
    return found


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _parameters(path: SchemaPath, operation: SchemaPath) -> Iterable[SchemaPath]:
    for owner in (path, operation):
        if "parameters" in owner:
            yield from owner / "parameters"


def _lines(error: Exception, root: str) -> list[str]:
    """Lines for an openapi-core error: each schema error at its place in the value, or,
    for a parameter, which one and why."""
    cause = error.__cause__
    schema_errors: Sequence[ValidationError] = getattr(cause, "schema_errors", ())
    if schema_errors:
        return [f"{_place(root, e)}: {_short(e.message)}" for e in schema_errors]
    return [_short(f"{error}" + (f" ({cause})" if cause is not None else ""))]


def _place(root: str, error: ValidationError) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                          for p in error.absolute_path)  # fmt: skip


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
