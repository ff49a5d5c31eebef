"""A recording stand-in for every resource activity, for tests of the saga's logic.

The saga runner is generic over activities; these record what exists so a test can
assert, after any failure or teardown, that nothing is left. End-to-end tests use the
real activities against the real servers instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.contract import (
    LIST_AWS_ENVIRONMENTS,
    LIST_CHANGED_FILES,
    LIST_KUBE_ENVIRONMENTS,
    LIST_PREVIEW_DATABASES,
    PUBLISH_FEEDBACK,
    spec_types,
)
from domain.feedback import ChangedFilesRequest, Feedback
from domain.resources import (
    AwsSpec,
    AwsSweepInput,
    ImageSpec,
    KubeSpec,
    KubeSweepInput,
    PostgresCloneSpec,
    PreviewDatabase,
    Spec,
    StepInput,
    StepOutput,
)
from domain.secrets import SealedValue

SPEC_CLASSES: list[type[Spec]] = list(spec_types())


def spec_key(spec: Spec) -> str:
    name = (
        getattr(spec, "name", None)
        or getattr(spec, "database", None)
        or getattr(spec, "identifier", None)
        or ",".join(getattr(spec, "hosts", []))
    )
    if isinstance(spec, ImageSpec):
        name = f"{spec.repository}:{spec.tag}"
    return f"{getattr(spec, 'kind', '?')}:{name}"


class Inventory:
    def __init__(self) -> None:
        self.present: dict[str, Spec] = {}
        self.calls: list[str] = []
        self.fail_on: set[str] = set()  # "ensure_application:web" style
        self.fail_if: list[Callable[[str, Spec], bool]] = []
        self.feedback: list[Feedback] = []
        self.scaled: dict[str, int] = {}
        self.not_yet: dict[str, int] = {}  # spec key → how many times to answer "waiting"
        self.changed: list[str] = []  # the files every pull request changes
        # activity name → (reached, release): the activity signals `reached`, then waits
        # for the test to set `release`, so a test can act while a step is in flight.
        self.holds: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}

    def hold(self, activity_name: str) -> tuple[asyncio.Event, asyncio.Event]:
        self.holds[activity_name] = (asyncio.Event(), asyncio.Event())
        return self.holds[activity_name]

    async def _held(self, activity_name: str) -> None:
        if activity_name in self.holds:
            reached, release = self.holds[activity_name]
            reached.set()
            await release.wait()

    def _maybe_fail(self, activity_name: str, spec: Spec) -> None:
        if (
            f"{activity_name}:{getattr(spec, 'name', '')}" in self.fail_on
            or activity_name in self.fail_on
            or any(f(activity_name, spec) for f in self.fail_if)
        ):
            raise ApplicationError(
                f"injected failure in {activity_name}", type="Injected", non_retryable=True
            )

    def activities(self) -> list[Callable[..., Any]]:
        made: list[Callable[..., Any]] = []
        for cls in SPEC_CLASSES:
            made.append(self._present(cls.present))
            if cls.absent:
                made.append(self._absent(cls.absent))
        for cls in SPEC_CLASSES:
            if cls.check:
                made.append(self._check(cls.check))
        for cls in SPEC_CLASSES:
            if cls.sleep and cls.wake:
                made += [self._scale(cls, cls.sleep, 0), self._scale(cls, cls.wake, None)]
        made += [
            self._feedback(),
            *self._listings(),
        ]
        return made

    def _listings(self) -> list[Callable[..., Any]]:
        """The sweeper's listings over this world, which teardown receipts use too."""

        def by_environment(kind: type[Spec], where: Callable[[Any], bool]) -> dict[str, list[str]]:
            found: dict[str, list[str]] = {}
            for key, spec in self.present.items():
                if isinstance(spec, kind) and where(spec):
                    found.setdefault(spec.owner.environment, []).append(key)
            return found

        @activity.defn(name=LIST_KUBE_ENVIRONMENTS.name)
        async def list_kube(request: KubeSweepInput) -> dict[str, list[str]]:
            return by_environment(KubeSpec, lambda s: s.cluster == request.cluster)

        @activity.defn(name=LIST_AWS_ENVIRONMENTS.name)
        async def list_aws(request: AwsSweepInput) -> dict[str, list[str]]:
            return by_environment(AwsSpec, lambda s: s.target == request.target)

        @activity.defn(name=LIST_PREVIEW_DATABASES.name)
        async def list_databases() -> list[PreviewDatabase]:
            return [PreviewDatabase(database=s.database, environment=s.owner.environment)
                    for s in self.present.values() if isinstance(s, PostgresCloneSpec)]

        @activity.defn(name=LIST_CHANGED_FILES.name)
        async def changed_files(request: ChangedFilesRequest) -> list[str]:
            self.calls.append(f"{LIST_CHANGED_FILES.name}:{request.pr_number}")
            return list(self.changed)

        return [list_kube, list_aws, list_databases, changed_files]

    def _present(self, name: str) -> Callable[..., Any]:
        @activity.defn(name=name)
        async def present(input: StepInput) -> StepOutput:
            self.calls.append(f"{name}:{spec_key(input.spec)}")
            key = spec_key(input.spec)
            if self.not_yet.get(key, 0) > 0:  # e.g. an image CI has not pushed yet
                self.not_yet[key] -= 1
                return StepOutput(waiting=f"waiting for {key}")
            # Created before the failure: a half-done step the saga must still undo.
            # (A step with nothing to remove, like an image check, leaves nothing.)
            if type(input.spec).absent:
                self.present[key] = input.spec
            self._maybe_fail(name, input.spec)
            output = StepOutput(values={"made": key})
            if input.spec.kind == "postgres_clone":
                output.secrets["url"] = SealedValue(
                    key_id="test", wrapped_key="", nonce="", ciphertext=""
                )
            return output

        return present

    def _absent(self, name: str) -> Callable[..., Any]:
        @activity.defn(name=name)
        async def absent(input: StepInput) -> None:
            self.calls.append(f"{name}:{spec_key(input.spec)}")
            await self._held(name)
            self._maybe_fail(name, input.spec)
            self.present.pop(spec_key(input.spec), None)

        return absent

    def _check(self, name: str) -> Callable[..., Any]:
        @activity.defn(name=name)
        async def check(input: StepInput) -> str:
            self.calls.append(f"{name}:{spec_key(input.spec)}")
            key = spec_key(input.spec)
            return "" if key in self.present else f"{key} is gone"

        return check

    def _scale(self, cls: type[Spec], name: str, replicas: int | None) -> Callable[..., Any]:
        async def scale(spec: Any) -> None:
            self.calls.append(f"{name}:{spec.name}")
            self.scaled[spec.name] = getattr(spec, "replicas", 1) if replicas is None else replicas

        # Typed as the kind it scales, so the SDK gives it that kind's spec.
        scale.__annotations__ = {"spec": cls, "return": None}
        return activity.defn(name=name)(scale)

    def _feedback(self) -> Callable[..., Any]:
        @activity.defn(name=PUBLISH_FEEDBACK.name)
        async def publish(feedback: Feedback) -> None:
            self.feedback.append(feedback)

        return publish
