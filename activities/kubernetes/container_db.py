"""Container databases: PostgreSQL as a StatefulSet inside the preview's namespace.

One database is five objects (see container_db_manifests.py): a credentials Secret, a
PersistentVolumeClaim, a headless Service, a StatefulSet of one postgres pod and, for
data policies other than `empty`, a Job that loads the data. Where the cluster has a
VolumeSnapshotClass and a snapshot of the golden volume, a clone's claim is made from
that snapshot instead, and its Job only sets the password (container_db_snapshot.py).

The password is generated once and read back from the Secret on every later run, so a
re-run converges on the same credentials (the data directory keeps the first one
anyway). It leaves the worker only sealed, in `StepOutput.secrets`. The Job is created
once and never re-applied (a Job's template is immutable); a completed Job means the
data is loaded, and its inputs are then dropped from the Secret.

Teardown deletes the StatefulSet, Job and Service, then the claim, waits until its
volume is no longer Bound to it, and deletes the Secret last: a teardown that stops half
way and a create that follows still find the password the data directory was made with.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, is_error, parse_s3_uri
from activities.errors import ROLLOUT_FAILED, invalid_input
from activities.kubernetes.api import (
    API_ERROR,
    NAME_LABEL,
    ClusterClients,
    Json,
    KubeApi,
    Ref,
    ensure_owned,
    get_owned,
    heartbeat,
    is_ours,
    poll_delays,
    redact,
    remove_owned,
    secret_manifest,
    secret_value,
    warn_not_ours,
)
from activities.kubernetes.container_db_manifests import (
    DUMP_URL_KEY,
    GOLDEN_PASSWORD_KEY,
    MAX_NAME,
    PASSWORD_KEY,
    PORT,
    REKEY_KEY,
    SEED_KEY,
    USER,
    Objects,
    claim_manifest,
    connection_url,
    host_of,
    job_manifest,
    rekey_job_manifest,
    service_manifest,
    stateful_set_manifest,
)
from activities.kubernetes.container_db_snapshot import (
    GOLDEN_NAMESPACE,
    VIA_JOB,
    VIA_SNAPSHOT,
    GoldenSnapshot,
    SnapshotObjects,
    claim_source,
    content_manifest,
    golden_snapshot,
    pinned_golden,
    snapshot_manifest,
)
from activities.kubernetes.pods import job_state, pod_problem
from activities.kubernetes.rights import NamespaceRights
from activities.postgres.server import scram_verifier
from domain import masking
from domain.blueprint import DataPolicy, MaskingRule
from domain.resources import AwsTarget, ContainerDatabaseSpec, StepInput, StepOutput
from engine.sealing import Sealer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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
        golden_namespace: str = GOLDEN_NAMESPACE,
        rights: NamespaceRights | None = None,
    ) -> None:
        self.clusters = clusters
        self.rights = rights or NamespaceRights()
        self.sealer = sealer
        self.aws = aws
        self.image = image
        self.fetch_image = fetch_image
        self.poll_interval = poll_interval
        self.ready_timeout = ready_timeout
        self.load_timeout = load_timeout
        self.release_timeout = release_timeout
        self.dump_url_ttl = dump_url_ttl
        self.golden_namespace = golden_namespace  # where golden volume snapshots are

    def api(self, cluster: str) -> KubeApi:
        return KubeApi(self.clusters.get(cluster))

    # -- ensure present -------------------------------------------------------------------

    @activity.defn(name=ContainerDatabaseSpec.present)
    def ensure_container_database(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ContainerDatabaseSpec)
        _validate(spec)
        api = self.api(spec.cluster)
        self.rights.require(api, spec.cluster, spec.namespace, spec.owner)
        objects = Objects.of(spec)
        # Every object is checked before any is written: a foreign one must not leave
        # half a database of ours behind it.
        current = {ref: get_owned(api, ref, spec.owner) for ref in objects.all()}

        password = secret_value(current[objects.secret], PASSWORD_KEY) or secrets.token_urlsafe(24)
        job = current[objects.job]
        loaded = False
        if job is not None:
            state = job_state(api, job)
            loaded = state.done
            if state.failed:
                # An earlier attempt's load failed; both loaders are all-or-nothing, so
                # a fresh Job on the same database is safe (a Job cannot be re-run).
                self._discard_job(api, objects.job)
        load = spec.data_policy != DataPolicy.empty and not loaded
        # A claim's source never changes: a re-run follows the first run's choice.
        claim = current[objects.claim]
        from_snapshot = claim_source(claim) if claim is not None else None
        golden = None
        if load and (from_snapshot or claim is None):
            golden = self._golden_snapshot(api, spec, required=from_snapshot is not None)
            if golden is not None:
                from_snapshot = SnapshotObjects.of(spec).snapshot.name
        if not load:
            load_inputs = {}
        elif golden is not None:
            load_inputs = self._rekey_inputs(spec, golden, password)
        else:
            load_inputs = self._load_inputs(spec)

        self._apply_secret(api, spec, objects.secret, {PASSWORD_KEY: password, **load_inputs})
        if golden is not None:
            self._bind_snapshot(api, spec, golden)
        api.apply(objects.claim, claim_manifest(spec, objects.claim, snapshot=from_snapshot))
        api.apply(objects.service, service_manifest(spec, objects.service))
        api.apply(objects.stateful_set, stateful_set_manifest(spec, objects, self.image))
        self._wait_ready(api, spec, objects)

        if load:
            if api.get(objects.job) is None:
                api.apply(objects.job, rekey_job_manifest(
                    spec, objects, image=self.image, deadline_seconds=self.load_timeout,
                    golden=f"{golden.namespace}/{golden.name}") if golden else job_manifest(
                    spec, objects, image=self.image, fetch_image=self.fetch_image,
                    deadline_seconds=self.load_timeout))
            self._wait_job(api, objects.job)
            # Loaded: the seed, the dump's URL, the golden's password have no business
            # staying around.
            self._apply_secret(api, spec, objects.secret, {PASSWORD_KEY: password})

        url = connection_url(spec, password)
        values = {"host": host_of(spec), "port": str(PORT), "database": spec.database,
                  "user": USER}
        detail = ""
        if spec.data_policy in (DataPolicy.clone, DataPolicy.masked_clone):
            values["clone_method"] = VIA_SNAPSHOT if from_snapshot else VIA_JOB
            detail = (f"volume from VolumeSnapshot {from_snapshot} of the golden volume "
                      "(copy-on-write in the storage system)" if from_snapshot else
                      "golden dump restored by a Job (no VolumeSnapshot of the golden "
                      "volume in this cluster)")
        return StepOutput(
            values=values, detail=detail,
            secrets={"password": self.sealer.seal(password), "url": self.sealer.seal(url)},
        )

    def _golden_snapshot(self, api: KubeApi, spec: ContainerDatabaseSpec, *,
                         required: bool) -> GoldenSnapshot | None:
        """The golden volume's snapshot to make the claim from (None: the restore Job),
        checked like a dump: a masked_clone needs one masked with its rules."""
        pinned = pinned_golden(api, spec) if required else None
        golden = golden_snapshot(api, spec, self.golden_namespace, pinned=pinned)
        if golden is None:
            if required:
                # Retryable: the claim was made from it, and only its password is missing.
                raise ApplicationError(
                    f"the VolumeSnapshot of the golden volume the claim was made from "
                    f"({pinned or 'unknown'}, for {spec.golden_dump_s3_uri}) is not ready "
                    "any more", type=API_ERROR)
            return None
        if spec.masking and spec.golden_dump_s3_uri:
            s3: S3Client = self.aws.client("s3", AwsTarget(region=self.aws.default_region))
            self._check_masking(s3, spec.golden_dump_s3_uri, golden.masking, spec.masking)
        return golden

    @staticmethod
    def _rekey_inputs(spec: ContainerDatabaseSpec, golden: GoldenSnapshot,
                      password: str) -> dict[str, str]:
        # A SCRAM verifier, so no statement log of the database can show the password.
        return {GOLDEN_PASSWORD_KEY: golden.password,
                REKEY_KEY: f"ALTER ROLE {USER} PASSWORD '{scram_verifier(password)}';\n"}

    @staticmethod
    def _bind_snapshot(api: KubeApi, spec: ContainerDatabaseSpec,
                       golden: GoldenSnapshot) -> None:
        """The golden's snapshot, bound into the preview's namespace (claims can only
        name a VolumeSnapshot of their own namespace)."""
        snap = SnapshotObjects.of(spec)
        ensure_owned(api, snap.content, content_manifest(spec, snap, golden), spec.owner)
        ensure_owned(api, snap.snapshot, snapshot_manifest(spec, snap, golden), spec.owner)

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
        try:
            api.apply(ref, secret_manifest(ref, spec.owner.labels(), values))
        except ApplicationError as error:
            raise redact(error, [v for k, v in values.items() if k != SEED_KEY]) from None

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
            problem = pod_problem(api, spec.namespace, {NAME_LABEL: spec.name})
            if problem and problem.fatal:
                raise ApplicationError(f"{ref.what} cannot start: {problem.why}",
                                       type=ROLLOUT_FAILED, non_retryable=True)
            # An unbound claim explains an unschedulable pod better than the scheduler does.
            waiting = self._claim_waiting(api, spec, objects.claim) or (
                problem.why if problem else None)
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
            state = job_state(api, job)
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
            remove_owned(api, ref, spec.owner)
        claim = api.get(objects.claim)
        if claim is not None and not is_ours(claim, spec.owner):
            warn_not_ours(objects.claim, spec.owner)
        else:
            if claim is not None and not claim["metadata"].get("deletionTimestamp"):
                api.delete(objects.claim)
            # Also when the claim is already gone: a retry still waits for the release.
            self._wait_released(api, objects.claim, spec)
        snap = SnapshotObjects.of(spec)  # absent unless the claim was made from a snapshot
        for ref in (snap.snapshot, snap.content):
            remove_owned(api, ref, spec.owner)
        if self.rights.grant(api, spec.cluster, spec.namespace, spec.owner):
            remove_owned(api, objects.secret, spec.owner)  # last: see the module's docstring

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


def _claimed_by(pv: Json, claim: Ref) -> bool:
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    return bool(ref.get("namespace") == claim.namespace and ref.get("name") == claim.name)
