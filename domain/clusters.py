"""Credentials of dedicated clusters: a kubeconfig, kept sealed like a secret.

An environment with `isolation: cluster` names its cluster; the workers find that name
in their settings (PREVIEW_KUBE_CONTEXTS) or, failing that, among the kubeconfigs an
operator stored sealed in the control-plane store (`preview clusters set`). This module
checks a kubeconfig before it is sealed, without ever quoting its contents.
"""

from __future__ import annotations

from typing import Any

import yaml

# A DNS label: the name also appears in task queue names (`previews-cluster-NAME`).
CLUSTER_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_KUBECONFIG_BYTES = 256 * 1024


class KubeconfigError(ValueError):
    """What is wrong with a kubeconfig; never includes any of its values."""


def _named(items: Any, section: str) -> dict[str, dict[str, Any]]:
    if not isinstance(items, list):
        raise KubeconfigError(f"`{section}` must be a list")
    found: dict[str, dict[str, Any]] = {}
    for position, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise KubeconfigError(f"`{section}[{position}]` has no name")
        body = item.get(section.removesuffix("s"))
        if not isinstance(body, dict):
            raise KubeconfigError(f"`{section}[{position}]` ({item['name']!r}) has no "
                                  f"`{section.removesuffix('s')}` mapping")
        found[item["name"]] = body
    return found


# What a stored kubeconfig may say. No `exec`/`auth-provider` (they run commands or
# plugins on the worker), no file paths such as `client-key` or `tokenFile` (they read
# the worker's files, e.g. its own service-account token): inline credentials only.
CLUSTER_FIELDS = {"server", "certificate-authority-data", "tls-server-name",
                  "insecure-skip-tls-verify"}
USER_FIELDS = {"client-certificate-data", "client-key-data", "token", "username", "password"}
CONTEXT_FIELDS = {"cluster", "user", "namespace"}


def _only(body: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in body if k not in allowed)
    if extra:
        raise KubeconfigError(f"{where} uses {', '.join(extra)}: a stored kubeconfig may only "
                              f"hold inline credentials ({', '.join(sorted(allowed))})")


def check_kubeconfig(text: str, context: str | None = None) -> dict[str, Any]:
    """The parsed kubeconfig, if it can reach a cluster through `context` (or its
    current-context); otherwise KubeconfigError saying what is missing."""
    if len(text.encode()) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"a kubeconfig larger than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigError(f"not valid YAML{where}") from None
    if not isinstance(config, dict):
        raise KubeconfigError("a kubeconfig is a YAML mapping (kind: Config)")
    clusters = _named(config.get("clusters") or [], "clusters")
    users = _named(config.get("users") or [], "users")
    contexts = _named(config.get("contexts") or [], "contexts")
    for kind, named, allowed in (("cluster", clusters, CLUSTER_FIELDS),
                                 ("user", users, USER_FIELDS),
                                 ("context", contexts, CONTEXT_FIELDS)):
        for name, body in named.items():
            _only(body, allowed, f"{kind} {name!r}")
    chosen = context or config.get("current-context")
    if not chosen or not isinstance(chosen, str):
        raise KubeconfigError("no context given and no current-context set")
    if chosen not in contexts:
        raise KubeconfigError(f"context {chosen!r} is not in the kubeconfig "
                              f"(contexts: {', '.join(sorted(contexts)) or 'none'})")
    target = contexts[chosen]
    cluster, user = target.get("cluster"), target.get("user")
    if not isinstance(cluster, str) or cluster not in clusters:
        raise KubeconfigError(f"context {chosen!r} names a cluster the kubeconfig lacks")
    if user is not None and (not isinstance(user, str) or user not in users):
        raise KubeconfigError(f"context {chosen!r} names a user the kubeconfig lacks")
    if not isinstance(clusters[cluster].get("server"), str):
        raise KubeconfigError(f"the cluster of context {chosen!r} has no server")
    return config
