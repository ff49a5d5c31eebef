"""Kubernetes activities of what runs in a preview's namespace: config maps, secrets,
applications (a Deployment and its Service, with the rollout wait, sleep and wake) and
ingresses. `KubernetesActivities` also serves the namespace and sweeper activities it
inherits from namespaces.py: the worker registers one object for the whole cluster."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ROLLOUT_FAILED, invalid_input
from activities.kubernetes.api import (
    API_ERROR,
    MERGE_PATCH,
    NAME_LABEL,
    ClusterClients,
    Json,
    KubeApi,
    Ref,
    ensure_owned,
    get_owned,
    heartbeat,
    poll_delays,
    redact,
    remove_owned,
    secret_manifest,
    wait_while,
)
from activities.kubernetes.namespaces import NamespaceActivities
from activities.kubernetes.pods import (
    POD_SECURITY_VIOLATION,
    PodProblem,
    hardened,
    pod_problem,
)
from activities.kubernetes.rights import NamespaceRights
from activities.kubernetes.url_check import wait_until_answering
from domain.resources import (
    ApplicationSpec,
    ConfigMapSpec,
    IngressSpec,
    SecretSpec,
    StepInput,
    StepOutput,
)
from domain.secrets import SealedValue
from engine.sealing import Sealer, UnsealError

# Sleep writes only spec.replicas, under its own manager: an apply of a partial
# manifest by FIELD_MANAGER would remove every other field that manager owns.
SCALER_MANAGER = "preview-engine-scaler"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
DRAIN_SECONDS = 3  # preStop: how long a leaving pod keeps serving before SIGTERM


class KubernetesActivities(NamespaceActivities):
    """Every Kubernetes activity pair (the namespace's and the sweeper's inherited);
    holds its clients so tests inject them."""

    def __init__(
        self,
        clusters: ClusterClients,
        sealer: Sealer,
        *,
        rights: NamespaceRights | None = None,
        poll_interval: float = 2.0,
        namespace_timeout: float = 900.0,
        sweep_grace: float = 0.0,
    ) -> None:
        super().__init__(clusters, rights=rights, poll_interval=poll_interval,
                         namespace_timeout=namespace_timeout, sweep_grace=sweep_grace)
        self.sealer = sealer

    # -- config map -------------------------------------------------------------------

    @activity.defn(name=ConfigMapSpec.present)
    def ensure_config_map(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ConfigMapSpec)
        data = dict(spec.data)
        for key, ref in spec.upstream.items():
            value = input.resolve(ref)
            if isinstance(value, SealedValue):
                # A ConfigMap is readable by anyone who can read the namespace.
                raise invalid_input(
                    f"ConfigMap {spec.namespace}/{spec.name}: {key!r} comes from the secret "
                    f"output {ref.step}.{ref.output}; put it in a secret instead"
                )
            data[key] = value
        ref_ = Ref.of("ConfigMap", spec.name, spec.namespace)
        ensure_owned(
            self.api(spec.cluster), ref_, ref_.manifest(spec.owner.labels(), data=data),
            spec.owner,
        )
        return StepOutput(values={"config_map": spec.name})

    @activity.defn(name=ConfigMapSpec.absent)
    def remove_config_map(self, input: StepInput) -> None:
        spec = input.spec_as(ConfigMapSpec)
        remove_owned(self.api(spec.cluster), Ref.of("ConfigMap", spec.name, spec.namespace),
                     spec.owner)

    # -- secret -----------------------------------------------------------------------

    def _unseal(self, spec: SecretSpec, key: str, sealed: SealedValue) -> str:
        try:
            return self.sealer.unseal(sealed)
        except UnsealError as error:
            # The message names the key id only, never key material or ciphertext.
            raise invalid_input(
                f"Secret {spec.namespace}/{spec.name}: value {key!r} cannot be unsealed: {error}"
            ) from None

    @activity.defn(name=SecretSpec.present)
    def ensure_secret(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(SecretSpec)
        values = {key: self._unseal(spec, key, sealed)
                  for step in spec.outputs_of if (made := input.upstream.get(step))
                  for key, sealed in made.secrets.items()}
        values |= {key: self._unseal(spec, key, sealed) for key, sealed in spec.data.items()}
        for key, ref in spec.upstream.items():
            value = input.resolve(ref)
            values[key] = self._unseal(spec, key, value) if isinstance(value, SealedValue) else (
                value
            )
        ref_ = Ref.of("Secret", spec.name, spec.namespace)
        manifest = secret_manifest(ref_, spec.owner.labels(), values)
        api = self.api(spec.cluster)
        self.rights.require(api, spec.cluster, spec.namespace, spec.owner)
        try:
            ensure_owned(api, ref_, manifest, spec.owner)
        except ApplicationError as error:
            raise redact(error, values.values()) from None
        return StepOutput(values={"secret": spec.name})

    @activity.defn(name=SecretSpec.absent)
    def remove_secret(self, input: StepInput) -> None:
        spec = input.spec_as(SecretSpec)
        api = self.api(spec.cluster)
        if self.rights.grant(api, spec.cluster, spec.namespace, spec.owner):
            remove_owned(api, Ref.of("Secret", spec.name, spec.namespace), spec.owner)

    # -- application ------------------------------------------------------------------

    @staticmethod
    def _deployment(spec: ApplicationSpec) -> tuple[Ref, Json]:
        if spec.run_as_non_root and spec.run_as_user == 0:
            raise invalid_input(
                f"application {spec.name}: run_as_user 0 is root, which runAsNonRoot "
                "refuses; choose another uid or opt the application out of runAsNonRoot"
            )
        ref = Ref.of("Deployment", spec.name, spec.namespace)
        labels = {**spec.owner.labels(), NAME_LABEL: spec.name}
        resources = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
        container: Json = {
            "name": spec.name,
            "image": spec.image,
            "ports": [{"containerPort": p, "protocol": "TCP"} for p in spec.ports],
            "resources": {"requests": resources, "limits": resources},
        }
        if spec.command:
            container["command"] = list(spec.command)
        if spec.ports:
            # A pod leaving (rollout, sleep) keeps serving while the ingress and the
            # Service drop it; SIGTERM comes after. Without it, requests in that gap fail.
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}}
        env_from: list[Json] = []
        if spec.config_map:
            env_from.append({"configMapRef": {"name": spec.config_map}})
        if spec.secret:
            env_from.append({"secretRef": {"name": spec.secret}})
        if env_from:
            container["envFrom"] = env_from
        if spec.health_check is not None:
            port = spec.health_check.port or (spec.ports[0] if spec.ports else None)
            if port is None:
                raise invalid_input(
                    f"application {spec.name}: the health check needs a port and the "
                    "application exposes none"
                )
            container["readinessProbe"] = {
                "httpGet": {"path": spec.health_check.path, "port": port},
                "initialDelaySeconds": spec.health_check.initial_delay_seconds,
                "periodSeconds": 1,  # a new pod takes traffic, and a rollout ends, sooner
            }
        manifest = ref.manifest(labels, spec={
            "replicas": spec.replicas,
            # The selector is immutable: only the stable name, never the env labels.
            "selector": {"matchLabels": {NAME_LABEL: spec.name}},
            # The controller marks the rollout failed (ProgressDeadlineExceeded) too.
            "progressDeadlineSeconds": max(spec.rollout_timeout_seconds, 1),
            "template": {
                "metadata": {"labels": labels},
                "spec": hardened({"containers": [container]},
                                 run_as_non_root=spec.run_as_non_root,
                                 run_as_user=spec.run_as_user),
            },
        })
        return ref, manifest

    @staticmethod
    def _service(spec: ApplicationSpec) -> tuple[Ref, Json]:
        ref = Ref.of("Service", spec.name, spec.namespace)
        manifest = ref.manifest({**spec.owner.labels(), NAME_LABEL: spec.name}, spec={
            "type": "ClusterIP",
            "selector": {NAME_LABEL: spec.name},
            "ports": [
                {"name": f"port-{p}", "port": p, "targetPort": p, "protocol": "TCP"}
                for p in spec.ports
            ],
        })
        return ref, manifest

    def _apply_application(self, api: KubeApi, spec: ApplicationSpec) -> Json:
        dep_ref, dep = self._deployment(spec)
        svc_ref, svc = self._service(spec)
        # Check both before writing either: a foreign Service must not leave a
        # Deployment of ours half-deployed behind it.
        for ref in (dep_ref, svc_ref):
            get_owned(api, ref, spec.owner)
        applied = api.apply(dep_ref, dep)
        if spec.ports:
            api.apply(svc_ref, svc)
        else:
            remove_owned(api, svc_ref, spec.owner)  # a Service needs at least one port
        return applied

    def roll_out(self, spec: ApplicationSpec) -> None:
        """Apply a Deployment and its Service and wait until every replica is ready: for
        applications, and for other kinds that run as one (caches)."""
        api = self.api(spec.cluster)
        self._apply_application(api, spec)
        self._wait_for_rollout(api, spec)

    def take_down(self, spec: ApplicationSpec) -> None:
        api = self.api(spec.cluster)
        remove_owned(api, Ref.of("Service", spec.name, spec.namespace), spec.owner)
        remove_owned(api, Ref.of("Deployment", spec.name, spec.namespace), spec.owner)

    @activity.defn(name=ApplicationSpec.present)
    def ensure_application(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ApplicationSpec)
        self.roll_out(spec)
        values = {"service": f"{spec.name}.{spec.namespace}.svc"} if spec.ports else {}
        return StepOutput(values=values, detail=_application_detail(spec))

    @activity.defn(name=ApplicationSpec.absent)
    def remove_application(self, input: StepInput) -> None:
        self.take_down(input.spec_as(ApplicationSpec))

    @activity.defn(name=ApplicationSpec.sleep)
    def sleep_application(self, spec: ApplicationSpec) -> None:
        api = self.api(spec.cluster)
        ref = Ref.of("Deployment", spec.name, spec.namespace)
        if get_owned(api, ref, spec.owner) is None:
            return  # nothing to scale down
        api.request(
            "PATCH", ref.path,
            query=[("fieldManager", SCALER_MANAGER)],
            body={"spec": {"replicas": 0}},
            content_type=MERGE_PATCH,
            what=ref.what,
        )

    @activity.defn(name=ApplicationSpec.wake)
    def wake_application(self, spec: ApplicationSpec) -> None:
        # Re-applying the full manifest takes spec.replicas back from the scaler
        # (and recreates anything that went missing while asleep).
        api = self.api(spec.cluster)
        self._apply_application(api, spec)
        self._wait_for_rollout(api, spec)

    def _wait_for_rollout(self, api: KubeApi, spec: ApplicationSpec) -> None:
        ref = Ref.of("Deployment", spec.name, spec.namespace)
        deadline = time.monotonic() + spec.rollout_timeout_seconds
        delays = poll_delays(self.poll_interval)
        while True:
            state = self.rollout_state(api, ref)
            heartbeat(state.progress)
            if state.ready:
                return
            if state.fatal:
                raise ApplicationError(
                    f"{ref.what} cannot roll out: {state.fatal}"
                    + (f"; {_pod_security_hint(spec)}"
                       if POD_SECURITY_VIOLATION in state.fatal else ""),
                    type=ROLLOUT_FAILED, non_retryable=True,
                )
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{ref.what} not ready after {spec.rollout_timeout_seconds}s: "
                    f"{state.waiting or _progress_text(state.progress)}",
                    type=ROLLOUT_FAILED, non_retryable=True,
                )
            time.sleep(next(delays))

    def rollout_state(self, api: KubeApi, ref: Ref) -> RolloutState:
        dep = api.get(ref)
        if dep is None:
            raise ApplicationError(f"{ref.what} disappeared during its rollout", type=API_ERROR)
        meta, spec, status = dep["metadata"], dep.get("spec") or {}, dep.get("status") or {}
        want = int(spec.get("replicas", 1))
        counts = {
            key: int(status.get(key) or 0)
            for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        }
        observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        progress: Json = {"deployment": ref.what, "want": want, "observed": observed, **counts}
        if not observed:
            # Conditions and pods still describe the previous generation.
            return RolloutState(False, progress, waiting=(
                f"the deployment controller has not observed generation {meta.get('generation')}"
            ))
        replica_sets = _current_replica_sets(api, dep)
        if (
            counts["updatedReplicas"] == want
            and counts["replicas"] == want
            and counts["readyReplicas"] == want
            and counts["availableReplicas"] == want
        ):
            stale = replica_set_lag(replica_sets, want)
            if stale is None:
                return RolloutState(True, progress)
            return RolloutState(False, progress, waiting=stale)
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        problem = _pod_problem(api, dep, replica_sets)
        # e.g. pods forbidden by the namespace's quota: then there is no pod to look at.
        replica_failure = _replica_failure(conditions, replica_sets)
        why_pod = problem.why if problem else None
        if progressing.get("status") == "False" and (
            progressing.get("reason") == "ProgressDeadlineExceeded"
        ):
            reasons = [f"ProgressDeadlineExceeded: {progressing.get('message')}",
                       *(r for r in (replica_failure, why_pod) if r)]
            return RolloutState(False, progress, fatal="; ".join(reasons))
        if problem and problem.fatal:
            return RolloutState(False, progress, fatal=problem.why)
        if replica_failure and POD_SECURITY_VIOLATION in replica_failure:
            # Admission refuses every pod of this template: no retry can change that.
            return RolloutState(False, progress, fatal=replica_failure)
        waiting = replica_failure or why_pod
        if waiting:
            progress["reason"] = waiting
        return RolloutState(False, progress, waiting=waiting)

    # -- ingress ----------------------------------------------------------------------

    @activity.defn(name=IngressSpec.present)
    def ensure_ingress(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(IngressSpec)
        ref = Ref.of("Ingress", spec.name, spec.namespace)
        body: Json = {
            "rules": [
                {"host": h.host, "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": h.service, "port": {"number": h.port}}},
                }]}}
                for h in spec.hosts
            ],
        }
        if spec.tls_secret:
            body["tls"] = [{"hosts": sorted({h.host for h in spec.hosts}),
                            "secretName": spec.tls_secret}]
        manifest = ref.manifest(spec.owner.labels(), spec=body)
        if spec.basic_auth_secret:
            manifest["metadata"]["annotations"] = {
                "nginx.ingress.kubernetes.io/auth-type": "basic",
                "nginx.ingress.kubernetes.io/auth-secret": spec.basic_auth_secret,
                "nginx.ingress.kubernetes.io/auth-realm": "Preview environment",
            }
        api = self.api(spec.cluster)
        ensure_owned(api, ref, manifest, spec.owner)
        if spec.wait_for_address:
            self._wait_for_address(api, spec)
        scheme = "https" if spec.tls_secret else "http"
        port = f":{spec.url_port}" if spec.url_port else ""
        urls = {h.host: f"{scheme}://{h.host}{port}" for h in spec.hosts}
        if spec.url_check:
            wait_until_answering(sorted(urls.values()), spec.url_check,
                                 poll_delays(self.poll_interval))
        return StepOutput(urls=urls)

    def _wait_for_address(self, api: KubeApi, spec: IngressSpec, timeout: float = 120.0,
                          ) -> None:
        """Until the ingress controller publishes an address for the Ingress and each
        backend Service has a ready endpoint: a controller routes a host only to a
        Service with somewhere to send it (the endpoints follow a pod's readiness a
        moment later), so the URL we post answers. Retryable when it does not come."""
        ref = Ref.of("Ingress", spec.name, spec.namespace)
        services = sorted({h.service for h in spec.hosts})
        wait_while(lambda: self._not_routed(api, ref, services),
                   poll_delays(self.poll_interval), timeout=timeout, what=f"{ref.what}: ",
                   advice="Is an ingress controller serving it, and does it publish its "
                   "address (status.loadBalancer)? Or turn PREVIEW_INGRESS_WAIT_FOR_ADDRESS off")

    @staticmethod
    def _not_routed(api: KubeApi, ref: Ref, services: list[str]) -> str:
        """What keeps the Ingress from answering yet, in words; empty once nothing does."""
        status = ((api.get(ref) or {}).get("status") or {}).get("loadBalancer") or {}
        if not status.get("ingress"):
            return "no address from the ingress controller yet"
        for service in services:
            slices = api.list("EndpointSlice", ref.namespace,
                              {"kubernetes.io/service-name": service})
            if not any((endpoint.get("conditions") or {}).get("ready")
                       for piece in slices for endpoint in piece.get("endpoints") or []):
                return f"no ready endpoint of Service {service} yet"
        return ""

    @activity.defn(name=IngressSpec.absent)
    def remove_ingress(self, input: StepInput) -> None:
        spec = input.spec_as(IngressSpec)
        remove_owned(self.api(spec.cluster), Ref.of("Ingress", spec.name, spec.namespace),
                     spec.owner)

    def activities(self) -> list[Callable[..., Any]]:
        """Every activity of this class, for the worker."""
        return [
            *super().activities(),
            self.ensure_config_map, self.remove_config_map,
            self.ensure_secret, self.remove_secret,
            self.ensure_application, self.remove_application,
            self.sleep_application, self.wake_application,
            self.ensure_ingress, self.remove_ingress,
        ]


# --- rollout ------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutState:
    ready: bool
    progress: Json
    fatal: str | None = None  # the rollout cannot complete: why
    waiting: str | None = None  # the most telling reason it is not ready yet


def _current_replica_sets(api: KubeApi, dep: Json) -> list[Json]:
    """The Deployment's ReplicaSets of its current revision (not an older rollout's)."""
    meta = dep["metadata"]
    revision = (meta.get("annotations") or {}).get(REVISION_ANNOTATION)
    if not revision:
        return []
    selector = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
    current = []
    for rs in api.list("ReplicaSet", meta["namespace"], selector):
        rs_meta = rs.get("metadata") or {}
        owned = any(o.get("uid") == meta.get("uid") for o in rs_meta.get("ownerReferences") or [])
        if owned and (rs_meta.get("annotations") or {}).get(REVISION_ANNOTATION) == revision:
            current.append(rs)
    return current


def replica_set_lag(replica_sets: list[Json], want: int) -> str | None:
    """Why the Deployment's counts cannot be trusted yet, if they cannot.

    The deployment controller copies its counts from the ReplicaSets' status, which
    their own controller writes. Scaled 2 -> 0 -> 2 quickly (asleep, then deployed),
    a ReplicaSet can still report the two ready pods it is about to delete: ready
    only once the current ReplicaSets have observed their own generation and agree."""
    if want == 0:
        return None
    for rs in replica_sets:
        meta, status = rs.get("metadata") or {}, rs.get("status") or {}
        if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
            return (f"the replica set controller has not observed generation "
                    f"{meta.get('generation')} of ReplicaSet {meta.get('name')}")
    ready = sum(int((rs.get("status") or {}).get("readyReplicas") or 0) for rs in replica_sets)
    if ready != want:
        return f"{ready}/{want} pods of the current ReplicaSet ready"
    return None


def _replica_failure(conditions: Mapping[str, Json], replica_sets: list[Json]) -> str | None:
    """Why pods cannot be created, from the Deployment or, before the deployment
    controller copies it there, from its current ReplicaSets."""
    candidates = [conditions.get("ReplicaFailure") or {}]
    if candidates[0].get("status") != "True":
        candidates += [c for rs in replica_sets
                       for c in (rs.get("status") or {}).get("conditions") or []
                       if c.get("type") == "ReplicaFailure"]
    for condition in candidates:
        if condition.get("status") == "True":
            return f"{condition.get('reason')}: {condition.get('message')}"
    return None


def _pod_problem(api: KubeApi, dep: Json, replica_sets: list[Json]) -> PodProblem | None:
    """The first stuck pod of the current ReplicaSet."""
    if not replica_sets:
        return None
    labels = (replica_sets[-1].get("metadata") or {}).get("labels") or {}
    template_hash = labels.get("pod-template-hash")
    if template_hash is None:
        return None
    selector = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
    return pod_problem(api, dep["metadata"]["namespace"],
                       {**selector, "pod-template-hash": template_hash})


def _application_detail(spec: ApplicationSpec) -> str:
    """What people should know about how the application runs (no secrets)."""
    return "" if spec.run_as_non_root else "may run as root (opted out of runAsNonRoot)"


def _pod_security_hint(spec: ApplicationSpec) -> str:
    """What to do when the namespace's Pod Security Standard refuses the pods."""
    if not spec.run_as_non_root:
        return ("the application is opted out of runAsNonRoot, which the namespace's "
                "`restricted` level refuses: lower the namespace's pod security to baseline "
                "in the blueprint's policy (with a reason), or fix the image to run as a "
                "non-root user and drop the opt-out")
    return ("lower the namespace's pod security in the blueprint's policy (with a reason), "
            "or fix the image")


def _progress_text(progress: Mapping[str, Any]) -> str:
    return (
        f"{progress.get('readyReplicas', 0)}/{progress.get('want')} ready, "
        f"{progress.get('updatedReplicas', 0)} updated"
    )
