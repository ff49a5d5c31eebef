"""Container databases from a volume snapshot of the golden copy, and the fallback to the
restore Job, against the real control plane.

The local control plane has no CSI driver and no snapshot controller: nothing takes a
snapshot or provisions a volume from one. So these tests check what the engine decides
and writes: without the snapshot API (the group is not served at all) or without a
VolumeSnapshotClass or a golden snapshot, the restore Job; with them (the CRDs of
snapshot.storage.k8s.io/v1 registered here, a VolumeSnapshotClass, and a golden
VolumeSnapshot and VolumeSnapshotContent written as the snapshot controller would leave
them), the objects: a VolumeSnapshotContent re-binding the golden's snapshot handle
(Retain), a VolumeSnapshot in the preview's namespace, the claim's dataSource naming it,
and the Job that only sets the preview's password. A static volume pre-bound to the claim
stands in for the one the CSI driver would provision from the snapshot; kwok completes the
Job. The Job's command is run for real against PostgreSQL with password authentication.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients
from activities.kubernetes import ClusterClients, ContainerDatabaseActivities
from activities.kubernetes.api import KubeApi
from activities.kubernetes.container_db_manifests import rekey_command
from activities.kubernetes.container_db_snapshot import golden_snapshot, snapshot_classes
from activities.kubernetes.namespaces import NamespaceActivities
from activities.postgres.server import scram_verifier
from domain.blueprint import DataPolicy, MaskingMethod, MaskingRule
from domain.masking import golden_masking_uri, masking_record
from domain.naming import Ownership
from domain.resources import KubeEnvironmentInput, KubeSweepInput
from engine.sealing import Sealer
from stack.postgres import PostgresServer
from tests.activities.kubernetes.test_container_db import (  # noqa: F401 - fixtures
    BUCKET,
    CLUSTER,
    Env,
    assert_runs_as_postgres,
    aws,
    clusters,
    dbs,
    env,
    kube,
    run_job_command,
    sealer,
)
from tests.plugins.kube import KubeCluster
from tests.plugins.moto import REGION, MotoServer

GROUP = "snapshot.storage.k8s.io"
RULES = [MaskingRule(table="customers", column="email", method=MaskingMethod.hash)]


def crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    """A CRD of the snapshot API, schema-free (the real ones come with the external
    snapshotter; only their shape matters here)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        # A *.k8s.io group needs this mark; the external snapshotter's CRDs carry it.
        "metadata": {"name": f"{plural}.{GROUP}", "annotations": {
            "api-approved.kubernetes.io":
                "https://github.com/kubernetes-csi/external-snapshotter/pull/419"}},
        "spec": {"group": GROUP, "scope": scope,
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def register_snapshot_api(cluster: KubeCluster) -> None:
    for kind, plural, scope in (("VolumeSnapshotClass", "volumesnapshotclasses", "Cluster"),
                                ("VolumeSnapshot", "volumesnapshots", "Namespaced"),
                                ("VolumeSnapshotContent", "volumesnapshotcontents", "Cluster")):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(crd(kind, plural, scope)))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.{GROUP}",
                        "--timeout=60s")


@pytest.fixture
def golden_ns(kube_cluster: KubeCluster) -> Iterator[str]:
    name = f"golden-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


def golden_volume_snapshot(on: Env, namespace: str, uri: str, digest: str,
                           name: str = "golden-shop", handle: str = "snap-0123456789golden",
                           ) -> str:
    """What the snapshot controller leaves for a snapshot of the golden volume: a ready
    VolumeSnapshot bound to a VolumeSnapshotContent with the storage system's handle."""
    content = f"snapcontent-{namespace}-{name}"
    if not on.kubectl("get", "secret", "golden-credentials", "-n", namespace,
                      "--ignore-not-found", "-o", "name"):
        on.kubectl("create", "secret", "generic", "golden-credentials", "-n", namespace,
                   "--from-literal=password=the-golden-password")
    on.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": f"{GROUP}/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": content},
        "spec": {"deletionPolicy": "Retain", "driver": "ebs.csi.aws.com",
                 "source": {"volumeHandle": "vol-0golden"},
                 "volumeSnapshotClassName": "csi-snapshots",
                 "volumeSnapshotRef": {"name": name, "namespace": namespace}},
        "status": {"readyToUse": True, "snapshotHandle": handle},
    }))
    on.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": f"{GROUP}/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "annotations": {
            "preview.dev/golden-dump": uri, "preview.dev/masking": digest,
            "preview.dev/credentials": "golden-credentials"}},
        "spec": {"volumeSnapshotClassName": "csi-snapshots",
                 "source": {"persistentVolumeClaimName": "golden-data"}},
        "status": {"readyToUse": True, "boundVolumeSnapshotContentName": content},
    }))
    return content


def prebound_volume(on: Env, claim: str) -> str:
    """A volume already bound to the claim, standing in for the one a CSI driver would
    provision from the snapshot."""
    name = on.volume()
    on.kubectl("patch", "pv", name, "--type=merge", "-p", json.dumps(
        {"spec": {"claimRef": {"namespace": on.id, "name": claim}}}))
    return name


def test_the_golden_snapshot_is_used_where_the_cluster_has_the_snapshot_api(
    env: Env, golden_ns: str, kube_cluster: KubeCluster, clusters: ClusterClients,  # noqa: F811
    sealer: Sealer, aws: AwsClients, moto_reset: MotoServer,  # noqa: F811
) -> None:
    uri = f"s3://{BUCKET}/golden/shop-{env.id}/current.json"
    spec = env.spec(data_policy=DataPolicy.masked_clone, golden_dump_s3_uri=uri, masking=RULES)
    api = KubeApi(clusters.get(CLUSTER))
    if not snapshot_classes(api):
        # The API group is not served at all here (or has no class): the restore Job.
        assert golden_snapshot(api, spec, golden_ns) is None
    register_snapshot_api(kube_cluster)
    assert golden_snapshot(api, spec, golden_ns) is None  # no class yet
    env.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": f"{GROUP}/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": "csi-snapshots"}, "driver": "ebs.csi.aws.com",
        "deletionPolicy": "Retain"}))
    assert golden_snapshot(api, spec, golden_ns) is None  # a class, no golden snapshot

    digest, rules = masking_record(RULES)
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key=golden_masking_uri(uri, digest).removeprefix(
        f"s3://{BUCKET}/"), Body=rules.encode())
    golden_content = golden_volume_snapshot(env, golden_ns, uri, digest)
    found = golden_snapshot(api, spec, golden_ns)
    assert found is not None and found.handle == "snap-0123456789golden"

    dbs_here = ContainerDatabaseActivities(clusters, sealer, aws, poll_interval=0.2,
                                           golden_namespace=golden_ns)
    prebound_volume(env, "db-main-data")
    out = env.run(dbs_here.ensure_container_database, spec)

    claim = env.must_get("persistentvolumeclaim", "db-main-data")
    assert claim["spec"]["dataSource"] == {"apiGroup": GROUP, "kind": "VolumeSnapshot",
                                           "name": "db-main-golden"}
    snapshot = env.must_get("volumesnapshot", "db-main-golden")
    content_name = f"{env.id}-db-main-golden"
    assert snapshot["spec"]["source"] == {"volumeSnapshotContentName": content_name}
    assert snapshot["metadata"]["labels"]["preview.dev/environment"] == env.id
    content = env.must_get("volumesnapshotcontent", content_name, namespaced=False)
    assert content["spec"]["source"] == {"snapshotHandle": "snap-0123456789golden"}
    assert content["spec"]["deletionPolicy"] == "Retain"  # never deletes the golden's
    assert content["spec"]["driver"] == "ebs.csi.aws.com"
    assert content["spec"]["volumeSnapshotRef"] == {"name": "db-main-golden",
                                                    "namespace": env.id}

    # No restore: a Job that only gives the role the preview's own password.
    job = env.completed_job("db-main-load")
    pod = job["spec"]["template"]["spec"]
    assert_runs_as_postgres(pod)
    assert [c["command"] for c in pod["containers"]] == [rekey_command()]
    assert "initContainers" not in pod
    assert job["metadata"]["annotations"]["preview.dev/data-load"] == (
        f"masked_clone:snapshot:{golden_ns}/golden-shop")
    assert set(env.secret_data("db-main-credentials")) == {"password"}  # inputs dropped
    assert out.values["clone_method"] == "volume_snapshot"
    assert "VolumeSnapshot db-main-golden" in out.detail
    assert "the-golden-password" not in json.dumps(job) + out.model_dump_json()

    # A re-run changes nothing, and follows the claim's source.
    made = [("persistentvolumeclaim", "db-main-data"), ("volumesnapshot", "db-main-golden"),
            ("job", "db-main-load")]
    before = [env.rv(kind, name) for kind, name in made]
    again = env.run(dbs_here.ensure_container_database, spec)
    assert again.values == out.values
    assert [env.rv(kind, name) for kind, name in made] == before

    # A golden refresh makes a newer snapshot; then the rekey Job has to run again (as
    # after a failed one): the re-run keeps to the snapshot the volume was made from.
    newer = golden_volume_snapshot(env, golden_ns, uri, digest, name="golden-shop-2",
                                   handle="snap-0newer")
    latest = golden_snapshot(api, spec, golden_ns)
    assert latest is not None and latest.name == "golden-shop-2"
    env.kubectl("delete", "job", "db-main-load", "-n", env.id, "--wait=true")
    redone = env.run(dbs_here.ensure_container_database, spec)
    assert redone.values == out.values
    content = env.must_get("volumesnapshotcontent", content_name, namespaced=False)
    assert content["spec"]["source"] == {"snapshotHandle": "snap-0123456789golden"}
    assert env.must_get("job", "db-main-load")["metadata"]["annotations"][
        "preview.dev/data-load"] == f"masked_clone:snapshot:{golden_ns}/golden-shop"
    env.kubectl("delete", "volumesnapshotcontent", newer, "--wait=false")

    # A masked clone asking for more rules than the snapshot's dump had: refused.
    more = [*RULES, MaskingRule(table="customers", column="name", method=MaskingMethod.fake)]
    refused = env.failure(dbs_here.ensure_container_database,
                          env.spec(name="db-more", data_policy=DataPolicy.masked_clone,
                                   golden_dump_s3_uri=uri, masking=more))
    assert "not masked with: customers.name (fake)" in refused.message

    # Teardown removes the preview's copy of the snapshot, never the golden's.
    env.run(dbs_here.remove_container_database, spec)
    assert env.get("volumesnapshot", "db-main-golden") is None
    assert env.get("volumesnapshotcontent", content_name, namespaced=False) is None
    assert env.get("persistentvolumeclaim", "db-main-data") is None
    assert env.get("volumesnapshotcontent", golden_content, namespaced=False) is not None
    env.kubectl("delete", "volumesnapshotcontent", golden_content, "--wait=false")


def test_the_rekey_command_swaps_the_golden_password_for_the_previews(
    postgres_server: PostgresServer,
) -> None:
    """Run for real: password authentication for one role, its golden password, then the
    Job's command with the statement the activity writes (a SCRAM verifier)."""
    role = f"rekey_{uuid.uuid4().hex[:8]}"
    hba = postgres_server.pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    psql_admin = [str(postgres_server.bin / "psql"), postgres_server.admin_url, "-XAtq",
                  "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql_admin, "SELECT pg_reload_conf()"], check=True, capture_output=True)
    try:
        subprocess.run([*psql_admin, f"CREATE ROLE {role} LOGIN PASSWORD 'the-golden-pw'"],
                       check=True, capture_output=True)
        # In a container database the role owns its server's database; on this shared
        # test server, whose `postgres` a preview worker may have closed to PUBLIC
        # (activities/postgres/server.py), it gets CONNECT of its own.
        subprocess.run([*psql_admin, f"GRANT CONNECT ON DATABASE postgres TO {role}"],
                       check=True, capture_output=True)
        rekey = postgres_server.data_dir / f"{role}.sql"
        rekey.write_text(f"ALTER ROLE {role} PASSWORD '{scram_verifier('preview-pw')}';\n")
        for _ in range(2):  # the second pod of a Job finds it done, and succeeds too
            done = run_job_command(rekey_command(), postgres_server, "postgres",
                                   PGUSER=role, PGPASSWORD="preview-pw",
                                   GOLDEN_PASSWORD="the-golden-pw", REKEY_FILE=str(rekey))
            assert done.returncode == 0, done.stderr

        async def signs_in(password: str) -> bool:
            try:
                conn = await asyncpg.connect(host="127.0.0.1", port=postgres_server.port,
                                             user=role, password=password, database="postgres")
            except asyncpg.InvalidPasswordError:
                return False
            await conn.close()
            return True

        assert asyncio.run(signs_in("preview-pw"))
        assert not asyncio.run(signs_in("the-golden-pw"))
    finally:
        hba.write_text(original)
        subprocess.run([*psql_admin, "SELECT pg_reload_conf()"], check=True,
                       capture_output=True)
        subprocess.run([*psql_admin, f"REVOKE CONNECT ON DATABASE postgres FROM {role}"],
                       capture_output=True)
        subprocess.run([*psql_admin, f"DROP ROLE IF EXISTS {role}"], capture_output=True)


def test_the_sweeper_removes_the_snapshot_content_a_namespace_leaves_behind(
    kube_cluster: KubeCluster, clusters: ClusterClients,  # noqa: F811
) -> None:
    """A preview's VolumeSnapshotContent is cluster-scoped: deleting its namespace (what
    the sweeper does for a preview whose workflow is gone) leaves it. The sweeper lists it
    under its environment and removes it with the namespace; a live preview's and an
    unmarked one stay."""
    register_snapshot_api(kube_cluster)
    orphan = f"orphan-{uuid.uuid4().hex[:8]}"

    def content(name: str, labels: dict[str, str]) -> None:
        kube_cluster.kubectl("create", "-f", "-", input=json.dumps({
            "apiVersion": f"{GROUP}/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": name, "labels": labels},
            "spec": {"deletionPolicy": "Retain", "driver": "ebs.csi.aws.com",
                     "source": {"snapshotHandle": "snap-0123456789golden"},
                     "volumeSnapshotRef": {"name": "db-main-golden", "namespace": name}}}))

    kube_cluster.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": orphan, "labels": Ownership(environment=orphan).labels()}}))
    content(f"{orphan}-db-main-golden", Ownership(environment=orphan).labels())
    content(f"{orphan}-live-db-main-golden", Ownership(environment=f"{orphan}-live").labels())
    content(f"{orphan}-foreign", {"app": "someone-elses"})
    sweeper = NamespaceActivities(clusters, poll_interval=0.2)
    run = ActivityEnvironment().run

    found = run(sweeper.list_kube_environments, KubeSweepInput(cluster=CLUSTER))
    assert found[orphan] == [f"namespace {orphan}",
                             f"volumesnapshotcontent {orphan}-db-main-golden"]
    assert found[f"{orphan}-live"] == [f"volumesnapshotcontent {orphan}-live-db-main-golden"]
    assert not any("foreign" in item for items in found.values() for item in items)

    removed = run(sweeper.remove_kube_environment,
                  KubeEnvironmentInput(cluster=CLUSTER, environment=orphan))
    assert removed == found[orphan]
    left = kube_cluster.kubectl("get", "volumesnapshotcontents", "-o", "name")
    assert f"{orphan}-db-main-golden\n" not in left + "\n"
    assert f"{orphan}-live-db-main-golden" in left and f"{orphan}-foreign" in left
    assert orphan not in run(sweeper.list_kube_environments, KubeSweepInput(cluster=CLUSTER))
    kube_cluster.kubectl("delete", "volumesnapshotcontent", f"{orphan}-live-db-main-golden",
                         f"{orphan}-foreign")
