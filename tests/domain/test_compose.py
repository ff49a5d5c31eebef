"""`preview blueprint import docker-compose.yml`: a team's Compose file as a blueprint,
once, and what cannot be mapped refused with its file, line and key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from domain.blueprint_file import BlueprintFileError, parse_blueprint
from domain.compose import blueprint_from_compose, is_compose_file
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
