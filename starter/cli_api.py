"""`preview` commands for the environment model, over the HTTP API.

    preview projects list|show|create|delete
    preview vars list|set|delete
    preview secrets list|set|delete      (values from stdin or a prompt, never argv)
    preview blueprint import|export|validate|schema
    preview tokens create

The API is at $PREVIEW_API_URL (default http://<listen_host>:<listen_port>/api) and the
token comes from $PREVIEW_API_TOKEN only: a token on the command line would end up in
shell history and in `ps`. `register(subparsers)` adds the commands; each sets
`func(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from domain.blueprint import COLLECTIONS, Blueprint, connections_by_application
from domain.blueprint_file import dump_blueprint, json_schema_text, parse_blueprint
from domain.compose import blueprint_from_compose, is_compose_file
from domain.naming import dns_label

TOKEN_ENV = "PREVIEW_API_TOKEN"
URL_ENV = "PREVIEW_API_URL"


class CliError(Exception):
    """A failure to report in one line (or a few) and exit 1."""


def read_blueprint_file(path: Path) -> Blueprint:
    """Read and validate a preview.yaml; errors name the file, line and field."""
    return parse_blueprint(path.read_text(encoding="utf-8"), str(path))


def _default_url() -> str:
    if url := os.environ.get(URL_ENV):
        return url
    from engine.settings import get_settings

    settings = get_settings()
    return f"http://{settings.listen_host}:{settings.listen_port}/api"


def _client(args: argparse.Namespace) -> httpx.Client:
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise CliError(f"set {TOKEN_ENV} to an API token (an admin or a project token)")
    return httpx.Client(base_url=args.api_url.rstrip("/"),
                        headers={"Authorization": f"Bearer {token}"}, timeout=30.0)


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        raise CliError(f"HTTP {response.status_code}: {response.text[:500]}") from None
    errors = body.get("errors") or []
    if errors and all(e.get("type") == "blueprint" for e in errors):
        raise CliError("\n".join(e["message"] for e in errors))  # already file:line: field: ...
    raise CliError(str(body.get("message") or body))


def _pages(client: httpx.Client, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every item of a paginated listing."""
    offset = 0
    while True:
        page = _check(client.get(path, params={**params, "limit": 200, "offset": offset})).json()
        yield from page["items"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _print(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    if args.json or columns is None:
        print(json.dumps(data, indent=2))
    else:
        print(_table(data if isinstance(data, list) else [data], columns))


def _ref_params(args: argparse.Namespace) -> dict[str, str]:
    params = {"scope": args.scope, "applies_to": args.applies_to}
    if args.environment:
        params["environment"] = args.environment
    if args.application:
        params["application"] = args.application
    return params


# ---------------------------------------------------------------------------- commands


def projects_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = list(_pages(client, "/projects", {}))
    _print(args, items, ["name", "repository", "source_environment"])
    return 0


def projects_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(args, _check(client.get(f"/projects/{args.project}")).json())
    return 0


def projects_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "repository": args.repository,
            "source_environment": args.source_environment}
    with _client(args) as client:
        created = _check(client.post("/projects", json=body)).json()
    _print(args, created, ["name", "repository", "source_environment"])
    return 0


def projects_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CliError(f"deleting project {args.project} removes its variables and secrets; "
                       "repeat with --yes")
    with _client(args) as client:
        _check(client.delete(f"/projects/{args.project}"))
    print(f"project {args.project} deleted")
    return 0


def vars_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("key", args.key), ("application", args.application)) if v}
    with _client(args) as client:
        items = list(_pages(client, f"/projects/{args.project}/variables", params))
    _print(args, items, ["key", "value", "kind", "scope", "environment", "application",
                         "applies_to"])
    return 0


def vars_set(args: argparse.Namespace) -> int:
    key, sep, value = args.assignment.partition("=")
    if not sep:
        raise CliError("write the variable as KEY=VALUE")
    body = {"value": value, "kind": args.kind, **_ref_params(args)}
    with _client(args) as client:
        response = _check(client.put(f"/projects/{args.project}/variables/{key}", json=body))
    verb = "created" if response.status_code == 201 else "updated"
    print(f"variable {key} {verb}")
    return 0


def vars_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _check(client.delete(f"/projects/{args.project}/variables/{args.key}",
                             params=_ref_params(args)))
    print(f"variable {args.key} deleted")
    return 0


def _read_secret(key: str) -> str:
    """The value from a pipe (one trailing newline dropped), or a prompt that does not echo."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"Value of {key}: ")
    else:
        value = sys.stdin.read()
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value:
        raise CliError(f"no value given for {key}")
    return value


def secrets_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = list(_pages(client, f"/projects/{args.project}/secrets", {}))
    _print(args, items, ["key", "scope", "environment", "application", "applies_to", "version",
                         "updated_at", "updated_by"])
    return 0


def secrets_set(args: argparse.Namespace) -> int:
    value = _read_secret(args.key)
    with _client(args) as client:
        body = {"value": value, **_ref_params(args)}
        response = _check(client.put(f"/projects/{args.project}/secrets/{args.key}", json=body))
    print(f"secret {args.key} {'created' if response.status_code == 201 else 'updated'}")
    return 0


def secrets_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _check(client.delete(f"/projects/{args.project}/secrets/{args.key}",
                             params=_ref_params(args)))
    print(f"secret {args.key} deleted")
    return 0


def secrets_rewrap(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = _check(client.post("/secrets/rewrap")).json()
    print(f"{answer['rewrapped']} sealed values (secrets, cluster kubeconfigs) re-wrapped; "
          f"all are wrapped by {answer['key_id']}")
    return 0


def clusters_set(args: argparse.Namespace) -> int:
    path = Path(args.kubeconfig)
    body = {"kubeconfig": path.read_text(), "context": args.context}
    with _client(args) as client:
        response = _check(client.put(f"/clusters/{args.name}", json=body))
    print(f"cluster {args.name} {'created' if response.status_code == 201 else 'updated'} "
          f"(kubeconfig sealed; {path} is no longer needed by the workers)")
    return 0


def clusters_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = list(_pages(client, "/clusters", {}))
    _print(args, items, ["name", "context", "key_id", "version", "updated_at", "updated_by"])
    return 0


def clusters_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _check(client.delete(f"/clusters/{args.name}"))
    print(f"cluster {args.name} deleted")
    return 0


def blueprint_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    text = path.read_text(encoding="utf-8")
    if is_compose_file(text):
        return _blueprint_from_compose(args, path, text)
    read_blueprint_file(path)  # fail early, offline, with the file's own line numbers
    content_type = "application/json" if path.suffix == ".json" else "application/yaml"
    with _client(args) as client:
        result = _check(client.post("/blueprints", content=path.read_bytes(),
                                    params={"filename": str(path)},
                                    headers={"Content-Type": content_type})).json()
    if args.json:
        _print(args, result)
    else:
        verb = "created" if result["created"] else "updated"
        counts = [f"{result[kind.field]} {kind.field}" for kind in COLLECTIONS]
        print(f"project {result['project']} {verb} from {path}: {', '.join(counts)}, "
              f"{result['variables']} variables")
        _print_connections(result.get("connections", {}))
    return 0


def _print_connections(connections: dict[str, list[str]], file: Any = None) -> None:
    """Which application gets which connection URLs: only what it names in depends_on
    (before, one that named no database got them all)."""
    for app, variables in connections.items():
        print(f"  {app}: {', '.join(variables) if variables else 'no connection URLs'}",
              file=file or sys.stdout)


def _blueprint_from_compose(args: argparse.Namespace, path: Path, text: str) -> int:
    """A Compose file: write the equivalent blueprint (to review and import), once."""
    if not args.repository:
        raise CliError(f"{path} is a Compose file: give --repository OWNER/NAME for the "
                       "blueprint it becomes")
    project = args.project or dns_label(path.resolve().parent.name)
    made = blueprint_from_compose(text, str(path), project=project, repository=args.repository)
    blueprint = dump_blueprint(made.blueprint)
    if args.output:
        Path(args.output).write_text(blueprint, encoding="utf-8")
    else:
        sys.stdout.write(blueprint)
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"blueprint of project {project} written from {path}"
          f"{' to ' + args.output if args.output else ''}; review it, then "
          f"`preview blueprint import {args.output or 'preview.yaml'}`", file=sys.stderr)
    _print_connections(connections_by_application(made.blueprint), file=sys.stderr)
    return 0


def blueprint_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = _check(client.get(f"/projects/{args.project}/blueprint",
                                     params={"format": args.format}))
    text = response.text if args.format == "yaml" else json.dumps(response.json(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def blueprint_validate(args: argparse.Namespace) -> int:
    blueprint = read_blueprint_file(Path(args.file))
    print(f"{args.file}: valid blueprint of project {blueprint.project.name} "
          f"({len(blueprint.applications)} applications)")
    _print_connections(connections_by_application(blueprint))
    return 0


def blueprint_schema(args: argparse.Namespace) -> int:
    if args.output:
        Path(args.output).write_text(json_schema_text(), encoding="utf-8")
    else:
        sys.stdout.write(json_schema_text())
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "project": args.project}
    with _client(args) as client:
        created = _check(client.post("/tokens", json=body)).json()
    if args.json:
        _print(args, created)
    else:
        scope = f"project {created['project']}" if created["project"] else "admin"
        print(f"token {created['id']} ({scope}); shown once, store it now:", file=sys.stderr)
        print(created["token"])
    return 0


# ---------------------------------------------------------------------------- parsers


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report API and input errors on stderr with exit status 1, without a traceback."""
    from domain.blueprint_file import BlueprintFileError

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CliError, BlueprintFileError) as error:
            print(f"preview: {error}", file=sys.stderr)
            return 1
        except httpx.HTTPError as error:
            print(f"preview: cannot reach the API at {args.api_url}: {error}", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"preview: {error}", file=sys.stderr)
            return 1

    run.__name__ = func.__name__
    return run


def _ref_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scope", choices=["project", "environment", "application"],
                        default="project")
    parser.add_argument("--environment", help="for --scope environment (default: the source)")
    parser.add_argument("--application", help="for --scope application")
    parser.add_argument("--applies-to", dest="applies_to", default="both",
                        choices=["production", "previews", "both"])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the projects, vars, secrets, blueprint and tokens commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", default=_default_url(),
                        help=f"API base URL (${URL_ENV}); the token is read from ${TOKEN_ENV}")
    common.add_argument("--json", action="store_true", help="print JSON")

    def command(group: Any, name: str, func: Callable[[argparse.Namespace], int],
                help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help)
        parser.set_defaults(func=_guard(func))
        return parser

    projects = subparsers.add_parser("projects", help="projects and their repositories")
    group = projects.add_subparsers(dest="projects_command", required=True)
    command(group, "list", projects_list, "list projects")
    command(group, "show", projects_show, "show a project").add_argument("project")
    p = command(group, "create", projects_create, "register a project")
    p.add_argument("name")
    p.add_argument("repository", help="owner/name")
    p.add_argument("--source-environment", default="production")
    p = command(group, "delete", projects_delete, "delete a project and all it holds")
    p.add_argument("project")
    p.add_argument("--yes", action="store_true")

    variables = subparsers.add_parser("vars", help="plain variables")
    group = variables.add_subparsers(dest="vars_command", required=True)
    p = command(group, "list", vars_list, "list a project's variables")
    p.add_argument("project")
    p.add_argument("--key")
    p.add_argument("--application")
    p = command(group, "set", vars_set, "create or replace a variable")
    p.add_argument("project")
    p.add_argument("assignment", metavar="KEY=VALUE")
    p.add_argument("--kind", default="value", choices=["value", "alias", "override"])
    _ref_options(p)
    p = command(group, "delete", vars_delete, "delete a variable")
    p.add_argument("project")
    p.add_argument("key")
    _ref_options(p)

    secrets = subparsers.add_parser("secrets", help="write-only secret values")
    group = secrets.add_subparsers(dest="secrets_command", required=True)
    command(group, "list", secrets_list, "list secrets (metadata only)").add_argument("project")
    p = command(group, "set", secrets_set, "set a secret; the value is read from stdin or a prompt")
    p.add_argument("project")
    p.add_argument("key")
    _ref_options(p)
    p = command(group, "delete", secrets_delete, "delete a secret")
    p.add_argument("project")
    p.add_argument("key")
    _ref_options(p)
    command(group, "rewrap", secrets_rewrap,
            "after rotating the master key: wrap every secret with the new one (admin)")

    clusters = subparsers.add_parser("clusters", help="dedicated clusters' sealed kubeconfigs")
    group = clusters.add_subparsers(dest="clusters_command", required=True)
    p = command(group, "set", clusters_set, "store a cluster's kubeconfig, sealed (admin)")
    p.add_argument("name", help="the name blueprints use in environment.cluster.name")
    p.add_argument("--kubeconfig", required=True, help="the kubeconfig file")
    p.add_argument("--context", help="the context to use (default: its current-context)")
    command(group, "list", clusters_list, "stored clusters (metadata only)")
    command(group, "delete", clusters_delete, "forget a cluster").add_argument("name")

    blueprint = subparsers.add_parser("blueprint", help="preview.yaml import and export")
    group = blueprint.add_subparsers(dest="blueprint_command", required=True)
    p = command(group, "import", blueprint_import, "create or update a project from a "
                "preview.yaml; a docker-compose.yml is written out as an equivalent blueprint")
    p.add_argument("file")
    p.add_argument("--repository", help="Compose file: the blueprint's project.repository")
    p.add_argument("--project", help="Compose file: the project's name (default: its folder)")
    p.add_argument("-o", "--output", help="Compose file: write the blueprint here, not stdout")
    p = command(group, "export", blueprint_export, "print a project's blueprint")
    p.add_argument("project")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    command(group, "validate", blueprint_validate, "check a file without the API"
            ).add_argument("file")
    p = command(group, "schema", blueprint_schema, "print the JSON Schema of preview.yaml")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")

    tokens = subparsers.add_parser("tokens", help="API tokens (admin)")
    group = tokens.add_subparsers(dest="tokens_command", required=True)
    p = command(group, "create", tokens_create, "create a token; printed once")
    p.add_argument("name")
    p.add_argument("--project", help="scope the token to this project (default: admin)")
