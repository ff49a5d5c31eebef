"""preview.yaml: parsing, errors that point at file/line/field, dumping, the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from domain.blueprint import (
    Application,
    Blueprint,
    DatabaseMode,
    DataPolicy,
    Project,
    Variable,
    VariableKind,
)
from domain.blueprint_file import (
    BlueprintFileError,
    Problem,
    dump_blueprint,
    json_schema,
    json_schema_text,
    parse_blueprint,
)

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "preview.yaml"
SCHEMA = ROOT / "schema" / "preview.schema.json"
FIXTURES = Path("/work/shared/fixtures/github-webhooks")

GOOD = """\
project:
  name: shop
  repository: acme/shop
applications:
  - name: web
    image: registry.local/shop/web
"""


def problems(text: str) -> list[Problem]:
    with pytest.raises(BlueprintFileError) as raised:
        parse_blueprint(text, "preview.yaml")
    return raised.value.problems


def one(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_the_example_is_a_valid_blueprint_of_the_fixture_repository() -> None:
    blueprint = parse_blueprint(EXAMPLE.read_text(), str(EXAMPLE))
    assert blueprint.project.repository == "Codertocat/Hello-World"
    assert [a.name for a in blueprint.applications] == ["web", "api", "worker"]
    assert [a.public for a in blueprint.applications] == [True, True, False]
    assert all(a.image.startswith("registry.local/hello/") for a in blueprint.applications)
    (database,) = blueprint.databases
    assert (database.mode, database.data_policy) == (DatabaseMode.shared,
                                                     DataPolicy.masked_clone)
    assert database.source == "hello_production"  # what the local stack makes
    assert {(r.table, r.column) for r in database.masking} == {("customers", "email"),
                                                               ("customers", "name")}
    assert blueprint.network.base_domain == "preview.localhost"
    kinds = {(v.key, v.applies_to.value, v.kind.value) for v in blueprint.variables}
    assert {("NODE_ENV", "both", "value"), ("NODE_ENV", "previews", "override"),
            ("PUBLIC_API", "both", "alias")} <= kinds
    if not FIXTURES.is_dir():
        pytest.skip("shared webhook fixtures not present")
    names = {json.loads(p.read_text())["repository"]["full_name"]
             for p in FIXTURES.glob("pull_request.*.json") if "organization" not in p.name}
    assert names == {blueprint.project.repository}


def test_a_type_error_names_file_line_column_and_field() -> None:
    text = GOOD + "    ports: [8080, eighty]\n"
    problem = one(text)
    assert (problem.filename, problem.line, problem.field) == (
        "preview.yaml", 7, "applications[0].ports[1]")
    assert str(problem).startswith("preview.yaml:7:") and "valid integer" in str(problem)


def test_every_error_is_reported_each_at_its_own_line() -> None:
    text = """\
project:
  name: Shop_Name
  repository: acme/shop
applications:
  - name: web
    image: registry.local/shop/web
    replicas: 99
  - name: api
    imagee: registry.local/shop/api
"""
    found = {(p.line, p.field) for p in problems(text)}
    assert found == {
        (2, "project.name"),                 # not a DNS label
        (7, "applications[0].replicas"),     # above the maximum
        (8, "applications[1].image"),        # missing: points at the item
        (9, "applications[1].imagee"),       # unknown field: points at the key
    }
    messages = {p.field: p.message for p in problems(text)}
    assert messages["applications[1].image"] == "missing required field 'image'"
    assert messages["applications[1].imagee"] == "unknown field 'imagee'"
    assert "Value error" not in messages["project.name"]


def test_a_dangling_reference_points_at_the_reference() -> None:
    text = GOOD + "    depends_on: [cache]\n"
    problem = one(text)
    assert (problem.line, problem.field) == (7, "applications[0].depends_on[0]")
    assert "'cache'" in problem.message


def test_a_dependency_cycle_is_named() -> None:
    text = GOOD + """\
    depends_on: [api]
  - name: api
    image: registry.local/shop/api
    depends_on: [web]
"""
    problem = one(text)
    assert "web -> api -> web" in problem.message or "api -> web -> api" in problem.message
    assert problem.line is not None and problem.line > 1


def test_a_duplicate_application_points_at_the_second_one() -> None:
    text = GOOD + "  - name: web\n    image: other\n"
    problem = one(text)
    assert problem.line == 7 and "duplicate application names: web" in problem.message


def test_a_variable_for_an_unknown_application_points_at_it() -> None:
    text = GOOD + "variables:\n  - key: X\n    scope: application\n    application: nope\n"
    problem = one(text)
    assert (problem.line, problem.field) == (10, "variables[0].application")


def test_a_secret_value_in_the_file_is_refused_at_its_line() -> None:
    text = GOOD + "variables:\n  - key: TOKEN\n    kind: secret\n    value: hunter2\n"
    problem = one(text)
    assert problem.line == 8 and problem.field == "variables[0]"
    assert "write-only" in problem.message
    assert "hunter2" not in str(problem)


def test_yaml_syntax_errors_name_the_line() -> None:
    problem = one(GOOD + "  - name: [unclosed\n")
    assert problem.line == 8 and problem.message.startswith("invalid YAML")


def test_duplicate_keys_are_refused() -> None:
    problem = one(GOOD + "project:\n  name: other\n")
    assert (problem.line, problem.field) == (7, "project")
    assert "duplicate key" in problem.message


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("- a\n- b\n", "found a list"),
])
def test_a_file_that_is_not_a_mapping(text: str, message: str) -> None:
    assert message in one(text).message


def test_json_is_accepted_too() -> None:
    data = yaml.safe_load(GOOD)
    assert parse_blueprint(json.dumps(data), "preview.json") == parse_blueprint(GOOD)


def test_the_error_message_lists_every_problem() -> None:
    with pytest.raises(BlueprintFileError) as raised:
        parse_blueprint("project: {}\napplications: []\n", "x/preview.yaml")
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("x/preview.yaml:") for line in lines)


def test_dump_then_parse_gives_the_same_blueprint() -> None:
    blueprint = parse_blueprint(EXAMPLE.read_text())
    text = dump_blueprint(blueprint)
    assert parse_blueprint(text) == blueprint
    assert "public: true" not in text  # defaults are left out
    assert dump_blueprint(blueprint, schema_url="s.json").startswith(
        "# yaml-language-server: $schema=s.json\n")


awkward_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40
)


@settings(max_examples=300, deadline=None, database=None)
@example(values=["\x85", "a\u2028b", "\ufeffx", "yes", "0123", "null", "- a", "#x", "é"],
         command=["\u2029"])
@given(values=st.lists(awkward_text, min_size=1, max_size=5),
       command=st.lists(awkward_text, max_size=3))
def test_any_string_survives_a_round_trip(values: list[str], command: list[str]) -> None:
    """yes/no/null/0123/'a: b'/unicode: YAML's implicit typing must not change a value."""
    blueprint = Blueprint(
        project=Project(name="shop", repository="acme/shop"),
        applications=[Application(name="web", image="img", command=command or None)],
        variables=[Variable(key=f"K{i}", value=v, kind=VariableKind.value)
                   for i, v in enumerate(values)],
    )
    assert parse_blueprint(dump_blueprint(blueprint)) == blueprint


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA.read_text() == json_schema_text(), (
        "schema/preview.schema.json is stale: regenerate it with "
        "`preview blueprint schema -o schema/preview.schema.json`"
    )


def test_the_schema_accepts_the_example_and_rejects_nonsense() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = yaml.safe_load(EXAMPLE.read_text())
    assert list(validator.iter_errors(example)) == []
    bad = {**example, "applications": [{"name": "web", "image": "x", "replicas": "many"}]}
    assert list(validator.iter_errors(bad))
    assert list(validator.iter_errors({**example, "surprise": 1}))
