"""Lifecycle jobs: a blueprint's commands run to completion as Kubernetes Jobs in the
preview's namespace (domain.blueprint.Job), and the migration report around a deploy job.

A Job's name says which run it is, so running a step twice is safe: a deploy job is
`job-<name>-<hash of image and command>` (a new commit is a new run; a retry finds its
commit's Job and waits for it, or reuses its result once it completed), a first_deploy
or destroy job is `job-<name>` (once in the namespace's life). A failed Job is deleted
and run again on the next deploy; its failure carries the last lines of its log with
every secret value it was given masked out.

What a job writes to $PREVIEW_OUTPUT (`KEY=value` lines; the container's termination
message file, so at most 4096 bytes) is kept in the Secret `<Job's name>-outputs` and
returned sealed: the applications' Secrets take every key. The migration report (and
the databases' snapshots before the job, so a worker that dies mid-job can still
report) are annotations of the Job. The run before the current one is kept, so a deploy
that fails later restores that commit's result instead of running it again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ROLLOUT_FAILED, invalid_input
from activities.kubernetes.api import (
    MERGE_PATCH,
    Json,
    KubeApi,
    Ref,
    ensure_owned,
    get_owned,
    heartbeat,
    masked,
    poll_delays,
    remove_owned,
    secret_forms,
    secret_manifest,
)
from activities.kubernetes.pods import JobState, hardened, job_state
from activities.kubernetes.workloads import KubernetesActivities
from domain.jobs import JobPhase
from domain.migration import DatabaseSnapshot, MigrationReport, compare, summary_line, violations
from domain.naming import stable_hash
from domain.resources import JobSpec, StepInput, StepOutput

if TYPE_CHECKING:  # a tenant's worker without the preview server never loads asyncpg
    from activities.postgres.migration import LockWatch, MigrationWatcher

OUTPUT_PATH = "/dev/termination-log"  # the kubelet keeps it as the termination message
JOB_LABEL = "preview.dev/job"
BEFORE_ANNOTATION = "preview.dev/migration-before"  # gzip+base64 JSON {database: snapshot}
REPORT_ANNOTATION = "preview.dev/migration-report"  # JSON list of MigrationReport
MAX_ANNOTATION = 200_000  # of the 256 KiB Kubernetes allows for all of an object's
OUTPUT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def job_ref(spec: JobSpec) -> Ref:
    """The Job of this run (see the module's docstring)."""
    if spec.when == JobPhase.deploy:
        run = stable_hash(json.dumps([spec.image, spec.command]), 8)
        return Ref.of("Job", f"job-{spec.name}-{run}", spec.namespace)
    return Ref.of("Job", f"job-{spec.name}", spec.namespace)


def outputs_ref(job: Ref) -> Ref:
    """Where a run's outputs are kept (a Secret: they may be credentials)."""
    return Ref.of("Secret", f"{job.name}-outputs", job.namespace)


def parse_outputs(text: str, job: str) -> dict[str, str]:
    """`KEY=value` lines; blank lines and `#` comments are skipped."""
    outputs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not OUTPUT_KEY.match(key):
            raise invalid_input(f"job {job}: line {number} of $PREVIEW_OUTPUT is not "
                                f"KEY=value with KEY a variable name (letters, digits, _)")
        outputs[key] = value
    return outputs


def unreachable(error: BaseException) -> str:
    """Why the preview server could not be watched, without a connection string."""
    return f"the preview database server did not answer ({type(error).__name__})"


def _pack(snapshots: dict[str, DatabaseSnapshot]) -> str:
    raw = json.dumps({k: v.model_dump(mode="json") for k, v in snapshots.items()})
    return base64.b64encode(gzip.compress(raw.encode())).decode()


def _unpack(text: str) -> dict[str, DatabaseSnapshot]:
    raw = json.loads(gzip.decompress(base64.b64decode(text)))
    return {k: DatabaseSnapshot.model_validate(v) for k, v in raw.items()}


class Watching:
    """The migration report's half of a run: the watched databases' snapshots before the
    job, their locks while it runs, the reports after. The report is a courtesy: a
    server that does not answer costs the report (said in its note), never the deploy."""

    def __init__(self, watcher: MigrationWatcher | None, spec: JobSpec, job: Json | None):
        self.watcher = watcher if spec.watch else None
        self.spec = spec
        self.before: dict[str, DatabaseSnapshot] = {}
        self.locks: dict[str, LockWatch] = {}
        self.note: str | None = None
        if spec.watch and watcher is None:
            self.note = "no migration report: this worker does not reach the preview server"
        elif self.watcher is not None and job is not None:  # a worker died while it ran
            packed = (job["metadata"].get("annotations") or {}).get(BEFORE_ANNOTATION)
            self.before = _unpack(packed) if packed else {}
            self.note = ("partial: the engine's worker restarted while the job ran, so "
                         "locks are sampled from then on only")

    def _lost(self, error: BaseException) -> None:
        self.note = f"no migration report: {unreachable(error)}"

    async def take_before(self) -> None:
        if self.watcher is None:
            return
        try:
            for db in self.spec.watch:
                self.before[db.name] = await self.watcher.snapshot(db.database)
        except Exception as error:  # the report is a courtesy: never fails a deploy
            self.before = {}
            self._lost(error)

    @contextlib.asynccontextmanager
    async def during(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as watches:
            for db in self.spec.watch:
                if self.watcher is None or db.name not in self.before:
                    continue
                try:
                    self.locks[db.name] = await watches.enter_async_context(
                        self.watcher.watch(db.database, self.before[db.name]))
                except Exception as error:  # as above
                    del self.before[db.name]
                    self._lost(error)
            yield

    async def reports(self, seconds: float) -> list[MigrationReport]:
        reports = []
        for db in self.spec.watch:
            if self.watcher is None or db.name not in self.locks:
                continue
            try:
                lingering = await self.watcher.settle(db.database, self.before[db.name])
                after = await self.watcher.snapshot(db.database)
            except Exception as error:  # as above
                self._lost(error)
                continue
            watch = self.locks[db.name]
            report = compare(self.before[db.name], after, watch.locks(), job=self.spec.name,
                             seconds=seconds)
            note = self.note or watch.note or (
                f"partial: {len(lingering)} session(s) opened during the job were still "
                "connected after it, so their rows may be missing" if lingering else None)
            reports.append(report.model_copy(update={"database": db.name, "note": note}))
        return reports


class JobActivities:
    """run_job / remove_job; holds the cluster clients (through `workloads`) and, where
    the worker reaches the preview PostgreSQL server, the migration watcher."""

    def __init__(self, workloads: KubernetesActivities,
                 watcher: MigrationWatcher | None = None, *, log_lines: int = 20) -> None:
        self.workloads = workloads
        self.watcher = watcher
        self.log_lines = log_lines

    def api(self, spec: JobSpec) -> KubeApi:
        return self.workloads.api(spec.cluster)

    @staticmethod
    async def _call(function: Callable[..., Any], *args: Any) -> Any:
        """A blocking Kubernetes call, off the event loop (the watcher samples on it)."""
        return await asyncio.to_thread(function, *args)

    # -- ensure present ---------------------------------------------------------------

    @activity.defn(name=JobSpec.present)
    async def run_job(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(JobSpec)
        if spec.when == JobPhase.destroy:
            return StepOutput(detail="runs first when the preview is removed")
        return await self._run(spec)

    async def _run(self, spec: JobSpec) -> StepOutput:
        api, ref = self.api(spec), job_ref(spec)
        await self._call(self.workloads.rights.require, api, spec.cluster, spec.namespace,
                         spec.owner)
        job: Json | None = await self._call(get_owned, api, ref, spec.owner)
        if job is not None:
            state: JobState = await self._call(job_state, api, job)
            if state.done:
                return await self._result(api, spec, job)  # this run completed before
            if state.failed:
                await self._discard(api, ref)  # a new deploy of the same commit: run again
                job = None
        watching = Watching(self.watcher, spec, job)
        if job is None:
            await watching.take_before()
            await self._call(api.apply, ref, self._manifest(spec, ref, watching.before))
        started = time.monotonic()
        async with watching.during():
            state = await self._wait(api, spec, ref)
        seconds = time.monotonic() - started
        if state.failed:
            raise await self._failure(api, spec, ref, state.failed)
        reports = await watching.reports(seconds)
        outputs = await self._outputs_from_pod(api, spec, ref)
        await self._call(self._record, api, spec, ref, outputs, reports)
        return await self._output(spec, ref, outputs, reports, watching.note)

    def _manifest(self, spec: JobSpec, ref: Ref, before: dict[str, DatabaseSnapshot]) -> Json:
        labels = {**spec.owner.labels(), JOB_LABEL: spec.name}
        env_from: list[Json] = []
        if spec.config_map:
            env_from.append({"configMapRef": {"name": spec.config_map}})
        if spec.secret:
            env_from.append({"secretRef": {"name": spec.secret}})
        container: Json = {
            "name": "job", "image": spec.image, "command": spec.command,
            "envFrom": env_from, "env": [{"name": "PREVIEW_OUTPUT", "value": OUTPUT_PATH}],
            "terminationMessagePath": OUTPUT_PATH, "terminationMessagePolicy": "File",
            "resources": {"requests": {"cpu": spec.resources.cpu,
                                       "memory": spec.resources.memory},
                          "limits": {"cpu": spec.resources.cpu,
                                     "memory": spec.resources.memory}},
        }
        pod = hardened({"restartPolicy": "Never", "containers": [container]},
                       run_as_non_root=spec.run_as_non_root)
        manifest = ref.manifest(labels, spec={
            # One try: a migration that failed half way is for people to read, not to
            # run again on its own; the next deploy runs it again.
            "backoffLimit": 0, "activeDeadlineSeconds": spec.timeout_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod}})
        packed = _pack(before) if before else ""
        if packed and len(packed) <= MAX_ANNOTATION:
            manifest["metadata"]["annotations"] = {BEFORE_ANNOTATION: packed}
        return manifest

    async def _wait(self, api: KubeApi, spec: JobSpec, ref: Ref) -> JobState:
        deadline = time.monotonic() + spec.timeout_seconds + 60  # the Job's own deadline first
        delays = poll_delays(self.workloads.poll_interval)
        while True:
            job = await self._call(api.get, ref)
            if job is None:
                return JobState(False, {}, failed=f"{ref.what} disappeared while it ran")
            state: JobState = await self._call(job_state, api, job)
            heartbeat(state.progress)
            if state.done or state.failed:
                return state
            if time.monotonic() >= deadline:
                return JobState(False, state.progress,
                                failed=f"still running after {spec.timeout_seconds} s")
            await asyncio.sleep(next(delays))

    async def _pod(self, api: KubeApi, spec: JobSpec, ref: Ref) -> Json | None:
        pods: list[Json] = await self._call(api.list, "Pod", spec.namespace,
                                            {"batch.kubernetes.io/job-name": ref.name})
        return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "",
                   default=None)

    async def _outputs_from_pod(self, api: KubeApi, spec: JobSpec, ref: Ref) -> dict[str, str]:
        pod = await self._pod(api, spec, ref)
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        message = "".join(((s.get("state") or {}).get("terminated") or {}).get("message") or ""
                          for s in statuses)
        return parse_outputs(message, spec.name)

    async def _secret_values(self, api: KubeApi, spec: JobSpec) -> list[str]:
        """Every value the job was given in its Secret: what its log must not show."""
        if not spec.secret:
            return []
        secret = await self._call(api.get, Ref.of("Secret", spec.secret, spec.namespace))
        return [base64.b64decode(v).decode(errors="replace")
                for v in ((secret or {}).get("data") or {}).values()]

    async def _failure(self, api: KubeApi, spec: JobSpec, ref: Ref, why: str) -> ApplicationError:
        """The job failed: why, and the last lines of its log with every secret masked."""
        pod = await self._pod(api, spec, ref)
        log = ""
        if pod is not None:
            log = await self._call(lambda: api.log(spec.namespace, pod["metadata"]["name"],
                                                   tail_lines=self.log_lines))
        forms = secret_forms(await self._secret_values(api, spec))
        excerpt = masked(log.strip(), forms)
        message = masked(f"{spec.when.value.replace('_', ' ')} job {spec.name} failed: {why}",
                         forms)
        if excerpt:
            message += f"\nlast lines of its log:\n{excerpt}"
        return ApplicationError(message, type=ROLLOUT_FAILED, non_retryable=True)

    def _record(self, api: KubeApi, spec: JobSpec, ref: Ref, outputs: dict[str, str],
                reports: list[MigrationReport]) -> None:
        """Keep what a completed run made, so running the step again returns it."""
        ensure_owned(api, outputs_ref(ref), secret_manifest(
            outputs_ref(ref), {**spec.owner.labels(), JOB_LABEL: spec.name}, outputs),
            spec.owner)
        text = json.dumps([r.model_dump(mode="json") for r in reports])
        api.request("PATCH", ref.path, body={"metadata": {"annotations": {
            REPORT_ANNOTATION: text if len(text) <= MAX_ANNOTATION else "[]"}}},
            content_type=MERGE_PATCH, what=ref.what)
        # Runs of older commits are done with, but the one before this: a deploy that
        # fails after this step restores that commit's step, which finds its run there
        # instead of running an older migration again.
        older = sorted((j for j in api.list("Job", spec.namespace, {JOB_LABEL: spec.name})
                        if j["metadata"]["name"] != ref.name),
                       key=lambda j: j["metadata"].get("creationTimestamp") or "")
        for old in older[:-1]:
            run = Ref.of("Job", old["metadata"]["name"], spec.namespace)
            remove_owned(api, run, spec.owner)
            remove_owned(api, outputs_ref(run), spec.owner)

    async def _result(self, api: KubeApi, spec: JobSpec, job: Json) -> StepOutput:
        """The result of a run that completed before (a retried step, a first_deploy job
        on a later deploy)."""
        secret = await self._call(get_owned, api, outputs_ref(job_ref(spec)), spec.owner)
        outputs = {k: base64.b64decode(v).decode()
                   for k, v in ((secret or {}).get("data") or {}).items()}
        text = (job["metadata"].get("annotations") or {}).get(REPORT_ANNOTATION) or "[]"
        reports = [MigrationReport.model_validate(r) for r in json.loads(text)]
        return await self._output(spec, job_ref(spec), outputs, reports, None,
                            again=spec.when == JobPhase.first_deploy)

    async def _output(self, spec: JobSpec, ref: Ref, outputs: dict[str, str],
                      reports: list[MigrationReport], note: str | None, *,
                      again: bool = False) -> StepOutput:
        if reports:
            problems = [v for r in reports for v in violations(r, spec.limits)]
            if problems:
                raise ApplicationError("; ".join(problems), type=ROLLOUT_FAILED,
                                       non_retryable=True)
        detail = "; ".join(summary_line(r) for r in reports) or note or (
            "ran once, at the first deploy" if again else f"completed ({ref.name})")
        seal = self.workloads.sealer.seal  # may ask a KMS: off the event loop
        return StepOutput(
            values={"job": ref.name,
                    **({"report": json.dumps([r.model_dump(mode="json") for r in reports])}
                       if reports else {})},
            secrets={k: await self._call(seal, v) for k, v in outputs.items()}, detail=detail)

    async def _discard(self, api: KubeApi, ref: Ref) -> None:
        await self._call(api.delete, ref)
        delays = poll_delays(self.workloads.poll_interval)
        deadline = time.monotonic() + 120
        while await self._call(api.get, ref) is not None:
            heartbeat({"job": ref.what, "discarding": True})
            if time.monotonic() >= deadline:
                raise ApplicationError(f"{ref.what} (failed) is not gone yet", type="ApiError")
            await asyncio.sleep(next(delays))

    # -- ensure absent ----------------------------------------------------------------

    @activity.defn(name=JobSpec.absent)
    async def remove_job(self, input: StepInput) -> None:
        spec = input.spec_as(JobSpec)
        api = self.api(spec)
        if spec.when == JobPhase.destroy:
            await self._destroy(api, spec)
        runs = {Ref.of("Job", job["metadata"]["name"], spec.namespace) for job in
                await self._call(api.list, "Job", spec.namespace, {JOB_LABEL: spec.name})}
        runs.add(job_ref(spec))  # its outputs may outlive a Job deleted by hand
        for run in sorted(runs, key=lambda ref: ref.name):
            await self._call(remove_owned, api, run, spec.owner)
        # Each run's outputs by name: the worker may not list Secrets (deploy/helm RBAC).
        if await self._call(self.workloads.rights.grant, api, spec.cluster, spec.namespace,
                            spec.owner):
            for run in runs:
                await self._call(remove_owned, api, outputs_ref(run), spec.owner)

    async def _destroy(self, api: KubeApi, spec: JobSpec) -> None:
        """Run the destroy job before the rest goes. Its failure is logged, not raised: a
        teardown that stopped here would leave everything else behind."""
        namespace = await self._call(api.get, Ref.of("Namespace", spec.namespace))
        if namespace is None or namespace["metadata"].get("deletionTimestamp"):
            return  # nothing left to run it in (removed behind our back)
        try:
            await self._run(spec.model_copy(update={"when": JobPhase.first_deploy}))
        except ApplicationError as error:
            if not error.non_retryable:
                raise
            activity.logger.warning("destroy job %s failed, removing the preview anyway: %s",
                                    spec.name, error.message)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.run_job, self.remove_job]
