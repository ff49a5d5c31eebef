"""Links between a preview's elements, written in a variable's value or a chart's values.

`{{ urls.api }}` is the preview URL of application `api` (public applications have one),
anywhere in a value: `API_URL: "{{ urls.api }}/v1"`. `{{ connections.main }}` is the
connection URL of database or cache `main`, and must be the whole value: it holds a
password, so the planner delivers it through the application's Secret, never its
ConfigMap. A frontend's preview finds its backend's preview this way, which Compose-based
preview systems leave to each team.
"""

from __future__ import annotations

import re
from typing import NamedTuple

REFERENCE = re.compile(r"\{\{\s*([A-Za-z_]+)\.([A-Za-z0-9_-]+)\s*\}\}")


class Link(NamedTuple):
    kind: str  # "urls" or "connections"
    name: str


def links_in(value: str) -> list[Link]:
    return [Link(kind, name) for kind, name in REFERENCE.findall(value)]


PR_FIELDS = ("number", "head_sha")  # `{{ pr.number }}`, in a chart's values


def check_links(key: str, value: str, *, urls: set[str], connections: set[str],
                hosts: set[str] | None = None, where: str | None = None) -> None:
    """ValueError naming a reference to something that does not exist, or a connection
    URL that is not the whole value. `hosts` (public charts) is given where a chart's
    values are checked: there `{{ hosts.<chart> }}` and `{{ pr.<field> }}` exist too."""
    where = where or f"variable {key}"
    for link in links_in(value):
        written = f"{{{{ {link.kind}.{link.name} }}}}"
        if link.kind == "urls":
            if link.name not in urls:
                raise ValueError(f"{where}: {written} names no public application or chart "
                                 f"(public ones: {', '.join(sorted(urls)) or 'none'})")
        elif link.kind == "connections":
            if link.name not in connections:
                raise ValueError(f"{where}: {written} names no database or cache "
                                 f"(there are: {', '.join(sorted(connections)) or 'none'})")
            if connection_of(value) is None:
                raise ValueError(f"{where}: {written} must be the whole value (a "
                                 "connection URL holds a password: it goes in a Secret)")
        elif link.kind == "hosts" and hosts is not None:
            if link.name not in hosts:
                raise ValueError(f"{where}: {written} names no public chart (public ones: "
                                 f"{', '.join(sorted(hosts)) or 'none'})")
        elif link.kind == "pr" and hosts is not None:
            if link.name not in PR_FIELDS:
                raise ValueError(f"{where}: {written}: the pull request's fields are "
                                 f"{', '.join(f'pr.{f}' for f in PR_FIELDS)}")
        else:
            chart = ", hosts.<chart>, pr.number or pr.head_sha" if hosts is not None else ""
            raise ValueError(f"{where}: {written}: links are urls.<application>, "
                             f"connections.<database or cache>{chart}")


def connection_of(value: str) -> str | None:
    """The element whose connection URL the whole value is, if it is one."""
    match = REFERENCE.fullmatch(value.strip())
    return match.group(2) if match and match.group(1) == "connections" else None


def with_urls(value: str, urls: dict[str, str],
              more: dict[str, dict[str, str]] | None = None) -> str:
    """The value with each `{{ urls.<app> }}` replaced by that application's URL (and
    each `{{ <kind>.<name> }}` of `more`, e.g. {"pr": {"number": "7"}})."""
    known = {"urls": urls, **(more or {})}

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in known:
            return match.group(0)
        return known[match.group(1)][match.group(2)]  # check_links ran on reading

    return REFERENCE.sub(replace, value)
