"""The external systems the engine acts on, and which worker reaches each for a tenant."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from domain.blueprint import Environment, Isolation


class System(StrEnum):
    """Who serves an activity: a worker holds the credentials of the systems it serves."""

    control_plane = "control-plane"  # the store, blueprint files, Temporal visibility
    kubernetes = "kubernetes"
    aws = "aws"
    postgres = "postgres"  # the shared preview database server
    git_host = "git-host"  # GitHub / GitLab feedback and changed files
    registry = "registry"  # container registries: does an image exist yet


def tenant_queue(base: str, kind: Literal["cluster", "account"], name: str) -> str:
    """The task queue of a dedicated cluster's or account's own worker (docs/tenants.md)."""
    return f"{base}-{kind}-{name}"


def task_queue_for(system: System, environment: Environment, base: str) -> str | None:
    """Where a step of `system` runs for this environment; None: the workflow's own queue.

    The one place that decides it: a cluster-isolated tenant's Kubernetes steps go to
    that cluster's worker, an account-isolated tenant's AWS steps to that account's.
    """
    if system == System.kubernetes and environment.isolation == Isolation.cluster:
        return tenant_queue(base, "cluster", environment.cluster.name)
    account = environment.cloud_account
    if system == System.aws and environment.isolation == Isolation.account and account:
        return tenant_queue(base, "account", account.account_id)
    return None
