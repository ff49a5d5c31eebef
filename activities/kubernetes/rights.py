"""The worker's rights on Secrets: granted in each preview namespace, never cluster-wide.

A ClusterRole that may read Secrets anywhere would let the engine's token read every
Secret of every team in the cluster. So where a preview role is configured (the chart's
`<release>-worker-in-preview`, PREVIEW_KUBE_PREVIEW_ROLE), the worker binds that role to
itself in each preview namespace it manages, with a RoleBinding that goes when the
namespace goes. RBAC lets it bind that one role and no other (`bind` on its name), and
the chart's namespace guard lets the binding name the worker only.

Secrets are touched by several activities (a preview's own secrets, a cache's password,
a container database's credentials); each asks for the rights first, so previews made
before the binding existed get it on their next step, teardown included. Without the
rights a Secret in a namespace that is gone answers 403, not 404: so the namespace is
looked at first, and a removal where it is gone has nothing to remove.
"""

from __future__ import annotations

import threading
import time

from temporalio.exceptions import ApplicationError

from activities.kubernetes.api import (
    API_ERROR,
    Json,
    KubeApi,
    Ref,
    ensure_owned,
    heartbeat,
    poll_delays,
)
from domain.naming import Ownership

BINDING_NAME = "preview-engine-worker"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
RBAC_GROUP = "rbac.authorization.k8s.io"


class NamespaceRights:
    """Binds `role` (a ClusterRole) to the worker in preview namespaces; with no role,
    the worker's rights are whatever its credentials hold (the local stack's admin)."""

    def __init__(self, role: str | None = None, *, wait_seconds: float = 30.0) -> None:
        self.role = role
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()  # activities run on a thread pool
        self._subjects: dict[str, Json] = {}  # cluster -> the worker, as RBAC names it
        self._granted: set[tuple[str, str]] = set()

    def grant(self, api: KubeApi, cluster: str, namespace: str, owner: Ownership) -> bool:
        """Make sure the worker may use Secrets in `namespace` before it does; False
        when the namespace does not exist (so neither does any Secret in it)."""
        if not self.role:
            return True
        current = api.get(Ref.of("Namespace", namespace))
        if current is None:
            return False
        with self._lock:
            if (cluster, namespace) in self._granted:
                return True
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            return True  # nothing can be created there; what is in it goes with it
        ref = Ref.of("RoleBinding", BINDING_NAME, namespace)
        ensure_owned(api, ref, ref.manifest(
            owner.labels(),
            roleRef={"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": self.role},
            subjects=[self._subject(api, cluster)],
        ), owner)
        self._wait_effective(api, namespace)
        with self._lock:
            self._granted.add((cluster, namespace))
        return True

    def require(self, api: KubeApi, cluster: str, namespace: str, owner: Ownership) -> None:
        """`grant`, for a step that writes: its namespace must exist (retried until then)."""
        if not self.grant(api, cluster, namespace, owner):
            raise ApplicationError(f"Namespace {namespace} does not exist", type=API_ERROR)

    def _subject(self, api: KubeApi, cluster: str) -> Json:
        """Who this worker is in `cluster`, as the API server authenticates it."""
        with self._lock:
            known = self._subjects.get(cluster)
        if known is not None:
            return known
        review = api.request(
            "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            what="SelfSubjectReview")
        username = str(((review or {}).get("status") or {}).get("userInfo", {})
                       .get("username") or "")
        if not username:
            raise ApplicationError("the API server did not say who this worker is "
                                   "(SelfSubjectReview without a username)", type=API_ERROR)
        subject = subject_of(username)
        with self._lock:
            self._subjects[cluster] = subject
        return subject

    def _wait_effective(self, api: KubeApi, namespace: str) -> None:
        """RBAC reads bindings from a cache: ask the API server itself until it allows."""
        deadline = time.monotonic() + self.wait_seconds
        delays = poll_delays(1.0, first=0.02)
        while True:
            review = api.request(
                "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                body={"apiVersion": "authorization.k8s.io/v1",
                      "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {
                          "namespace": namespace, "verb": "get", "resource": "secrets"}}},
                what="SelfSubjectAccessReview")
            if ((review or {}).get("status") or {}).get("allowed"):
                return
            heartbeat(f"waiting for RoleBinding {namespace}/{BINDING_NAME} to take effect")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"RoleBinding {namespace}/{BINDING_NAME} (ClusterRole {self.role}) gives "
                    f"this worker no `get` on Secrets after {self.wait_seconds:.0f}s: does "
                    f"ClusterRole {self.role} grant it?", type=API_ERROR)
            time.sleep(next(delays))


def subject_of(username: str) -> Json:
    """An RBAC subject for an authenticated user: a ServiceAccount (in-cluster, or a
    token of one) by name and namespace, anyone else as a User."""
    if username.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, _, name = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    return {"apiGroup": RBAC_GROUP, "kind": "User", "name": username}
