"""The worker's RoleBinding in a preview namespace (activities/kubernetes/rights.py),
against the real control plane as its admin. What the chart's token may and may not do
with it is tests/deploy/test_worker_rbac.py."""

from __future__ import annotations

import json

import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import FOREIGN_RESOURCE
from activities.kubernetes import KubernetesActivities, NamespaceRights
from activities.kubernetes.api import KubeApi
from activities.kubernetes.rights import BINDING_NAME, subject_of
from tests.activities.kubernetes.workload_env import CLUSTER, Env

pytestmark = pytest.mark.kube


def test_a_service_accounts_username_becomes_a_service_account_subject() -> None:
    assert subject_of("system:serviceaccount:engine:pe-worker") == {
        "kind": "ServiceAccount", "name": "pe-worker", "namespace": "engine"}
    assert subject_of("kubernetes-admin") == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubernetes-admin"}


def test_the_namespace_step_binds_the_role_to_whoever_the_worker_is(
    env: Env, acts: KubernetesActivities,
) -> None:
    rights = NamespaceRights("view")
    with_rights = KubernetesActivities(acts.clusters, acts.sealer, rights=rights)
    spec = env.namespace()  # without a role: no binding
    assert env.get("rolebinding", BINDING_NAME, spec.name) is None

    env.step(with_rights.ensure_namespace, spec)
    binding = env.must_get("rolebinding", BINDING_NAME, spec.name)
    who = json.loads(env.kubectl("auth", "whoami", "-o", "json"))["status"]["userInfo"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "view"}
    assert binding["subjects"] == [subject_of(who["username"])]
    assert binding["metadata"]["labels"] == env.owner.labels()


def test_a_binding_of_that_name_not_ours_is_refused(env: Env,
                                                    acts: KubernetesActivities) -> None:
    ns = env.namespace().name
    env.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": BINDING_NAME, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "edit"},
                "subjects": [{"kind": "User", "name": "someone-else"}]})
    api = KubeApi(acts.clusters.get(CLUSTER))
    with pytest.raises(ApplicationError) as refused:
        NamespaceRights("view").grant(api, CLUSTER, ns, env.owner)
    assert refused.value.type == FOREIGN_RESOURCE
    assert env.must_get("rolebinding", BINDING_NAME, ns)["roleRef"]["name"] == "edit"
