"""Container databases: PostgreSQL as a StatefulSet inside the preview's namespace.

One database is five objects, all carrying our ownership labels:

- a credentials Secret (`<name>-credentials`): the generated password, plus, while the
  data is being loaded, the Job's inputs (the seed script, or a presigned URL of the
  masked golden dump);
- a PersistentVolumeClaim (`<name>-data`) of the spec's storage class;
- a headless Service (`<name>`), so the database is `<name>.<namespace>.svc:5432`;
- a StatefulSet (`<name>`) of one postgres pod with requests, limits and a readiness
  probe, mounting the claim;
- for data policies other than `empty`, a Job (`<name>-load`) that runs the seed
  script (psql) or restores the golden dump (curl, then pg_restore).

The password is generated once and read back from the Secret on every later run, so a
re-run converges on the same credentials (the data directory keeps the first one
anyway). It leaves the worker only sealed, in `StepOutput.secrets`. The Job is created
once and never re-applied (a Job's template is immutable); a completed Job means the
data is loaded, and its inputs are then dropped from the Secret.

The Job's command lines are pure functions of nothing (`seed_command`,
`fetch_dump_command`, `restore_command`): they read their inputs from libpq's PG*
variables and a few of their own, so the tests run the very same argv against a local
PostgreSQL.

Teardown deletes the StatefulSet, Job and Service, then the claim, waits until its
volume is no longer Bound to it, and deletes the Secret last: a teardown that stops half
way and a create that follows still find the password the data directory was made with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, is_error, parse_s3_uri
from activities.errors import ROLLOUT_FAILED, foreign_resource, invalid_input
from activities.kubernetes import (
    API_ERROR,
    FATAL_WAITING_REASONS,
    NAME_LABEL,
    ClusterClients,
    Json,
    KubeApi,
    Ref,
    _redact,
    _ref,
    _warn_not_ours,
    heartbeat,
    is_ours,
    poll_delays,
)
from domain import masking
from domain.blueprint import DataPolicy, MaskingRule
from domain.resources import AwsTarget, ContainerDatabaseSpec, StepInput, StepOutput
from engine.sealing import Sealer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PORT = 5432
USER = "preview"
DATA_DIR = "/var/lib/postgresql/data"
# A subfolder: a fresh volume's root may hold lost+found, which initdb refuses.
PGDATA = f"{DATA_DIR}/pgdata"
SEED_FILE = "/load/seed.sql"
DUMP_FILE = "/work/golden.dump"

# Keys of the credentials Secret.
PASSWORD_KEY = "password"
SEED_KEY = "seed.sql"
DUMP_URL_KEY = "dump-url"

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
            secret=_ref("Secret", f"{name}-credentials", ns),
            claim=_ref("PersistentVolumeClaim", f"{name}-data", ns),
            service=_ref("Service", name, ns),
            stateful_set=_ref("StatefulSet", name, ns),
            job=_ref("Job", f"{name}-load", ns),
        )

    def all(self) -> list[Ref]:
        return [self.secret, self.claim, self.service, self.stateful_set, self.job]


def host_of(spec: ContainerDatabaseSpec) -> str:
    return f"{spec.name}.{spec.namespace}.svc"


def connection_url(spec: ContainerDatabaseSpec, password: str) -> str:
    quoted = urllib.parse.quote(password, safe="")
    return f"postgresql://{USER}:{quoted}@{host_of(spec)}:{PORT}/{spec.database}"


@dataclass(frozen=True)
class JobState:
    done: bool
    progress: Json
    failed: str | None = None  # the Job (or a pod of it) cannot succeed: why


# --- activities --------------------------------------------------------------------------


class ContainerDatabaseActivities:
    """ensure/remove_container_database; holds its clients so tests inject them.

    `aws` presigns the golden dump's URL (the engine's own S3, in its default region).
    """

    def __init__(
        self,
        clusters: ClusterClients,
        sealer: Sealer,
        aws: AwsClients,
        *,
        image: str = "postgres:16",
        fetch_image: str = "curlimages/curl:8.11.1",
        poll_interval: float = 2.0,
        ready_timeout: float = 900.0,
        load_timeout: float = 3600.0,
        release_timeout: float = 600.0,
        dump_url_ttl: timedelta = timedelta(hours=2),
    ) -> None:
        self.clusters = clusters
        self.sealer = sealer
        self.aws = aws
        self.image = image
        self.fetch_image = fetch_image
        self.poll_interval = poll_interval
        self.ready_timeout = ready_timeout
        self.load_timeout = load_timeout
        self.release_timeout = release_timeout
        self.dump_url_ttl = dump_url_ttl

    def api(self, cluster: str) -> KubeApi:
        return KubeApi(self.clusters.get(cluster))

    # -- ensure present -------------------------------------------------------------------

    @activity.defn(name=ContainerDatabaseSpec.present)
    def ensure_container_database(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ContainerDatabaseSpec)
        _validate(spec)
        api = self.api(spec.cluster)
        objects = Objects.of(spec)
        # Every object is checked before any is written: a foreign one must not leave
        # half a database of ours behind it.
        current = {ref: api.get(ref) for ref in objects.all()}
        for ref, obj in current.items():
            if obj is not None and not is_ours(obj, spec.owner):
                raise foreign_resource(ref.what, spec.owner.environment)

        password = _password_of(current[objects.secret]) or secrets.token_urlsafe(24)
        job = current[objects.job]
        loaded = False
        if job is not None:
            state = _job_state(api, job)
            loaded = state.done
            if state.failed:
                # An earlier attempt's load failed; both loaders are all-or-nothing, so
                # a fresh Job on the same database is safe (a Job cannot be re-run).
                self._discard_job(api, objects.job)
        load = spec.data_policy != DataPolicy.empty and not loaded
        load_inputs = self._load_inputs(spec) if load else {}

        self._apply_secret(api, spec, objects.secret, {PASSWORD_KEY: password, **load_inputs})
        api.apply(objects.claim, self._claim(spec, objects.claim))
        api.apply(objects.service, self._service(spec, objects.service))
        api.apply(objects.stateful_set, self._stateful_set(spec, objects))
        self._wait_ready(api, spec, objects)

        if load:
            if api.get(objects.job) is None:
                api.apply(objects.job, self._job(spec, objects))
            self._wait_job(api, objects.job)
            # Loaded: the seed and the dump's URL have no business staying around.
            self._apply_secret(api, spec, objects.secret, {PASSWORD_KEY: password})

        url = connection_url(spec, password)
        return StepOutput(
            values={"host": host_of(spec), "port": str(PORT), "database": spec.database,
                    "user": USER},
            secrets={"password": self.sealer.seal(password), "url": self.sealer.seal(url)},
        )

    def _load_inputs(self, spec: ContainerDatabaseSpec) -> dict[str, str]:
        if spec.data_policy == DataPolicy.seed:
            assert spec.seed_sql is not None  # _validate
            return {SEED_KEY: spec.seed_sql}
        assert spec.golden_dump_s3_uri is not None  # _validate
        return {DUMP_URL_KEY: self._presign(spec.golden_dump_s3_uri, spec.masking)}

    def _presign(self, uri: str, masking_rules: Sequence[MaskingRule] = ()) -> str:
        """A URL of the dump to restore, checked first. `uri` is a dump, or (`.json`) the
        pointer a golden refresh publishes: then the URL is of the generation's own dump,
        which never changes, so the Job fetches exactly what was checked here."""
        bucket, key = parse_s3_uri(uri)
        s3: S3Client = self.aws.client("s3", AwsTarget(region=self.aws.default_region))
        missing = (f"golden dump {uri} does not exist; run the golden refresh of the source "
                   "first, or choose another data policy")
        try:
            # A missing dump is a user problem (no golden refresh yet), not a Job to fail.
            if key.endswith(".json"):
                pointer = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                key, digest = str(pointer["dump"]), pointer.get("masking")
                s3.head_object(Bucket=bucket, Key=key)
            else:
                digest = (s3.head_object(Bucket=bucket, Key=key).get("Metadata") or {}).get(
                    "masking")
        except ClientError as error:
            if is_error(error, "404", "NoSuchKey", "NoSuchBucket"):
                raise invalid_input(missing) from None
            raise
        if masking_rules:
            self._check_masking(s3, uri, digest, masking_rules)
        return s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key},
            ExpiresIn=int(self.dump_url_ttl.total_seconds()),
        )

    @staticmethod
    def _check_masking(s3: S3Client, uri: str, digest: str | None,
                       wanted: Sequence[MaskingRule]) -> None:
        """A masked clone restores only a dump masked with (at least) its rules: another
        project cloning the same source may have published it with fewer."""
        applied = "[]"
        if digest:
            bucket, rules_key = parse_s3_uri(masking.golden_masking_uri(uri, digest))
            try:
                applied = s3.get_object(Bucket=bucket, Key=rules_key)["Body"].read().decode()
            except ClientError as error:
                if not is_error(error, "404", "NoSuchKey"):
                    raise
        unmet = masking.unmet_rules(wanted, applied)
        if unmet:
            names = ", ".join(f"{r.table}.{r.column} ({r.method.value})" for r in unmet)
            raise invalid_input(f"golden dump {uri} was not masked with: {names}; add them "
                                "to its refresh and run it again")

    def _apply_secret(
        self, api: KubeApi, spec: ContainerDatabaseSpec, ref: Ref, values: Mapping[str, str]
    ) -> None:
        # `data`, not `stringData`: a re-apply of the same values is then a no-op.
        manifest = ref.manifest(
            spec.owner.labels(), type="Opaque",
            data={k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        )
        try:
            api.apply(ref, manifest)
        except ApplicationError as error:
            raise _redact(error, [v for k, v in values.items() if k != SEED_KEY]) from None

    # -- manifests ------------------------------------------------------------------------

    @staticmethod
    def _claim(spec: ContainerDatabaseSpec, ref: Ref) -> Json:
        return ref.manifest(spec.owner.labels(), spec={
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": spec.storage_class,
            "resources": {"requests": {"storage": spec.storage}},
        })

    @staticmethod
    def _service(spec: ContainerDatabaseSpec, ref: Ref) -> Json:
        # Headless: the name resolves to the ready pod itself, stable across restarts.
        return ref.manifest({**spec.owner.labels(), NAME_LABEL: spec.name}, spec={
            "clusterIP": "None",
            "selector": {NAME_LABEL: spec.name},
            "ports": [{"name": "postgres", "port": PORT, "targetPort": PORT,
                       "protocol": "TCP"}],
        })

    @staticmethod
    def _connection_env(spec: ContainerDatabaseSpec, objects: Objects) -> list[Json]:
        return [
            {"name": "PGHOST", "value": host_of(spec)},
            {"name": "PGPORT", "value": str(PORT)},
            {"name": "PGUSER", "value": USER},
            {"name": "PGDATABASE", "value": spec.database},
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {
                "name": objects.secret.name, "key": PASSWORD_KEY}}},
        ]

    def _stateful_set(self, spec: ContainerDatabaseSpec, objects: Objects) -> Json:
        labels = {**spec.owner.labels(), NAME_LABEL: spec.name}
        resources = {"cpu": "250m", "memory": "256Mi"}
        container: Json = {
            "name": "postgres",
            "image": self.image,
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
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {
                        "claimName": objects.claim.name}}],
                },
            },
        })

    def _job(self, spec: ContainerDatabaseSpec, objects: Objects) -> Json:
        # Its own name label: the database's Service must not select the loader's pod.
        labels = {**spec.owner.labels(), NAME_LABEL: objects.job.name}
        resources = {"requests": {"cpu": "100m", "memory": "128Mi"},
                     "limits": {"cpu": "500m", "memory": "512Mi"}}
        env = self._connection_env(spec, objects)
        pod: Json = {"restartPolicy": "Never"}
        if spec.data_policy == DataPolicy.seed:
            source = spec.seed_sql or ""
            pod["containers"] = [{
                "name": "seed", "image": self.image, "command": seed_command(),
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
                "name": "fetch", "image": self.fetch_image, "command": fetch_dump_command(),
                "env": [dump_file, {"name": "DUMP_URL", "valueFrom": {"secretKeyRef": {
                    "name": objects.secret.name, "key": DUMP_URL_KEY}}}],
                "resources": resources, "volumeMounts": [work],
            }]
            pod["containers"] = [{
                "name": "restore", "image": self.image, "command": restore_command(),
                "env": [*env, dump_file], "resources": resources, "volumeMounts": [work],
            }]
            pod["volumes"] = [{"name": "work", "emptyDir": {}}]
        manifest = objects.job.manifest(labels, spec={
            "backoffLimit": 2,
            # Kubernetes fails the Job itself at the deadline; the wait then reports why.
            "activeDeadlineSeconds": max(int(self.load_timeout), 1),
            "template": {"metadata": {"labels": labels}, "spec": pod},
        })
        # What was loaded, for an operator reading the Job (a hash: no content, no URL).
        manifest["metadata"]["annotations"] = {
            "preview.dev/data-load": f"{spec.data_policy}:{_digest(source)}",
        }
        return manifest

    # -- waits ----------------------------------------------------------------------------

    def _wait_ready(self, api: KubeApi, spec: ContainerDatabaseSpec, objects: Objects) -> None:
        ref = objects.stateful_set
        deadline = time.monotonic() + self.ready_timeout
        delays = poll_delays(self.poll_interval)
        while True:
            sts = api.get(ref)
            if sts is None:
                raise ApplicationError(f"{ref.what} disappeared while starting", type=API_ERROR)
            meta, status = sts["metadata"], sts.get("status") or {}
            observed = int(status.get("observedGeneration") or 0) >= int(
                meta.get("generation") or 0)
            ready, updated = (int(status.get(k) or 0) for k in ("readyReplicas",
                                                                 "updatedReplicas"))
            progress: Json = {"stateful_set": ref.what, "observed": observed, "ready": ready,
                              "updated": updated}
            if observed and ready == 1 and updated == 1:
                heartbeat(progress)
                return
            problem = _pod_problem(api, spec.namespace, {NAME_LABEL: spec.name})
            if problem and problem[0]:
                raise ApplicationError(f"{ref.what} cannot start: {problem[1]}",
                                       type=ROLLOUT_FAILED, non_retryable=True)
            # An unbound claim explains an unschedulable pod better than the scheduler does.
            waiting = self._claim_waiting(api, spec, objects.claim) or (
                problem[1] if problem else None)
            if waiting:
                progress["reason"] = waiting
            heartbeat(progress)
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{ref.what} not ready after {self.ready_timeout:.0f}s: "
                    f"{waiting or f'{ready}/1 ready'}",
                    type=ROLLOUT_FAILED, non_retryable=True,
                )
            time.sleep(next(delays))

    @staticmethod
    def _claim_waiting(api: KubeApi, spec: ContainerDatabaseSpec, ref: Ref) -> str | None:
        claim = api.get(ref)
        phase = ((claim or {}).get("status") or {}).get("phase")
        if claim is None or phase == "Bound":
            return None
        return (f"{ref.what} is {phase}: no PersistentVolume of storage class "
                f"{spec.storage_class!r} is bound to it yet")

    def _wait_job(self, api: KubeApi, ref: Ref) -> None:
        deadline = time.monotonic() + self.load_timeout
        delays = poll_delays(self.poll_interval)
        while True:
            job = api.get(ref)
            if job is None:
                raise ApplicationError(f"{ref.what} disappeared while loading data",
                                       type=API_ERROR)
            state = _job_state(api, job)
            heartbeat(state.progress)
            if state.done:
                return
            if state.failed:
                raise ApplicationError(f"loading data with {ref.what} failed: {state.failed}",
                                       type=ROLLOUT_FAILED, non_retryable=True)
            if time.monotonic() >= deadline:
                # Retryable: the next attempt finds the same Job and keeps waiting.
                raise ApplicationError(
                    f"{ref.what} still running after {self.load_timeout:.0f}s", type=API_ERROR
                )
            time.sleep(next(delays))

    def _discard_job(self, api: KubeApi, ref: Ref) -> None:
        api.delete(ref)
        deadline = time.monotonic() + 120
        delays = poll_delays(self.poll_interval)
        while api.get(ref) is not None:
            heartbeat({"job": ref.what, "discarding": True})
            if time.monotonic() >= deadline:
                raise ApplicationError(f"{ref.what} (failed) is not gone yet", type=API_ERROR)
            time.sleep(next(delays))

    # -- ensure absent --------------------------------------------------------------------

    @activity.defn(name=ContainerDatabaseSpec.absent)
    def remove_container_database(self, input: StepInput) -> None:
        spec = input.spec_as(ContainerDatabaseSpec)
        api = self.api(spec.cluster)
        objects = Objects.of(spec)
        for ref in (objects.stateful_set, objects.job, objects.service):
            _remove(api, ref, spec)
        claim = api.get(objects.claim)
        if claim is not None and not is_ours(claim, spec.owner):
            _warn_not_ours(objects.claim, spec.owner)
        else:
            if claim is not None and not claim["metadata"].get("deletionTimestamp"):
                api.delete(objects.claim)
            # Also when the claim is already gone: a retry still waits for the release.
            self._wait_released(api, objects.claim, spec)
        _remove(api, objects.secret, spec)  # last: see the module's docstring

    def _wait_released(self, api: KubeApi, ref: Ref, spec: ContainerDatabaseSpec) -> None:
        """Until the claim is gone and no volume is Bound to it any more.

        The claim itself waits (pvc-protection) for the database pod to be gone.
        """
        started = time.monotonic()
        delays = poll_delays(self.poll_interval)
        while True:
            claim = api.get(ref)
            if claim is not None and not is_ours(claim, spec.owner):
                return  # someone else's claim of that name now: not ours to wait for
            bound = [
                pv["metadata"]["name"] for pv in api.list("PersistentVolume", None)
                if _claimed_by(pv, ref) and (pv.get("status") or {}).get("phase") == "Bound"
            ]
            waited = time.monotonic() - started
            heartbeat({"claim": ref.what, "claim_exists": claim is not None,
                       "bound_volumes": bound, "waited_s": round(waited, 1)})
            if claim is None and not bound:
                return
            if waited > self.release_timeout:
                # Retryable: the next attempt picks up the wait.
                raise ApplicationError(
                    f"{ref.what} not released after {waited:.0f}s"
                    + (f" (still Bound: {', '.join(bound)})" if bound else " (claim remains)"),
                    type=API_ERROR,
                )
            time.sleep(next(delays))

    def activities(self) -> list[Callable[..., Any]]:
        """Every activity of this module, for the worker."""
        return [self.ensure_container_database, self.remove_container_database]


# --- helpers -----------------------------------------------------------------------------


def _validate(spec: ContainerDatabaseSpec) -> None:
    if len(spec.name) > MAX_NAME:
        raise invalid_input(
            f"container database name {spec.name!r} is longer than {MAX_NAME} characters"
        )
    if spec.data_policy == DataPolicy.seed and not spec.seed_sql:
        raise invalid_input(f"container database {spec.name}: data policy seed needs seed_sql")
    if spec.data_policy in (DataPolicy.clone, DataPolicy.masked_clone):
        if not spec.golden_dump_s3_uri:
            raise invalid_input(
                f"container database {spec.name}: data policy {spec.data_policy} needs the "
                "golden dump's S3 location (golden_dump_s3_uri)"
            )
        parse_s3_uri(spec.golden_dump_s3_uri)


def _password_of(secret: Json | None) -> str | None:
    encoded = ((secret or {}).get("data") or {}).get(PASSWORD_KEY)
    return base64.b64decode(encoded).decode() if encoded else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _claimed_by(pv: Json, claim: Ref) -> bool:
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    return bool(ref.get("namespace") == claim.namespace and ref.get("name") == claim.name)


def _remove(api: KubeApi, ref: Ref, spec: ContainerDatabaseSpec) -> bool:
    """Delete if it exists and is ours; False when absent or not ours (left alone)."""
    current = api.get(ref)
    if current is None:
        return False
    if not is_ours(current, spec.owner):
        _warn_not_ours(ref, spec.owner)
        return False
    return api.delete(ref)


def _job_state(api: KubeApi, job: Json) -> JobState:
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []
                  if c.get("status") == "True"}
    progress: Json = {"job": job["metadata"]["name"],
                      **{k: int(status.get(k) or 0) for k in ("active", "succeeded", "failed")}}
    if "Complete" in conditions:
        return JobState(True, progress)
    failed = conditions.get("Failed")
    if failed:
        return JobState(False, progress,
                        failed=f"{failed.get('reason')}: {failed.get('message')}")
    problem = _pod_problem(api, job["metadata"]["namespace"],
                           {"batch.kubernetes.io/job-name": job["metadata"]["name"]})
    if problem:
        if problem[0]:
            return JobState(False, progress, failed=problem[1])
        progress["reason"] = problem[1]
    return JobState(False, progress)


def _pod_problem(
    api: KubeApi, namespace: str, selector: Mapping[str, str]
) -> tuple[bool, str] | None:
    """(fatal, why) for the first pod that is stuck, if any."""
    waiting: tuple[bool, str] | None = None
    pods = api.list("Pod", namespace, selector)
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []),
                   *(status.get("containerStatuses") or [])]:
            state = (cs.get("state") or {}).get("waiting") or {}
            reason = state.get("reason")
            text = f"pod {name} container {cs.get('name')}: {reason}: {state.get('message') or ''}"
            if reason in FATAL_WAITING_REASONS:
                return True, text.rstrip(": ")
            if reason and waiting is None:
                waiting = (False, text.rstrip(": "))
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                waiting = waiting or (
                    False, f"pod {name}: {cond.get('reason')}: {cond.get('message')}")
    return waiting
