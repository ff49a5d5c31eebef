"""Everything the engine does in Kubernetes clusters: the request layer (api.py), pod
diagnosis and hardening (pods.py), namespaces and the sweeper (namespaces.py), what runs
in them (workloads.py), container databases (container_db.py) and lifecycle jobs
(jobs.py).

`kubernetes_activities` is what a worker serving Kubernetes registers: a new kind of
resource in a cluster adds its activity object there, and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from activities.aws import AwsClients
from activities.kubernetes.api import ClusterClients, StoredKubeconfig, poll_delays
from activities.kubernetes.cache import CacheActivities
from activities.kubernetes.container_db import ContainerDatabaseActivities
from activities.kubernetes.container_db_snapshot import GOLDEN_NAMESPACE
from activities.kubernetes.jobs import JobActivities
from activities.kubernetes.rights import NamespaceRights
from activities.kubernetes.workloads import KubernetesActivities
from engine.sealing import Sealer

if TYPE_CHECKING:
    from activities.postgres.migration import MigrationWatcher


def kubernetes_activities(clusters: ClusterClients, sealer: Sealer, aws: AwsClients,
                          rights: NamespaceRights | None = None, *,
                          golden_namespace: str = GOLDEN_NAMESPACE,
                          sweep_grace: float = 0.0, watcher: MigrationWatcher | None = None,
                          ) -> list[object]:
    """watcher: where this worker reaches the preview PostgreSQL server, what watches
    deploy jobs' databases for the migration report."""
    workloads = KubernetesActivities(clusters, sealer, rights=rights, sweep_grace=sweep_grace)
    databases = ContainerDatabaseActivities(clusters, sealer, aws, rights=rights,
                                            golden_namespace=golden_namespace)
    return [workloads, databases, CacheActivities(workloads), JobActivities(workloads, watcher)]


__all__ = [
    "ClusterClients",
    "ContainerDatabaseActivities",
    "JobActivities",
    "KubernetesActivities",
    "NamespaceRights",
    "StoredKubeconfig",
    "kubernetes_activities",
    "poll_delays",
]
