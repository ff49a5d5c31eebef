"""Fixtures of the workload tests (test_workloads.py, test_pod_security.py): the
activities on the test control plane and one environment per test (workload_env.py).
test_container_db.py brings its own."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator

import pytest

from activities.kubernetes import ClusterClients, KubernetesActivities
from engine.keyring import Keyring
from engine.sealing import Sealer
from tests.activities.kubernetes.workload_env import CLUSTER, Env
from tests.plugins.kube import KubeCluster


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    key = base64.b64encode(os.urandom(32)).decode()
    return Sealer(Keyring.parse(f"test-1:{key}"))


@pytest.fixture(scope="module")
def acts(kube_cluster: KubeCluster, sealer: Sealer) -> Iterator[KubernetesActivities]:
    clusters = ClusterClients({CLUSTER: str(kube_cluster.kubeconfig)})
    yield KubernetesActivities(clusters, sealer, poll_interval=0.2)
    clusters.close()


@pytest.fixture
def env(kube_cluster: KubeCluster, acts: KubernetesActivities, sealer: Sealer) -> Iterator[Env]:
    e = Env(kube_cluster, acts, sealer, id=f"t-{uuid.uuid4().hex[:10]}")
    yield e
    for ns in e.namespaces:
        kube_cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
