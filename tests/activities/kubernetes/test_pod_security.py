"""Preview pods run with the least rights, and namespaces enforce the Pod Security Standard
their spec asks for (restricted by default), against the real admission controller of
the test control plane.

Pods are created from outside the code under test with the official client, so the
API's own answer (403 Forbidden, "violates PodSecurity") is what is asserted.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from activities.errors import INVALID_INPUT, ROLLOUT_FAILED
from activities.kubernetes.api import KubeApi
from activities.kubernetes.pods import NON_ROOT_HINT, pod_problem
from domain.resources import StepOutput
from tests.activities.kubernetes.workload_env import Env, app_spec
from tests.plugins.kube import KubeCluster

pytestmark = pytest.mark.kube

PS = "pod-security.kubernetes.io"


@pytest.fixture(scope="module")
def core(kube_cluster: KubeCluster) -> Iterator[k8s_client.CoreV1Api]:
    api = kube_cluster.api_client()
    yield k8s_client.CoreV1Api(api)
    api.close()


def compliant_pod(name: str) -> dict[str, Any]:
    """A pod the `restricted` standard admits, written out here independently of the
    code under test."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": "registry.example/app:1",
                "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def privileged(pod: dict[str, Any]) -> None:
    # Privileged and allowPrivilegeEscalation=false together are invalid (422).
    _container(pod)["securityContext"] = {"privileged": True}


def may_run_as_root(pod: dict[str, Any]) -> None:
    del pod["spec"]["securityContext"]["runAsNonRoot"]


def no_seccomp(pod: dict[str, Any]) -> None:
    del pod["spec"]["securityContext"]["seccompProfile"]


def keeps_capabilities(pod: dict[str, Any]) -> None:
    del _container(pod)["securityContext"]["capabilities"]


def escalates(pod: dict[str, Any]) -> None:
    _container(pod)["securityContext"]["allowPrivilegeEscalation"] = True


def as_root(pod: dict[str, Any]) -> None:
    pod["spec"]["securityContext"] = {"runAsUser": 0,
                                      "seccompProfile": {"type": "RuntimeDefault"}}


Breakage = Callable[[dict[str, Any]], None]


def create_pod(
    core: k8s_client.CoreV1Api, namespace: str, pod: dict[str, Any]
) -> ApiException | None:
    """None when admitted; the API's refusal otherwise."""
    try:
        # The client sends a plain manifest as it is.
        core.create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]
    except ApiException as refused:
        return refused
    return None


def refusal(refused: ApiException) -> str:
    """The API's message of a refusal (admission's reasons)."""
    return str(json.loads(refused.body or "{}")["message"])


# --- admission ---------------------------------------------------------------------------


@pytest.mark.parametrize("breakage", [privileged, may_run_as_root, no_seccomp,
                                      keeps_capabilities, escalates, as_root])
def test_restricted_namespace_refuses_what_breaks_it_and_admits_a_compliant_pod(
    env: Env, core: k8s_client.CoreV1Api, breakage: Breakage
) -> None:
    spec = env.namespace()  # the default level
    labels = env.must_get("namespace", spec.name)["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith(PS)} == {
        f"{PS}/enforce": "restricted", f"{PS}/enforce-version": "latest",
        f"{PS}/audit": "restricted", f"{PS}/audit-version": "latest",
        f"{PS}/warn": "restricted", f"{PS}/warn-version": "latest",
    }
    broken = compliant_pod("broken")
    breakage(broken)
    refused = create_pod(core, spec.name, broken)
    assert refused is not None, f"{breakage.__name__}: admitted"
    assert refused.status == 403
    message = refusal(refused)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert env.get("pod", "broken", spec.name) is None

    assert create_pod(core, spec.name, compliant_pod("fine")) is None
    env.must_get("pod", "fine", spec.name)


@pytest.mark.parametrize(("level", "breakage", "admitted"), [
    ("baseline", may_run_as_root, True),
    ("baseline", as_root, True),
    ("baseline", privileged, False),
    ("privileged", privileged, True),
])
def test_a_lowered_namespace_admits_what_its_level_allows(
    env: Env, core: k8s_client.CoreV1Api, level: str, breakage: Breakage, admitted: bool
) -> None:
    spec = env.namespace(pod_security=level)
    out = env.step(env.acts.ensure_namespace, spec)
    assert out == StepOutput(values={"namespace": spec.name}, detail=f"pod security {level}")
    labels = env.must_get("namespace", spec.name)["metadata"]["labels"]
    assert labels[f"{PS}/enforce"] == level
    assert labels[f"{PS}/audit"] == labels[f"{PS}/warn"] == "restricted"  # still reported
    pod = compliant_pod("pod")
    breakage(pod)
    refused = create_pod(core, spec.name, pod)
    if admitted:
        assert refused is None, refused.body if refused else None
    else:
        assert refused is not None and refused.status == 403
        assert f'violates PodSecurity "{level}:latest"' in refusal(refused)


# --- applications ------------------------------------------------------------------------


HARDENED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                      "runAsNonRoot": True}


def test_application_pods_are_hardened_and_ready_under_restricted(env: Env) -> None:
    ns = env.namespace().name
    spec = app_spec(env, ns, config_map=None, secret=None, run_as_user=10001)
    out = env.step(env.acts.ensure_application, spec)
    assert out == StepOutput(values={"service": f"web.{ns}.svc"})  # nothing to point out

    dep = env.must_get("deployment", "web", ns)
    assert dep["status"]["readyReplicas"] == 2
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001,
                                           "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod_spec["containers"]
    assert container["securityContext"] == HARDENED_CONTAINER
    pods = json.loads(env.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=web",
                                  "-o", "json"))["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["automountServiceAccountToken"] is False
        # No token volume was injected: the pod has no way to talk to the API as itself.
        assert not pod["spec"].get("volumes")
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_root_uid_with_run_as_non_root_is_invalid_input(env: Env) -> None:
    ns = env.namespace().name
    error = env.failure(env.acts.ensure_application,
                        app_spec(env, ns, config_map=None, secret=None, run_as_user=0))
    assert error.type == INVALID_INPUT and error.non_retryable
    assert "run_as_user 0" in error.message
    assert env.get("deployment", "web", ns) is None


def test_opted_out_application_is_refused_under_restricted_and_runs_under_baseline(
    env: Env,
) -> None:
    restricted = env.namespace("-r").name
    spec = app_spec(env, restricted, config_map=None, secret=None, replicas=1,
                    run_as_non_root=False, rollout_timeout_seconds=60)
    started = time.monotonic()
    error = env.failure(env.acts.ensure_application, spec)
    took = time.monotonic() - started
    print(f"refused rollout failed after {took:.2f}s: {error.message}")
    assert error.type == ROLLOUT_FAILED and error.non_retryable
    # Admission's own verdict, then what to do about it.
    assert "FailedCreate" in error.message
    assert 'violates PodSecurity "restricted:latest"' in error.message
    assert "runAsNonRoot != true" in error.message
    assert "lower the namespace's pod security to baseline in the blueprint's policy" in (
        error.message)
    assert took < spec.rollout_timeout_seconds  # a verdict, not a timeout

    baseline = env.namespace("-b", pod_security="baseline").name
    out = env.step(env.acts.ensure_application, spec.model_copy(update={"namespace": baseline}))
    assert out.detail == "may run as root (opted out of runAsNonRoot)"
    dep = env.must_get("deployment", "web", baseline)
    assert dep["status"]["readyReplicas"] == 1
    pod_spec = dep["spec"]["template"]["spec"]
    assert "runAsNonRoot" not in json.dumps(pod_spec)
    # Everything else stays hardened.
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert pod_spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    # Opting back in (the image was fixed) puts runAsNonRoot back.
    env.step(env.acts.ensure_application, spec.model_copy(
        update={"namespace": baseline, "run_as_non_root": True}))
    pod_spec = env.must_get("deployment", "web", baseline)["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["containers"][0]["securityContext"] == HARDENED_CONTAINER


def test_an_image_the_kubelet_cannot_verify_as_non_root_says_what_to_do(
    env: Env, core: k8s_client.CoreV1Api
) -> None:
    # kwok has no kubelet to refuse an image that runs as root: a pod bound to a node
    # kwok does not manage gets the status a kubelet would write.
    ns = env.namespace().name
    pod = compliant_pod("web-1")
    pod["metadata"]["labels"] = {"app": "web"}
    pod["spec"]["nodeName"] = f"no-kubelet-{uuid.uuid4().hex[:6]}"
    assert create_pod(core, ns, copy.deepcopy(pod)) is None
    message = "container has runAsNonRoot and image will run as root (pod: \"web-1\")"
    core.patch_namespaced_pod_status("web-1", ns, {"status": {"containerStatuses": [{
        "name": "app", "image": "registry.example/app:1", "imageID": "", "ready": False,
        "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                 "message": message}},
    }]}})
    problem = pod_problem(KubeApi(core.api_client), ns, {"app": "web"})
    assert problem is not None and problem.fatal
    assert message in problem.why and problem.why.endswith(NON_ROOT_HINT)
