"""Helm charts (activities/kubernetes/charts.py) on the real node: the example chart
(examples/charts/hello), packaged and pushed to the session's registry as an OCI chart,
is rendered by helm, applied with our marks, rolled out and answers through the ingress;
a second run changes nothing, a redeploy prunes what the chart no longer renders, and
removal leaves nothing. Charts that make cluster-scoped objects, objects elsewhere or
Helm hooks are refused before anything is applied."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import INVALID_INPUT, ROLLOUT_FAILED
from activities.git_host.repository import pack_folder, packed_folder
from activities.kubernetes import ChartActivities, ClusterClients, KubernetesActivities
from activities.kubernetes.api import KubeApi, Ref
from activities.kubernetes.charts import CHART_LABEL, chart_reference, parse_render
from domain.naming import Ownership
from domain.resources import ChartSpec, StepInput, StepOutput, UpstreamRef
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack import helm as stack_helm
from stack import images
from tests.plugins.node import RealCluster

pytestmark = [pytest.mark.kube, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "charts" / "hello"
HELLO = "oci://registry.local/charts/hello"
PASSWORD = "Ch4rt-s3cret-pw"
DATABASE_URL = f"postgresql://shop:{PASSWORD}@db.invalid:5432/shop"

# Tiny charts a preview must refuse (name → templates/all.yaml), and one whose pods the
# namespace's `restricted` Pod Security Standard refuses.
CONFIG_MAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  A: "1"
"""
TINY = {
    "clusterwide": CONFIG_MAP + """---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .Release.Name }}-reader
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get"]
""",
    "hooked": CONFIG_MAP + """---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-migrate
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: registry.local/hello/api:none
""",
    "elsewhere": CONFIG_MAP + """---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-planted
  namespace: kube-system
""",
    "insecure": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  selector:
    matchLabels: {app: insecure}
  template:
    metadata:
      labels: {app: insecure}
    spec:
      containers:
        - name: web
          image: {{ .Values.image | quote }}
          command: ["/demo", "web"]
""",
    "insecure-set": """apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .Release.Name }}
spec:
  serviceName: {{ .Release.Name }}
  selector:
    matchLabels: {app: insecure-set}
  template:
    metadata:
      labels: {app: insecure-set}
    spec:
      containers:
        - name: web
          image: {{ .Values.image | quote }}
          command: ["/demo", "web"]
""",
}


@pytest.fixture(scope="module")
def sha(real_cluster: RealCluster) -> str:
    sha = uuid.uuid4().hex + "c4a7"
    images.push_demo_images(real_cluster.registry_host, sha)
    return sha


@pytest.fixture(scope="module")
def helm(real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The helm binary, once the example chart and the tiny ones are in the registry
    (packaged in a temporary folder: no archive is left anywhere else)."""
    binary = stack_helm.build()
    work = tmp_path_factory.mktemp("charts")
    sources = [EXAMPLE]
    for name, template in TINY.items():
        (work / name / "templates").mkdir(parents=True)
        (work / name / "Chart.yaml").write_text(f"apiVersion: v2\nname: {name}\nversion: 1.0.0\n")
        (work / name / "templates" / "all.yaml").write_text(template)
        sources.append(work / name)
    for source in sources:
        stack_helm.push_chart(source, real_cluster.registry_host)
    return binary


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer(Keyring.parse(f"t-1:{base64.b64encode(os.urandom(32)).decode()}"))


@pytest.fixture(scope="module")
def charts(real_cluster: RealCluster, helm: Path, sealer: Sealer) -> Iterator[ChartActivities]:
    clusters = ClusterClients({"default": str(real_cluster.kubeconfig)})
    workloads = KubernetesActivities(clusters, sealer, poll_interval=0.2)
    yield ChartActivities(workloads, helm=str(helm),
                          plain_http=["registry.local", real_cluster.registry_host],
                          registry_mirrors={"registry.local": real_cluster.registry_host})
    clusters.close()


@pytest.fixture
def namespace(real_cluster: RealCluster, charts: ChartActivities) -> Iterator[str]:
    name = f"charts-{uuid.uuid4().hex[:8]}"
    ref = Ref.of("Namespace", name)
    charts.workloads.api("default").apply(ref, ref.manifest(
        {**Ownership(environment=name).labels(),
         "pod-security.kubernetes.io/enforce": "restricted"}))
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


def chart(namespace: str, **fields: Any) -> ChartSpec:
    return ChartSpec(**{"owner": Ownership(environment=namespace), "namespace": namespace,
                        "name": "shop", "chart": HELLO, "rollout_timeout_seconds": 60,
                        **fields})


def hello_values(namespace: str, sha: str, **more: Any) -> dict[str, Any]:
    return {"image": {"tag": sha}, "ingress": {"host": f"shop-{namespace}.preview.localhost"},
            **more}


def run(function: Callable[..., Any], spec: ChartSpec,
        upstream: dict[str, StepOutput] | None = None, heartbeats: list[Any] | None = None,
        ) -> Any:
    env = ActivityEnvironment()
    seen = heartbeats if heartbeats is not None else []
    env.on_heartbeat = lambda *details: seen.append(details)
    return env.run(function, StepInput(spec=spec, upstream=upstream or {}))


def refused(function: Callable[..., Any], spec: ChartSpec,
            upstream: dict[str, StepOutput] | None = None) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        run(function, spec, upstream)
    return caught.value


def marked(api: KubeApi, namespace: str) -> dict[tuple[str, str], Any]:
    """(kind, name) → (uid, generation) of every object of the chart in the namespace."""
    found = {}
    for kind in ("ConfigMap", "Secret", "Service", "Deployment", "Ingress", "Pod"):
        for obj in api.list(kind, namespace, {CHART_LABEL: "shop"}):
            meta = obj["metadata"]
            found[kind, meta["name"]] = (meta["uid"], meta.get("generation"))
    return found


def until(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not done(value := read()):
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {value}"
        time.sleep(0.2)  # between polls of a condition, not instead of one
    return value


def test_a_chart_is_applied_with_our_marks_rolls_out_and_answers_with_its_commit(
        charts: ChartActivities, namespace: str, sha: str, real_cluster: RealCluster) -> None:
    api = charts.workloads.api("default")
    heartbeats: list[Any] = []
    made: StepOutput = run(charts.ensure_chart, chart(
        namespace, values=hello_values(namespace, sha)), heartbeats=heartbeats)
    assert made.values == {"objects": "4"}
    assert made.detail == (f"chart {HELLO} 0.1.0: 4 objects "
                           "(1 ConfigMap, 1 Deployment, 1 Ingress, 1 Service)")
    labels = {**Ownership(environment=namespace).labels(), CHART_LABEL: "shop"}
    for kind, name in (("Deployment", "shop"), ("Service", "shop"), ("Ingress", "shop"),
                       ("ConfigMap", "shop-config")):
        obj = api.get(Ref.of(kind, name, namespace))
        assert obj is not None, f"{kind} {name} was not made"
        assert labels.items() <= obj["metadata"]["labels"].items(), obj["metadata"]["labels"]
    assert api.get(Ref.of("Pod", "shop-test-healthz", namespace)) is None  # a test hook
    deployment = api.get(Ref.of("Deployment", "shop", namespace)) or {}
    assert deployment["status"].get("readyReplicas") == 1  # ensure waited for the rollout
    pods = api.list("Pod", namespace, {"app.kubernetes.io/instance": "shop"})
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert any("waiting" in str(h) for h in heartbeats), heartbeats

    url = f"http://shop-{namespace}.preview.localhost:{real_cluster.real_node.ingress_port}/"
    page = until(lambda: real_cluster.open(url), lambda r: r.status_code == 200)
    assert f'id="commit">{sha}<' in page.text


def test_a_second_run_changes_nothing_a_redeploy_prunes_and_removal_leaves_nothing(
        charts: ChartActivities, namespace: str, sha: str, sealer: Sealer) -> None:
    api = charts.workloads.api("default")
    database = StepOutput(secrets={"url": sealer.seal(DATABASE_URL)})
    spec = chart(namespace, values=hello_values(namespace, sha, extra={"enabled": True},
                                                database={"secret": "shop-main"}),
                 connections={"shop-main": UpstreamRef(step="database-main", output="url")})
    # The pods read the connection Secret's `url` (secretKeyRef): without it, or without
    # that key, they could not start and the rollout would fail.
    made: StepOutput = run(charts.ensure_chart, spec, {"database-main": database})
    assert made.values == {"objects": "5"}
    secret = api.get(Ref.of("Secret", "shop-main", namespace)) or {}
    assert base64.b64decode(secret["data"]["url"]).decode() == DATABASE_URL
    assert secret["metadata"]["labels"][CHART_LABEL] == "shop"
    first = marked(api, namespace)
    assert {("ConfigMap", "shop-extra"), ("ConfigMap", "chart-shop-inventory"),
            ("Secret", "shop-main"), ("Deployment", "shop")} <= first.keys()

    again: StepOutput = run(charts.ensure_chart, spec, {"database-main": database})
    assert again.values == made.values
    assert marked(api, namespace) == first  # same objects, same uids, same generations

    dropped = spec.model_copy(update={"values": hello_values(
        namespace, sha, extra={"enabled": False}, database={"secret": "shop-main"})})
    assert run(charts.ensure_chart, dropped, {"database-main": database}).values == {
        "objects": "4"}
    assert api.get(Ref.of("ConfigMap", "shop-extra", namespace)) is None  # pruned
    assert marked(api, namespace) == {k: v for k, v in first.items()
                                      if k != ("ConfigMap", "shop-extra")}
    inventory = api.get(Ref.of("ConfigMap", "chart-shop-inventory", namespace)) or {}
    assert "shop-extra" not in inventory["data"]["objects"]

    run(charts.remove_chart, dropped)
    left = {k for k in marked(api, namespace) if k[0] != "Pod"}  # pods go after their set
    assert left == set(), left
    for kind, name in (("Deployment", "shop"), ("Service", "shop"), ("Ingress", "shop"),
                       ("ConfigMap", "shop-config"), ("Secret", "shop-main")):
        assert api.get(Ref.of(kind, name, namespace)) is None, f"{kind} {name} is left"
    run(charts.remove_chart, dropped)  # again: nothing to do
    run(charts.remove_chart, chart("charts-nowhere"))  # no namespace: nothing to do


def example_files() -> dict[str, bytes]:
    return {f.relative_to(EXAMPLE).as_posix(): f.read_bytes()
            for f in EXAMPLE.rglob("*") if f.is_file()}


def packaged(name: str, template: str) -> bytes:
    """A chart as `helm package` makes it: <name>/Chart.yaml and templates, gzip'd."""
    files = {f"{name}/Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: 1.0.0\n".encode(),
             f"{name}/templates/all.yaml": template.encode()}
    return pack_folder(files)


def test_a_chart_of_the_repository_renders_from_its_folder_as_read(
        charts: ChartActivities, namespace: str, sha: str, real_cluster: RealCluster) -> None:
    api = charts.workloads.api("default")
    files = example_files()
    # A PR's own change to the chart, and a subchart kept in its charts/ (bytes).
    files["values.yaml"] = files["values.yaml"].replace(b"Hello from a chart",
                                                        b"Hello from the PR's chart")
    files["charts/sidecar-1.0.0.tgz"] = packaged("sidecar", CONFIG_MAP)
    folder = packed_folder("deploy/chart", files)
    spec = chart(namespace, chart=None, folder=folder, values=hello_values(namespace, sha))
    made: StepOutput = run(charts.ensure_chart, spec)
    assert made.detail == (
        f"chart deploy/chart of the repository ({len(files)} files, sha256 "
        f"{folder.digest[:12]}): 5 objects (2 ConfigMap, 1 Deployment, 1 Ingress, 1 Service)")
    config = api.get(Ref.of("ConfigMap", "shop-config", namespace)) or {}
    assert config["data"]["GREETING"] == "Hello from the PR's chart"
    sidecar = api.get(Ref.of("ConfigMap", "shop-settings", namespace)) or {}
    assert sidecar["metadata"]["labels"][CHART_LABEL] == "shop"  # the subchart's, ours too
    url = f"http://shop-{namespace}.preview.localhost:{real_cluster.real_node.ingress_port}/"
    page = until(lambda: real_cluster.open(url), lambda r: r.status_code == 200)
    assert f'id="commit">{sha}<' in page.text
    run(charts.remove_chart, spec)
    assert {k for k in marked(api, namespace) if k[0] != "Pod"} == set()


@pytest.mark.parametrize(("change", "says"), [
    ({"digest": "0" * 64}, "chart shop: its folder's archive does not match its digest"),
    ({"files": {"templates/all.yaml": CONFIG_MAP.encode()}},
     "chart shop: deploy/chart of the repository has no Chart.yaml: give the chart's own "
     "folder as `path`"),
])
def test_a_folder_that_is_not_a_chart_is_refused_before_anything_is_applied(
        charts: ChartActivities, namespace: str, change: dict[str, Any], says: str) -> None:
    folder = packed_folder("deploy/chart", change.pop("files", example_files()))
    spec = chart(namespace, chart=None, folder=folder.model_copy(update=change))
    error = refused(charts.ensure_chart, spec)
    assert error.non_retryable and error.type == INVALID_INPUT
    assert error.message == says
    assert marked(charts.workloads.api("default"), namespace) == {}


@pytest.mark.parametrize(("tiny", "words"), [
    ("clusterwide", ["chart shop renders ClusterRole shop-reader, which is cluster-scoped: "
                     "a preview's chart may only make objects in its own namespace"]),
    ("hooked", ["Job shop-migrate as a Helm hook (pre-install, pre-upgrade)",
                "`jobs:` with `when: deploy`", "first_deploy"]),
    ("elsewhere", ["ConfigMap shop-planted in namespace kube-system"]),
])
def test_a_chart_making_what_a_preview_may_not_is_refused_before_anything_is_applied(
        charts: ChartActivities, namespace: str, sealer: Sealer, tiny: str,
        words: list[str]) -> None:
    api = charts.workloads.api("default")
    error = refused(charts.ensure_chart, chart(
        namespace, chart=f"oci://registry.local/charts/{tiny}",
        connections={"shop-main": UpstreamRef(step="database-main", output="url")}),
        {"database-main": StepOutput(secrets={"url": sealer.seal(DATABASE_URL)})})
    assert error.non_retryable and error.type == INVALID_INPUT
    for word in words:
        assert word in error.message, error.message
    assert marked(api, namespace) == {}  # not the ConfigMap, the Secret nor the inventory
    assert api.request("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/shop-reader",
                       what="ClusterRole", missing_ok=True) is None
    assert api.get(Ref.of("ConfigMap", "shop-planted", "kube-system")) is None


def test_a_chart_that_does_not_render_says_why(charts: ChartActivities, namespace: str,
                                               ) -> None:
    error = refused(charts.ensure_chart, chart(namespace,
                                               chart="oci://registry.local/charts/nothing"))
    assert error.non_retryable and error.type == INVALID_INPUT
    assert error.message.startswith(
        "chart shop (oci://registry.local/charts/nothing) does not render: "), error.message
    assert "repository name not known to registry" in error.message  # helm's own words


def test_pods_that_cannot_run_fail_the_step_with_the_reason_and_no_secret(
        charts: ChartActivities, namespace: str, sha: str, sealer: Sealer) -> None:
    database = {"database-main": StepOutput(secrets={"url": sealer.seal(DATABASE_URL)})}
    connections = {"shop-main": UpstreamRef(step="database-main", output="url")}
    missing = refused(charts.ensure_chart, chart(
        namespace, values=hello_values(namespace, "no-such-tag", database={
            "secret": "shop-main"}), connections=connections), database)
    assert missing.non_retryable and missing.type == ROLLOUT_FAILED
    assert "chart shop: Deployment" in missing.message
    assert "ErrImagePull" in missing.message or "ImagePullBackOff" in missing.message
    assert PASSWORD not in missing.message and "db.invalid" not in missing.message


@pytest.mark.parametrize(("tiny", "kind"), [("insecure", "Deployment"),
                                            ("insecure-set", "StatefulSet")])
def test_pods_the_namespace_refuses_fail_the_step_saying_what_to_do(
        charts: ChartActivities, namespace: str, sha: str, tiny: str, kind: str) -> None:
    insecure = refused(charts.ensure_chart, chart(
        namespace, name="loose", chart=f"oci://registry.local/charts/{tiny}",
        values={"image": f"registry.local/hello/web:{sha}"}))
    assert insecure.non_retryable and insecure.type == ROLLOUT_FAILED
    assert f"chart loose: {kind} {namespace}/loose cannot roll out" in insecure.message
    assert "violates PodSecurity" in insecure.message
    assert "set their securityContext through the chart's values" in insecure.message


def test_an_oci_chart_is_pulled_from_its_mirror_and_lists_are_flattened() -> None:
    mirrors = {"registry.local": "127.0.0.1:5000"}
    assert chart_reference("oci://registry.local/charts/hello", plain_http=["registry.local"],
                           mirrors=mirrors) == ("oci://127.0.0.1:5000/charts/hello", True)
    assert chart_reference("oci://ghcr.io/a/b", plain_http=[], mirrors=mirrors) == (
        "oci://ghcr.io/a/b", False)
    assert chart_reference("web", plain_http=["registry.local"], mirrors=mirrors) == (
        "web", False)
    objects = parse_render("---\n# only a comment\n---\nkind: ConfigMapList\nitems:\n"
                           "- {kind: ConfigMap, metadata: {name: a}}\n---\n"
                           "kind: Service\nmetadata: {name: b}\n")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "a"), ("Service", "b")]
