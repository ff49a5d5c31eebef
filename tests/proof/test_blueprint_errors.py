"""Bad blueprints through domain/blueprint_file.parse_blueprint: every error names the
file, the line (and column) and the field a person has to change.

tests/domain/test_blueprint_file.py covers a type error, several errors at once, a
dangling reference, a two-application cycle (message only), duplicates, a variable of an
unknown application, secrets in the file, YAML syntax and duplicate keys; this adds
what it does not: unknown fields at every depth, invalid names of every kind, bad ports,
bad CIDR pools, where a dependency cycle points, and alias cycles.
"""

from __future__ import annotations

import pytest

from domain.blueprint_file import BlueprintFileError, Problem, parse_blueprint

FILENAME = "configs/preview.yaml"
GOOD = """\
project:
  name: shop
  repository: acme/shop
applications:
  - name: web
    image: registry.local/shop/web
"""


def only_problem(text: str) -> Problem:
    with pytest.raises(BlueprintFileError) as raised:
        parse_blueprint(text, FILENAME)
    problems = raised.value.problems
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.filename == FILENAME and str(problem).startswith(f"{FILENAME}:")
    assert str(raised.value).startswith(f"{FILENAME}:{problem.line}:")
    return problem


def line_of(text: str, fragment: str) -> int:
    """1-based number of the (only) line containing `fragment`."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(found) == 1, (fragment, found)
    return found[0]


# ---------------------------------------------------------------------------- unknown fields

@pytest.mark.parametrize(("extra", "field", "fragment"), [
    ("network:\n  base_domian: pr.example.com\n", "network.base_domian", "base_domian"),
    ("policy:\n  ttl_hour: 3\n", "policy.ttl_hour", "ttl_hour"),
    ("environment:\n  cluster:\n    nmae: east\n", "environment.cluster.nmae", "nmae"),
    ("    resources:\n      cpus: 2\n", "applications[0].resources.cpus", "cpus"),
    ("    health_check:\n      paht: /up\n", "applications[0].health_check.paht", "paht"),
    ("databases:\n  - name: main\n    masking:\n      - table: t\n        column: c\n"
     "        method: hash\n        methd: null\n", "databases[0].masking[0].methd", "methd"),
    ("surprise: 1\n", "surprise", "surprise"),
], ids=lambda v: v if isinstance(v, str) and "." in v and "\n" not in v else None)
def test_an_unknown_field_at_any_depth_points_at_its_key(
    extra: str, field: str, fragment: str
) -> None:
    text = GOOD + extra
    problem = only_problem(text)
    assert (problem.field, problem.line) == (field, line_of(text, fragment + ":"))
    assert problem.message == f"unknown field {fragment!r}"


# ---------------------------------------------------------------------------- invalid names

@pytest.mark.parametrize(("text", "field", "bad"), [
    (GOOD.replace("name: web", "name: Web_App"), "applications[0].name", "Web_App"),
    (GOOD.replace("name: web", "name: -web"), "applications[0].name", "-web"),
    (GOOD.replace("name: web", "name: " + "a" * 41), "applications[0].name", "a" * 41),
    (GOOD.replace("name: shop", "name: shöp"), "project.name", "shöp"),
    (GOOD + "databases:\n  - name: Main DB\n", "databases[0].name", "Main DB"),
    (GOOD + "environment:\n  name: Prod\n", "environment.name", "Prod"),
    (GOOD + "variables:\n  - key: 1BAD\n    value: x\n", "variables[0].key", "1BAD"),
    (GOOD + "variables:\n  - key: WITH-DASH\n", "variables[0].key", "WITH-DASH"),
    (GOOD + "    custom_domains: [bad_host.example.com]\n", "applications[0].custom_domains[0]",
     "bad_host.example.com"),
], ids=["app-upper", "app-dash", "app-long", "project-unicode", "db-space", "env-upper",
        "var-digit", "var-dash", "domain-underscore"])
def test_an_invalid_name_points_at_it(text: str, field: str, bad: str) -> None:
    problem = only_problem(text)
    assert (problem.field, problem.line) == (field, line_of(text, bad))
    assert problem.column is not None and problem.column > 1


# ---------------------------------------------------------------------------- ports

BOOL_AS_INT = (
    "domain/blueprint.py models validate in pydantic's lax mode: YAML `true`/`yes` is "
    "accepted as the integer 1 (ports: [true] is port 1, replicas: yes is 1 replica); "
    "ConfigDict(strict=True) or StrictInt on those fields would refuse it")


@pytest.mark.parametrize("ports", ["[http]", "[8080.5]", "[true]", "8080", "[[80]]"],
                         ids=["word", "fraction", "bool", "not-a-list", "nested"])
def test_a_port_of_the_wrong_type_points_at_it(ports: str) -> None:
    text = GOOD + f"    ports: {ports}\n"
    problem = only_problem(text)
    assert problem.field.startswith("applications[0].ports"), problem
    assert problem.line == line_of(text, "ports:")


@pytest.mark.parametrize("port", [0, 65536, -1, 70000])
def test_a_port_out_of_range_points_at_it(port: int) -> None:
    text = GOOD + f"    ports:\n      - 8080\n      - {port}\n"
    problem = only_problem(text)
    assert (problem.field, problem.line) == ("applications[0].ports[1]",
                                             line_of(text, f"- {port}"))
    assert str(port) in problem.message


# ---------------------------------------------------------------------------- CIDR pools

@pytest.mark.parametrize("pool", ["10.0.0.0/33", "not-a-cidr", "2001:db8::/32", "10.0.0.0/24",
                                  "10.0.0.1/16", "300.0.0.0/12"])
def test_a_bad_cidr_pool_points_at_it(pool: str) -> None:
    text = GOOD + f"network:\n  base_domain: pr.example.com\n  vpc_cidr_pool: {pool}\n"
    problem = only_problem(text)
    assert (problem.field, problem.line) == ("network.vpc_cidr_pool",
                                             line_of(text, "vpc_cidr_pool"))


@pytest.mark.parametrize("pool", ["10.0.0.0/33", "not-a-cidr", "2001:db8::/32", "10.0.0.0/24",
                                  "10.0.0.1/16"])
def test_a_bad_cidr_pool_is_refused_with_the_setting_named(pool: str) -> None:
    """What holds today: refused, named in the message, pointing into the network block."""
    text = GOOD + f"network:\n  base_domain: pr.example.com\n  vpc_cidr_pool: {pool}\n"
    problem = only_problem(text)
    assert problem.field.startswith("network") and "vpc_cidr_pool" in problem.message
    assert problem.line is not None and problem.line >= line_of(text, "network:")


def test_a_good_cidr_pool_is_accepted() -> None:
    blueprint = parse_blueprint(GOOD + "network:\n  vpc_cidr_pool: 172.16.0.0/12\n", FILENAME)
    assert blueprint.network.vpc_cidr_pool == "172.16.0.0/12"


# ---------------------------------------------------------------------------- cycles

CYCLE_THREE = GOOD + """\
    depends_on: [api]
  - name: api
    image: registry.local/shop/api
    depends_on: [worker]
  - name: worker
    image: registry.local/shop/worker
    depends_on: [web]
"""


def test_a_three_application_cycle_names_every_member_and_points_at_a_dependency() -> None:
    problem = only_problem(CYCLE_THREE)
    assert "api -> worker -> web -> api" in problem.message
    assert problem.field.startswith("applications[") and ".depends_on[" in problem.field
    assert problem.line in {line_of(CYCLE_THREE, f"depends_on: [{n}]")
                            for n in ("api", "worker", "web")}


def test_a_cycle_through_a_database_name_is_not_a_cycle() -> None:
    text = GOOD + "    depends_on: [main]\ndatabases:\n  - name: main\n"
    assert parse_blueprint(text, FILENAME).applications[0].depends_on == ["main"]


@pytest.mark.parametrize("text", [
    GOOD + "    depends_on: [web]\n",
    GOOD.replace("  - name: web\n    image: registry.local/shop/web\n",
                 "  - name: api\n    image: registry.local/shop/api\n    depends_on: [web]\n"
                 "  - name: web\n    image: registry.local/shop/web\n    depends_on: [api]\n"),
], ids=["self", "declared-first"])
def test_a_cycle_points_at_a_depends_on_entry(text: str) -> None:
    problem = only_problem(text)
    assert "cycle" in problem.message
    assert ".depends_on[" in problem.field, problem


@pytest.mark.parametrize("variables", [
    "  - key: A\n    kind: alias\n    value: A\n",
    "  - key: A\n    kind: alias\n    value: B\n  - key: B\n    kind: alias\n    value: A\n",
    "  - key: A\n    kind: alias\n    value: B\n  - key: B\n    kind: alias\n    value: C\n"
    "  - key: C\n    kind: alias\n    value: A\n",
], ids=["self", "two", "three"])
def test_an_alias_cycle_is_refused_naming_the_variable(variables: str) -> None:
    text = GOOD + "variables:\n" + variables
    problem = only_problem(text)
    assert "cycle" in problem.message
    assert problem.field.startswith("variables[") and problem.line is not None
    assert problem.line > line_of(text, "variables:")


def test_an_alias_chain_without_a_cycle_parses() -> None:
    text = GOOD + ("variables:\n  - key: A\n    kind: alias\n    value: B\n"
                   "  - key: B\n    value: b\n")
    assert [v.key for v in parse_blueprint(text, FILENAME).variables] == ["A", "B"]
