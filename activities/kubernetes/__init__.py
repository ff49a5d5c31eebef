"""Everything the engine does in Kubernetes clusters: the request layer (api.py), pod
diagnosis (pods.py), namespaces and the sweeper (namespaces.py), what runs in them
(workloads.py) and container databases (container_db.py)."""

from activities.kubernetes.api import ClusterClients, StoredKubeconfig, poll_delays
from activities.kubernetes.container_db import ContainerDatabaseActivities
from activities.kubernetes.workloads import KubernetesActivities

__all__ = [
    "ClusterClients",
    "ContainerDatabaseActivities",
    "KubernetesActivities",
    "StoredKubeconfig",
    "poll_delays",
]
