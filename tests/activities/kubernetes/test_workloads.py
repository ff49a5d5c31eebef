"""Kubernetes activities against a real control plane (etcd, kube-apiserver,
controller-manager, scheduler and kwok nodes; see tests/plugins/kube.py).

Every check of the cluster's state goes through kubectl, from outside the code under
test. Each test works in namespaces of its own environment id (workload_env.py; the
fixtures are in conftest.py). Pod hardening and Pod Security: test_pod_security.py.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import FOREIGN_RESOURCE, INVALID_INPUT, ROLLOUT_FAILED
from activities.kubernetes import ClusterClients, KubernetesActivities
from activities.kubernetes.api import Json, KubeApi
from domain.blueprint import EgressRule, Resources
from domain.naming import Ownership
from domain.resources import (
    ApplicationSpec,
    ConfigMapSpec,
    IngressHost,
    IngressSpec,
    NamespaceSpec,
    SecretSpec,
    StepInput,
    StepOutput,
    UpstreamRef,
)
from tests.activities.kubernetes.workload_env import CLUSTER, Env, app_spec
from tests.plugins.kube import KubeCluster

pytestmark = pytest.mark.kube


def foreign_labels(environment: str | None) -> dict[str, str]:
    if environment is None:
        return {}
    return Ownership(environment=environment).labels()


NAMESPACE_OBJECTS = [
    ("resourcequota", "preview-quota"),
    ("limitrange", "preview-limits"),
    ("networkpolicy", "default-deny-ingress"),
    ("networkpolicy", "allow-same-namespace"),
    ("networkpolicy", "allow-from-ingress-controller"),
    ("networkpolicy", "default-deny-egress"),
    ("networkpolicy", "allow-dns"),
    ("networkpolicy", "allow-egress"),
]


# --- clusters -----------------------------------------------------------------------


def test_unknown_cluster_is_refused_without_falling_back(env: Env) -> None:
    spec = NamespaceSpec(owner=env.owner, name=env.ns_name())  # cluster="default"
    error = env.failure(env.acts.ensure_namespace, spec)
    assert error.type == INVALID_INPUT and error.non_retryable
    assert "'default' is not configured" in error.message
    assert env.get("namespace", spec.name) is None


def test_unreachable_cluster_error_is_retryable(
    env: Env, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    config = json.loads(kube_cluster.kubeconfig.read_text())  # the plugin writes JSON
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    broken = tmp_path / "kubeconfig"
    broken.write_text(json.dumps(config))
    acts = KubernetesActivities(ClusterClients({CLUSTER: str(broken)}), env.sealer)
    spec = NamespaceSpec(owner=env.owner, cluster=CLUSTER, name=env.ns_name())
    with pytest.raises(Exception) as caught:
        env.run(acts.ensure_namespace, StepInput(spec=spec))
    # Not a non-retryable ApplicationError: the activity's retry policy retries it.
    assert not (isinstance(caught.value, ApplicationError) and caught.value.non_retryable)


# --- namespace ----------------------------------------------------------------------


def test_namespace_has_labels_quota_limits_and_isolation(env: Env) -> None:
    spec = env.namespace(cpu_quota="3", memory_quota="5Gi", ingress_namespace="edge",
                         ingress_cidrs=["10.87.0.1/32"], dns_cidrs=["10.88.0.1/32"],
                         egress=[EgressRule(cidr="10.88.0.1/32", ports=[5432]),
                                 EgressRule(cidr="0.0.0.0/0", ports=[443])])
    ns = env.must_get("namespace", spec.name)
    labels = ns["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "preview-engine"
    assert labels["preview.dev/environment"] == env.id
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    hard = env.must_get("resourcequota", "preview-quota", spec.name)["spec"]["hard"]
    assert hard == {"requests.cpu": "3", "limits.cpu": "3",
                    "requests.memory": "5Gi", "limits.memory": "5Gi"}
    limits = env.must_get("limitrange", "preview-limits", spec.name)["spec"]["limits"][0]
    assert limits["default"] == {"cpu": "500m", "memory": "512Mi"}

    deny = env.must_get("networkpolicy", "default-deny-ingress", spec.name)["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny  # no rule: nothing may come in
    deny_out = env.must_get("networkpolicy", "default-deny-egress", spec.name)["spec"]
    assert deny_out["policyTypes"] == ["Egress"] and "egress" not in deny_out
    same = env.must_get("networkpolicy", "allow-same-namespace", spec.name)["spec"]
    assert same["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert same["egress"] == [{"to": [{"podSelector": {}}]}]
    edge = env.must_get("networkpolicy", "allow-from-ingress-controller", spec.name)["spec"]
    assert edge["ingress"] == [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}},
        {"ipBlock": {"cidr": "10.87.0.1/32"}}]}]
    dns = env.must_get("networkpolicy", "allow-dns", spec.name)["spec"]["egress"]
    assert dns[0]["to"][1] == {"ipBlock": {"cidr": "10.88.0.1/32"}}
    assert dns[0]["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    out = env.must_get("networkpolicy", "allow-egress", spec.name)["spec"]["egress"]
    assert out[0] == {"to": [{"ipBlock": {"cidr": "10.88.0.1/32"}}],
                      "ports": [{"protocol": "TCP", "port": 5432}]}
    # Anywhere, but never the cloud metadata address.
    assert out[1]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0",
                                         "except": ["169.254.169.254/32"]}}]
    for kind, name in NAMESPACE_OBJECTS:
        obj = env.must_get(kind, name, spec.name)
        assert obj["metadata"]["labels"]["preview.dev/environment"] == env.id


def test_namespace_applied_twice_changes_nothing(env: Env) -> None:
    spec = env.namespace()
    before = {(k, n): env.rv(k, n, spec.name) for k, n in NAMESPACE_OBJECTS}
    ns_before = env.rv("namespace", spec.name)
    out = env.step(env.acts.ensure_namespace, spec)
    assert out == StepOutput(values={"namespace": spec.name})
    assert env.rv("namespace", spec.name) == ns_before
    assert {(k, n): env.rv(k, n, spec.name) for k, n in NAMESPACE_OBJECTS} == before


def test_a_check_says_whether_the_namespace_is_still_there(env: Env) -> None:
    spec = env.namespace("check")
    assert env.step(env.acts.check_namespace, spec) == ""
    env.kubectl("label", "namespace", spec.name, "preview.dev/environment=someone-else",
                "--overwrite")
    assert env.step(env.acts.check_namespace, spec) == (
        f"namespace {spec.name} is no longer marked as this preview's")
    env.kubectl("delete", "namespace", spec.name, "--wait=true")
    assert env.step(env.acts.check_namespace, spec) == f"namespace {spec.name} is gone"


def test_namespace_half_done_converges(env: Env) -> None:
    name = env.ns_name()
    # A first attempt that died after creating the namespace, before the rest.
    env.create({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": env.owner.labels()}})
    assert env.get("resourcequota", "preview-quota", name) is None
    spec = NamespaceSpec(owner=env.owner, cluster=CLUSTER, name=name)
    env.step(env.acts.ensure_namespace, spec)
    for kind, obj_name in NAMESPACE_OBJECTS:
        env.must_get(kind, obj_name, name)
    # Someone deletes a policy and edits the quota: the next run puts both back.
    env.kubectl("delete", "networkpolicy", "default-deny-ingress", "-n", name)
    env.kubectl("patch", "resourcequota", "preview-quota", "-n", name, "--type=merge",
                "-p", '{"spec":{"hard":{"requests.cpu":"99"}}}')
    env.step(env.acts.ensure_namespace, spec)
    env.must_get("networkpolicy", "default-deny-ingress", name)
    assert env.must_get("resourcequota", "preview-quota", name)["spec"]["hard"][
        "requests.cpu"] == "4"


@pytest.mark.parametrize("marked_for", [None, "someone-else"])
def test_foreign_namespace_is_refused_and_kept(env: Env, marked_for: str | None) -> None:
    name = env.ns_name()
    env.create({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": foreign_labels(marked_for)}})
    spec = NamespaceSpec(owner=env.owner, cluster=CLUSTER, name=name)
    error = env.failure(env.acts.ensure_namespace, spec)
    assert error.type == FOREIGN_RESOURCE and error.non_retryable
    assert f"Namespace {name}" in error.message
    assert env.get("resourcequota", "preview-quota", name) is None  # nothing written in it
    labels = env.must_get("namespace", name)["metadata"].get("labels", {})
    assert labels.get("preview.dev/environment") == marked_for
    # Removal never deletes what is not ours.
    assert env.step(env.acts.remove_namespace, spec) is None
    assert env.get("namespace", name) is not None


def test_remove_namespace_waits_until_it_is_gone(env: Env) -> None:
    spec = env.namespace()
    # Something inside that takes a moment to delete: a Deployment with pods.
    env.step(env.acts.ensure_application, ApplicationSpec(
        owner=env.owner, cluster=CLUSTER, namespace=spec.name, name="web",
        image="registry.example/web:1", ports=[8080], replicas=2))
    env.heartbeats.clear()
    started = time.monotonic()
    assert env.step(env.acts.remove_namespace, spec) is None
    took = time.monotonic() - started
    # Right after return the API has forgotten it (not merely Terminating).
    assert env.get("namespace", spec.name) is None
    phases = {h["phase"] for h in env.heartbeats}
    assert "Terminating" in phases, f"never saw it terminating ({env.heartbeats}, {took:.1f}s)"
    print(f"namespace removal took {took:.2f}s with {len(env.heartbeats)} heartbeats")
    # Removing what is absent succeeds.
    assert env.step(env.acts.remove_namespace, spec) is None


def test_ensure_in_terminating_namespace_is_retryable(env: Env) -> None:
    spec = env.namespace()
    # A finalizer of our own keeps the namespace Terminating for as long as we like.
    env.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "held", "namespace": spec.name, "finalizers": ["test.preview.dev/hold"]}})
    env.kubectl("delete", "namespace", spec.name, "--wait=false")
    error = env.failure(env.acts.ensure_namespace, spec)
    assert error.type == "NamespaceTerminating" and not error.non_retryable
    env.kubectl("patch", "configmap", "held", "-n", spec.name, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}')


# --- config map ---------------------------------------------------------------------


def test_config_map_pair(env: Env) -> None:
    ns = env.namespace().name
    spec = ConfigMapSpec(
        owner=env.owner, cluster=CLUSTER, namespace=ns, name="app-config",
        data={"LOG_LEVEL": "debug"},
        upstream={"DATABASE_HOST": UpstreamRef(step="db", output="host")},
    )
    db = StepOutput(values={"host": "db.internal"})
    assert env.step(env.acts.ensure_config_map, spec, db=db) == StepOutput(
        values={"config_map": "app-config"})
    cm = env.must_get("configmap", "app-config", ns)
    assert cm["data"] == {"LOG_LEVEL": "debug", "DATABASE_HOST": "db.internal"}
    assert cm["metadata"]["labels"]["preview.dev/environment"] == env.id
    rv = cm["metadata"]["resourceVersion"]
    env.step(env.acts.ensure_config_map, spec, db=db)
    assert env.rv("configmap", "app-config", ns) == rv
    # A key dropped from the spec is dropped from the cluster (we own the field).
    env.step(env.acts.ensure_config_map, spec.model_copy(update={"data": {}}), db=db)
    assert env.must_get("configmap", "app-config", ns)["data"] == {"DATABASE_HOST": "db.internal"}

    assert env.step(env.acts.remove_config_map, spec) is None
    assert env.get("configmap", "app-config", ns) is None
    assert env.step(env.acts.remove_config_map, spec) is None  # absent: fine


def test_config_map_refuses_sealed_upstream(env: Env) -> None:
    ns = env.namespace().name
    spec = ConfigMapSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="c",
                         upstream={"PASSWORD": UpstreamRef(step="db", output="password")})
    db = StepOutput(secrets={"password": env.sealer.seal("hunter2")})
    error = env.failure(env.acts.ensure_config_map, spec, db=db)
    assert error.type == INVALID_INPUT and "hunter2" not in error.message
    assert env.get("configmap", "c", ns) is None


@pytest.mark.parametrize("marked_for", [None, "someone-else"])
def test_foreign_config_map_is_refused_and_kept(env: Env, marked_for: str | None) -> None:
    ns = env.namespace().name
    env.create({"apiVersion": "v1", "kind": "ConfigMap", "data": {"theirs": "1"}, "metadata": {
        "name": "shared", "namespace": ns, "labels": foreign_labels(marked_for)}})
    spec = ConfigMapSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="shared",
                         data={"ours": "1"})
    error = env.failure(env.acts.ensure_config_map, spec)
    assert error.type == FOREIGN_RESOURCE and f"ConfigMap {ns}/shared" in error.message
    env.step(env.acts.remove_config_map, spec)
    assert env.must_get("configmap", "shared", ns)["data"] == {"theirs": "1"}


# --- secret -------------------------------------------------------------------------


def test_secret_holds_unsealed_values_and_nowhere_else(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ns = env.namespace().name
    values = {"API_KEY": f"key-{uuid.uuid4().hex}", "DB_PASSWORD": f"pw-{uuid.uuid4().hex}",
              "DB_USER": f"user-{uuid.uuid4().hex}"}
    spec = SecretSpec(
        owner=env.owner, cluster=CLUSTER, namespace=ns, name="app-secrets",
        data={"API_KEY": env.sealer.seal(values["API_KEY"])},
        upstream={"DB_PASSWORD": UpstreamRef(step="db", output="password"),
                  "DB_USER": UpstreamRef(step="db", output="user")},
    )
    db = StepOutput(values={"user": values["DB_USER"]},
                    secrets={"password": env.sealer.seal(values["DB_PASSWORD"])})
    out = env.step(env.acts.ensure_secret, spec, db=db)
    assert out == StepOutput(values={"secret": "app-secrets"})

    secret = env.must_get("secret", "app-secrets", ns)
    stored = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert stored == values
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["preview.dev/environment"] == env.id
    metadata_text = json.dumps(secret["metadata"])  # annotations, managedFields, labels
    encoded = [base64.b64encode(v.encode()).decode() for v in values.values()]
    for text in [*values.values(), *encoded]:
        assert text not in metadata_text
        assert text not in out.model_dump_json()
        assert text not in caplog.text

    rv = secret["metadata"]["resourceVersion"]
    env.step(env.acts.ensure_secret, spec, db=db)  # sealed anew, same values
    assert env.rv("secret", "app-secrets", ns) == rv

    env.step(env.acts.remove_secret, spec)
    assert env.get("secret", "app-secrets", ns) is None
    env.step(env.acts.remove_secret, spec)


def test_secret_rejected_by_the_api_is_invalid_input_with_its_message(env: Env) -> None:
    ns = env.namespace().name
    value = f"v-{uuid.uuid4().hex}"
    spec = SecretSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="bad",
                      data={"not a key!": env.sealer.seal(value)})
    error = env.failure(env.acts.ensure_secret, spec)
    assert error.type == INVALID_INPUT and error.non_retryable
    # The API's own explanation reaches the user; the value does not.
    assert "HTTP 422" in error.message and "a valid config key must consist of" in error.message
    assert value not in error.message
    assert base64.b64encode(value.encode()).decode() not in error.message


def test_foreign_secret_is_refused(env: Env) -> None:
    ns = env.namespace().name
    env.kubectl("create", "secret", "generic", "tls-ish", "-n", ns, "--from-literal=a=b")
    spec = SecretSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="tls-ish",
                      data={"a": env.sealer.seal("c")})
    error = env.failure(env.acts.ensure_secret, spec)
    assert error.type == FOREIGN_RESOURCE
    env.step(env.acts.remove_secret, spec)
    assert base64.b64decode(env.must_get("secret", "tls-ish", ns)["data"]["a"]) == b"b"


# --- application --------------------------------------------------------------------


def test_application_rolls_out_on_kwok_nodes(env: Env) -> None:
    ns = env.namespace().name
    env.step(env.acts.ensure_config_map, ConfigMapSpec(
        owner=env.owner, cluster=CLUSTER, namespace=ns, name="web-config", data={"A": "1"}))
    env.step(env.acts.ensure_secret, SecretSpec(
        owner=env.owner, cluster=CLUSTER, namespace=ns, name="web-secrets",
        data={"B": env.sealer.seal("2")}))
    spec = app_spec(env, ns)
    started = time.monotonic()
    out = env.step(env.acts.ensure_application, spec)
    took = time.monotonic() - started
    assert out == StepOutput(values={"service": f"web.{ns}.svc"})
    print(f"rollout of 2 replicas took {took:.2f}s, {len(env.heartbeats)} heartbeats")
    assert env.heartbeats and env.heartbeats[-1]["readyReplicas"] == 2

    dep = env.must_get("deployment", "web", ns)
    assert dep["status"]["readyReplicas"] == 2 and dep["status"]["updatedReplicas"] == 2
    assert dep["metadata"]["labels"]["preview.dev/environment"] == env.id
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/shop/web:abc123"
    assert container["command"] == ["/bin/web", "--serve"]
    assert [p["containerPort"] for p in container["ports"]] == [8080, 9090]
    assert container["envFrom"] == [{"configMapRef": {"name": "web-config"}},
                                    {"secretRef": {"name": "web-secrets"}}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9090,
                                                      "scheme": "HTTP"}
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"},
                                      "limits": {"cpu": "200m", "memory": "256Mi"}}
    pods = json.loads(env.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=web",
                                  "-o", "json"))["items"]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)
    assert all(p["status"]["phase"] == "Running" for p in pods)

    svc = env.must_get("service", "web", ns)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "web"}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, 8080),
                                                                           (9090, 9090)]

    dep_rv, svc_rv = env.rv("deployment", "web", ns), env.rv("service", "web", ns)
    env.step(env.acts.ensure_application, spec)
    assert (env.rv("deployment", "web", ns), env.rv("service", "web", ns)) == (dep_rv, svc_rv)

    # A new image is a new rollout, waited for like the first.
    env.step(env.acts.ensure_application, spec.model_copy(update={"image": "registry.example/w:2"}))
    dep = env.must_get("deployment", "web", ns)
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"] == 2
    assert dep["status"]["updatedReplicas"] == dep["status"]["readyReplicas"] == 2


def test_application_sleeps_and_wakes(env: Env) -> None:
    ns = env.namespace().name
    spec = app_spec(env, ns, config_map=None, secret=None)
    env.step(env.acts.ensure_application, spec)

    assert env.run(env.acts.sleep_application, spec) is None
    assert env.must_get("deployment", "web", ns)["spec"]["replicas"] == 0
    assert env.run(env.acts.sleep_application, spec) is None  # twice: still asleep

    env.heartbeats.clear()
    assert env.run(env.acts.wake_application, spec) is None
    dep = env.must_get("deployment", "web", ns)
    assert dep["spec"]["replicas"] == 2 and dep["status"]["readyReplicas"] == 2
    assert env.heartbeats  # it waited for readiness

    # Asleep, then a normal deploy: replicas come back from the spec too.
    env.run(env.acts.sleep_application, spec)
    env.step(env.acts.ensure_application, spec)
    assert env.must_get("deployment", "web", ns)["status"]["readyReplicas"] == 2


class LaggingReplicaSets(KubeApi):
    """The real API, except that every ReplicaSet reads as its controller not having
    written status for its latest generation yet (the sleep-then-deploy race, held)."""

    def list(self, kind: str, namespace: str | None,
             selector: Mapping[str, str] | None = None, *, missing_ok: bool = False,
             ) -> list[Json]:
        items = super().list(kind, namespace, selector, missing_ok=missing_ok)
        if kind == "ReplicaSet":
            for rs in items:
                rs.setdefault("status", {})["observedGeneration"] = (
                    int(rs["metadata"]["generation"]) - 1)
        return items


def test_a_rollout_is_not_ready_while_its_replica_set_lags(env: Env) -> None:
    """The Deployment says every replica is ready; its ReplicaSet has not caught up:
    the wait goes on (here until its timeout), and says why."""
    ns = env.namespace().name
    spec = app_spec(env, ns, config_map=None, secret=None)
    env.step(env.acts.ensure_application, spec)
    assert env.must_get("deployment", "web", ns)["status"]["readyReplicas"] == 2

    class Lagging(KubernetesActivities):
        def api(self, cluster: str) -> KubeApi:
            return LaggingReplicaSets(self.clusters.get(cluster))

    lagging = Lagging(env.acts.clusters, env.sealer, poll_interval=0.2)
    error = env.failure(lagging.ensure_application,
                        spec.model_copy(update={"rollout_timeout_seconds": 1}))
    assert error.type == ROLLOUT_FAILED
    assert "the replica set controller has not observed generation" in error.message


def test_remove_application_and_absent(env: Env) -> None:
    ns = env.namespace().name
    spec = app_spec(env, ns, config_map=None, secret=None)
    env.step(env.acts.ensure_application, spec)
    assert env.step(env.acts.remove_application, spec) is None
    assert env.get("deployment", "web", ns) is None
    assert env.get("service", "web", ns) is None
    assert env.step(env.acts.remove_application, spec) is None


@pytest.mark.parametrize("kind", ["deployment", "service"])
def test_foreign_application_objects_are_refused(env: Env, kind: str) -> None:
    ns = env.namespace().name
    if kind == "deployment":
        env.kubectl("create", "deployment", "web", "-n", ns, "--image=someone/else:1")
    else:
        env.kubectl("create", "service", "clusterip", "web", "-n", ns, "--tcp=80:80")
    spec = app_spec(env, ns, config_map=None, secret=None)
    error = env.failure(env.acts.ensure_application, spec)
    assert error.type == FOREIGN_RESOURCE and f"{kind.capitalize()} {ns}/web" in error.message
    # Nothing of ours was written next to it, and removal leaves it alone.
    other = "service" if kind == "deployment" else "deployment"
    assert env.get(other, "web", ns) is None
    env.step(env.acts.remove_application, spec)
    env.must_get(kind, "web", ns)
    if kind == "deployment":  # nor is a foreign Deployment scaled to zero
        with pytest.raises(ApplicationError) as caught:
            env.run(env.acts.sleep_application, spec)
        assert caught.value.type == FOREIGN_RESOURCE
        assert env.must_get("deployment", "web", ns)["spec"]["replicas"] == 1


def test_rollout_that_cannot_schedule_fails_with_the_reason(env: Env) -> None:
    # kwok has no kubelet, so image pulls cannot fail; what it can do is fail to
    # schedule: each node offers 32 CPUs, the pod asks for 64 (the namespace's quota
    # is raised so the pod is admitted and stays Pending as Unschedulable).
    ns = env.namespace(cpu_quota="200", memory_quota="64Gi").name
    spec = app_spec(env, ns, config_map=None, secret=None, replicas=1,
                    resources=Resources(cpu="64", memory="1Gi"), rollout_timeout_seconds=3)
    started = time.monotonic()
    error = env.failure(env.acts.ensure_application, spec)
    took = time.monotonic() - started
    print(f"unschedulable rollout failed after {took:.2f}s: {error.message}")
    assert error.type == ROLLOUT_FAILED and error.non_retryable
    assert "Unschedulable" in error.message and "Insufficient cpu" in error.message
    assert 3 <= took < 15
    assert any(h.get("reason", "").find("Unschedulable") >= 0 for h in env.heartbeats)


def test_rollout_blocked_by_quota_fails_with_the_reason(env: Env) -> None:
    ns = env.namespace(cpu_quota="1").name  # the pod asks for 2 CPUs
    # The reason is found on the Deployment or, until the deployment controller copies
    # it there (slow on a loaded machine), on its ReplicaSet: the deadline leaves time.
    spec = app_spec(env, ns, config_map=None, secret=None, replicas=1,
                    resources=Resources(cpu="2", memory="128Mi"), rollout_timeout_seconds=8)
    error = env.failure(env.acts.ensure_application, spec)
    assert error.type == ROLLOUT_FAILED and error.non_retryable
    assert "exceeded quota" in error.message


def test_progress_deadline_exceeded_is_reported(env: Env) -> None:
    # The controller's own verdict (ProgressDeadlineExceeded) ends the wait too: here
    # it has been reached by a previous attempt, and a re-run reports it at once.
    ns = env.namespace(cpu_quota="200", memory_quota="64Gi").name
    spec = app_spec(env, ns, config_map=None, secret=None, replicas=1,
                    resources=Resources(cpu="64", memory="1Gi"), rollout_timeout_seconds=1)
    env.failure(env.acts.ensure_application, spec)

    def deadline_exceeded() -> bool:
        conditions = env.must_get("deployment", "web", ns)["status"].get("conditions", [])
        return any(c["reason"] == "ProgressDeadlineExceeded" for c in conditions)

    deadline = time.monotonic() + 60
    while not deadline_exceeded():
        assert time.monotonic() < deadline, "the controller never reported the deadline"
        time.sleep(0.2)
    error = env.failure(env.acts.ensure_application, spec)
    # Only the controller's verdict says ProgressDeadlineExceeded: our own deadline
    # reports the pod's reason alone. The pod's reason is added to it.
    assert error.type == ROLLOUT_FAILED and "ProgressDeadlineExceeded" in error.message
    assert "Insufficient cpu" in error.message


# --- ingress ------------------------------------------------------------------------


def test_ingress_pair(env: Env) -> None:
    ns = env.namespace().name
    spec = IngressSpec(
        owner=env.owner, cluster=CLUSTER, namespace=ns, name="web",
        hosts=[IngressHost(host="web-pr-1.preview.test", service="web", port=8080),
               IngressHost(host="api-pr-1.preview.test", service="api", port=9000)],
        tls_secret="preview-tls", basic_auth_secret="preview-auth",
    )
    out = env.step(env.acts.ensure_ingress, spec)
    assert out.urls == {"web-pr-1.preview.test": "https://web-pr-1.preview.test",
                        "api-pr-1.preview.test": "https://api-pr-1.preview.test"}
    ing = env.must_get("ingress", "web", ns)
    rules = {r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in ing["spec"]["rules"]}
    assert rules == {"web-pr-1.preview.test": {"name": "web", "port": {"number": 8080}},
                     "api-pr-1.preview.test": {"name": "api", "port": {"number": 9000}}}
    assert ing["spec"]["tls"] == [{"hosts": ["api-pr-1.preview.test", "web-pr-1.preview.test"],
                                   "secretName": "preview-tls"}]
    annotations = ing["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "preview-auth"
    rv = ing["metadata"]["resourceVersion"]
    env.step(env.acts.ensure_ingress, spec)
    assert env.rv("ingress", "web", ns) == rv

    # Without TLS and auth: plain http, and the annotations/tls we had set are gone.
    plain = spec.model_copy(update={"tls_secret": None, "basic_auth_secret": None})
    out = env.step(env.acts.ensure_ingress, plain)
    assert out.urls["web-pr-1.preview.test"] == "http://web-pr-1.preview.test"
    ing = env.must_get("ingress", "web", ns)
    assert "tls" not in ing["spec"]
    assert not any(k.startswith("nginx.") for k in ing["metadata"].get("annotations", {}))

    env.step(env.acts.remove_ingress, spec)
    assert env.get("ingress", "web", ns) is None
    env.step(env.acts.remove_ingress, spec)


def test_foreign_ingress_is_refused(env: Env) -> None:
    ns = env.namespace().name
    env.create({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {
        "name": "web", "namespace": ns, "labels": foreign_labels("someone-else")},
        "spec": {"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}})
    spec = IngressSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="web",
                       hosts=[IngressHost(host="w.preview.test", service="web", port=80)])
    error = env.failure(env.acts.ensure_ingress, spec)
    assert error.type == FOREIGN_RESOURCE
    env.step(env.acts.remove_ingress, spec)
    assert "defaultBackend" in env.must_get("ingress", "web", ns)["spec"]
