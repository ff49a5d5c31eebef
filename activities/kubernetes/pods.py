"""The pods of a preview: how every pod template of ours is hardened, and why pods are
not running (one diagnosis for every wait on pods: an application's rollout, a container
database starting, its data-loading Job)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from activities.kubernetes.api import Json, KubeApi

# What the admission controller says when a pod breaks the namespace's Pod Security
# Standard (e.g. `pods "web-5d8f" is forbidden: violates PodSecurity "restricted:latest"`).
POD_SECURITY_VIOLATION = "violates PodSecurity"


def hardened(
    pod: Json,
    *,
    run_as_non_root: bool = True,
    run_as_user: int | None = None,
    run_as_group: int | None = None,
    fs_group: int | None = None,
) -> Json:
    """`pod` (a pod template's spec) with the least rights PR code needs: no service
    account token, the runtime's default seccomp profile, no privilege escalation, no
    capabilities and, unless opted out, no root. That passes the `restricted` Pod
    Security Standard; without `run_as_non_root` it passes `baseline` only.

    Opting out leaves runAsNonRoot unset (not false): the image's own USER decides.
    """
    context: Json = {"seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_non_root:
        context["runAsNonRoot"] = True
    for key, value in (("runAsUser", run_as_user), ("runAsGroup", run_as_group),
                       ("fsGroup", fs_group)):
        if value is not None:
            context[key] = value
    container_context: Json = {"allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["ALL"]}}
    if run_as_non_root:
        container_context["runAsNonRoot"] = True
    return {
        **pod,
        "automountServiceAccountToken": False,
        "securityContext": context,
        **{
            key: [{**c, "securityContext": dict(container_context)} for c in pod[key]]
            for key in ("initContainers", "containers") if key in pod
        },
    }


# Container states that a kubelet will not get out of by itself: the wait fails now
# instead of at its deadline.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


# What to do when a pod cannot run because of the hardening above (said in the error).
NON_ROOT_HINT = (
    "give the image a numeric non-root USER (or set the application's run_as_user), or "
    "opt the application out of runAsNonRoot in the blueprint's policy, with a reason"
)


@dataclass(frozen=True)
class PodProblem:
    fatal: bool  # stuck for good (FATAL_WAITING_REASONS): waiting longer cannot help
    why: str


def pod_problem(api: KubeApi, namespace: str, selector: Mapping[str, str]) -> PodProblem | None:
    """The first pod `selector` picks (by name) that is stuck, if any (problem_of)."""
    return problem_of(api.list("Pod", namespace, selector))


def problem_of(pods: list[Json]) -> PodProblem | None:
    """The first of these pods (by name) that is stuck, if any.

    A fatal container state anywhere wins; otherwise the first waiting container (init
    containers first), or else the first pod that cannot be scheduled, which can clear
    (autoscaler, quota freed) and so is never fatal.
    """
    waiting: PodProblem | None = None
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []),
                   *(status.get("containerStatuses") or [])]:
            state = (cs.get("state") or {}).get("waiting") or {}
            reason = state.get("reason")
            message = state.get("message") or ""
            why = f"pod {name} container {cs.get('name')}: {reason}: {message}"
            if "runAsNonRoot" in message:
                # The kubelet refuses an image that runs as root (or as a user name).
                why = f"{why}; {NON_ROOT_HINT}"
            if reason in FATAL_WAITING_REASONS:
                return PodProblem(True, why.rstrip(": "))
            if reason and waiting is None:
                waiting = PodProblem(False, why.rstrip(": "))
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                waiting = waiting or PodProblem(
                    False, f"pod {name}: {cond.get('reason')}: {cond.get('message')}")
    return waiting


@dataclass(frozen=True)
class JobState:
    done: bool
    progress: Json
    failed: str | None = None  # the Job (or a pod of it) cannot succeed: why


def job_state(api: KubeApi, job: Json, now: datetime | None = None) -> JobState:
    """Where a Job is: complete, failed (its condition, or a pod stuck for good), or
    still running (and what its pod waits for)."""
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
    uid = job["metadata"].get("uid")
    pods = [pod for pod in api.list("Pod", job["metadata"]["namespace"],
                                    {"batch.kubernetes.io/job-name": job["metadata"]["name"]})
            # Not the pods of an earlier Job of that name, still going away.
            if uid is None or any(owner.get("uid") == uid for owner in
                                  pod["metadata"].get("ownerReferences") or [])]
    if (one_run(job) and "FailureTarget" not in conditions
            and not near_deadline(job, now or datetime.now(UTC))
            and any(exited_cleanly(pod) for pod in pods)):
        # Its one run is over: the Job controller says Complete only seconds later, once
        # the kubelet has torn the pod down; a deploy need not wait for that.
        return JobState(True, {**progress, "succeeded": 1})
    problem = problem_of(pods)
    if problem:
        if problem.fatal:
            return JobState(False, progress, failed=problem.why)
        progress["reason"] = problem.why
    return JobState(False, progress)


def one_run(job: Json) -> bool:
    """A Job that is complete once one pod succeeds (completions and parallelism 1)."""
    spec = job.get("spec") or {}
    return all(int(spec.get(key) or 1) == 1 for key in ("completions", "parallelism"))


def near_deadline(job: Json, now: datetime, margin: float = 10.0) -> bool:
    """Within `margin` seconds of the Job's activeDeadlineSeconds (or past it): the Job
    controller checks the deadline before it counts a run that just ended, so only its
    own condition says how such a run went."""
    deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
    started = (job.get("status") or {}).get("startTime")
    if not deadline or not started:
        return False
    begun = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
    return (now - begun).total_seconds() >= float(deadline) - margin


def exited_cleanly(pod: Json) -> bool:
    """Every container of the pod ended with exit code 0 on its own, for good: not
    restarted, not stopped by a deletion (a Job past its deadline has its pods deleted
    first, and a process may well exit 0 on that SIGTERM), and not a pod the kubelet
    failed (evicted or shut down with the node: its process may exit 0 too)."""
    if ((pod.get("spec") or {}).get("restartPolicy") == "Always"
            or pod["metadata"].get("deletionTimestamp")
            or (pod.get("status") or {}).get("phase") == "Failed"):
        return False
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (pod.get("status") or {}).get("phase") == "Succeeded" or (bool(statuses) and all(
        ((s.get("state") or {}).get("terminated") or {}).get("exitCode") == 0
        for s in statuses))
