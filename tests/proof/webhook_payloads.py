"""Hypothesis strategies for hostile webhook bodies and headers, and how to read them.

Bodies start from the real GitHub fixtures (tests/fixtures/github-webhooks) or a real
GitLab merge request hook, and are mutated: keys removed, values replaced by other
types, huge strings, unicode, numbers past 64 bits, nesting.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from domain.naming import workflow_id

FIXTURES = Path(__file__).parents[1] / "fixtures" / "github-webhooks"
GITHUB_BASES: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))
}
GITHUB_DEPLOY_OR_CLOSE = {
    "opened", "reopened", "synchronize", "ready_for_review", "converted_to_draft",
    "labeled", "unlabeled", "closed",
}
# Temporal's default limit on workflow ids (limit.maxIDLength).
MAX_WORKFLOW_ID = 1000
INT64_MAX = 2**63 - 1


def gitlab_base(iid: int = 1, action: str = "open") -> dict[str, Any]:
    """A GitLab merge request hook as GitLab sends it (the fields the starter reads, and more)."""
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": {"id": 1, "name": "app", "path_with_namespace": "group/app",
                    "web_url": "http://gitlab.local/group/app"},
        "object_attributes": {
            "id": 99, "iid": iid, "action": action, "title": "Add a thing",
            "source_branch": "feature", "target_branch": "main",
            "source_project_id": 1, "target_project_id": 1, "draft": False,
            "work_in_progress": False, "url": "http://gitlab.local/group/app/-/merge_requests/1",
            "updated_at": "2026-01-01 10:00:00 UTC",
            "last_commit": {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
                            "message": "fix", "author": {"name": "a", "email": "a@b.c"}},
        },
        "labels": [{"id": 206, "title": "API"}],
        "repository": {"name": "app", "url": "git@gitlab.local:group/app.git"},
    }


GITHUB_INTERESTING: list[tuple[str | int, ...]] = [
    ("action",), ("number",), ("pull_request",), ("pull_request", "number"),
    ("pull_request", "head"), ("pull_request", "head", "sha"), ("pull_request", "head", "ref"),
    ("pull_request", "head", "repo"), ("pull_request", "head", "repo", "full_name"),
    ("pull_request", "base"), ("pull_request", "base", "ref"), ("pull_request", "labels"),
    ("pull_request", "user"), ("pull_request", "user", "login"), ("pull_request", "draft"),
    ("pull_request", "title"), ("pull_request", "updated_at"), ("pull_request", "merged"),
    ("pull_request", "html_url"), ("repository",), ("repository", "full_name"), ("zen",),
]
GITLAB_INTERESTING: list[tuple[str | int, ...]] = [
    ("object_kind",), ("project",), ("project", "path_with_namespace"), ("user",),
    ("user", "username"), ("labels",), ("object_attributes",),
    *[("object_attributes", key) for key in (
        "iid", "action", "title", "source_branch", "target_branch", "source_project_id",
        "target_project_id", "draft", "work_in_progress", "url", "updated_at", "last_commit")],
    ("object_attributes", "last_commit", "id"),
]

# Strings that have broken parsers before: empty, control characters, a NUL, a lone
# surrogate (JSON can carry "\ud800"), right-to-left marks, emoji, path tricks, huge.
AWKWARD_STRINGS = [
    "", " ", "\x00", "\n", "\u202e", "é", "👍🏽", "../../etc/passwd", "a/b",
    "0" * 40, "A" * 40, "null", "true", "-1", "1e309", "<script>", "%00",
    "2026-13-45T99:99:99Z", "\uff21\uff22\uff23", "\\", '"',  # fullwidth ABC
]
# Built lazily so a strategy's repr in a failure report stays short.
huge_strings = st.sampled_from([("x", 70_000), ("z", 5_000), ("Ω", 300)]).map(
    lambda spec: spec[0] * spec[1])

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, INT64_MAX, INT64_MAX + 1, 2**64, 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30) | st.sampled_from(AWKWARD_STRINGS) | huge_strings
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def paths_of(doc: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path to a value in a JSON document (dict keys and list indexes)."""
    found: list[tuple[str | int, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.append((*prefix, key))
            found += paths_of(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found.append((*prefix, index))
            found += paths_of(value, (*prefix, index))
    return found


def get_path(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def has_path(doc: Any, path: tuple[str | int, ...]) -> bool:
    for part in path:
        in_dict = isinstance(doc, dict) and part in doc
        in_list = isinstance(doc, list) and isinstance(part, int) and 0 <= part < len(doc)
        if not (in_dict or in_list):
            return False
        doc = doc[part]
    return True


def set_path(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    get_path(doc, path[:-1])[path[-1]] = value


def delete_path(doc: Any, path: tuple[str | int, ...]) -> None:
    parent = get_path(doc, path[:-1])
    del parent[path[-1]]


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], interesting: list[tuple[str | int, ...]],
            max_mutations: int = 4) -> dict[str, Any]:
    """`base` with up to `max_mutations` random changes, often at the fields that matter."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, max_mutations))):
        everywhere = paths_of(doc)
        if not everywhere:
            break
        chosen = [p for p in interesting if has_path(doc, p)]
        focus = bool(chosen) and draw(st.booleans())
        path = draw(st.sampled_from(chosen if focus else everywhere))
        operation = draw(st.sampled_from(["delete", "replace", "replace", "wrap", "add"]))
        if operation == "delete":
            delete_path(doc, path)
        elif operation == "replace":
            set_path(doc, path, draw(json_values))
        elif operation == "wrap":  # the right value, one level too deep
            set_path(doc, path, draw(st.sampled_from([lambda v: [v], lambda v: {"value": v}]))(
                get_path(doc, path)))
        else:  # an unknown key next to known ones
            target = get_path(doc, path[:-1])
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=20))] = draw(json_values)
    return doc


@st.composite
def github_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(X-GitHub-Event, body): a real fixture with a fresh PR number, then mutated."""
    name = draw(st.sampled_from(sorted(GITHUB_BASES)))
    doc = copy.deepcopy(GITHUB_BASES[name])
    if "pull_request" in doc:
        doc["number"] = doc["pull_request"]["number"] = PLACEHOLDER_NUMBER
    return name.split(".")[0], draw(mutated(doc, GITHUB_INTERESTING))


@st.composite
def gitlab_bodies(draw: st.DrawFn) -> dict[str, Any]:
    base = gitlab_base(PLACEHOLDER_NUMBER,
                       draw(st.sampled_from(["open", "reopen", "update", "close", "merge"])))
    return draw(mutated(base, GITLAB_INTERESTING))


# Strategies put this PR number in; tests swap it for a fresh one per example (hypothesis
# replays and shrinks examples, so a number drawn by it would repeat across examples).
PLACEHOLDER_NUMBER = 424_242_424


def fresh_numbers(doc: Any) -> Any:
    """`doc` with every PLACEHOLDER_NUMBER replaced by one new unique number."""
    number = uuid.uuid4().int % 10**9 + 10**9

    def swap(value: Any) -> Any:
        if type(value) is int and value == PLACEHOLDER_NUMBER:
            return number
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    return swap(doc)


# Header values a client could put on the wire: latin-1 text without CR, LF or NUL.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=200,
)


def encode(payload: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes, as a hostile sender could.
    return json.dumps(payload).encode()


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_workflow_id(payload: Any) -> str | None:
    """The workflow a GitHub body would start or signal, when the body names one."""
    try:
        repository = payload["repository"]["full_name"]
        number = payload["pull_request"]["number"]
    except (KeyError, TypeError, IndexError):
        return None
    if isinstance(repository, str) and type(number) is int and number >= 1:
        return workflow_id(repository, number)
    return None


def gitlab_workflow_id(payload: Any) -> str | None:
    try:
        repository = payload["project"]["path_with_namespace"]
        number = payload["object_attributes"]["iid"]
    except (KeyError, TypeError, IndexError):
        return None
    if isinstance(repository, str) and type(number) is int and number >= 1:
        return workflow_id(repository, number)
    return None


def has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False


def past_int64(value: Any) -> bool:
    """Whether pydantic reads `value` as an int (it is lax: "12", 12.0) too big for int64."""
    try:
        number = _INT.validate_python(value)
    except ValidationError:
        return False
    return number > INT64_MAX


_INT: TypeAdapter[int] = TypeAdapter(int)
