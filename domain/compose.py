"""A Compose file as a blueprint: `preview blueprint import docker-compose.yml`, once.

A team already describes its system for local development; this writes the blueprint
that describes the same system, to review and commit. PostgreSQL services become
databases (cloned, seeded and masked like any other), Redis and Valkey services caches,
every other service an application. What a preview cannot do as Compose does (the host's
network, privileged containers, files of the developer's machine) is an error naming the
file, line and key: silently dropping it would make a preview that differs from what the
team runs.

A blueprint may also name its Compose file (`compose: <path>`): at every deploy the
engine reads it from the pull request's head commit and merges it in (merged_blueprint).

Pure: the caller reads the file and gives its text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from domain.blueprint import COLLECTIONS, Blueprint, Variable
from domain.blueprint_file import BlueprintFileError, Problem, locate, read_yaml

DATABASE_IMAGES = re.compile(r"(^|/)(postgres|postgis)(:|@|$)")
CACHE_IMAGES = re.compile(r"(^|/)(redis|valkey)(:|@|$)")
# Keys a preview has no equivalent for: the service runs on the preview's own network, in
# a hardened pod, from an image.
REFUSED = {
    "network_mode": "previews run on the preview's own network, not the host's or another "
                    "service's",
    "privileged": "preview pods are never privileged",
    "pid": "preview pods do not share a process namespace",
    "ipc": "preview pods do not share IPC",
    "cap_add": "preview pods run without added capabilities",
    "devices": "preview pods see no host device",
    "extra_hosts": "previews resolve names through cluster DNS only",
}
# The connection URLs the engine gives through depends_on (domain.blueprint.COLLECTIONS).
ENGINE_URLS = {kind.url_variable for kind in COLLECTIONS if kind.url_variable}
HEALTH_URL = re.compile(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0)(?::(\d+))?(/[^\s'\"]*)?")


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it (YAML 1.2): `yes`, `no`, `on` and `off` are words, only
    true and false are booleans, so a service named `no` stays `no`."""


ComposeLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


@dataclass
class ComposeImport:
    """The blueprint, and what a person should know about the mapping."""

    blueprint: Blueprint
    notes: list[str] = field(default_factory=list)


class _Reader:
    def __init__(self, root: yaml.Node, filename: str) -> None:
        self.root, self.filename = root, filename
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def refuse(self, path: tuple[int | str, ...], message: str) -> None:
        mark = locate(self.root, path)
        self.problems.append(Problem(self.filename, mark.line + 1, mark.column + 1,
                                     ".".join(str(p) for p in path), message))


def is_compose_file(text: str) -> bool:
    """A Compose file has `services` and no blueprint's `project`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "services" in data and "project" not in data


def blueprint_from_compose(text: str, filename: str, *, project: str,
                           repository: str) -> ComposeImport:
    """The blueprint equivalent to a Compose file; BlueprintFileError naming each thing
    that cannot be mapped (file, line, key)."""
    root, data = read_yaml(text, filename, ComposeLoader)
    if root is None or not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise BlueprintFileError(filename, [Problem(filename, 1, None, "",
                                                    "a Compose file has a `services` mapping")])
    reader = _Reader(root, filename)
    services: dict[str, Any] = data["services"]
    kinds = {name: _kind(service) for name, service in services.items()}
    applications, databases, caches, variables = [], [], [], []
    for name, service in services.items():
        where: tuple[int | str, ...] = ("services", name)
        if not isinstance(name, str):
            reader.refuse(where, f"service name {name!r} is not a word (quote it)")
            continue
        if not isinstance(service, dict):
            reader.refuse(where, "a service is a mapping")
            continue
        _refuse_unmappable(reader, where, service)
        if kinds[name] == "database":
            databases.append({"name": name, "engine": "postgres", "mode": "shared"})
            reader.notes.append(f"{name}: a database of each preview's own (empty; choose its "
                                "data_policy: seed, clone or masked_clone)")
        elif kinds[name] == "cache":
            caches.append({"name": name, "image": service["image"]})
        else:
            app, app_variables = _application(reader, where, name, service)
            if app is not None:
                applications.append(app)
                variables += app_variables
    if reader.problems:
        raise BlueprintFileError(filename, reader.problems)
    document = {"project": {"name": project, "repository": repository},
                "applications": applications, "databases": databases, "caches": caches,
                "variables": variables}
    try:
        return ComposeImport(Blueprint.model_validate(document), reader.notes)
    except ValidationError as error:
        raise BlueprintFileError(filename, [
            Problem(filename, None, None, ".".join(str(p) for p in e["loc"]), e["msg"])
            for e in error.errors(include_url=False, include_input=False)]) from None


def _kind(service: Any) -> str:
    image = str(service.get("image", "")) if isinstance(service, dict) else ""
    if DATABASE_IMAGES.search(image):
        return "database"
    if CACHE_IMAGES.search(image):
        return "cache"
    return "application"


def _refuse_unmappable(reader: _Reader, where: tuple[int | str, ...],
                       service: dict[str, Any]) -> None:
    for key, why in REFUSED.items():
        if key in service and service[key] not in (None, False, []):
            reader.refuse((*where, key), why)
    for i, volume in enumerate(service.get("volumes") or []):
        source = volume.get("source", "") if isinstance(volume, dict) else (
            str(volume).split(":")[0] if ":" in str(volume) else "")
        kind = volume.get("type") if isinstance(volume, dict) else None
        if kind == "bind" or str(source).startswith((".", "/", "~")):
            reader.refuse((*where, "volumes", i),
                          f"a bind mount of {source} from the developer's machine: a preview "
                          "has no such files (bake them into the image, or use a ConfigMap)")


def _application(reader: _Reader, where: tuple[int | str, ...], name: str,
                 service: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if "image" not in service:
        reader.refuse(where, f"service {name} has no `image`: a preview runs the image CI "
                             "pushes for the pull request's commit (build: is CI's part)")
        return None, []
    # The repository only: a preview runs the tag CI pushes for the PR's commit.
    image = str(service["image"]).split("@", 1)[0]
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    app: dict[str, Any] = {"name": name, "image": repository}
    ports = [_container_port(reader, (*where, "ports", i), port)
             for i, port in enumerate(service.get("ports") or [])]
    ports += [int(str(p).split("/")[0]) for p in service.get("expose") or []]
    if ports:
        app["ports"] = [p for p in dict.fromkeys(ports) if p is not None]
    app["public"] = bool(service.get("ports"))  # published on the host: reachable by URL
    if command := service.get("command"):
        app["command"] = shlex.split(command) if isinstance(command, str) else list(command)
    depends = service.get("depends_on") or []
    if depends:
        app["depends_on"] = list(depends)  # a list, or a mapping of name → condition
    if health := _health_check(service.get("healthcheck")):
        app["health_check"] = health
    variables = []
    for key, value in _environment(service.get("environment")).items():
        if key in ENGINE_URLS:
            reader.notes.append(f"{name}: {key} dropped: the engine gives each application "
                                "the connection URLs of what it names in depends_on")
            continue
        variables.append({"key": key, "value": value, "scope": "application",
                          "application": name})
    return app, variables


def _container_port(reader: _Reader, where: tuple[int | str, ...], port: Any) -> int | None:
    """"8080:80" → 80, "3000" → 3000, {"target": 80} → 80."""
    if isinstance(port, dict):
        target = port.get("target")
    else:
        target = str(port).split("/")[0].rsplit(":", 1)[-1]
    try:
        return int(str(target))
    except ValueError:
        reader.refuse(where, f"port {port!r}: a range or a variable cannot be a preview's port")
        return None


def _health_check(check: Any) -> dict[str, Any] | None:
    """A Compose healthcheck that asks an HTTP URL on the container itself becomes the
    probe on that path and port; any other command has no probe equivalent."""
    if not isinstance(check, dict) or check.get("disable"):
        return None
    test = check.get("test")
    text = " ".join(test) if isinstance(test, list) else str(test or "")
    match = HEALTH_URL.search(text)
    if match is None:
        return None
    return {"path": match.group(2) or "/", **({"port": int(match.group(1))}
                                                if match.group(1) else {})}


def _environment(environment: Any) -> dict[str, str]:
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    found = {}
    for item in environment or []:
        key, _, value = str(item).partition("=")
        found[key] = value
    return found


def merged_blueprint(blueprint: Blueprint, text: str) -> Blueprint:
    """A blueprint that says `compose: <path>`, with that file's services (its text, as
    of the pull request's head commit) in it: applications, databases and caches from
    the file, the blueprint's own entries replacing those of the same name, and the
    file's environment entries as variables unless the blueprint sets the same one.
    BlueprintFileError names what cannot be mapped (file, line, key) and what the merged
    blueprint gets wrong (a name nothing defines)."""
    assert blueprint.compose is not None
    path = blueprint.compose.path
    from_file = blueprint_from_compose(text, path, project=blueprint.project.name,
                                       repository=blueprint.project.repository).blueprint
    document = blueprint.model_dump(mode="json", exclude={"compose"})
    for kind in COLLECTIONS:
        own = {item.name: item.model_dump(mode="json") for item in kind.items(blueprint)}
        document[kind.field] = [own.pop(item.name, item.model_dump(mode="json"))
                                for item in kind.items(from_file)] + list(own.values())

    def identity(variable: Variable) -> tuple[str, str, str | None, str]:
        return (variable.key, variable.scope, variable.application, variable.applies_to)

    own_variables = {identity(v) for v in blueprint.variables}
    document["variables"] = [v.model_dump(mode="json") for v in from_file.variables
                             if identity(v) not in own_variables] + document["variables"]
    try:
        return Blueprint.model_validate(document)
    except ValidationError as error:
        raise BlueprintFileError(path, [
            Problem(path, None, None, "", f"with the blueprint of {blueprint.project.name}: "
                                          f"{e['msg'].removeprefix('Value error, ')}")
            for e in error.errors(include_url=False, include_input=False)]) from None
