"""When a Job's one run is over (activities/kubernetes/pods.py job_state): as soon as its
pod's containers exit 0 on their own, without waiting seconds for the Job controller's
Complete; never for a pod stopped by a deletion (a Job past its deadline) or failed by
the kubelet, one that restarts, an earlier Job's pod, a Job the controller already means
to fail, or one whose deadline is seconds away. The real node runs the same
cases end to end in test_jobs.py; here each is pinned on its own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from activities.kubernetes.pods import job_state

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
JOB: dict[str, Any] = {
    "metadata": {"name": "job-migrate-1", "namespace": "shop-pr-1", "uid": "u-1"},
    "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600},
    "status": {"active": 1, "startTime": "2026-12-07T11:59:00Z"}}


def pod(exit_codes: list[int | None], **more: Any) -> dict[str, Any]:
    """A Job's pod whose containers ended with these codes (None: still running)."""
    return {"metadata": {"name": "job-migrate-1-abcde", "ownerReferences": [
                {"kind": "Job", "name": "job-migrate-1", "uid": more.pop("owner", "u-1")}],
                **more.pop("metadata", {})},
            "spec": {"restartPolicy": more.pop("restart", "Never")},
            "status": {"phase": more.pop("phase", "Running"), "containerStatuses": [
                {"name": f"c{i}", "state": {"running": {}} if code is None else
                 {"terminated": {"exitCode": code, "reason": "Completed"}}}
                for i, code in enumerate(exit_codes)]}}


class Pods:
    """KubeApi's one call job_state makes beyond the Job: listing its pods."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = list(pods)

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        assert (kind, namespace, selector) == (
            "Pod", "shop-pr-1", {"batch.kubernetes.io/job-name": "job-migrate-1"})
        return self.pods


def test_a_run_that_exited_zero_is_done_before_the_job_says_complete() -> None:
    state = job_state(Pods(pod([0, 0])), JOB, NOW)  # type: ignore[arg-type]
    assert (state.done, state.failed, state.progress["succeeded"]) == (True, None, 1)


@pytest.mark.parametrize(("pods", "job"), [
    ([pod([0, None])], JOB),  # one container still runs
    ([pod([0], phase="Failed")], JOB),  # evicted, or its node shut down: the Job retries
    ([pod([0], owner="u-0")], JOB),  # the pod of an earlier Job of that name
    # Its deadline is seconds away: the controller may still call the run failed.
    ([pod([0])], {**JOB, "status": {**JOB["status"], "startTime": "2026-12-07T11:50:05Z"}}),
    ([pod([1])], JOB),  # failed: the Job's Failed condition says why, soon
    ([pod([0], metadata={"deletionTimestamp": "2026-12-07T12:00:00Z"})], JOB),  # deadline
    ([pod([0], restart="Always")], JOB),
    ([pod([0])], {**JOB, "status": {"conditions": [{"type": "FailureTarget",
                                                     "status": "True"}]}}),
    ([pod([0])], {**JOB, "spec": {"completions": 3}}),  # one of three runs
    ([], JOB),
])
def test_anything_else_is_not_done_yet(pods: list[dict[str, Any]], job: dict[str, Any]) -> None:
    assert not job_state(Pods(*pods), job, NOW).done  # type: ignore[arg-type]
