"""Helm charts of a blueprint (domain.blueprint.Chart): rendered with `helm template`,
applied by the engine itself, object by object, in the preview's namespace.

Helm never talks to the cluster: no release Secrets, no hooks run by Helm, nothing the
engine cannot see. Every rendered object gets the ownership labels and
`preview.dev/chart: <name>`, is applied with server-side apply like every other object
of ours, and is listed in the ConfigMap `chart-<name>-inventory`; a redeploy deletes
what the new render no longer has, and removal deletes what the inventory lists.

A chart may only make objects in its own namespace: a cluster-scoped object (by the
cluster's API discovery), an object in another namespace, or a hook (which only Helm
would run, at its moment) refuses the whole render before anything is applied.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import FOREIGN_RESOURCE, ROLLOUT_FAILED, foreign_resource, invalid_input
from activities.kubernetes.api import (
    API_ERROR,
    Json,
    KubeApi,
    Ref,
    heartbeat,
    is_ours,
    poll_delays,
    redact,
    secret_forms,
    secret_manifest,
    warn_not_ours,
)
from activities.kubernetes.pods import POD_SECURITY_VIOLATION, pod_problem
from activities.kubernetes.url_check import wait_until_answering
from activities.kubernetes.workloads import KubernetesActivities
from activities.registry import docker_config_json
from domain.resources import ChartSpec, StepInput, StepOutput
from domain.secrets import SealedValue
from engine.sealing import UnsealError

CHART_LABEL = "preview.dev/chart"
HOOK_ANNOTATION = "helm.sh/hook"
TEST_HOOKS = frozenset({"test", "test-success"})  # `helm test` only: never part of a deploy
ROLLED_OUT = ("Deployment", "StatefulSet", "DaemonSet")
# Helm's install order (namespaced kinds): what a pod reads exists before the pod starts,
# else it fails at once with CreateContainerConfigError. Others come after, by name.
INSTALL_ORDER = ("NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget",
                 "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim", "Role",
                 "RoleBinding", "Service", "DaemonSet", "Pod", "ReplicaSet", "Deployment",
                 "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "Ingress")
STDERR_LINES = 8
# Helm's words for a registry or repository that did not answer (worth a retry), as
# opposed to a chart that does not render (which no retry changes).
UNREACHABLE = ("connection refused", "i/o timeout", "no such host", "connection reset",
               "TLS handshake timeout", "502 Bad Gateway", "503 Service Unavailable",
               "504 Gateway Timeout", "429 Too Many Requests")
POD_SECURITY_HINT = (
    "the namespace's Pod Security Standard refuses the chart's pods: set their "
    "securityContext through the chart's values (runAsNonRoot, seccompProfile "
    "RuntimeDefault, allowPrivilegeEscalation false, capabilities drop ALL), or lower the "
    "namespace's pod security in the blueprint's policy (with a reason)")

Entry = tuple[str, str, str]  # apiVersion, kind, name: one line of the inventory


def _key(entry: Entry) -> tuple[str, str, str]:
    """An object's identity across renders: a new apiVersion of the same group is the
    same object (autoscaling/v2 after v2beta2), not one to prune."""
    return entry[0].rpartition("/")[0], entry[1], entry[2]


def _order(entry: Entry) -> tuple[int, str, str]:
    rank = INSTALL_ORDER.index(entry[1]) if entry[1] in INSTALL_ORDER else len(INSTALL_ORDER)
    return rank, entry[1], entry[2]


def chart_reference(chart: str, *, plain_http: Sequence[str],
                    mirrors: Mapping[str, str]) -> tuple[str, bool]:
    """(the reference helm pulls, whether over plain HTTP): an oci:// registry host of
    `mirrors` is asked at its mirror address, as the nodes are told to."""
    if not chart.startswith("oci://"):
        return chart, False
    host, _, rest = chart.removeprefix("oci://").partition("/")
    address = mirrors.get(host, host)
    return f"oci://{address}/{rest}", host in plain_http or address in plain_http


def unpack_chart(spec: ChartSpec, into: str) -> str:
    """A chart of the PR's repository, as read (RepositoryFolder), unpacked into `into`:
    only plain files inside it (the data filter), the digest checked first."""
    assert spec.folder is not None
    packed = base64.b64decode(spec.folder.archive)
    if hashlib.sha256(packed).hexdigest() != spec.folder.digest:
        raise invalid_input(f"chart {spec.name}: its folder's archive does not match its "
                            "digest")
    try:
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
            odd = [m.name for m in tar.getmembers() if not (m.isfile() or m.isdir())]
            if odd:
                raise invalid_input(f"chart {spec.name}: its folder holds {odd[0]}, which is "
                                    "not a plain file")
            tar.extractall(into, filter="data")  # nothing outside `into`
    except (tarfile.TarError, OSError) as error:
        raise invalid_input(f"chart {spec.name}: its folder does not unpack: {error}") from None
    manifest = os.path.join(into, "Chart.yaml")
    if not os.path.isfile(manifest):
        raise invalid_input(f"chart {spec.name}: {spec.folder.path} of the repository has no "
                            "Chart.yaml: give the chart's own folder as `path`")
    with open(manifest, encoding="utf-8", errors="replace") as file:
        try:
            chart = yaml.safe_load(file) or {}
        except yaml.YAMLError:
            chart = {}  # helm says what is wrong with it
    root = os.path.realpath(into)
    for dependency in (chart.get("dependencies") or []) if isinstance(chart, dict) else []:
        repository = str((dependency or {}).get("repository") or "")
        # A PR's Chart.yaml must not make the worker's helm read the worker's own files.
        target = os.path.realpath(os.path.join(into, repository.removeprefix("file://")))
        if repository.startswith("file://") and not target.startswith(root + os.sep):
            raise invalid_input(f"chart {spec.name}: its dependency {repository} is outside "
                                f"{spec.folder.path}: keep it in the folder (or its charts/)")
    return into


class _Loader(yaml.SafeLoader):
    """YAML as the API server reads it: a date-like scalar stays a string."""

    yaml_implicit_resolvers = {
        first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_render(text: str) -> list[Json]:
    """The objects of helm's multi-document output: empty documents skipped, `List`
    kinds flattened."""
    try:
        pending = [doc for doc in yaml.load_all(text, Loader=_Loader) if doc]
    except yaml.YAMLError as error:
        raise invalid_input(f"the chart renders something that is not YAML: {error}") from None
    objects: list[Json] = []
    while pending:
        doc = pending.pop(0)
        if not isinstance(doc, dict):
            raise invalid_input(f"the chart renders a document that is not an object: {doc!r:.80}")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            pending[:0] = [item for item in doc["items"] if item]
        else:
            objects.append(doc)
    return objects


class ChartActivities:
    """ensure_chart / remove_chart; the cluster clients, sealer and rights come through
    `workloads`, helm and the registries' addresses from the worker's settings."""

    def __init__(self, workloads: KubernetesActivities, *, helm: str = "helm",
                 plain_http: Sequence[str] = (), registry_mirrors: Mapping[str, str] = {},
                 registry_credentials: Mapping[str, tuple[str, str]] = {},
                 render_timeout: float = 180.0) -> None:
        self.workloads = workloads
        self.helm = helm
        self.plain_http = tuple(plain_http)
        self.registry_mirrors = dict(registry_mirrors)
        # host → (user, password): for oci:// charts and a folder's oci:// dependencies,
        # as for the images (PREVIEW_REGISTRY_CREDENTIALS); a mirror uses its host's.
        self.registry_credentials = {
            **dict(registry_credentials),
            **{mirror: registry_credentials[host] for host, mirror in registry_mirrors.items()
               if host in registry_credentials}}
        self.render_timeout = render_timeout
        self._lock = threading.Lock()  # activities run on a thread pool
        # (cluster, apiVersion) → kind → (plural, namespaced), from the API's discovery
        self._resources: dict[tuple[str, str], dict[str, tuple[str, bool]]] = {}

    # -- the cluster's API discovery --------------------------------------------------

    def _ref(self, api: KubeApi, spec: ChartSpec, entry: Entry) -> Ref | None:
        """Where an object lives; None when the cluster does not serve its kind (a kind
        not in the cache is looked up again: a CRD may have come since)."""
        api_version, kind, name = entry
        key = (spec.cluster, api_version)
        with self._lock:
            served = self._resources.get(key) or {}
        if kind not in served:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            found = api.request("GET", path, what=f"the API {api_version}", missing_ok=True)
            served = {r["kind"]: (r["name"], bool(r.get("namespaced")))
                      for r in (found or {}).get("resources") or []
                      if "/" not in r["name"]}  # not subresources (pods/log)
            with self._lock:
                self._resources[key] = served
        if kind not in served:
            return None
        plural, namespaced = served[kind]
        return Ref(api_version, kind, plural, name, spec.namespace if namespaced else None)

    # -- rendering --------------------------------------------------------------------

    def render(self, spec: ChartSpec) -> str:
        """`helm template` of the chart with the spec's values, heartbeating while helm
        runs; its own cache and config folders, so nothing of the worker's is read."""
        with tempfile.TemporaryDirectory(prefix="preview-helm-") as home:
            if spec.folder is not None:
                chart, plain = unpack_chart(spec, os.path.join(home, "chart")), False
            else:
                chart, plain = chart_reference(spec.chart or "", plain_http=self.plain_http,
                                               mirrors=self.registry_mirrors)
            values = os.path.join(home, "values.json")
            with open(values, "w") as file:
                json.dump(spec.values, file)
            logins: list[str] = []
            if self.registry_credentials:
                registries = os.path.join(home, "registries.json")  # gone with `home`
                with open(os.open(registries, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
                    file.write(docker_config_json(self.registry_credentials))
                logins = ["--registry-config", registries]
            argv = [self.helm, "template", spec.name, chart, "--namespace", spec.namespace,
                    "--values", values, "--include-crds=false", *logins,
                    *(["--version", spec.version] if spec.version else []),
                    *(["--repo", spec.repository] if spec.repository else []),
                    *(["--plain-http"] if plain else []),
                    # A folder's dependencies not kept in its charts/ are fetched first.
                    *(["--dependency-update"] if spec.folder is not None else [])]
            env = {key: value for key, value in os.environ.items()
                   if key in ("PATH", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
                              "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")}
            env |= {"HOME": home, **{f"HELM_{kind}_HOME": os.path.join(home, kind.lower())
                                     for kind in ("CACHE", "CONFIG", "DATA")}}
            out, err, code = self._run(argv, env, spec)
        if code != 0:
            for _, password in self.registry_credentials.values():
                if password:  # helm does not print it; never let it
                    err = err.replace(password, "***")
            lines = err.replace(home, "…").strip().splitlines()[-STDERR_LINES:]
            message = f"chart {spec.name} ({spec.source}) does not render: " + "\n".join(lines)
            if any(word in message for word in UNREACHABLE):
                raise ApplicationError(message, type=API_ERROR)  # the registry may come back
            raise invalid_input(message)
        return out

    def _run(self, argv: list[str], env: dict[str, str], spec: ChartSpec,
             ) -> tuple[str, str, int]:
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env)
        except FileNotFoundError:
            raise ApplicationError(f"the helm binary {self.helm!r} is not there (set "
                                   "PREVIEW_HELM_BINARY)", type=API_ERROR) from None
        deadline = time.monotonic() + self.render_timeout
        with process:
            while True:
                try:
                    out, err = process.communicate(timeout=2)  # output is kept across waits
                    return out, err, process.returncode
                except subprocess.TimeoutExpired:
                    heartbeat({"rendering": spec.source})
                    if time.monotonic() >= deadline:
                        process.kill()
                        process.communicate()
                        raise ApplicationError(
                            f"chart {spec.name}: helm template of {spec.source} did not end "
                            f"within {self.render_timeout:.0f}s", type=API_ERROR) from None

    # -- checks -----------------------------------------------------------------------

    def _plan(self, api: KubeApi, spec: ChartSpec, objects: list[Json],
              ) -> list[tuple[Ref, Json]]:
        """Every object to apply, with its place in the API, or a refusal naming the first
        one that a preview's chart may not make."""
        planned: dict[tuple[str, str, str], tuple[Ref, Json]] = {}
        for obj in objects:
            meta = obj.get("metadata") or {}
            kind, name = str(obj.get("kind") or ""), str(meta.get("name") or "")
            what = f"{kind or 'an object'} {name or '(no name)'}"
            if not name or not kind or not obj.get("apiVersion"):
                raise invalid_input(f"chart {spec.name} renders {what} without apiVersion, "
                                    "kind or metadata.name")
            hooks = {h.strip() for h in str((meta.get("annotations") or {}).get(
                HOOK_ANNOTATION, "")).split(",") if h.strip()}
            if hooks and hooks <= TEST_HOOKS:
                continue
            if hooks:
                raise invalid_input(
                    f"chart {spec.name} renders {what} as a Helm hook "
                    f"({', '.join(sorted(hooks))}), which the engine does not run: run it as a "
                    "blueprint job instead (`jobs:` with `when: deploy`, or `first_deploy` for "
                    "once), or turn it off in the chart's values")
            entry: Entry = (str(obj["apiVersion"]), kind, name)
            ref = self._ref(api, spec, entry)
            if ref is None:
                raise invalid_input(f"chart {spec.name} renders {what} ({entry[0]}), which "
                                    "this cluster does not serve (is its CRD installed?)")
            if ref.namespace is None:
                raise invalid_input(
                    f"chart {spec.name} renders {what}, which is cluster-scoped: a preview's "
                    "chart may only make objects in its own namespace")
            if meta.get("namespace") not in (None, "", spec.namespace):
                raise invalid_input(
                    f"chart {spec.name} renders {what} in namespace {meta['namespace']}: a "
                    f"preview's chart may only make objects in its own ({spec.namespace})")
            if _key(entry) in planned or (kind, name) == ("ConfigMap", _inventory_name(spec)):
                raise invalid_input(f"chart {spec.name} renders {what} twice, or one of the "
                                    "engine's own names")
            planned[_key(entry)] = ref, self._manifest(spec, obj)
        return sorted(planned.values(),
                      key=lambda p: _order((p[0].api_version, p[0].kind, p[0].name)))

    @staticmethod
    def _manifest(spec: ChartSpec, obj: Json) -> Json:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items()
                if k not in ("resourceVersion", "uid", "creationTimestamp", "managedFields")}
        meta["namespace"] = spec.namespace
        meta["labels"] = {**(meta.get("labels") or {}), **_labels(spec)}  # ours win
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}

    @staticmethod
    def _check_ours(api: KubeApi, spec: ChartSpec, ref: Ref) -> Json | None:
        """The object, None when absent; refused when it is not this chart's."""
        current = api.get(ref)
        if current is None:
            return None
        if not is_ours(current, spec.owner):
            raise foreign_resource(ref.what, spec.owner.environment)
        made_by = ((current.get("metadata") or {}).get("labels") or {}).get(CHART_LABEL)
        if made_by != spec.name:
            raise ApplicationError(
                f"{ref.what} exists already, made by this preview's "
                f"{f'chart {made_by}' if made_by else 'other elements'}, not by chart "
                f"{spec.name}: rename one of them", type=FOREIGN_RESOURCE, non_retryable=True)
        return current

    @staticmethod
    def _remove(api: KubeApi, spec: ChartSpec, ref: Ref) -> None:
        """Delete if it is there and this chart's; another's is left alone."""
        current = api.get(ref)
        labels = ((current or {}).get("metadata") or {}).get("labels") or {}
        if current is not None and is_ours(current, spec.owner) and (
                labels.get(CHART_LABEL) == spec.name):
            api.delete(ref)
        elif current is not None:
            warn_not_ours(ref, spec.owner)

    # -- ensure present ---------------------------------------------------------------

    @activity.defn(name=ChartSpec.present)
    def ensure_chart(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ChartSpec)
        api = self.workloads.api(spec.cluster)
        self.workloads.rights.require(api, spec.cluster, spec.namespace, spec.owner)
        planned = self._plan(api, spec, parse_render(self.render(spec)))
        connections = {name: self._connection(spec, input, name) for name in spec.connections}
        secrets = [*connections.values(), *_secret_values(m for _, m in planned)]
        secret_refs = {name: Ref.of("Secret", name, spec.namespace) for name in connections}
        try:
            for ref in [*(r for r, _ in planned), *secret_refs.values()]:
                self._check_ours(api, spec, ref)  # all of them before anything is written
            inventory = Ref.of("ConfigMap", _inventory_name(spec), spec.namespace)
            before, before_secrets = self._inventory(api, spec)
            applied: list[Entry] = [(r.api_version, r.kind, r.name) for r, _ in planned]
            # The union first: a removal after a crash half way still finds all of it.
            self._record(api, spec, inventory, [*before, *applied],
                         sorted({*before_secrets, *connections}))
            for name, url in connections.items():
                ref = secret_refs[name]
                api.apply(ref, secret_manifest(ref, _labels(spec), {"url": url}))
            for ref, manifest in planned:
                api.apply(ref, manifest)
            keep = {_key(e) for e in applied}
            for entry in sorted(before, key=_order, reverse=True):
                if _key(entry) not in keep and (ref_ := self._ref(api, spec, entry)):
                    self._remove(api, spec, ref_)
            for name in set(before_secrets) - set(connections) - {
                    e[2] for e in applied if e[1] == "Secret"}:
                self._remove(api, spec, Ref.of("Secret", name, spec.namespace))
            self._record(api, spec, inventory, applied, sorted(connections))
            self._wait(api, spec, [r for r, _ in planned if r.kind in ROLLED_OUT])
        except ApplicationError as error:
            raise redact(error, secret_forms(secrets)) from None
        if spec.url and spec.url_check:
            # The controller may route the chart's host a moment after its pods are ready:
            # ready means its URL answers from them, as for an application's route.
            wait_until_answering([spec.url], spec.url_check,
                                 poll_delays(self.workloads.poll_interval))
        kinds = Counter(r.kind for r, _ in planned)
        version = spec.version or _chart_version(spec, [m for _, m in planned])
        return StepOutput(values={"objects": str(len(planned))},
                          urls={spec.name: spec.url} if spec.url else {}, detail=(
            f"chart {spec.source} {version}: {len(planned)} objects ("
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"))

    def _connection(self, spec: ChartSpec, input: StepInput, name: str) -> str:
        ref = spec.connections[name]
        value = input.resolve(ref)
        if not isinstance(value, SealedValue):
            return value
        try:
            return self.workloads.sealer.unseal(value)
        except UnsealError as error:
            # The message names the key id only, never key material or ciphertext.
            raise invalid_input(f"chart {spec.name}: the connection URL for Secret {name} "
                                f"({ref.step}.{ref.output}) cannot be unsealed: {error}"
                                ) from None

    def _inventory(self, api: KubeApi, spec: ChartSpec) -> tuple[list[Entry], list[str]]:
        """(objects, connection Secrets) the last apply recorded; none when there is none."""
        ref = Ref.of("ConfigMap", _inventory_name(spec), spec.namespace)
        data = (self._check_ours(api, spec, ref) or {}).get("data") or {}
        objects = [(str(a), str(k), str(n)) for a, k, n in json.loads(data.get("objects", "[]"))]
        return objects, [str(s) for s in json.loads(data.get("connections", "[]"))]

    @staticmethod
    def _record(api: KubeApi, spec: ChartSpec, ref: Ref, objects: list[Entry],
                connections: list[str]) -> None:
        unique = sorted({_key(e): e for e in objects}.values(), key=_order)
        api.apply(ref, ref.manifest(_labels(spec), data={
            "objects": json.dumps([list(e) for e in unique]),
            "connections": json.dumps(connections)}))

    # -- the rollout wait -------------------------------------------------------------

    def _wait(self, api: KubeApi, spec: ChartSpec, workloads: list[Ref]) -> None:
        """Until every rendered Deployment, StatefulSet and DaemonSet has rolled out,
        within the spec's rollout timeout; a pod stuck for good fails it at once."""
        deadline = time.monotonic() + spec.rollout_timeout_seconds
        delays = poll_delays(self.workloads.poll_interval)
        pending = list(workloads)
        while pending:
            waiting: dict[str, str] = {}
            for ref in pending:
                why, fatal = self._rollout(api, ref)
                if fatal:
                    raise ApplicationError(
                        f"chart {spec.name}: {ref.what} cannot roll out: {fatal}"
                        + (f"; {POD_SECURITY_HINT}" if POD_SECURITY_VIOLATION in fatal else ""),
                        type=ROLLOUT_FAILED, non_retryable=True)
                if why:
                    waiting[ref.what] = why
            pending = [r for r in pending if r.what in waiting]
            heartbeat({"waiting": waiting})
            if pending and time.monotonic() >= deadline:
                raise ApplicationError(
                    f"chart {spec.name} not ready after {spec.rollout_timeout_seconds}s: "
                    + "; ".join(f"{w}: {why}" for w, why in waiting.items()),
                    type=ROLLOUT_FAILED, non_retryable=True)
            if pending:
                time.sleep(next(delays))

    def _rollout(self, api: KubeApi, ref: Ref) -> tuple[str, str | None]:
        """(why it is not rolled out yet, "" once it is; why it never will be, if so)."""
        if ref.kind == "Deployment":  # the applications' wait: ReplicaSets, quota, pods
            state = self.workloads.rollout_state(api, ref)
            return ("" if state.ready else state.waiting or "pods not ready yet"), state.fatal
        obj = api.get(ref)
        if obj is None:
            raise ApplicationError(f"{ref.what} disappeared during its rollout", type=API_ERROR)
        meta, body, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
            return f"its controller has not observed generation {meta.get('generation')}", None
        on_delete = (body.get("updateStrategy") or {}).get("type") == "OnDelete"
        if ref.kind == "StatefulSet":
            want = int(body.get("replicas", 1))
            have = [int(status.get(k) or 0) for k in ("readyReplicas", "availableReplicas")]
            updated = on_delete or (int(status.get("updatedReplicas") or 0) == want
                                    and status.get("currentRevision") == status.get(
                                        "updateRevision"))
        else:
            want = int(status.get("desiredNumberScheduled") or 0)
            have = [int(status.get(k) or 0) for k in ("numberReady", "numberAvailable")]
            updated = on_delete or int(status.get("updatedNumberScheduled") or 0) == want
        if updated and all(n == want for n in have):
            return "", None
        selector = (body.get("selector") or {}).get("matchLabels") or {}
        problem = pod_problem(api, ref.namespace or "", selector) if selector else None
        if problem:
            return problem.why, problem.why if problem.fatal else None
        refused = _failed_create(api, ref)
        if refused and POD_SECURITY_VIOLATION in refused:
            return refused, refused  # admission refuses every pod of this template
        return refused or f"{min(have)}/{want} pods ready", None

    # -- ensure absent ----------------------------------------------------------------

    @activity.defn(name=ChartSpec.absent)
    def remove_chart(self, input: StepInput) -> None:
        spec = input.spec_as(ChartSpec)
        api = self.workloads.api(spec.cluster)
        if not self.workloads.rights.grant(api, spec.cluster, spec.namespace, spec.owner):
            return  # the namespace is gone, and all of it with it
        ref = Ref.of("ConfigMap", _inventory_name(spec), spec.namespace)
        current = api.get(ref)
        if current is not None and not is_ours(current, spec.owner):
            warn_not_ours(ref, spec.owner)
            return
        objects, connections = self._inventory(api, spec) if current else ([], [])
        for entry in sorted(objects, key=_order, reverse=True):
            heartbeat({"removing": list(entry)})
            found = self._ref(api, spec, entry)
            if found is not None:  # else its kind is no longer served: nothing is left
                self._remove(api, spec, found)
        for name in sorted({*connections, *spec.connections}):
            self._remove(api, spec, Ref.of("Secret", name, spec.namespace))
        if current is not None:
            self._remove(api, spec, ref)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.ensure_chart, self.remove_chart]


def _labels(spec: ChartSpec) -> dict[str, str]:
    return {**spec.owner.labels(), CHART_LABEL: spec.name}


def _inventory_name(spec: ChartSpec) -> str:
    return f"chart-{spec.name}-inventory"


def _secret_values(manifests: Iterable[Json]) -> list[str]:
    """The values of the Secrets a chart renders: what no error may show."""
    found: list[str] = []
    for secret in (m for m in manifests if m.get("kind") == "Secret"):
        found += [str(v) for v in (secret.get("stringData") or {}).values()]
        for value in (secret.get("data") or {}).values():
            with contextlib.suppress(ValueError):
                found.append(base64.b64decode(str(value)).decode(errors="replace"))
    return found


def _chart_version(spec: ChartSpec, manifests: list[Json]) -> str:
    """The version helm pulled (no version asked: the newest), from the `helm.sh/chart`
    label charts put on their objects (`<name>-<version>`); for a folder of the PR's
    repository, which files at which digest."""
    if spec.folder is not None:
        return f"({spec.folder.files} files, sha256 {spec.folder.digest[:12]})"
    name = (spec.chart or "").rstrip("/").rsplit("/", 1)[-1]
    for manifest in manifests:
        label = ((manifest.get("metadata") or {}).get("labels") or {}).get("helm.sh/chart")
        if isinstance(label, str) and label.startswith(f"{name}-"):
            return label.removeprefix(f"{name}-")
    return "(newest)"


def _failed_create(api: KubeApi, ref: Ref) -> str | None:
    """Why the controller cannot create the pods, from its events (a StatefulSet or
    DaemonSet says it nowhere else): e.g. refused by the Pod Security admission."""
    listed = api.request(
        "GET", f"/api/v1/namespaces/{ref.namespace}/events",
        query=[("fieldSelector", f"involvedObject.kind={ref.kind},"
                                 f"involvedObject.name={ref.name},reason=FailedCreate")],
        what=f"the events of {ref.what}") or {}
    events = sorted(listed.get("items") or [], key=lambda e: str(e.get("lastTimestamp") or ""))
    return f"FailedCreate: {events[-1].get('message')}" if events else None
