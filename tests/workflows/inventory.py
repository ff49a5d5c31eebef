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

from domain.contract import spec_types
from domain.feedback import Feedback
from domain.resources import ApplicationSpec, Spec, StepInput, StepOutput
from domain.secrets import SealedValue

SPEC_CLASSES: list[type[Spec]] = list(spec_types())


def spec_key(spec: Spec) -> str:
    name = (
        getattr(spec, "name", None)
        or getattr(spec, "database", None)
        or getattr(spec, "identifier", None)
        or ",".join(getattr(spec, "hosts", []))
    )
    return f"{getattr(spec, 'kind', '?')}:{name}"


class Inventory:
    def __init__(self) -> None:
        self.present: dict[str, Spec] = {}
        self.calls: list[str] = []
        self.fail_on: set[str] = set()  # "ensure_application:web" style
        self.fail_if: list[Callable[[str, Spec], bool]] = []
        self.feedback: list[Feedback] = []
        self.scaled: dict[str, int] = {}
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
        made += [
            self._scale(ApplicationSpec.sleep or "", 0),
            self._scale(ApplicationSpec.wake or "", None),
            self._feedback(),
        ]
        return made

    def _present(self, name: str) -> Callable[..., Any]:
        @activity.defn(name=name)
        async def present(input: StepInput) -> StepOutput:
            self.calls.append(f"{name}:{spec_key(input.spec)}")
            # Created before the failure: a half-done step the saga must still undo.
            self.present[spec_key(input.spec)] = input.spec
            self._maybe_fail(name, input.spec)
            output = StepOutput(values={"made": spec_key(input.spec)})
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

    def _scale(self, name: str, replicas: int | None) -> Callable[..., Any]:
        @activity.defn(name=name)
        async def scale(spec: ApplicationSpec) -> None:
            self.calls.append(f"{name}:{spec.name}")
            self.scaled[spec.name] = spec.replicas if replicas is None else replicas

        return scale

    def _feedback(self) -> Callable[..., Any]:
        @activity.defn(name="publish_feedback")
        async def publish(feedback: Feedback) -> None:
            self.feedback.append(feedback)

        return publish
