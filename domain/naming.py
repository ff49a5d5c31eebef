"""Deterministic, valid names for every resource of a preview environment.

Branch names, titles and repository names never reach a resource name unescaped:
everything goes through `_slug`, and a name that had to be shortened or changed gets
a stable hash suffix so two different inputs do not collide.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RDS_IDENTIFIER = re.compile(r"^[a-z](?!.*--)[a-z0-9-]{0,62}(?<!-)$")
PG_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
)

MANAGED_BY = "preview-engine"
# The tail of every environment id (environment_id): its PR's number, its repository's hash.
PREVIEW_ENVIRONMENT = re.compile(r"-pr-(\d{1,9})-([0-9a-f]{6})$")
# On every answer of the engine's own default backend (the wake page): what the ingress
# sends a host it has no route for, so a check of a preview's URL can tell it apart.
DEFAULT_BACKEND_HEADER = "X-Preview-Default-Backend"


class NameError_(ValueError):
    """A name that cannot be made valid (for example an empty base domain)."""


def stable_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _slug(text: str, allowed: str = "a-z0-9", sep: str = "-") -> str:
    lowered = text.lower()
    replaced = re.sub(f"[^{allowed}]+", sep, lowered)
    return re.sub(f"{re.escape(sep)}+", sep, replaced).strip(sep)


def _fit(slug: str, original: str, max_len: int, sep: str = "-") -> str:
    """Shorten to max_len, adding a hash of the original when anything was lost."""
    if slug == original and len(slug) <= max_len:
        return slug
    suffix = stable_hash(original)
    head = slug[: max_len - len(suffix) - 1].rstrip(sep)
    return f"{head}{sep}{suffix}" if head else suffix


def dns_label(*parts: str, max_len: int = 63) -> str:
    """A DNS-1123 label (Kubernetes names of namespaces, services, deployments)."""
    original = "-".join(parts)
    name = _fit(_slug(original), original, max_len)
    if not name[0].isalnum():
        name = "x" + name[: max_len - 1]
    return name


def environment_id(repository: str, pr_number: int) -> str:
    """The id of a preview: readable, unique per repository and PR, a valid DNS label.

    The repository's hash is always part of it, since `acme/shop` and `acme-shop`
    would otherwise share a slug.
    """
    if pr_number < 1:
        raise NameError_(f"pull request number must be positive, got {pr_number}")
    suffix = f"-pr-{pr_number}-{stable_hash(repository.lower())}"
    repo_name = repository.rsplit("/", 1)[-1]
    head = _slug(repo_name)[: 63 - len(suffix)].strip("-") or "repo"
    return f"{head}{suffix}"


def workflow_id(repository: str, pr_number: int) -> str:
    """One Temporal workflow per pull request."""
    return f"preview/{repository.lower()}/pr-{pr_number}"


def preview_workflows(environments: list[str], repositories: list[str]) -> dict[str, str]:
    """Environment id → the id of the workflow that owns it, for those whose repository is
    among `repositories` (an environment id holds its PR's number and its repository's
    hash, not the repository itself)."""
    by_hash: dict[str, list[str]] = {}
    for repository in repositories:
        by_hash.setdefault(stable_hash(repository.lower()), []).append(repository)
    owners: dict[str, str] = {}
    for env in environments:
        match = PREVIEW_ENVIRONMENT.search(env)
        if match is None:
            continue
        number, digest = int(match.group(1)), match.group(2)
        for repository in by_hash.get(digest, []):
            if number >= 1 and environment_id(repository, number) == env:
                owners[env] = workflow_id(repository, number)
    return owners


def resource_name(env_id: str, key: str, max_len: int = 63) -> str:
    """Kubernetes object name for a resource key of an environment."""
    return dns_label(env_id, key, max_len=max_len)


def object_name(key: str, max_len: int = 63) -> str:
    """Name of an object inside the preview's own namespace (already unique there)."""
    return dns_label(key, max_len=max_len)


def rds_identifier(env_id: str, key: str) -> str:
    """RDS instance/cluster identifier: letter first, no `--`, no trailing `-`, ≤ 63."""
    name = dns_label("pv", env_id, key, max_len=63)
    name = re.sub("-+", "-", name)
    if not name[0].isalpha():
        name = "p" + name[:62]
    return name.rstrip("-")


def pg_identifier(*parts: str, max_len: int = 63) -> str:
    """PostgreSQL identifier (database or role), safe unquoted: [a-z_][a-z0-9_]*."""
    original = "_".join(parts)
    name = _fit(_slug(original, sep="_"), original, max_len, sep="_")
    if not (name[0].isalpha() or name[0] == "_"):
        name = "p_" + name[: max_len - 2]
    return name


def hostname(app: str, pr_number: int, base_domain: str) -> str:
    """`<app>-pr-<n>.<base domain>`, the public host of one application of a preview."""
    domain = base_domain.strip(".").lower()
    if not domain or not HOSTNAME.match(domain):
        raise NameError_(f"base domain {base_domain!r} is not a valid DNS name")
    return f"{dns_label(app, f'pr-{pr_number}')}.{domain}"


class Ownership(BaseModel):
    """The mark every object carries: managed by us, owned by one environment."""

    model_config = ConfigDict(frozen=True)

    environment: str
    repository: str = ""
    pr_number: int = 0

    def labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "preview.dev/environment": self.environment,
        }

    def tags(self) -> dict[str, str]:
        return {"managed-by": MANAGED_BY, "preview-environment": self.environment}
