"""GitLab's environments as the Git host stand-in (git_host.py) serves them: list (by
name and state, paged), create, edit its URL, stop, and delete a stopped one."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

Reply = tuple[int, dict[str, str], Any]
Pager = Callable[[list[dict[str, Any]], re.Match[str], dict[str, str], int], Reply]


class GitLabEnvironments:
    def __init__(self, ids: Iterator[int], page: Pager) -> None:
        self._ids, self._page = ids, page
        self._by_project: dict[str, list[dict[str, Any]]] = {}

    def of(self, project: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self._by_project.get(project, [])]

    def clear(self) -> None:
        self._by_project.clear()

    def routes(self, gl: str) -> list[tuple[str, str, Callable[..., Reply]]]:
        return [(gl + r"/environments$", "GET", self._list),
                (gl + r"/environments$", "POST", self._create),
                (gl + r"/environments/(?P<id>\d+)$", "PUT", self._edit),
                (gl + r"/environments/(?P<id>\d+)$", "DELETE", self._delete),
                (gl + r"/environments/(?P<id>\d+)/stop$", "POST", self._stop)]

    def _list(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        found = [e for e in self._by_project.get(unquote(m["project"]), [])
                 if query.get("name") in (None, e["name"])
                 and query.get("states") in (None, e["state"])]
        return self._page(found, m, query, 20)

    def _create(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return 400, {}, {"message": "400 Bad request - name is missing"}
        environments = self._by_project.setdefault(unquote(m["project"]), [])
        if any(e["name"] == body["name"] for e in environments):
            return 400, {}, {"message": {"name": ["has already been taken"]}}
        environment = {"id": next(self._ids), "name": body["name"], "state": "available",
                       "external_url": body.get("external_url"),
                       "tier": body.get("tier", "other")}  # fmt: skip
        environments.append(environment)
        return 201, {}, environment

    def _find(self, m: re.Match[str]) -> dict[str, Any] | None:
        return next((e for e in self._by_project.get(unquote(m["project"]), [])
                     if e["id"] == int(m["id"])), None)

    def _edit(self, m: re.Match[str], _: dict[str, str], body: Any) -> Reply:
        environment = self._find(m)
        if environment is None:
            return 404, {}, {"message": "404 Environment Not Found"}
        if isinstance(body, dict) and "external_url" in body:
            environment["external_url"] = body["external_url"]
        return 200, {}, environment

    def _stop(self, m: re.Match[str], _: dict[str, str], __: Any) -> Reply:
        environment = self._find(m)
        if environment is None:
            return 404, {}, {"message": "404 Environment Not Found"}
        environment["state"] = "stopped"
        return 200, {}, environment

    def _delete(self, m: re.Match[str], _: dict[str, str], __: Any) -> Reply:
        environment = self._find(m)
        if environment is None:
            return 404, {}, {"message": "404 Environment Not Found"}
        if environment["state"] != "stopped":  # GitLab deletes stopped environments only
            return 403, {}, {"message": "403 Forbidden"}
        self._by_project[unquote(m["project"])].remove(environment)
        return 204, {}, None
