"""The chart's RBAC is enough, and no more: the real lifecycle worker runs a whole preview
with the token of the chart's worker ServiceAccount as its only Kubernetes credential,
and that token is refused outside the role (and, by the namespace guard, outside the
namespaces the engine manages). Checked from outside with the admin's kubectl."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.kubernetes import ClusterClients, KubernetesActivities, NamespaceRights
from activities.kubernetes.namespaces import NamespaceActivities
from activities.kubernetes.rights import BINDING_NAME
from domain.naming import Ownership, environment_id
from domain.pull_request import PullRequest
from domain.resources import KubeSweepInput, SecretSpec, StepInput
from engine.sealing import Sealer
from engine.settings import Settings
from starter import lifecycle
from store import Store
from tests.deploy.conftest import CHART, Release
from tests.e2e.test_lifecycle import wait_for
from tests.plugins.kube import KubeCluster
from worker import Resources, Target, build_worker
from workflows.preview import PreviewEnvironmentWorkflow
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.kube, pytest.mark.slow]

REPOSITORY = "acme/chart-rbac"
PROBE = CHART / "files" / "worker_probe.py"


def blueprint() -> dict[str, Any]:
    """Namespace, config map, secret, application, ingress, a container database, a
    Redis cache and a lifecycle job."""
    return {
        "project": {"name": "chart-rbac", "repository": REPOSITORY},
        "applications": [{"name": "web", "image": "registry.local/chart/web",
                          "depends_on": ["main", "sessions"]}],
        "caches": [{"name": "sessions"}],
        "databases": [{"name": "main", "mode": "container", "data_policy": "seed",
                       "seed_sql": "CREATE TABLE hello (x int); INSERT INTO hello VALUES (1);"}],
        "variables": [{"key": "GREETING", "value": "hello from the chart's worker"}],
        "jobs": [{"name": "migrate", "application": "web", "command": ["/app", "migrate"],
                  "depends_on": ["main"]}],
    }


def token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """A kubeconfig holding only `token`: the admin's server and CA, no client certificate."""
    cluster = json.loads(admin.read_text())["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cluster["server"],
            "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": "worker", "user": {"token": token}}],
        "contexts": [{"name": "worker", "context": {"cluster": "test", "user": "worker"}}],
        "current-context": "worker",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ChartWorker:
    settings: Settings
    kubeconfig: Path
    user: str
    identity: str  # the in-process worker's Temporal identity
    release: Release

    @property
    def preview_role(self) -> str:
        assert self.settings.kube_preview_role
        return self.settings.kube_preview_role


def chart_env(release: Release, name: str) -> str:
    """A variable the chart sets on the worker's container."""
    container = release.named("Deployment", "-worker")["spec"]["template"]["spec"][
        "containers"][0]
    values = [e["value"] for e in container["env"] if e["name"] == name]
    assert len(values) == 1, f"the chart's worker sets {name} {len(values)} times"
    return str(values[0])


@pytest.fixture(scope="module")
async def chart_worker(release: Release, postgres_server: Any, kube_cluster: KubeCluster,
                       temporal_client: Client, test_settings: Settings,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChartWorker]:
    folder = tmp_path_factory.mktemp("chart-rbac")
    account = release.worker_service_account
    token = kube_cluster.kubectl("create", "token", account, "-n", release.namespace,
                                 "--duration=2h").strip()
    kubeconfig = token_kubeconfig(kube_cluster.kubeconfig, token, folder / "kubeconfig")
    storage_class = f"chart-{uuid.uuid4().hex[:6]}"
    (folder / "blueprints").mkdir()
    (folder / "blueprints" / "chart-rbac.yaml").write_text(yaml.safe_dump(blueprint()))
    # The container database's volume: static, as a provisioner would make it.
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": storage_class},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                 "hostPath": {"path": f"/tmp/preview-test-volumes/{storage_class}"}},
    }))
    try:
        settings = test_settings.model_copy(update={
            "task_queue": f"chart-{uuid.uuid4().hex[:6]}",
            "blueprint_source": "files",
            "blueprint_dir": str(folder / "blueprints"),
            "database_url": await postgres_server.new_database("chart_rbac"),
            "preview_database_url": postgres_server.admin_url,
            "kubeconfig": str(kubeconfig),
            "storage_class": storage_class,
            "kube_preview_role": chart_env(release, "PREVIEW_KUBE_PREVIEW_ROLE"),
        })
        store = await Store.connect(settings.database_url)
        await store.migrate()  # what `python -m starter` does at start
        await store.close()
        resources = Resources()
        worker = await build_worker(temporal_client, settings, Target(), resources)
        async with worker:
            yield ChartWorker(settings, kubeconfig,
                              f"system:serviceaccount:{release.namespace}:{account}",
                              temporal_client.service_client.config.identity, release)
        await resources.close()
    finally:
        kube_cluster.kubectl("delete", "pv", storage_class, "--wait=false")


def as_worker(chart_worker: ChartWorker) -> k8s_client.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(chart_worker.kubeconfig))


async def test_the_charts_token_runs_a_whole_preview(
    chart_worker: ChartWorker, kube_cluster: KubeCluster, temporal_client: Client,
) -> None:
    # The worker's only credential is the ServiceAccount's token.
    who = json.loads(subprocess.run(
        [str(kube_cluster.kubectl_path), f"--kubeconfig={chart_worker.kubeconfig}", "auth",
         "whoami", "-o", "json"], capture_output=True, text=True, check=True).stdout)
    assert who["status"]["userInfo"]["username"] == chart_worker.user
    user = json.loads(chart_worker.kubeconfig.read_text())["users"][0]["user"]
    assert set(user) == {"token"}

    number = uuid.uuid4().int % 10**5 + 1
    env = environment_id(REPOSITORY, number)
    pr = PullRequest(repository=REPOSITORY, number=number, head_sha="d" * 40)
    handle = await lifecycle.deploy(
        temporal_client, pr, task_queue=chart_worker.settings.task_queue,
        timeouts=ActivityTimeouts(heartbeat_seconds=30, max_attempts=3, max_interval_seconds=2))
    status = await wait_for(handle, lambda s: s.state == "ready")
    assert status.steps_done == status.steps_total

    kubectl = kube_cluster.kubectl
    made = set(kubectl("get", "deploy,sts,job,svc,ingress,configmap,secret,pvc,"
                       "resourcequota,limitrange,networkpolicy", "-n", env, "-o", "name",
                       "-l", f"preview.dev/environment={env}").split())
    assert any(name.startswith("job.batch/job-migrate-") for name in made), sorted(made)
    for name in ("deployment.apps/web", "deployment.apps/cache-sessions",
                 "secret/cache-sessions-auth", "statefulset.apps/db-main", "job.batch/db-main-load",
                 "service/web", "service/db-main", "ingress.networking.k8s.io/web",
                 "configmap/web-config", "secret/web-secrets", "secret/db-main-credentials",
                 "persistentvolumeclaim/db-main-data", "resourcequota/preview-quota",
                 "limitrange/preview-limits",
                 "networkpolicy.networking.k8s.io/default-deny-ingress"):
        assert name in made, f"{name} missing: {sorted(made)}"
    # Its Secrets through a RoleBinding of its own in the preview's namespace.
    binding = json.loads(kubectl("get", "rolebinding", BINDING_NAME, "-n", env, "-o", "json"))
    assert binding["roleRef"]["name"] == chart_worker.preview_role
    namespace, name = chart_worker.user.removeprefix("system:serviceaccount:").split(":")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                    "namespace": namespace}]
    assert kubectl("get", "deploy", "web", "-n", env, "-o",
                   "jsonpath={.status.readyReplicas}") == "1"
    config = json.loads(kubectl("get", "configmap", "web-config", "-n", env, "-o", "json"))
    assert config["data"]["GREETING"] == "hello from the chart's worker"
    secret = json.loads(kubectl("get", "secret", "web-secrets", "-n", env, "-o", "json"))
    urls = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert f"@db-main.{env}.svc:5432/" in urls["DATABASE_URL"]
    assert f"@cache-sessions.{env}.svc:6379/" in urls["REDIS_URL"]

    await lifecycle.destroy(temporal_client, REPOSITORY, number, "chart rbac done")
    try:  # a refused teardown step is retried for ever: say which one, in time
        result = await asyncio.wait_for(handle.result(), timeout=120)
    except TimeoutError:
        status = await handle.query(PreviewEnvironmentWorkflow.status)
        raise AssertionError(f"not destroyed in 120s: {status.last_error}") from None
    assert result.state == "destroyed"
    assert env not in kubectl("get", "ns", "-o", "name")
    volume = json.loads(kubectl("get", "pv", chart_worker.settings.storage_class, "-o", "json"))
    assert volume["status"]["phase"] == "Released"


def test_the_charts_token_runs_the_orphan_sweepers_listing(chart_worker: ChartWorker) -> None:
    """The sweeper lists namespaces and the cluster-scoped snapshot contents by label;
    where the snapshot API is not served that is a 404, which needs the right all the
    same (without it: 403)."""
    clusters = ClusterClients({"default": str(chart_worker.kubeconfig)})
    try:
        found = ActivityEnvironment().run(NamespaceActivities(clusters).list_kube_environments,
                                          KubeSweepInput(cluster="default"))
    finally:
        clusters.close()
    assert all(isinstance(items, list) for items in found.values())


def refused(call: Any) -> str:
    """The API's message of a request it answered 403 Forbidden."""
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403, caught.value
    message: str = json.loads(caught.value.body or "{}")["message"]
    return message


def test_the_token_is_refused_outside_the_role(chart_worker: ChartWorker) -> None:
    api = as_worker(chart_worker)
    core = k8s_client.CoreV1Api(api)
    rbac = k8s_client.RbacAuthorizationV1Api(api)
    try:
        # RBAC: no Secret outside a preview namespace is read, let alone listed; nodes
        # are never read, no rights can be granted.
        error = refused(lambda: core.read_namespaced_secret("anything", "kube-system"))
        assert f'User "{chart_worker.user}" cannot get resource "secrets"' in error
        error = refused(lambda: core.list_namespaced_secret("kube-system"))
        assert f'User "{chart_worker.user}" cannot list resource "secrets"' in error
        refused(lambda: core.list_node())
        refused(lambda: core.read_namespaced_pod("anything", "kube-system"))
        refused(lambda: rbac.create_cluster_role_binding(k8s_client.V1ClusterRoleBinding(
            metadata=k8s_client.V1ObjectMeta(name="worker-is-admin"),
            role_ref=k8s_client.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                          kind="ClusterRole", name="cluster-admin"),
            subjects=[k8s_client.RbacV1Subject(kind="User", name=chart_worker.user)])))
        # The namespace guard: what RBAC allows cluster-wide is refused outside the
        # engine's namespaces, and kube-system cannot be relabelled to become one.
        error = refused(lambda: core.create_namespaced_config_map("kube-system", (
            k8s_client.V1ConfigMap(metadata=k8s_client.V1ObjectMeta(name="planted")))))
        assert "writes only in namespaces labelled" in error
        error = refused(lambda: core.patch_namespace("kube-system", {"metadata": {"labels": {
            "app.kubernetes.io/managed-by": "preview-engine"}}}))
        assert "kube-system is not one" in error
        refused(lambda: core.delete_namespace("default"))
    finally:
        api.close()


def probe(chart_worker: ChartWorker, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The chart's worker probe, run as the pod would (its settings from the environment)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    return subprocess.run(
        [sys.executable, str(PROBE), *args],
        env={**clean, **chart_worker.settings.as_environment(), **env},
        capture_output=True, text=True, timeout=60)


async def test_the_worker_probe_sees_this_worker_polling_and_no_other(
    chart_worker: ChartWorker,
) -> None:
    alive = probe(chart_worker, "--identity", chart_worker.identity)
    assert alive.returncode == 0, alive.stdout + alive.stderr
    assert "polled" in alive.stdout
    stuck = probe(chart_worker, "--identity", f"1@{socket.gethostname()}-gone")
    assert stuck.returncode == 1 and "is not polling" in stuck.stdout
    # A tenant worker's queue has no poller here: that tenant's worker would be restarted.
    tenant = probe(chart_worker, "--identity", chart_worker.identity, "--target", "cluster:x")
    assert tenant.returncode == 1, tenant.stdout
    # Temporal out of reach is not the worker's fault: no restart.
    unreachable = probe(chart_worker, "--identity", "nobody",
                        PREVIEW_TEMPORAL_ADDRESS="127.0.0.1:9")
    assert unreachable.returncode == 0 and "cannot ask Temporal" in unreachable.stdout, (
        unreachable.stdout + unreachable.stderr)


def test_the_in_preview_role_is_bound_to_the_worker_and_nobody_else(
    chart_worker: ChartWorker, kube_cluster: KubeCluster,
) -> None:
    """In a namespace the engine manages, the worker's token may bind its in-preview role
    to itself; binding it to anyone else (the namespace guard) or binding any other role
    (RBAC's `bind` names that one) is refused."""
    api = as_worker(chart_worker)
    core = k8s_client.CoreV1Api(api)
    rbac = k8s_client.RbacAuthorizationV1Api(api)
    managed = f"rb-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(
        name=managed, labels=Ownership(environment=managed).labels())))

    def binding(role: str, subject: k8s_client.RbacV1Subject) -> Any:
        return lambda: rbac.create_namespaced_role_binding(managed, k8s_client.V1RoleBinding(
            metadata=k8s_client.V1ObjectMeta(name=f"b-{uuid.uuid4().hex[:6]}"),
            role_ref=k8s_client.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                          kind="ClusterRole", name=role),
            subjects=[subject]))

    namespace, name = chart_worker.user.removeprefix("system:serviceaccount:").split(":")
    itself = k8s_client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)
    someone = k8s_client.RbacV1Subject(kind="ServiceAccount", name="default",
                                       namespace=managed)
    try:
        error = refused(binding(chart_worker.preview_role, someone))
        assert f"binds only ClusterRole {chart_worker.preview_role} to its own worker" in error
        error = refused(binding("cluster-admin", itself))
        assert "is attempting to grant RBAC permissions not currently held" in error
        binding(chart_worker.preview_role, itself)()  # what the engine itself does
    finally:
        kube_cluster.kubectl("delete", "namespace", managed, "--wait=false")
        api.close()


def test_a_preview_made_before_the_binding_gets_it_on_its_next_step(
    chart_worker: ChartWorker, kube_cluster: KubeCluster,
) -> None:
    """A preview namespace from before the in-preview role (no RoleBinding, its Secret
    made with the old cluster-wide rights, here the admin's): the chart's token still
    removes its Secret, because the step binds the role first."""
    env = f"old-{uuid.uuid4().hex[:8]}"
    owner = Ownership(environment=env)
    kubectl = kube_cluster.kubectl
    kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": env, "labels": owner.labels()}}))
    kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-secrets", "namespace": env, "labels": owner.labels()},
        "stringData": {"API_KEY": "made-before-the-binding"}}))
    clusters = ClusterClients({"default": str(chart_worker.kubeconfig)})
    try:
        activities = KubernetesActivities(clusters, Sealer.from_settings(chart_worker.settings),
                                          rights=NamespaceRights(chart_worker.preview_role))
        spec = SecretSpec(owner=owner, cluster="default", namespace=env, name="web-secrets")
        ActivityEnvironment().run(activities.remove_secret, StepInput(spec=spec))
        assert kubectl("get", "secret", "-n", env, "-o", "name").split() == []
        assert kubectl("get", "rolebinding", "-n", env, "-o", "name").split() == [
            f"rolebinding.rbac.authorization.k8s.io/{BINDING_NAME}"]
        # With the namespace gone, its Secrets are gone: without a binding a Secret
        # there answers 403, which must not keep the removal retrying for ever.
        kubectl("delete", "namespace", env, "--wait=true", "--timeout=120s")
        fresh = KubernetesActivities(clusters, Sealer.from_settings(chart_worker.settings),
                                     rights=NamespaceRights(chart_worker.preview_role))
        with as_worker(chart_worker) as api:
            error = refused(lambda: k8s_client.CoreV1Api(api).read_namespaced_secret(
                "web-secrets", env))
        assert 'cannot get resource "secrets"' in error
        assert ActivityEnvironment().run(fresh.remove_secret, StepInput(spec=spec)) is None
    finally:
        clusters.close()
        kubectl("delete", "namespace", env, "--wait=false", "--ignore-not-found")
