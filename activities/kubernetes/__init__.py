"""Everything the engine does in Kubernetes clusters: the request layer (api.py), pod
diagnosis and hardening (pods.py), namespaces and the sweeper (namespaces.py), what runs
in them (workloads.py), container databases (container_db.py) and lifecycle jobs
(jobs.py) and Helm charts (charts.py).

`kubernetes_activities` is what a worker serving Kubernetes registers: a new kind of
resource in a cluster adds its activity object there, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from activities.aws import AwsClients
from activities.kubernetes.api import ClusterClients, StoredKubeconfig, poll_delays
from activities.kubernetes.cache import CacheActivities
from activities.kubernetes.charts import ChartActivities
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
                          helm: str = "helm", plain_http: Sequence[str] = (),
                          registry_mirrors: Mapping[str, str] | None = None,
                          registry_credentials: Mapping[str, tuple[str, str]] | None = None,
                          ) -> list[object]:
    """watcher: where this worker reaches the preview PostgreSQL server, what watches
    deploy jobs' databases for the migration report; helm, plain_http, registry_mirrors,
    registry_credentials: how charts are rendered, where and as whom their registries
    are reached."""
    workloads = KubernetesActivities(clusters, sealer, rights=rights, sweep_grace=sweep_grace)
    databases = ContainerDatabaseActivities(clusters, sealer, aws, rights=rights,
                                            golden_namespace=golden_namespace)
    charts = ChartActivities(workloads, helm=helm, plain_http=plain_http,
                             registry_mirrors=registry_mirrors or {},
                             registry_credentials=registry_credentials or {})
    return [workloads, databases, CacheActivities(workloads), JobActivities(workloads, watcher),
            charts]


__all__ = [
    "ChartActivities",
    "ClusterClients",
    "ContainerDatabaseActivities",
    "JobActivities",
    "KubernetesActivities",
    "NamespaceRights",
    "StoredKubeconfig",
    "kubernetes_activities",
    "poll_delays",
]
