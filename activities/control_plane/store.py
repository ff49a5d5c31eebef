"""Activities on the control-plane store: preview slots, and source environments.

The store's database always exists (the starter de-duplicates webhook deliveries in
it), so preview slots are served in every blueprint-source mode; source environments
come from it only when blueprints live in the store (else activities/blueprints.py).
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import QUOTA_EXCEEDED, UNKNOWN_REPOSITORY, invalid_input
from domain.contract import LIST_SWEEP_TARGETS, LOAD_SOURCE_ENVIRONMENT
from domain.plan import sweep_targets
from domain.resources import PreviewSlotSpec, StepInput, StepOutput, SweepTargets
from domain.source import LoadSourceRequest, SourceEnvironment
from store import Store, StoreError


class PreviewSlotActivities:
    """policy.max_live_previews: a slot per live preview, claimed before anything else."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @activity.defn(name=PreviewSlotSpec.present)
    async def claim_preview_slot(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(PreviewSlotSpec)
        live = await self._store.claim_slot(spec.repository, spec.owner.environment,
                                            spec.max_live)
        if live is None:
            raise ApplicationError(
                f"{spec.repository} already has {spec.max_live} live previews, its limit "
                "(policy.max_live_previews): close one, or raise the limit",
                type=QUOTA_EXCEEDED, non_retryable=True,
            )
        return StepOutput(values={"live_previews": str(live)})

    @activity.defn(name=PreviewSlotSpec.absent)
    async def release_preview_slot(self, step: StepInput) -> None:
        await self._store.release_slot(step.spec_as(PreviewSlotSpec).owner.environment)


class StoreSourceActivities:
    """Source environments (blueprints and sealed secrets) registered in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @activity.defn(name=LIST_SWEEP_TARGETS.name)
    async def list_sweep_targets(self) -> SweepTargets:
        environments, skipped = await self._store.source_environments()
        return sweep_targets(environments).model_copy(update={
            "skipped": skipped, "repositories": await self._store.repositories()})

    @activity.defn(name=LOAD_SOURCE_ENVIRONMENT.name)
    async def load_source_environment(self, request: LoadSourceRequest) -> SourceEnvironment:
        try:
            source = await self._store.source_environment(request.repository)
        except StoreError as error:
            raise invalid_input(error.message) from None
        if source is None:
            raise ApplicationError(
                f"No project is registered for repository {request.repository!r}. Register "
                "it by importing its blueprint: `preview blueprint import preview.yaml` (or "
                "POST the file to /api/blueprints), with `project.repository: "
                f"{request.repository}`.",
                type=UNKNOWN_REPOSITORY,
                non_retryable=True,
            )
        return source
