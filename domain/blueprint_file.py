"""`preview.yaml`: a blueprint as a file people write, and its JSON Schema.

Pure: callers pass the text and the file name (reading the file is the caller's job), so
errors can still say where the problem is: `preview.yaml:12:7: applications[0].ports[0]:
Input should be a valid integer`. Line numbers come from the YAML parser's node marks,
matched against the location pydantic gives for each error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from domain.blueprint import Blueprint

SCHEMA_ID = "https://preview-engine.local/schema/preview.schema.json"
SCHEMA_PATH = "schema/preview.schema.json"  # relative to the repository root


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a blueprint file, with where it is."""

    filename: str
    line: int | None  # 1-based; None when the location is unknown
    column: int | None  # 1-based
    field: str  # dotted path such as "applications[0].ports[0]"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.filename
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class BlueprintFileError(ValueError):
    """A blueprint file that cannot be used; `problems` lists every error found."""

    def __init__(self, filename: str, problems: Sequence[Problem]) -> None:
        self.filename = filename
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def field_path(loc: Sequence[int | str]) -> str:
    """("applications", 0, "ports") -> "applications[0].ports"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _message(error: ErrorDetails) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "missing" and loc:
        return f"missing required field {loc[-1]!r}"
    if kind == "extra_forbidden" and loc:
        return f"unknown field {loc[-1]!r}"
    message = error["msg"]
    # pydantic prefixes messages of our own validators; the rest already reads well.
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def locate(root: yaml.Node, loc: Sequence[int | str]) -> yaml.Mark:
    """The mark of the deepest YAML node on the path `loc`.

    Mapping entries point at their key (the line a person reads as "the field"); list items
    at the item. Parts that match nothing (pydantic adds union member names, and a missing
    field has no node) leave the mark on the nearest enclosing node.
    """
    node, mark = root, root.start_mark
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    node, mark = value, key.start_mark
                    break
        elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
              and 0 <= part < len(node.value)):
            node = node.value[part]
            mark = node.start_mark
    return mark


def _scalar_values(
    node: yaml.Node, path: tuple[int | str, ...] = ()
) -> Iterator[tuple[yaml.ScalarNode, tuple[int | str, ...]]]:
    """Every scalar value (not key) of a document, in document order, with its path."""
    if isinstance(node, yaml.ScalarNode):
        yield node, path
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _scalar_values(value, (*path, getattr(key, "value", "?")))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _scalar_values(item, (*path, index))


def _locate_by_name(root: yaml.Node, message: str) -> tuple[yaml.Mark, tuple[int | str, ...]]:
    """Where a whole-blueprint error (dangling reference, cycle) is, from the names it quotes.

    The Blueprint's own validator reports such errors for the document as a whole; the
    most specific name in its message (the last one quoted: the dangling reference) is
    usually a value in the file, so the error can point at the line that holds it. For a
    duplicate name, the second occurrence is the one to fix.
    """
    names = re.findall(r"'([^']+)'", message)
    if not names and ": " in message:
        names = re.split(r", | -> ", message.rsplit(": ", 1)[1])
    app_cycle = "depend on each other in a cycle" in message
    for name in reversed(names):
        found = [(s.start_mark, path) for s, path in _scalar_values(root) if s.value == name
                 # a cycle is broken by removing a dependency, so point at one
                 and (not app_cycle or "depends_on" in path)]
        if found:
            return found[-1] if message.startswith("duplicate") else found[0]
    return root.start_mark, ()


def _duplicate_keys(
    node: yaml.Node, filename: str, path: tuple[int | str, ...] = ()
) -> list[Problem]:
    """YAML lets a later key silently replace an earlier one; a blueprint does not."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            if name in seen:
                problems.append(Problem(
                    filename, key.start_mark.line + 1, key.start_mark.column + 1,
                    field_path((*path, name)), f"duplicate key {name!r}",
                ))
            seen.add(name)
            problems += _duplicate_keys(value, filename, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, filename, (*path, index))
    return problems


def read_yaml(text: str, filename: str, loader_class: type[yaml.SafeLoader] = yaml.SafeLoader,
              ) -> tuple[yaml.Node | None, Any]:
    """The document's root node (for line numbers) and its data; BlueprintFileError for
    text that is not YAML."""
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        reason = error.problem or error.context or "invalid YAML"
        raise BlueprintFileError(filename, [Problem(
            filename, mark.line + 1 if mark else None, mark.column + 1 if mark else None,
            "", f"invalid YAML: {reason}",
        )]) from None
    except yaml.YAMLError as error:
        raise BlueprintFileError(
            filename, [Problem(filename, None, None, "", f"invalid YAML: {error}")]
        ) from None
    except RecursionError:
        raise BlueprintFileError(filename, [Problem(
            filename, None, None, "", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()
    return root, data


def parse_blueprint(text: str, filename: str = "preview.yaml") -> Blueprint:
    """Validate blueprint text (YAML, so JSON too); raise BlueprintFileError naming each problem."""
    root, data = read_yaml(text, filename)
    if root is None:
        raise BlueprintFileError(filename, [Problem(
            filename, 1, None, "",
            "the file is empty; a blueprint needs `project` and `applications`",
        )])
    if not isinstance(data, dict):
        raise BlueprintFileError(filename, [Problem(
            filename, root.start_mark.line + 1, root.start_mark.column + 1, "",
            "a blueprint is a mapping with `project`, `applications`, ...; "
            f"found a {type(data).__name__}",
        )])
    duplicates = _duplicate_keys(root, filename)
    if duplicates:
        raise BlueprintFileError(filename, duplicates)
    try:
        return Blueprint.model_validate(data)
    except ValidationError as error:
        problems = []
        for detail in error.errors(include_url=False, include_input=False):
            message = _message(detail)
            path: Sequence[int | str] = detail["loc"]
            mark = locate(root, path) if path else None
            if mark is None:
                mark, path = _locate_by_name(root, message)
            problems.append(Problem(
                filename, mark.line + 1, mark.column + 1, field_path(path), message,
            ))
        raise BlueprintFileError(filename, problems) from None


# YAML reads these as line breaks (or drops the BOM) in plain and single-quoted scalars;
# only the double-quoted style escapes them, so such strings must be double-quoted.
_LINE_BREAKS = ("\x85", "\u2028", "\u2029", "\ufeff")


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if any(ch in value for ch in _LINE_BREAKS):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_Dumper.add_representer(str, _represent_str)


def dump_blueprint(blueprint: Blueprint, *, schema_url: str | None = None) -> str:
    """YAML text of a blueprint without its defaults; parse_blueprint reads it back equal."""
    data = blueprint.model_dump(mode="json", exclude_defaults=True)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False)
    if schema_url:
        # Editors with the YAML language server validate and complete against the schema.
        text = f"# yaml-language-server: $schema={schema_url}\n{text}"
    return text


def json_schema() -> dict[str, Any]:
    """The JSON Schema of preview.yaml, generated from the Blueprint model."""
    schema = Blueprint.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "preview.yaml",
    }


def json_schema_text() -> str:
    """The schema as committed in schema/preview.schema.json (stable formatting)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
