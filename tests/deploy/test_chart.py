"""The chart lints, refuses to render without secrets, and what it renders is what the
engine needs: checked on the rendered objects, then on the control plane they were
applied to (a namespace enforcing the Pod Security Standard `restricted`)."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest

from engine.settings import Settings
from tests.deploy.conftest import CHART, CI_VALUES, Helm, Manifest, Release, manifests
from tests.plugins.kube import KubeCluster

pytestmark = [pytest.mark.kube, pytest.mark.slow]

SETTINGS = {f"PREVIEW_{name.upper()}" for name in Settings.model_fields}
# Variables of the engine's processes that are not settings (read from the environment).
RUNTIME_VARIABLES = {"PREVIEW_LOG_LEVEL", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "HOME"}


def pod_spec(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def containers(release: Release) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], c) for d in release.of_kind("Deployment")
            for c in pod_spec(d)["containers"]]


def selects(selector: dict[str, str], deployment: Manifest) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_chart_lints(helm_cli: Helm) -> None:
    answer = helm_cli.run("lint", "--strict", str(CHART), "-f", str(CI_VALUES))
    assert "0 chart(s) failed" in answer.stdout


def test_without_secrets_it_refuses_to_render_naming_each(helm_cli: Helm) -> None:
    answer = helm_cli.run("template", "r", str(CHART), check=False)
    assert answer.returncode != 0
    for name in ("PREVIEW_CODEC_KEYS", "PREVIEW_CODEC_TOKEN", "PREVIEW_MASTER_KEYS",
                 "PREVIEW_GITHUB_WEBHOOK_SECRET", "PREVIEW_GITLAB_WEBHOOK_TOKEN",
                 "PREVIEW_MASKING_KEY", "PREVIEW_DATABASE_URL", "PREVIEW_PREVIEW_DATABASE_URL"):
        assert name in answer.stderr
    # A secret among the plain settings is refused too, not rendered into a ConfigMap.
    leaked = helm_cli.run("template", "r", str(CHART), "-f", str(CI_VALUES),
                          "--set", "settings.PREVIEW_MASKING_KEY=oops", check=False)
    assert leaked.returncode != 0 and "is a secret" in leaked.stderr
    # An existing Secret replaces the chart's: nothing secret is rendered at all.
    external = manifests(helm_cli.template("r", "ns", "--set", "secrets.existingSecret=mine"))
    assert not [o for o in external if o["kind"] == "Secret"]
    assert {ref["name"] for d in external if d["kind"] == "Deployment"
            for c in pod_spec(d)["containers"] for e in c["env"]
            if (ref := (e.get("valueFrom") or {}).get("secretKeyRef"))} == {"mine"}


def test_every_secret_key_a_deployment_reads_is_in_the_secret(release: Release) -> None:
    secret = release.named("Secret", "-secrets")
    keys = set(secret["data"])
    referenced = 0
    for deployment, container in containers(release):
        for env in container["env"]:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                continue
            referenced += 1
            assert ref["name"] == secret["metadata"]["name"], (deployment, env)
            assert ref["key"] in keys or ref.get("optional"), (deployment, env)
            assert env["name"] == ref["key"]  # the key is the variable it becomes
    assert referenced >= 30
    assert base64.b64decode(secret["data"]["PREVIEW_CODEC_TOKEN"]).decode() == "ci-codec-token"


def test_every_variable_is_a_setting_and_secrets_come_from_the_secret(release: Release) -> None:
    settings = release.named("ConfigMap", "-settings")["data"]
    assert set(settings) <= SETTINGS
    secret_keys = set(release.named("Secret", "-secrets")["data"])
    assert not secret_keys & set(settings)
    for deployment, container in containers(release):
        for env in container["env"]:
            assert env["name"] in SETTINGS | RUNTIME_VARIABLES, (deployment, env["name"])
            if env["name"] in secret_keys:
                assert "value" not in env, (deployment, env["name"])


def test_the_starter_has_no_kubernetes_token_nor_any_rights(release: Release) -> None:
    starter = pod_spec(release.named("Deployment", "-starter"))
    assert starter["automountServiceAccountToken"] is False
    account = release.named("ServiceAccount", starter["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    bound = [s["name"] for b in release.of_kind("ClusterRoleBinding") + release.of_kind(
        "RoleBinding") for s in b["subjects"]]
    assert bound == [release.worker_service_account]
    # Tenant workers reach other clusters or accounts: no token of this one either.
    tenants = [d for d in release.of_kind("Deployment") if "-tenant-" in d["metadata"]["name"]]
    assert {json.dumps(pod_spec(d)["containers"][0]["command"]) for d in tenants} == {
        '["python", "-m", "worker", "--target", "cluster:hipaa"]',
        '["python", "-m", "worker", "--target", "account:111111111111"]'}
    assert all(pod_spec(d)["automountServiceAccountToken"] is False for d in tenants)
    assert pod_spec(release.named("Deployment", "-worker"))["automountServiceAccountToken"]


def test_every_container_is_hardened_limited_and_probed(release: Release) -> None:
    for deployment in release.of_kind("Deployment"):
        pod = pod_spec(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, where
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert probe in container, f"{where}: no {probe}"
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where


def test_each_deployment_has_its_disruption_budget_and_network_policy(release: Release) -> None:
    deployments = release.of_kind("Deployment")
    assert len(deployments) == 4  # starter, worker, two tenant workers
    budgets = release.of_kind("PodDisruptionBudget")
    policies = release.of_kind("NetworkPolicy")
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        mine = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], deployment)]
        assert len(mine) == 1, f"{name}: budgets {[b['metadata']['name'] for b in mine]}"
        assert [p for p in policies
                if selects(p["spec"]["podSelector"]["matchLabels"], deployment)], name
    worker = release.named("NetworkPolicy", "-worker")["spec"]
    # Nothing reaches a worker but Prometheus, on its metrics port.
    assert worker["policyTypes"] == ["Ingress", "Egress"]
    assert worker["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    starter = release.named("NetworkPolicy", "-starter")["spec"]
    assert starter["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    # The starter reaches DNS, Temporal and its database, not the Kubernetes API.
    assert sorted(p["port"] for rule in starter["egress"] for p in rule["ports"]) == [
        53, 53, 5432, 7233]


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, resource name or "") of each right a role grants."""
    return {(group, resource, verb, name) for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"] for name in rule.get("resourceNames") or [""]}


def test_the_workers_role_grants_only_what_the_activities_call(release: Release) -> None:
    granted = rules_of(release.named("ClusterRole", "-worker"))
    in_preview = release.named("ClusterRole", "-worker-in-preview")
    assert not [g for g in granted if "*" in g]
    # Nothing that grants rights, acts as someone else, or reads everything at once;
    # the one exception binds the in-preview role by its name, and only that role.
    rights = {("rbac.authorization.k8s.io", "clusterroles", "bind",
               in_preview["metadata"]["name"])}
    rights |= {("rbac.authorization.k8s.io", "rolebindings", verb, "")
               for verb in ("get", "create", "patch")}
    assert {g for g in granted if g[0] == "rbac.authorization.k8s.io"} == rights
    for _, resource, verb, _name in granted - rights:
        assert verb not in {"escalate", "bind", "impersonate", "watch", "update",
                            "deletecollection"}
        assert resource not in {"roles", "clusterrolebindings", "serviceaccounts", "nodes",
                                "pods/exec"}
    # No Secret of the cluster is readable with the worker's cluster-wide rights.
    assert not [g for g in granted if g[1] == "secrets"]
    assert ("", "pods", "get", "") not in granted
    # Secrets come from the in-preview role, bound by the worker in preview namespaces
    # only: never cluster-wide, never listed.
    assert rules_of(in_preview) == {("", "secrets", verb, "")
                                    for verb in ("get", "create", "patch", "delete")}
    assert not [b for b in release.of_kind("ClusterRoleBinding")
                if b["roleRef"]["name"] == in_preview["metadata"]["name"]]
    worker = pod_spec(release.named("Deployment", "-worker"))["containers"][0]
    assert {"name": "PREVIEW_KUBE_PREVIEW_ROLE",
            "value": in_preview["metadata"]["name"]} in worker["env"]


def test_the_release_runs_on_the_control_plane(release: Release, kube_cluster: KubeCluster
                                               ) -> None:
    kubectl = kube_cluster.kubectl
    # Pods of every Deployment were admitted under `restricted` and became Ready.
    kubectl("wait", "--for=condition=Available", "deployment", "--all", "-n",
            release.namespace, "--timeout=120s", timeout=150)
    live = json.loads(kubectl("get", "deployments", "-n", release.namespace, "-o", "json"))
    assert {d["metadata"]["name"]: d["status"].get("readyReplicas") for d in live["items"]} == {
        d["metadata"]["name"]: d["spec"]["replicas"] for d in release.of_kind("Deployment")}
    names = {kind: set(kubectl("get", kind, "-n", release.namespace, "-o", "name").split())
             for kind in ("poddisruptionbudgets", "networkpolicies")}
    assert names["poddisruptionbudgets"] == {
        f"poddisruptionbudget.policy/{b['metadata']['name']}"
        for b in release.of_kind("PodDisruptionBudget")}
    assert names["networkpolicies"] == {
        f"networkpolicy.networking.k8s.io/{p['metadata']['name']}"
        for p in release.of_kind("NetworkPolicy")}
    # The budgets see the Ready pods (so a drain may take one at a time, not all).
    budgets = json.loads(kubectl("get", "pdb", "-n", release.namespace, "-o", "json"))
    for budget in budgets["items"]:
        assert budget["status"]["currentHealthy"] == budget["status"]["expectedPods"] >= 1
    # The starter's pods hold no token; the worker's do.
    pods = json.loads(kubectl("get", "pods", "-n", release.namespace, "-o", "json"))["items"]
    mounted = {(p["metadata"]["labels"]["app.kubernetes.io/component"], any(
        m["mountPath"].startswith("/var/run/secrets/kubernetes.io")
        for m in p["spec"]["containers"][0].get("volumeMounts") or [])) for p in pods}
    assert mounted == {("starter", False), ("worker", True), ("tenant-worker", False)}
    starter = f"system:serviceaccount:{release.namespace}:" + pod_spec(
        release.named("Deployment", "-starter"))["serviceAccountName"]
    for verb, resource in (("get", "pods"), ("list", "secrets"), ("create", "namespaces")):
        assert can_i(kube_cluster, verb, resource, starter) == "no", f"starter: {verb} {resource}"


def can_i(kube_cluster: KubeCluster, verb: str, resource: str, user: str) -> str:
    """`kubectl auth can-i` as `user`: its answer, yes or no (it exits 1 on no)."""
    assert kube_cluster.kubectl_path is not None
    answer = subprocess.run(
        [str(kube_cluster.kubectl_path), f"--kubeconfig={kube_cluster.kubeconfig}", "auth",
         "can-i", verb, resource, "--all-namespaces", "--as", user],
        capture_output=True, text=True, timeout=60)
    return answer.stdout.strip()


def test_golden_snapshot_credentials_are_readable_in_their_namespace_only(
    helm_cli: Helm,
) -> None:
    """With golden volume snapshots in use, the worker reads Secrets in their namespace
    through a Role there (and is told where it is); without, no such right exists."""
    objects = manifests(helm_cli.template("r", "engine", "-f", str(CI_VALUES), "--set",
                                          "rbac.goldenSnapshotNamespace=goldens"))
    roles = [o for o in objects if o["kind"] == "Role"]
    assert [(r["metadata"]["namespace"], rules_of(r)) for r in roles] == [
        ("goldens", {("", "secrets", "get", "")})]
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["metadata"]["namespace"] == "goldens"
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    worker = next(o for o in objects if o["kind"] == "Deployment"
                  and o["metadata"]["name"].endswith("-worker"))
    assert {"name": "PREVIEW_GOLDEN_SNAPSHOT_NAMESPACE", "value": "goldens"} in pod_spec(
        worker)["containers"][0]["env"]
    plain = manifests(helm_cli.template("r", "engine", "-f", str(CI_VALUES)))
    assert not [o for o in plain if o["kind"] in ("Role", "RoleBinding")]


def test_both_components_expose_metrics_and_say_where(release: Release) -> None:
    """The starter's /metrics is on its http port; every worker (lifecycle and tenants)
    serves its own on a metrics port, told by its setting; pods carry the annotations a
    pod-discovering Prometheus reads. No ServiceMonitor unless asked for."""
    for deployment in release.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        container = pod_spec(deployment)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if name.endswith("-starter"):
            assert ports == {"http": 8080}
            port = "8080"
        else:
            assert ports == {"metrics": 9464}, name
            assert {"name": "PREVIEW_WORKER_METRICS_ADDRESS", "value": "0.0.0.0:9464"} in \
                container["env"], name
            port = "9464"
        assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
            "prometheus.io/scrape": "true", "prometheus.io/port": port,
            "prometheus.io/path": "/metrics"}, name
    assert not release.of_kind("ServiceMonitor")
    tenants = release.named("NetworkPolicy", "-tenant-worker")["spec"]
    assert tenants["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]


def test_service_monitor_and_scrape_sources_behind_values(helm_cli: Helm) -> None:
    objects = manifests(helm_cli.template(
        "r", "engine", "-f", str(CI_VALUES), "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.labels.release=prom",
        "--set-json", 'metrics.scrapeFrom=[{"namespaceSelector": {"matchLabels": '
                      '{"kubernetes.io/metadata.name": "monitoring"}}}]',
        "--set-json", 'networkPolicy.starterIngressFrom=[{"namespaceSelector": {"matchLabels":'
                      ' {"kubernetes.io/metadata.name": "ingress-nginx"}}}]'))
    [monitor] = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [
        ("http", "/metrics"), ("metrics", "/metrics")]
    selected = monitor["spec"]["selector"]
    services = [o for o in objects if o["kind"] == "Service"]
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in objects if o["kind"] == "Deployment"}
    scraped = set()
    for service in services:
        labels = service["metadata"]["labels"]
        if not (selected["matchLabels"].items() <= labels.items() and all(
                labels.get(e["key"]) in e["values"] for e in selected["matchExpressions"])):
            continue
        port = {p["name"] for p in service["spec"]["ports"]} & {"http", "metrics"}
        assert port, service["metadata"]["name"]
        scraped |= {name for name, labels in pods.items()
                    if service["spec"]["selector"].items() <= labels.items()}
    assert scraped == set(pods), "every Deployment's pods are scraped"
    # The given sources may scrape the workers, and the starter past its narrowed ingress.
    source = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    policies = {o["metadata"]["name"]: o["spec"] for o in objects
                if o["kind"] == "NetworkPolicy"}
    assert policies["r-preview-engine-worker"]["ingress"] == [
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": source}]
    assert {"ports": [{"port": "http", "protocol": "TCP"}], "from": source} in policies[
        "r-preview-engine-starter"]["ingress"]
    # Off: no port, setting, annotation or opening at all; a ServiceMonitor then refuses.
    off = manifests(helm_cli.template("r", "engine", "-f", str(CI_VALUES),
                                      "--set", "metrics.enabled=false"))
    for deployment in (o for o in off if o["kind"] == "Deployment"):
        container = pod_spec(deployment)["containers"][0]
        assert "metrics" not in {p["name"] for p in container.get("ports", [])}
        assert "PREVIEW_WORKER_METRICS_ADDRESS" not in {e["name"] for e in container["env"]}
        assert not [k for k in deployment["spec"]["template"]["metadata"]["annotations"]
                    if k.startswith("prometheus.io/")]
    assert next(o for o in off if o["kind"] == "NetworkPolicy"
                and o["metadata"]["name"] == "r-preview-engine-worker")["spec"]["ingress"] == []
    refused = helm_cli.run("template", "r", str(CHART), "-f", str(CI_VALUES), "--set",
                           "metrics.enabled=false", "--set",
                           "metrics.serviceMonitor.enabled=true", check=False)
    assert refused.returncode != 0 and "needs metrics.enabled" in refused.stderr
