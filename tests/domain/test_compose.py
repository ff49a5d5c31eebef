"""`preview blueprint import docker-compose.yml`: a team's Compose file as a blueprint,
once, and what cannot be mapped refused with its file, line and key; and a blueprint
that names its Compose file, merged with it (what each deploy plans)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.blueprint import Blueprint
from domain.blueprint_file import BlueprintFileError, parse_blueprint
from domain.compose import blueprint_from_compose, is_compose_file, merged_blueprint
from starter import cli_api

COMPOSE = """\
name: shop
services:
  web:
    image: ghcr.io/acme/shop-web:latest
    build: ./web
    ports: ["8080:3000"]
    command: node server.js --port 3000
    environment:
      NODE_ENV: development
      DATABASE_URL: postgres://shop:shop@db:5432/shop
      API_URL: http://api:9000
    depends_on:
      db: {condition: service_healthy}
      api: {condition: service_started}
      cache: {condition: service_started}
    healthcheck:
      test: ["CMD-SHELL", "curl -fsS http://localhost:3000/healthz || exit 1"]
  api:
    image: ghcr.io/acme/shop-api@sha256:0123
    expose: ["9000"]
    environment: ["LOG_LEVEL=debug", "FEATURE_X="]
    depends_on: [db]
  db:
    image: postgres:16-alpine
    environment: {POSTGRES_PASSWORD: shop}
    volumes: ["pgdata:/var/lib/postgresql/data"]
  cache:
    image: redis:7.4-alpine
volumes:
  pgdata: {}
"""


def test_services_become_applications_databases_and_caches() -> None:
    made = blueprint_from_compose(COMPOSE, "docker-compose.yml", project="shop",
                                  repository="acme/shop")
    bp = made.blueprint
    web, api = bp.applications
    assert (web.name, web.image, web.ports, web.public) == (
        "web", "ghcr.io/acme/shop-web", [3000], True)
    assert web.command == ["node", "server.js", "--port", "3000"]
    assert web.depends_on == ["db", "api", "cache"]
    assert web.health_check is not None
    assert (web.health_check.path, web.health_check.port) == ("/healthz", 3000)
    assert (api.image, api.ports, api.public) == ("ghcr.io/acme/shop-api", [9000], False)
    assert [(d.name, d.mode.value) for d in bp.databases] == [("db", "shared")]
    assert [(c.name, c.image) for c in bp.caches] == [("cache", "redis:7.4-alpine")]
    variables = {(v.application, v.key): v.value for v in bp.variables}
    assert variables == {("web", "NODE_ENV"): "development", ("web", "API_URL"): "http://api:9000",
                         ("api", "LOG_LEVEL"): "debug", ("api", "FEATURE_X"): ""}
    # The engine gives the connection URL of what web names; the developer's one goes.
    assert any("DATABASE_URL dropped" in note for note in made.notes)


@pytest.mark.parametrize(("service", "key", "line", "says"), [
    ("    network_mode: host\n", "services.web.network_mode", 4, "own network"),
    ("    privileged: true\n", "services.web.privileged", 4, "never privileged"),
    ("    volumes: ['./src:/app/src']\n", "services.web.volumes.0", 4, "bind mount of ./src"),
])
def test_what_a_preview_cannot_do_is_refused_with_its_line(
        service: str, key: str, line: int, says: str) -> None:
    text = f"services:\n  web:\n    image: acme/web\n{service}"
    with pytest.raises(BlueprintFileError) as refused:
        blueprint_from_compose(text, "compose.yaml", project="shop", repository="acme/shop")
    [problem] = refused.value.problems
    assert (problem.filename, problem.line, problem.field) == ("compose.yaml", line, key)
    assert says in problem.message


def test_a_service_without_an_image_is_refused() -> None:
    with pytest.raises(BlueprintFileError, match=r"compose.yaml:2:3: services.web: .*no `image`"):
        blueprint_from_compose("services:\n  web:\n    build: .\n", "compose.yaml",
                               project="shop", repository="acme/shop")


def test_the_cli_writes_a_blueprint_that_imports(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "docker-compose.yml", tmp_path / "preview.yaml"
    source.write_text(COMPOSE)
    assert is_compose_file(COMPOSE) and not is_compose_file("project: {name: x}\n")
    parser = argparse.ArgumentParser(prog="preview")
    cli_api.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["blueprint", "import", str(source), "--repository", "acme/shop",
                              "--project", "shop", "-o", str(target)])
    assert args.func(args) == 0
    written = parse_blueprint(target.read_text(), str(target))  # what import would read
    assert [a.name for a in written.applications] == ["web", "api"]
    err = capsys.readouterr().err
    assert "review it, then `preview blueprint import" in err
    assert "  web: DATABASE_URL, DATABASE_URL_DB, REDIS_URL, REDIS_URL_CACHE" in err
    args = parser.parse_args(["blueprint", "import", str(source)])
    assert args.func(args) == 1
    assert "give --repository" in capsys.readouterr().err


# -- a blueprint that names its Compose file: merged at each deploy ---------------------

def compose_blueprint(**extra: object) -> Blueprint:
    return Blueprint.model_validate({
        "project": {"name": "shop", "repository": "acme/shop"},
        "compose": {"path": "docker-compose.yml"}, **extra})


def test_the_blueprints_own_entries_replace_the_files_by_name() -> None:
    blueprint = compose_blueprint(
        databases=[{"name": "db", "source": "shop_production", "data_policy": "masked_clone",
                    "masking": [{"table": "users", "column": "email", "method": "fake"}]}],
        applications=[{"name": "api", "image": "ghcr.io/acme/shop-api", "ports": [9000],
                       "replicas": 2, "depends_on": ["db"]}],
        variables=[{"key": "NODE_ENV", "value": "preview", "scope": "application",
                    "application": "web"},
                   {"key": "PUBLIC_API", "value": "{{ urls.web }}/api"}])
    merged = merged_blueprint(blueprint, COMPOSE)
    assert merged.compose is None
    assert [a.name for a in merged.applications] == ["web", "api"]
    assert merged.applications[1].replicas == 2  # the blueprint's api, not the file's
    [db] = merged.databases
    assert (db.source, db.data_policy.value) == ("shop_production", "masked_clone")
    assert [c.name for c in merged.caches] == ["cache"]
    web_env = {v.key: v.value for v in merged.variables if v.application == "web"}
    assert web_env["NODE_ENV"] == "preview"  # the blueprint's, not the file's development
    assert web_env["API_URL"] == "http://api:9000"  # the file's own
    assert ("PUBLIC_API", "http://web-pr-3.preview.localhost/api") in {
        (k, v) for k, v in plan_config(merged, "api").items()}


def plan_config(blueprint: Blueprint, app: str) -> dict[str, str]:
    from domain.plan import plan_preview
    from domain.pull_request import PullRequest
    from domain.resources import ConfigMapSpec

    spec = plan_preview(blueprint, PullRequest(repository="acme/shop", number=3,
                                               head_sha="abcdef1")).step(f"config/{app}").spec
    assert isinstance(spec, ConfigMapSpec)
    return spec.data


def test_a_name_neither_the_file_nor_the_blueprint_has_is_named() -> None:
    blueprint = compose_blueprint(variables=[{"key": "X", "value": "1", "scope": "application",
                                              "application": "worker"}])
    with pytest.raises(BlueprintFileError) as raised:
        merged_blueprint(blueprint, COMPOSE)
    assert str(raised.value) == ("docker-compose.yml: with the blueprint of shop: variable X "
                                 "names unknown application or job 'worker'")


def test_what_the_file_cannot_map_is_refused_with_its_line() -> None:
    with pytest.raises(BlueprintFileError, match=r"docker-compose\.yml:4:5: services\.web\."
                                                 r"network_mode"):
        merged_blueprint(compose_blueprint(), "services:\n  web:\n    image: r/web\n"
                                              "    network_mode: host\n")


# (`null` is YAML's null in a Compose file too: refused, tested below.)
service_names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True).filter(
    lambda name: name != "null"), min_size=1, max_size=5, unique=True)


def test_a_service_named_no_or_on_keeps_its_name_and_null_is_refused() -> None:
    """Compose reads YAML 1.2: `no`, `on`, `yes` and `off` are words (PyYAML's default,
    YAML 1.1, would make them booleans)."""
    text = "services:\n" + "".join(f"  {n}:\n    image: r/{n}\n" for n in ("no", "on", "y"))
    merged = merged_blueprint(compose_blueprint(), text)
    assert [a.name for a in merged.applications] == ["no", "on", "y"]
    with pytest.raises(BlueprintFileError, match=r"service name None is not a word"):
        merged_blueprint(compose_blueprint(), "services:\n  null:\n    image: r/x\n")


@given(service_names, service_names)
def test_the_merge_has_every_service_and_every_own_application_once(
        in_file: list[str], own: list[str]) -> None:
    text = "services:\n" + "".join(f"  {n}:\n    image: r/{n}\n" for n in in_file)
    blueprint = compose_blueprint(applications=[{"name": n, "image": f"mine/{n}"}
                                                for n in own])
    merged = merged_blueprint(blueprint, text)
    names = [a.name for a in merged.applications]
    assert sorted(names) == sorted(set(in_file) | set(own))  # each once
    for app in merged.applications:
        assert app.image == (f"mine/{app.name}" if app.name in own else f"r/{app.name}")
