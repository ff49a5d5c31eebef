"""Container databases against a real control plane, and their loaders against PostgreSQL.

The control plane has no kubelet: kwok's stages make the database pod Ready and Job pods
complete, and static hostPath PersistentVolumes (one per test, with a storage class of
its own) let the volume controller bind the claim. What the Job would run in a real
cluster is run here verbatim (`seed_command`, `fetch_dump_command`, `restore_command`)
against the session's PostgreSQL, with the dump served by moto's S3 through the very
presigned URL the activity generates.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients
from activities.errors import FOREIGN_RESOURCE, INVALID_INPUT, ROLLOUT_FAILED
from activities.kubernetes import (
    ClusterClients,
    ContainerDatabaseActivities,
    KubernetesActivities,
)
from activities.kubernetes.container_db_manifests import (
    fetch_dump_command,
    restore_command,
    seed_command,
)
from domain.blueprint import DataPolicy, MaskingMethod, MaskingRule
from domain.masking import (
    golden_dump_uri,
    golden_generation_dump_key,
    golden_masking_uri,
    masking_record,
)
from domain.naming import Ownership
from domain.resources import ContainerDatabaseSpec, NamespaceSpec, StepInput, StepOutput
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack.postgres import PostgresServer, pg_bin_dir
from tests.plugins.kube import KubeCluster
from tests.plugins.moto import REGION, MotoServer

CLUSTER = "kwok"
BUCKET = "golden-dumps"
SEED = """
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers VALUES (1, 'a@example.test'), (2, 'b@example.test');
"""


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer(Keyring.parse("test-1:" + base64.b64encode(os.urandom(32)).decode()))


@pytest.fixture(scope="module")
def aws(moto_server: MotoServer) -> AwsClients:
    return AwsClients(endpoint_url=moto_server.endpoint_url, region=REGION,
                      session=moto_server.session)


@pytest.fixture(scope="module")
def clusters(kube_cluster: KubeCluster) -> Iterator[ClusterClients]:
    clients = ClusterClients({CLUSTER: str(kube_cluster.kubeconfig)})
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def dbs(clusters: ClusterClients, sealer: Sealer, aws: AwsClients) -> ContainerDatabaseActivities:
    return ContainerDatabaseActivities(clusters, sealer, aws, poll_interval=0.2)


@pytest.fixture(scope="module")
def kube(clusters: ClusterClients, sealer: Sealer) -> KubernetesActivities:
    return KubernetesActivities(clusters, sealer, poll_interval=0.2)


@dataclass
class Env:
    """One environment per test: its namespace (made by ensure_namespace, so quota and
    limits apply), a storage class of its own and a static volume of that class."""

    cluster: KubeCluster
    dbs: ContainerDatabaseActivities
    sealer: Sealer
    id: str
    heartbeats: list[Any] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    @property
    def owner(self) -> Ownership:
        return Ownership(environment=self.id)

    @property
    def storage_class(self) -> str:
        return f"sc-{self.id}"

    def spec(self, **changes: Any) -> ContainerDatabaseSpec:
        fields: dict[str, Any] = {
            "owner": self.owner, "cluster": CLUSTER, "namespace": self.id, "name": "db-main",
            "database": "shop", "storage_class": self.storage_class,
        }
        return ContainerDatabaseSpec(**{**fields, **changes})

    def run(self, fn: Callable[..., Any], spec: Any) -> Any:
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *details: self.heartbeats.append(details[0] if details else None)
        return env.run(fn, StepInput(spec=spec))

    def failure(self, fn: Callable[..., Any], spec: Any) -> ApplicationError:
        with pytest.raises(ApplicationError) as caught:
            self.run(fn, spec)
        return caught.value

    def volume(self, name: str | None = None) -> str:
        name = name or f"pv-{self.id}-{len(self.volumes)}"
        self.kubectl("create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": self.storage_class,
                "hostPath": {"path": f"/tmp/preview-test-volumes/{name}"},
            },
        }))
        self.volumes.append(name)
        return name

    # -- from outside ---------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, input=input)

    def get(self, kind: str, name: str, namespaced: bool = True) -> dict[str, Any] | None:
        args = ["get", kind, name, "--ignore-not-found", "-o", "json"]
        if namespaced:
            args += ["-n", self.id]
        out = self.kubectl(*args).strip()
        return json.loads(out) if out else None

    def must_get(self, kind: str, name: str, namespaced: bool = True) -> dict[str, Any]:
        obj = self.get(kind, name, namespaced)
        assert obj is not None, f"{kind} {name} does not exist"
        return obj

    def completed_job(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The Job once its controller says Complete: the activity returns as soon as
        its pod's run is over, which the controller records a moment later."""
        deadline = time.monotonic() + timeout
        while not completed(job := self.must_get("job", name)):
            assert time.monotonic() < deadline, f"job {name} not Complete in {timeout}s: {job}"
            time.sleep(0.2)  # between polls of the condition, not instead of one
        return job

    def rv(self, kind: str, name: str) -> str:
        return str(self.must_get(kind, name)["metadata"]["resourceVersion"])

    def secret_data(self, name: str) -> dict[str, str]:
        data = self.must_get("secret", name).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


@pytest.fixture
def env(
    kube_cluster: KubeCluster, dbs: ContainerDatabaseActivities, kube: KubernetesActivities,
    sealer: Sealer,
) -> Iterator[Env]:
    e = Env(kube_cluster, dbs, sealer, id=f"t-{uuid.uuid4().hex[:10]}")
    ActivityEnvironment().run(kube.ensure_namespace, StepInput(spec=NamespaceSpec(
        owner=e.owner, cluster=CLUSTER, name=e.id)))
    yield e
    kube_cluster.kubectl("delete", "namespace", e.id, "--ignore-not-found", "--wait=false")
    for pv in e.volumes:
        kube_cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false")


OBJECTS = [
    ("secret", "db-main-credentials"),
    ("persistentvolumeclaim", "db-main-data"),
    ("service", "db-main"),
    ("statefulset", "db-main"),
]


def assert_runs_as_postgres(pod: dict[str, Any]) -> None:
    """A pod template within the `restricted` Pod Security Standard, as postgres (999)."""
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
        "seccompProfile": {"type": "RuntimeDefault"}}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True}, container["name"]


# --- objects, binding, outputs -----------------------------------------------------------


def test_empty_database_objects_binding_and_sealed_outputs(env: Env) -> None:
    pv = env.volume()
    spec = env.spec()
    out: StepOutput = env.run(env.dbs.ensure_container_database, spec)

    for kind, name in OBJECTS:
        labels = env.must_get(kind, name)["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "preview-engine"
        assert labels["preview.dev/environment"] == env.id

    # The claim is bound to the static volume of its class.
    claim = env.must_get("persistentvolumeclaim", "db-main-data")
    assert claim["spec"]["storageClassName"] == env.storage_class
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == pv
    volume = env.must_get("pv", pv, namespaced=False)
    assert volume["status"]["phase"] == "Bound"
    assert volume["spec"]["claimRef"]["name"] == "db-main-data"
    assert volume["spec"]["claimRef"]["namespace"] == env.id

    service = env.must_get("service", "db-main")["spec"]
    assert service["clusterIP"] == "None"
    assert service["ports"][0]["port"] == 5432
    assert service["selector"] == {"app.kubernetes.io/name": "db-main"}

    # Ready in a namespace that enforces `restricted` (the default of ensure_namespace).
    ns_labels = env.must_get("namespace", env.id, namespaced=False)["metadata"]["labels"]
    assert ns_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    sts = env.must_get("statefulset", "db-main")
    assert sts["status"]["readyReplicas"] == 1
    pod = sts["spec"]["template"]["spec"]
    assert_runs_as_postgres(pod)
    container = pod["containers"][0]
    assert container["image"] == "postgres:16"
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert pod["volumes"] == [{"name": "data",
                               "persistentVolumeClaim": {"claimName": "db-main-data"}}]
    password_env = next(e for e in container["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password_env == {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
        "key": "password", "name": "db-main-credentials"}}}
    assert env.get("job", "db-main-load") is None  # data policy empty: nothing to load

    # The password lives in the Secret and, sealed, in the output; nowhere in clear.
    password = env.secret_data("db-main-credentials")["password"]
    assert len(password) >= 32
    host = f"db-main.{env.id}.svc"
    assert out.values == {"host": host, "port": "5432", "database": "shop", "user": "preview"}
    assert env.sealer.unseal(out.secrets["password"]) == password
    assert env.sealer.unseal(out.secrets["url"]) == (
        f"postgresql://preview:{password}@{host}:5432/shop")
    assert password not in out.model_dump_json()
    assert password not in json.dumps(sts) and password not in json.dumps(env.heartbeats)
    assert env.heartbeats, "the readiness wait heartbeats"


def test_rerun_reuses_the_password_and_changes_nothing(env: Env) -> None:
    env.volume()
    spec = env.spec()
    first: StepOutput = env.run(env.dbs.ensure_container_database, spec)
    before = {(k, n): env.rv(k, n) for k, n in OBJECTS}
    second: StepOutput = env.run(env.dbs.ensure_container_database, spec)
    assert env.sealer.unseal(second.secrets["password"]) == env.sealer.unseal(
        first.secrets["password"])
    assert {(k, n): env.rv(k, n) for k, n in OBJECTS} == before

    # A first run that died after writing only the Secret: the next one keeps its password.
    other = env.spec(name="db-other")
    env.volume()
    env.kubectl("create", "secret", "generic", "db-other-credentials", "-n", env.id,
                "--from-literal=password=kept-from-the-first-attempt")
    env.kubectl("label", "secret", "db-other-credentials", "-n", env.id,
                *[f"{k}={v}" for k, v in env.owner.labels().items()])
    out: StepOutput = env.run(env.dbs.ensure_container_database, other)
    assert env.sealer.unseal(out.secrets["password"]) == "kept-from-the-first-attempt"


# --- data loading ------------------------------------------------------------------------


def completed(job: dict[str, Any]) -> bool:
    return any(c["type"] == "Complete" and c["status"] == "True"
               for c in job["status"].get("conditions", []))


def test_seed_runs_as_a_job_that_completes(env: Env) -> None:
    env.volume()
    spec = env.spec(data_policy=DataPolicy.seed, seed_sql=SEED)
    env.run(env.dbs.ensure_container_database, spec)

    job = env.completed_job("db-main-load")
    assert job["status"]["succeeded"] == 1
    assert job["metadata"]["labels"]["preview.dev/environment"] == env.id
    pod = job["spec"]["template"]["spec"]
    assert_runs_as_postgres(pod)
    assert pod["containers"][0]["command"] == seed_command()
    assert pod["volumes"][0]["secret"]["items"] == [{"key": "seed.sql", "path": "seed.sql"}]
    names = {e["name"] for e in pod["containers"][0]["env"]}
    assert {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "SEED_FILE"} <= names
    # The loader's pod is not one of the database's endpoints.
    selector = env.must_get("service", "db-main")["spec"]["selector"]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] != (
        selector["app.kubernetes.io/name"])
    # Loaded: the Secret is back to the password alone.
    assert set(env.secret_data("db-main-credentials")) == {"password"}
    assert any(isinstance(h, dict) and h.get("job") == "db-main-load" for h in env.heartbeats)

    # A re-run neither creates a second Job nor rewrites anything.
    uid = job["metadata"]["uid"]
    before = {(k, n): env.rv(k, n) for k, n in OBJECTS}
    env.run(env.dbs.ensure_container_database, spec)
    assert env.must_get("job", "db-main-load")["metadata"]["uid"] == uid
    assert {(k, n): env.rv(k, n) for k, n in OBJECTS} == before


def test_restore_runs_fetch_then_pg_restore_and_completes(
    env: Env, moto_reset: MotoServer
) -> None:
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key=f"{env.id}/shop.dump", Body=b"PGDMP-not-read-by-kwok")
    env.volume()
    spec = env.spec(data_policy=DataPolicy.masked_clone,
                    golden_dump_s3_uri=f"s3://{BUCKET}/{env.id}/shop.dump")
    env.run(env.dbs.ensure_container_database, spec)

    job = env.completed_job("db-main-load")
    pod = job["spec"]["template"]["spec"]
    assert_runs_as_postgres(pod)  # curl's image too: it only writes to the emptyDir
    fetch, restore = pod["initContainers"][0], pod["containers"][0]
    assert fetch["command"] == fetch_dump_command()
    assert restore["command"] == restore_command()
    url_env = next(e for e in fetch["env"] if e["name"] == "DUMP_URL")
    assert url_env["valueFrom"]["secretKeyRef"] == {"key": "dump-url",
                                                    "name": "db-main-credentials"}
    assert "X-Amz" not in json.dumps(job)  # the presigned URL is only ever in the Secret
    assert job["metadata"]["annotations"]["preview.dev/data-load"].startswith("masked_clone:")
    assert set(env.secret_data("db-main-credentials")) == {"password"}


def test_missing_golden_dump_is_invalid_input_before_anything_is_written(
    env: Env, moto_reset: MotoServer
) -> None:
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket=f"{BUCKET}-empty",
                     CreateBucketConfiguration={"LocationConstraint": REGION})
    spec = env.spec(data_policy=DataPolicy.clone,
                    golden_dump_s3_uri=f"s3://{BUCKET}-empty/none.dump")
    error = env.failure(env.dbs.ensure_container_database, spec)
    assert error.type == INVALID_INPUT and error.non_retryable
    assert "does not exist" in error.message
    for kind, name in OBJECTS:
        assert env.get(kind, name) is None

    bad = env.spec(data_policy=DataPolicy.clone, golden_dump_s3_uri="https://x/y")
    assert env.failure(env.dbs.ensure_container_database, bad).type == INVALID_INPUT


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["service", "secret"])
def test_foreign_object_is_refused_and_kept(env: Env, kind: str) -> None:
    if kind == "service":
        env.kubectl("create", "service", "clusterip", "db-main", "--tcp=5432:5432",
                    "-n", env.id)
    else:
        env.kubectl("create", "secret", "generic", "db-main-credentials",
                    "--from-literal=password=theirs", "-n", env.id)
    error = env.failure(env.dbs.ensure_container_database, env.spec())
    assert error.type == FOREIGN_RESOURCE and error.non_retryable
    assert env.get("statefulset", "db-main") is None
    assert env.get("persistentvolumeclaim", "db-main-data") is None
    env.run(env.dbs.remove_container_database, env.spec())
    assert env.get(kind, "db-main" if kind == "service" else "db-main-credentials") is not None


def test_claim_without_a_volume_fails_with_the_reason(
    env: Env, clusters: ClusterClients, sealer: Sealer, aws: AwsClients
) -> None:
    quick = ContainerDatabaseActivities(clusters, sealer, aws, poll_interval=0.2,
                                        ready_timeout=3)
    error = env.failure(quick.ensure_container_database, env.spec())  # no volume made
    assert error.type == ROLLOUT_FAILED and error.non_retryable
    assert "db-main-data is Pending" in error.message and env.storage_class in error.message
    env.run(quick.remove_container_database, env.spec())
    assert env.get("persistentvolumeclaim", "db-main-data") is None


# --- teardown ----------------------------------------------------------------------------


def test_teardown_removes_everything_and_waits_for_the_release(env: Env) -> None:
    pv = env.volume()
    spec = env.spec(data_policy=DataPolicy.seed, seed_sql=SEED)
    env.run(env.dbs.ensure_container_database, spec)
    env.heartbeats.clear()
    env.run(env.dbs.remove_container_database, spec)
    for kind, name in [*OBJECTS, ("job", "db-main-load")]:
        assert env.get(kind, name) is None, f"{kind} {name} is left"
    assert env.kubectl("get", "pods", "-n", env.id, "-o", "name").strip() == ""
    # Returned only once the volume let go of the claim (Retain: Released, kept).
    assert env.must_get("pv", pv, namespaced=False)["status"]["phase"] == "Released"
    assert any(isinstance(h, dict) and "claim" in h for h in env.heartbeats)
    env.run(env.dbs.remove_container_database, spec)  # absent already: success


# --- the loaders' commands, run for real ---------------------------------------------------


def psql(server: PostgresServer, database: str, sql: str) -> str:
    proc = subprocess.run(
        [str(pg_bin_dir() / "psql"), server.url(database), "-XAtq", "-v", "ON_ERROR_STOP=1",
         "-c", sql],
        capture_output=True, text=True, check=True,
    )
    return proc.stdout.strip()


def fresh_database(server: PostgresServer) -> str:
    name = f"cdb_{uuid.uuid4().hex[:10]}"
    psql(server, "postgres", f"CREATE DATABASE {name}")
    return name


def run_job_command(
    argv: list[str], server: PostgresServer, database: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    """The Job container's argv with the environment the Job gives it (local addresses)."""
    env = {
        "PATH": f"{pg_bin_dir()}:/usr/bin:/bin",
        "PGHOST": "127.0.0.1", "PGPORT": str(server.port), "PGUSER": "preview",
        "PGDATABASE": database, **extra,
    }
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_seed_command_loads_the_seed_in_one_transaction(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = fresh_database(postgres_server)
    seed = tmp_path / "seed.sql"
    seed.write_text(SEED)
    done = run_job_command(seed_command(), postgres_server, database, SEED_FILE=str(seed))
    assert done.returncode == 0, done.stderr
    assert psql(postgres_server, database, "SELECT string_agg(email, ',' ORDER BY id) "
                "FROM customers") == "a@example.test,b@example.test"

    # A broken script leaves nothing behind: psql stops and the transaction rolls back.
    other = fresh_database(postgres_server)
    seed.write_text("CREATE TABLE half (id int);\nINSERT INTO nowhere VALUES (1);\n")
    failed = run_job_command(seed_command(), postgres_server, other, SEED_FILE=str(seed))
    assert failed.returncode != 0 and "nowhere" in failed.stderr
    assert psql(postgres_server, other, "SELECT count(*) FROM pg_tables "
                "WHERE tablename = 'half'") == "0"


def test_restore_command_restores_the_golden_dump_from_its_presigned_url(
    postgres_server: PostgresServer, moto_reset: MotoServer, dbs: ContainerDatabaseActivities,
    tmp_path: Path,
) -> None:
    # The masked golden copy, dumped as the golden refresh would (custom format).
    golden = fresh_database(postgres_server)
    psql(postgres_server, golden, SEED + "CREATE INDEX ON customers (email);")
    dump = tmp_path / "golden.dump"
    subprocess.run([str(pg_bin_dir() / "pg_dump"), "--format=custom", "--no-owner",
                    f"--file={dump}", postgres_server.url(golden)], check=True)
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="shop/golden.dump", Body=dump.read_bytes())

    # The URL the activity would put into the Secret, fetched by the init container's argv.
    url = dbs._presign(f"s3://{BUCKET}/shop/golden.dump")
    target = fresh_database(postgres_server)
    fetched = tmp_path / "work" / "golden.dump"
    fetched.parent.mkdir()
    done = run_job_command(fetch_dump_command(), postgres_server, target,
                           DUMP_URL=url, DUMP_FILE=str(fetched))
    assert done.returncode == 0, done.stderr
    assert fetched.read_bytes() == dump.read_bytes()

    done = run_job_command(restore_command(), postgres_server, target, DUMP_FILE=str(fetched))
    assert done.returncode == 0, done.stderr
    assert psql(postgres_server, target, "SELECT count(*) FROM customers") == "2"
    assert psql(postgres_server, target, "SELECT count(*) FROM pg_indexes "
                "WHERE tablename = 'customers'") == "2"

    # A URL that answers an error (here: the object is gone) fails the fetch, and the
    # pod's log says why without printing the URL (moto does not check signatures, so
    # an expired URL cannot be shown here).
    gone = url.replace("shop/golden.dump", "shop/gone.dump")
    bad = run_job_command(fetch_dump_command(), postgres_server, target,
                          DUMP_URL=gone, DUMP_FILE=str(tmp_path / "bad.dump"))
    assert bad.returncode != 0 and "404" in bad.stderr
    assert "Signature" not in bad.stderr and "gone.dump" not in bad.stderr


def test_a_masked_clone_refuses_a_dump_masked_with_fewer_rules(
    moto_reset: MotoServer, dbs: ContainerDatabaseActivities,
) -> None:
    email = MaskingRule(table="customers", column="email", method=MaskingMethod.hash)
    name = MaskingRule(table="customers", column="name", method=MaskingMethod.fake)
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    # A dump named directly (not through a refresh's pointer), with the rules it names.
    uri = f"s3://{BUCKET}/golden/shop/direct.dump"
    key = uri.removeprefix(f"s3://{BUCKET}/")
    digest, rules = masking_record([email])
    s3.put_object(Bucket=BUCKET, Key=golden_masking_uri(uri, digest).removeprefix(
        f"s3://{BUCKET}/"), Body=rules.encode())
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"dump", Metadata={"masking": digest})

    assert dbs._presign(uri, [email]).startswith(moto_reset.endpoint_url)
    with pytest.raises(ApplicationError, match=r"not masked with: customers\.name \(fake\)"):
        dbs._presign(uri, [email, name])
    # A dump published with no rules (an unmasked `clone` of the same source) never
    # serves a masked clone.
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"dump")
    with pytest.raises(ApplicationError, match=r"customers\.email"):
        dbs._presign(uri, [email])
    assert dbs._presign(uri).startswith(moto_reset.endpoint_url)  # an unmasked clone may


def test_the_published_pointer_resolves_to_the_generations_own_dump(
    moto_reset: MotoServer, dbs: ContainerDatabaseActivities,
) -> None:
    email = MaskingRule(table="customers", column="email", method=MaskingMethod.hash)
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    pointer = golden_dump_uri(BUCKET, "shop")
    digest, rules = masking_record([email])
    s3.put_object(Bucket=BUCKET, Key=golden_masking_uri(pointer, digest).removeprefix(
        f"s3://{BUCKET}/"), Body=rules.encode())
    with pytest.raises(ApplicationError, match="does not exist; run the golden refresh"):
        dbs._presign(pointer, [email])  # nothing published yet
    first = golden_generation_dump_key("shop", "golden_shop_1")
    s3.put_object(Bucket=BUCKET, Key=first, Body=b"first dump")
    s3.put_object(Bucket=BUCKET, Key=pointer.removeprefix(f"s3://{BUCKET}/"), Body=json.dumps(
        {"generation": "golden_shop_1", "dump": first, "masking": digest}).encode())

    url = dbs._presign(pointer, [email])
    # A refresh publishing another generation now (even one masked with fewer rules)
    # changes nothing for this URL: it names the checked generation's own dump.
    s3.put_object(Bucket=BUCKET, Key=pointer.removeprefix(f"s3://{BUCKET}/"), Body=json.dumps(
        {"generation": "golden_shop_2", "dump": "golden/shop/generations/golden_shop_2.dump",
         "masking": "0" * 64}).encode())
    assert httpx.get(url).content == b"first dump"
    with pytest.raises(ApplicationError, match="does not exist"):
        dbs._presign(pointer, [email])  # the new pointer names a dump that is not there
