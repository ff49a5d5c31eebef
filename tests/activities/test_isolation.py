"""Physical isolation: dedicated clusters and dedicated cloud accounts.

Two real control planes run side by side on different loopback ports: the session's
`kube_cluster` ("default") and a second one started here ("hipaa"). Previews are planned
by the real planner and their steps applied, in plan order, by the real activities, the
way the saga would (each step gets the outputs of what it depends on). Every check of
where things landed is made from outside, with kubectl against each kubeconfig, or with
boto3 reading each moto account.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients, Waits
from activities.aws.dns import DnsActivities
from activities.aws.network import NetworkActivities
from activities.aws.rds import RdsActivities
from activities.errors import INVALID_INPUT
from activities.kubernetes import ClusterClients, ContainerDatabaseActivities, KubernetesActivities
from domain.blueprint import Blueprint
from domain.naming import Ownership
from domain.plan import Plan, PlanOptions, plan_preview
from domain.pull_request import PullRequest
from domain.resources import (
    AwsSpec,
    KubeEnvironmentInput,
    KubeSpec,
    KubeSweepInput,
    NamespaceSpec,
    StepInput,
    StepOutput,
)
from engine.keyring import Keyring
from engine.sealing import Sealer
from engine.settings import Settings
from stack import kube
from stack.postgres import PostgresServer
from store import Store
from tests.plugins.kube import KubeCluster, _find_kubectl
from tests.plugins.moto import REGION, MotoServer
from worker import Resources, Target, build_activities

pytestmark = pytest.mark.kube

SEALER = Sealer(Keyring.parse("test-1:" + base64.b64encode(os.urandom(32)).decode()))
HIPAA_STORAGE = "hipaa-local"
TENANT = "111111111111"
MANAGED = "app.kubernetes.io/managed-by=preview-engine"

Activity = Callable[..., Any]


# --- a second control plane --------------------------------------------------------------


@pytest.fixture(scope="module")
def hipaa_cluster(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    """A second control plane of its own (ports, etcd, PKI): the dedicated cluster."""
    if os.environ.get("KUBECONFIG_TEST"):
        pytest.skip("a dedicated second cluster needs the local control plane binaries")
    state_dir = Path(tempfile.mkdtemp(prefix="preview-test-kube-hipaa-"))
    plane = kube.ControlPlane(state_dir)
    try:
        plane.start()
        yield KubeCluster(kubeconfig=plane.kubeconfig, kubectl_path=_find_kubectl())
    finally:
        plane.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def clusters(kube_cluster: KubeCluster, hipaa_cluster: KubeCluster) -> Iterator[ClusterClients]:
    clients = ClusterClients({"default": str(kube_cluster.kubeconfig),
                              "hipaa": str(hipaa_cluster.kubeconfig)})
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def kube_acts(clusters: ClusterClients) -> KubernetesActivities:
    return KubernetesActivities(clusters, SEALER, poll_interval=0.2)


@pytest.fixture(scope="module")
def registry(
    clusters: ClusterClients, kube_acts: KubernetesActivities, moto_server: MotoServer
) -> dict[str, Activity]:
    """Activity name → implementation, as a worker serving both clusters would hold."""
    aws = AwsClients(endpoint_url=moto_server.endpoint_url, region=REGION,
                     session=moto_server.session)
    dbs = ContainerDatabaseActivities(clusters, SEALER, aws, poll_interval=0.2)
    return by_name(*kube_acts.activities(), *dbs.activities())


def by_name(*fns: Activity) -> dict[str, Activity]:
    return {getattr(fn, "__temporal_activity_definition").name: fn for fn in fns}


def run(fn: Activity, arg: Any) -> Any:
    return ActivityEnvironment().run(fn, arg)


def apply(plan: Plan, registry: dict[str, Activity], kinds: type = KubeSpec) -> dict[str, Any]:
    """Make every step of `kinds` present, in plan order, as the saga would."""
    outputs: dict[str, StepOutput] = {}
    for step in plan.steps:
        if not isinstance(step.spec, kinds):
            continue
        upstream = {d: outputs[d] for d in step.depends_on if d in outputs}
        outputs[step.key] = run(registry[step.present],
                                StepInput(spec=step.spec, upstream=upstream))
    return outputs


def teardown(plan: Plan, registry: dict[str, Activity], kinds: type = KubeSpec) -> None:
    for step in reversed(plan.steps):
        if isinstance(step.spec, kinds) and step.absent:
            run(registry[step.absent], StepInput(spec=step.spec))


def namespaces(cluster: KubeCluster) -> set[str]:
    out = cluster.kubectl("get", "namespaces", "-l", MANAGED, "-o", "name")
    return {line.removeprefix("namespace/") for line in out.split()}


def labelled(cluster: KubeCluster, env_id: str) -> list[str]:
    """Every object, in any namespace, carrying the environment's label."""
    out = cluster.kubectl(
        "get", "namespaces,all,secrets,configmaps,ingresses,persistentvolumeclaims,jobs",
        "--all-namespaces", "-l", f"preview.dev/environment={env_id}", "-o", "name")
    return sorted(out.split())


# --- dedicated clusters ------------------------------------------------------------------


HIPAA = {
    "project": {"name": "clinic", "repository": "acme/clinic"},
    "environment": {"isolation": "cluster", "cluster": {"name": "hipaa"}},
    "applications": [{"name": "web", "image": "registry.local/clinic/web",
                      "depends_on": ["records"]}],
    "databases": [{"name": "records", "mode": "container", "data_policy": "seed",
                   "seed_sql": "CREATE TABLE visits (id int);"}],
}
SHOP = {
    "project": {"name": "shop", "repository": "acme/shop-isolation"},
    "applications": [{"name": "web", "image": "registry.local/shop/web"}],
}


def plan(blueprint: dict[str, Any], number: int, **options: Any) -> Plan:
    pr = PullRequest(repository=blueprint["project"]["repository"], number=number,
                     head_sha="c" * 40)
    # Fake nodes pull no image: the image checks have their own tests (test_registry.py).
    return plan_preview(Blueprint.model_validate(blueprint), pr,
                        options=PlanOptions(**{"check_images": False, **options}))


def test_previews_land_only_in_their_own_cluster(
    kube_cluster: KubeCluster, hipaa_cluster: KubeCluster, registry: dict[str, Activity],
) -> None:
    isolated = plan(HIPAA, 7, storage_class=HIPAA_STORAGE)
    shared = plan(SHOP, 8)
    # Every Kubernetes step of the isolated preview names its cluster and its queue; the
    # only other step is the preview slot, which the control plane's own worker keeps.
    kube_iso = [s for s in isolated.steps if isinstance(s.spec, KubeSpec)]
    kube_shared = [s for s in shared.steps if isinstance(s.spec, KubeSpec)]
    assert [s.key for s in isolated.steps if s not in kube_iso] == ["slot"]
    assert isolated.step("slot").task_queue is None
    assert {s.spec.cluster for s in kube_iso} == {"hipaa"}  # type: ignore[union-attr]
    assert {s.task_queue for s in kube_iso} == {"previews-cluster-hipaa"}
    assert {s.spec.cluster for s in kube_shared} == {"default"}  # type: ignore[union-attr]
    assert {s.task_queue for s in kube_shared} == {None}
    assert isolated.step("database/records").depends_on == ("namespace",)

    # The dedicated cluster's storage: a static volume of the class the plan asks for.
    hipaa_cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "hipaa-pv-0"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": HIPAA_STORAGE,
                 "hostPath": {"path": "/tmp/preview-test-volumes/hipaa-pv-0"}},
    }))

    hipaa_out = apply(isolated, registry)
    apply(shared, registry)
    iso_ns, shared_ns = isolated.environment_id, shared.environment_id

    assert iso_ns in namespaces(hipaa_cluster) and iso_ns not in namespaces(kube_cluster)
    assert shared_ns in namespaces(kube_cluster) and shared_ns not in namespaces(hipaa_cluster)
    assert labelled(kube_cluster, iso_ns) == []
    assert labelled(hipaa_cluster, shared_ns) == []
    made = labelled(hipaa_cluster, iso_ns)
    for name in ("deployment.apps/web", "statefulset.apps/db-records",
                 "job.batch/db-records-load", "ingress.networking.k8s.io/web",
                 "persistentvolumeclaim/db-records-data", f"namespace/{iso_ns}"):
        assert name in made, f"{name} missing from the hipaa cluster: {made}"
    # The application's Secret got the dedicated database's URL, resolved in that cluster.
    secret = json.loads(hipaa_cluster.kubectl(
        "get", "secret", "web-secrets", "-n", iso_ns, "-o", "json"))
    url = base64.b64decode(secret["data"]["DATABASE_URL"]).decode()
    assert url == SEALER.unseal(hipaa_out["database/records"].secrets["url"])
    assert f"@db-records.{iso_ns}.svc:5432/" in url

    teardown(isolated, registry)
    teardown(shared, registry)
    assert labelled(hipaa_cluster, iso_ns) == [] and iso_ns not in namespaces(hipaa_cluster)
    assert labelled(kube_cluster, shared_ns) == [] and shared_ns not in namespaces(kube_cluster)
    pv = json.loads(hipaa_cluster.kubectl("get", "pv", "hipaa-pv-0", "-o", "json"))
    assert pv["status"]["phase"] == "Released"


def plant(cluster: KubeCluster, name: str, env_id: str) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": Ownership(environment=env_id).labels()}}))


def test_sweep_lists_and_removes_per_cluster(
    kube_cluster: KubeCluster, hipaa_cluster: KubeCluster, kube_acts: KubernetesActivities,
) -> None:
    orphan = f"orphan-{uuid.uuid4().hex[:8]}"
    name = f"{orphan}-ns"
    # The same environment (and namespace name) in both clusters: only hipaa's is swept.
    plant(hipaa_cluster, name, orphan)
    plant(kube_cluster, name, orphan)
    plant(hipaa_cluster, f"{orphan}-live", f"{orphan}-live")
    hipaa_cluster.kubectl("create", "namespace", f"{orphan}-foreign")  # no mark at all

    found = run(kube_acts.list_kube_environments, KubeSweepInput(cluster="hipaa"))
    assert found[orphan] == [f"namespace {name}"]
    assert found[f"{orphan}-live"] == [f"namespace {orphan}-live"]
    assert not any(f"{orphan}-foreign" in n for items in found.values() for n in items)
    found_default = run(kube_acts.list_kube_environments, KubeSweepInput(cluster="default"))
    assert found_default[orphan] == [f"namespace {name}"]
    assert f"{orphan}-live" not in found_default

    removed = run(kube_acts.remove_kube_environment,
                  KubeEnvironmentInput(cluster="hipaa", environment=orphan))
    assert removed == [f"namespace {name}"]
    assert name not in namespaces(hipaa_cluster)  # gone, not just terminating
    assert f"{orphan}-live" in namespaces(hipaa_cluster)
    hipaa_cluster.kubectl("get", "namespace", f"{orphan}-foreign")  # still there
    # The default cluster is untouched.
    phase = kube_cluster.kubectl("get", "namespace", name, "-o", "jsonpath={.status.phase}")
    assert phase == "Active"
    assert orphan not in run(kube_acts.list_kube_environments, KubeSweepInput(cluster="hipaa"))
    # Absent already: nothing to do, nothing reported.
    assert run(kube_acts.remove_kube_environment,
               KubeEnvironmentInput(cluster="hipaa", environment=orphan)) == []

    run(kube_acts.remove_kube_environment,
        KubeEnvironmentInput(cluster="default", environment=orphan))
    assert name not in namespaces(kube_cluster)
    for ns in (f"{orphan}-live", f"{orphan}-foreign"):
        hipaa_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_tenant_only_cluster_client_refuses_default(hipaa_cluster: KubeCluster) -> None:
    only_hipaa = ClusterClients({"hipaa": str(hipaa_cluster.kubeconfig)})
    acts = KubernetesActivities(only_hipaa, SEALER, poll_interval=0.2)
    name = f"t-{uuid.uuid4().hex[:8]}"
    spec = NamespaceSpec(owner=Ownership(environment=name), cluster="default", name=name)
    with pytest.raises(ApplicationError) as caught:
        run(acts.ensure_namespace, StepInput(spec=spec))
    assert caught.value.type == INVALID_INPUT and caught.value.non_retryable
    assert "'default' is not configured" in caught.value.message
    with pytest.raises(ApplicationError):
        run(acts.list_kube_environments, KubeSweepInput(cluster="default"))
    assert name not in namespaces(hipaa_cluster)
    only_hipaa.close()


# --- dedicated cloud accounts ------------------------------------------------------------


BANK: dict[str, Any] = {
    "project": {"name": "bank", "repository": "acme/bank"},
    "environment": {"isolation": "account", "cloud_account": {
        "account_id": TENANT, "role_arn": f"arn:aws:iam::{TENANT}:role/previews",
        # Not "x": STS wants 2 to 1224 characters (botocore refuses "x" before sending).
        "external_id": "tenant-x"}},
    "applications": [{"name": "web", "image": "registry.local/bank/web"}],
    "databases": [{"name": "main", "mode": "rds", "source": "bank-prod"}],
    "network": {"base_domain": "preview.test"},
}


def aws_footprint(moto: MotoServer, env_id: str, zone: str, account: str | None) -> list[str]:
    """What one moto account holds of the environment (VPCs, instances, DNS records)."""
    ec2, rds = moto.client("ec2", account_id=account), moto.client("rds", account_id=account)
    route53 = moto.client("route53", account_id=account)
    mark = {"Key": "preview-environment", "Value": env_id}
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:preview-environment",
                                       "Values": [env_id]}])["Vpcs"]
    found = [f"vpc {v['VpcId']}" for v in vpcs]
    found += [f"rds {i['DBInstanceIdentifier']}"
              for i in rds.describe_db_instances()["DBInstances"] if mark in i["TagList"]]
    zones = [z["Id"] for z in route53.list_hosted_zones()["HostedZones"]]
    if any(z.endswith(zone.rsplit("/", 1)[-1]) for z in zones):
        sets = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        found += [f"record {r['Name']}" for r in sets if r["Type"] not in ("SOA", "NS")]
    return sorted(found)


def test_account_isolated_preview_acts_only_in_the_tenant_account(
    moto_reset: MotoServer, aws_clients: AwsClients
) -> None:
    # The tenant's own production database and hosted zone live in the tenant account.
    moto_reset.client("rds", account_id=TENANT).create_db_instance(
        DBInstanceIdentifier="bank-prod", Engine="postgres", DBInstanceClass="db.t4g.micro",
        MasterUsername="app", MasterUserPassword="source-password", DBName="bank",
        AllocatedStorage=20)
    zone = moto_reset.client("route53", account_id=TENANT).create_hosted_zone(
        Name="preview.test", CallerReference="bank")["HostedZone"]["Id"]
    blueprint = {**BANK, "network": {**BANK["network"], "hosted_zone_id": zone}}
    bank = plan(blueprint, 9, task_queue="previews")

    aws_steps = [s for s in bank.steps if isinstance(s.spec, AwsSpec)]
    assert {s.key for s in aws_steps} == {"vpc", "database/main", "dns"}
    assert {s.task_queue for s in aws_steps} == {f"previews-account-{TENANT}"}
    assert {s.task_queue for s in bank.steps if isinstance(s.spec, KubeSpec)} == {None}
    target = aws_steps[0].spec.target  # type: ignore[union-attr]
    assert (target.account_id, target.role_arn, target.external_id) == (
        TENANT, f"arn:aws:iam::{TENANT}:role/previews", "tenant-x")
    # The activities' clients sign with the role's AssumeRole session.
    identity = aws_clients.sts(target).get_caller_identity()
    assert identity["Account"] == TENANT and ":assumed-role/previews/" in identity["Arn"]

    waits = Waits(timeout=10, interval=0.05)
    registry = by_name(*(
        fn for obj in (NetworkActivities(aws_clients, waits),
                       RdsActivities(aws_clients, SEALER, waits), DnsActivities(aws_clients))
        for fn in (getattr(obj, n) for n in dir(obj))
        if hasattr(fn, "__temporal_activity_definition")
    ))
    outputs = apply(bank, registry, kinds=AwsSpec)
    assert set(outputs) == {"vpc", "database/main", "dns"}

    env_id = bank.environment_id
    in_tenant = aws_footprint(moto_reset, env_id, zone, TENANT)
    assert [f for f in in_tenant if f.startswith("vpc ")], in_tenant
    assert [f for f in in_tenant if f.startswith("rds ")], in_tenant
    assert "record web-pr-9.preview.test." in in_tenant
    assert aws_footprint(moto_reset, env_id, zone, None) == []  # the engine's own account
    assert moto_reset.client("route53").list_hosted_zones()["HostedZones"] == []

    teardown(bank, registry, kinds=AwsSpec)
    assert aws_footprint(moto_reset, env_id, zone, TENANT) == []


async def test_a_tenant_worker_reaches_its_cluster_through_the_stored_sealed_kubeconfig(
    kube_cluster: KubeCluster, hipaa_cluster: KubeCluster, postgres_server: PostgresServer,
) -> None:
    """No kubeconfig file for the tenant: `preview clusters set` sealed it into the store,
    and `python -m worker --target cluster:NAME` builds its activities from there."""
    settings = Settings(database_url=await postgres_server.new_database("iso_store"),
                        kubeconfig=str(kube_cluster.kubeconfig), kube_contexts={})
    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    tenant = f"sealed-{uuid.uuid4().hex[:6]}"
    resources = Resources()
    try:
        await store.migrate()
        await store.put_cluster(tenant, hipaa_cluster.kubeconfig.read_text(), None, "ops")
        activities = by_name(*await build_activities(
            settings, Target.parse(f"cluster:{tenant}"), resources))

        name = f"t-{uuid.uuid4().hex[:8]}"
        spec = NamespaceSpec(owner=Ownership(environment=name), cluster=tenant, name=name)
        # Sync activities run on the worker's threads; the store answers on its loop.
        await asyncio.to_thread(run, activities["ensure_namespace"], StepInput(spec=spec))
        assert name in namespaces(hipaa_cluster) and name not in namespaces(kube_cluster)
        # It knows no other cluster, not even the lifecycle worker's own.
        elsewhere = spec.model_copy(update={"cluster": "default"})
        with pytest.raises(ApplicationError, match="'default' is not configured"):
            await asyncio.to_thread(run, activities["ensure_namespace"],
                                    StepInput(spec=elsewhere))
        await asyncio.to_thread(run, activities["remove_namespace"], StepInput(spec=spec))
        assert name not in namespaces(hipaa_cluster)

        # The lifecycle worker (same store, same keys) never uses a tenant's kubeconfig.
        lifecycle = by_name(*await build_activities(settings, Target(), resources))
        with pytest.raises(ApplicationError, match=f"'{tenant}' is not configured"):
            await asyncio.to_thread(run, lifecycle["ensure_namespace"], StepInput(spec=spec))
        assert name not in namespaces(hipaa_cluster)
        with pytest.raises(SystemExit, match="neither in PREVIEW_KUBE_CONTEXTS nor stored"):
            await build_activities(settings, Target.parse("cluster:unknown"), Resources())
    finally:
        await resources.close()
        await store.close()
