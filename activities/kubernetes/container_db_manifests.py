"""What one container database is made of: the names of its objects, their manifests,
and the commands its data-loading Job runs.

One database is five objects, all carrying our ownership labels:

- a credentials Secret (`<name>-credentials`): the generated password, plus, while the
  data is being loaded, the Job's inputs (the seed script, or a presigned URL of the
  masked golden dump);
- a PersistentVolumeClaim (`<name>-data`) of the spec's storage class;
- a headless Service (`<name>`), so the database is `<name>.<namespace>.svc:5432`;
- a StatefulSet (`<name>`) of one postgres pod with requests, limits and a readiness
  probe, mounting the claim, hardened like every preview pod (pods.py) and running as
  the image's postgres user, so it passes the `restricted` Pod Security Standard;
- for data policies other than `empty`, a Job (`<name>-load`) that runs the seed
  script (psql) or restores the golden dump (curl, then pg_restore).

The Job's command lines are pure functions of nothing (`seed_command`,
`fetch_dump_command`, `restore_command`): they read their inputs from libpq's PG*
variables and a few of their own, so the tests run the very same argv against a local
PostgreSQL.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass

from activities.kubernetes.api import NAME_LABEL, Json, Ref
from activities.kubernetes.pods import hardened
from domain.blueprint import DataPolicy
from domain.resources import ContainerDatabaseSpec

PORT = 5432
USER = "preview"
DATA_DIR = "/var/lib/postgresql/data"
# A subfolder: a fresh volume's root may hold lost+found, which initdb refuses.
PGDATA = f"{DATA_DIR}/pgdata"
SEED_FILE = "/load/seed.sql"
# The official postgres image's `postgres` user and group. Running as it from the start
# (instead of root stepping down with gosu) keeps both pods within the `restricted` Pod
# Security Standard; fsGroup makes the claim writable to it. The Job's images (postgres,
# and curl for the dump) run as it too: they only need to write to their emptyDir.
POSTGRES_UID = 999
DUMP_FILE = "/work/golden.dump"

# Keys of the credentials Secret.
PASSWORD_KEY = "password"
SEED_KEY = "seed.sql"
DUMP_URL_KEY = "dump-url"
# From a golden volume snapshot (container_db_snapshot.py): the golden's password, and
# the statement giving the role the preview's own (a SCRAM verifier, not the password).
GOLDEN_PASSWORD_KEY = "golden-password"
REKEY_KEY = "rekey.sql"
REKEY_FILE = "/load/rekey.sql"

# StatefulSet pods get a `controller-revision-hash` label of `<name>-<10 chars>`,
# which must fit the 63 characters of a label value.
MAX_NAME = 52

_WAIT_FOR_SERVER = (
    'i=0; until pg_isready --quiet; do i=$((i+1)); '
    'if [ "$i" -ge 60 ]; then echo "database not ready after 120s" >&2; exit 1; fi; '
    "sleep 2; done"
)


# --- the Job's commands (pure, so the tests run them verbatim) ---------------------------


def seed_command() -> list[str]:
    """Run the seed script `$SEED_FILE` in one transaction (libpq's PG* variables connect)."""
    return ["sh", "-c", (
        f"set -eu; {_WAIT_FOR_SERVER}; "
        'psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --single-transaction '
        '--file="$SEED_FILE"'
    )]


def fetch_dump_command() -> list[str]:
    """Download the golden dump from `$DUMP_URL` (a presigned URL) to `$DUMP_FILE`.

    curl prints the status on failure, never the URL: it is a bearer credential.
    """
    return ["sh", "-c", (
        "set -eu; curl --fail --silent --show-error --location "
        '--retry 5 --retry-connrefused --output "$DUMP_FILE" "$DUMP_URL"'
    )]


def rekey_command() -> list[str]:
    """Run `$REKEY_FILE` (ALTER ROLE ... PASSWORD) as the role, signed in with the golden
    volume's password `$GOLDEN_PASSWORD`; if that no longer works, an earlier pod of the
    Job did it already: the preview's password ($PGPASSWORD) must then work."""
    return ["sh", "-c", (
        f"set -eu; {_WAIT_FOR_SERVER}; "
        'if PGPASSWORD="$GOLDEN_PASSWORD" psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 '
        '--file="$REKEY_FILE"; then exit 0; fi; '
        'psql --no-psqlrc --quiet --tuples-only --command="SELECT 1" >/dev/null'
    )]


def restore_command() -> list[str]:
    """Restore `$DUMP_FILE` (pg_dump custom format) into `$PGDATABASE`, all or nothing."""
    return ["sh", "-c", (
        f"set -eu; {_WAIT_FOR_SERVER}; "
        "pg_restore --no-owner --no-privileges --exit-on-error --single-transaction "
        '--dbname="$PGDATABASE" "$DUMP_FILE"'
    )]


# --- names -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objects:
    """Where each object of one container database lives."""

    secret: Ref
    claim: Ref
    service: Ref
    stateful_set: Ref
    job: Ref

    @classmethod
    def of(cls, spec: ContainerDatabaseSpec) -> Objects:
        ns, name = spec.namespace, spec.name
        return cls(
            secret=Ref.of("Secret", f"{name}-credentials", ns),
            claim=Ref.of("PersistentVolumeClaim", f"{name}-data", ns),
            service=Ref.of("Service", name, ns),
            stateful_set=Ref.of("StatefulSet", name, ns),
            job=Ref.of("Job", f"{name}-load", ns),
        )

    def all(self) -> list[Ref]:
        return [self.secret, self.claim, self.service, self.stateful_set, self.job]


def host_of(spec: ContainerDatabaseSpec) -> str:
    return f"{spec.name}.{spec.namespace}.svc"


def connection_url(spec: ContainerDatabaseSpec, password: str) -> str:
    quoted = urllib.parse.quote(password, safe="")
    return f"postgresql://{USER}:{quoted}@{host_of(spec)}:{PORT}/{spec.database}"


# --- manifests ---------------------------------------------------------------------------


def claim_manifest(spec: ContainerDatabaseSpec, ref: Ref, snapshot: str | None = None) -> Json:
    """The claim; `snapshot`: made from that VolumeSnapshot (of the golden volume)."""
    body: Json = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": spec.storage_class,
        "resources": {"requests": {"storage": spec.storage}},
    }
    if snapshot:
        body["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                              "name": snapshot}
    return ref.manifest(spec.owner.labels(), spec=body)


def service_manifest(spec: ContainerDatabaseSpec, ref: Ref) -> Json:
    # Headless: the name resolves to the ready pod itself, stable across restarts.
    return ref.manifest({**spec.owner.labels(), NAME_LABEL: spec.name}, spec={
        "clusterIP": "None",
        "selector": {NAME_LABEL: spec.name},
        "ports": [{"name": "postgres", "port": PORT, "targetPort": PORT,
                   "protocol": "TCP"}],
    })


def _connection_env(spec: ContainerDatabaseSpec, objects: Objects) -> list[Json]:
    return [
        {"name": "PGHOST", "value": host_of(spec)},
        {"name": "PGPORT", "value": str(PORT)},
        {"name": "PGUSER", "value": USER},
        {"name": "PGDATABASE", "value": spec.database},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {
            "name": objects.secret.name, "key": PASSWORD_KEY}}},
    ]


def stateful_set_manifest(spec: ContainerDatabaseSpec, objects: Objects, image: str) -> Json:
    labels = {**spec.owner.labels(), NAME_LABEL: spec.name}
    resources = {"cpu": "250m", "memory": "256Mi"}
    container: Json = {
        "name": "postgres",
        "image": image,
        "ports": [{"name": "postgres", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "POSTGRES_USER", "value": USER},
            {"name": "POSTGRES_DB", "value": spec.database},
            {"name": "PGDATA", "value": PGDATA},
            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": objects.secret.name, "key": PASSWORD_KEY}}},
        ],
        "resources": {"requests": resources, "limits": {"cpu": "1", "memory": "512Mi"}},
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "--quiet", "--host=127.0.0.1",
                                 f"--username={USER}", f"--dbname={spec.database}"]},
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
    }
    return objects.stateful_set.manifest(labels, spec={
        "serviceName": objects.service.name,
        "replicas": 1,
        # The selector is immutable: only the stable name, never the env labels.
        "selector": {"matchLabels": {NAME_LABEL: spec.name}},
        "template": {
            "metadata": {"labels": labels},
            "spec": _as_postgres({
                "containers": [container],
                "volumes": [{"name": "data", "persistentVolumeClaim": {
                    "claimName": objects.claim.name}}],
            }),
        },
    })


def job_manifest(spec: ContainerDatabaseSpec, objects: Objects, *, image: str,
                 fetch_image: str, deadline_seconds: float) -> Json:
    # Its own name label: the database's Service must not select the loader's pod.
    labels = {**spec.owner.labels(), NAME_LABEL: objects.job.name}
    resources = {"requests": {"cpu": "100m", "memory": "128Mi"},
                 "limits": {"cpu": "500m", "memory": "512Mi"}}
    env = _connection_env(spec, objects)
    pod: Json = {"restartPolicy": "Never"}
    if spec.data_policy == DataPolicy.seed:
        source = spec.seed_sql or ""
        pod["containers"] = [{
            "name": "seed", "image": image, "command": seed_command(),
            "env": [*env, {"name": "SEED_FILE", "value": SEED_FILE}],
            "resources": resources,
            "volumeMounts": [{"name": "seed", "mountPath": "/load", "readOnly": True}],
        }]
        pod["volumes"] = [{"name": "seed", "secret": {
            "secretName": objects.secret.name,
            "items": [{"key": SEED_KEY, "path": "seed.sql"}]}}]
    else:
        source = spec.golden_dump_s3_uri or ""
        work = {"name": "work", "mountPath": "/work"}
        dump_file = {"name": "DUMP_FILE", "value": DUMP_FILE}
        pod["initContainers"] = [{
            "name": "fetch", "image": fetch_image, "command": fetch_dump_command(),
            "env": [dump_file, {"name": "DUMP_URL", "valueFrom": {"secretKeyRef": {
                "name": objects.secret.name, "key": DUMP_URL_KEY}}}],
            "resources": resources, "volumeMounts": [work],
        }]
        pod["containers"] = [{
            "name": "restore", "image": image, "command": restore_command(),
            "env": [*env, dump_file], "resources": resources, "volumeMounts": [work],
        }]
        pod["volumes"] = [{"name": "work", "emptyDir": {}}]
    manifest = objects.job.manifest(labels, spec={
        "backoffLimit": 2,
        # Kubernetes fails the Job itself at the deadline; the wait then reports why.
        "activeDeadlineSeconds": max(int(deadline_seconds), 1),
        "template": {"metadata": {"labels": labels}, "spec": _as_postgres(pod)},
    })
    # What was loaded, for an operator reading the Job (a hash: no content, no URL).
    manifest["metadata"]["annotations"] = {
        "preview.dev/data-load": f"{spec.data_policy}:{_digest(source)}",
    }
    return manifest


def rekey_job_manifest(spec: ContainerDatabaseSpec, objects: Objects, *, image: str,
                       deadline_seconds: float, golden: str) -> Json:
    """The Job that, on a volume made from the golden's snapshot, sets the preview's own
    password (`golden`: namespace/name of that snapshot, for the operator)."""
    labels = {**spec.owner.labels(), NAME_LABEL: objects.job.name}
    env = [*_connection_env(spec, objects), {"name": "REKEY_FILE", "value": REKEY_FILE},
           {"name": "GOLDEN_PASSWORD", "valueFrom": {"secretKeyRef": {
               "name": objects.secret.name, "key": GOLDEN_PASSWORD_KEY}}}]
    pod: Json = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "rekey", "image": image, "command": rekey_command(), "env": env,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                          "limits": {"cpu": "500m", "memory": "256Mi"}},
            "volumeMounts": [{"name": "rekey", "mountPath": "/load", "readOnly": True}],
        }],
        "volumes": [{"name": "rekey", "secret": {
            "secretName": objects.secret.name, "items": [{"key": REKEY_KEY,
                                                          "path": "rekey.sql"}]}}],
    }
    manifest = objects.job.manifest(labels, spec={
        "backoffLimit": 2,
        "activeDeadlineSeconds": max(int(deadline_seconds), 1),
        "template": {"metadata": {"labels": labels}, "spec": _as_postgres(pod)},
    })
    manifest["metadata"]["annotations"] = {
        "preview.dev/data-load": f"{spec.data_policy}:snapshot:{golden}"}
    return manifest


def _as_postgres(pod: Json) -> Json:
    return hardened(pod, run_as_user=POSTGRES_UID, run_as_group=POSTGRES_UID,
                    fs_group=POSTGRES_UID)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
