"""The scheduled refresh of one source's golden copy, and the schedule that runs it.

restore → mask → verify → (publish) → promote, each an idempotent activity with retries; the
pointer to the current golden copy moves only in `promote`, so a refresh that fails
anywhere before it leaves the previous golden copy in service (and its half-made
generation is discarded). Pruning old generations comes after, and its failure does
not undo a promotion. Publishing (when the request names a bucket) uploads a dump of the
verified copy for container databases, which restore it from S3; it comes before the
promotion so a refresh whose dump cannot be published changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain.contract import (
        DISCARD_GOLDEN,
        MASK_GOLDEN,
        PROMOTE_GOLDEN,
        PRUNE_GOLDEN,
        PUBLISH_GOLDEN,
        RESTORE_GOLDEN,
        VERIFY_GOLDEN,
        ActivityContract,
    )
    from domain.errors import GOLDEN_STATE, MASKING_NOT_VERIFIED, NON_RETRYABLE
    from domain.golden import (
        GoldenDiscardInput,
        GoldenMaskInput,
        GoldenPromoteInput,
        GoldenPruneInput,
        GoldenPublishInput,
        GoldenRefreshRequest,
        GoldenRestoreInput,
        GoldenVerifyInput,
    )
    from domain.masking import golden_dump_uri, golden_generation_name

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=5,
    non_retryable_error_types=[*NON_RETRYABLE, MASKING_NOT_VERIFIED, GOLDEN_STATE],
)
# Dump, restore, masking and verification scale with the source: hours for big ones.
LONG = timedelta(hours=6)
SHORT = timedelta(minutes=10)
# Every long activity heartbeats every few seconds, however long its statement runs.
HEARTBEAT = timedelta(minutes=1)


@workflow.defn(name="GoldenRefreshWorkflow")
class GoldenRefreshWorkflow:
    @workflow.run
    async def run(self, request: GoldenRefreshRequest) -> str:
        """Make, check and put in service a new generation; returns its database name."""
        # A refresh that began before the name took a digest of the run id keeps its name.
        generation = golden_generation_name(request.source_name, workflow.now(),
                                            workflow.info().run_id,
                                            digest=workflow.patched("generation-digest"))
        step = {"source_name": request.source_name, "generation": generation}
        try:
            await self._call(RESTORE_GOLDEN, GoldenRestoreInput(
                **step, source_url=request.source_url, jobs=request.jobs), LONG)
            await self._call(MASK_GOLDEN, GoldenMaskInput(**step, masking=request.masking), LONG)
            await self._call(VERIFY_GOLDEN, GoldenVerifyInput(
                **step, source_url=request.source_url, masking=request.masking,
                scan_min_length=request.scan_min_length), LONG)
            if request.dump_bucket:
                await self._call(PUBLISH_GOLDEN, GoldenPublishInput(
                    **step, dump_uri=golden_dump_uri(request.dump_bucket, request.source_name),
                    masking=request.masking, keep_generations=request.keep_generations), LONG)
            await self._call(PROMOTE_GOLDEN, GoldenPromoteInput(
                **step, masking=request.masking), SHORT)
        except BaseException:
            # Not promoted: the previous golden copy stays in service. Drop what was
            # made of this one (the activity never drops the generation in service).
            try:
                await self._call(DISCARD_GOLDEN, GoldenDiscardInput(**step), SHORT)
            except ActivityError as error:
                workflow.logger.warning("discarding %s failed (%s); the next prune drops it",
                                        generation, error.cause or error)
            raise
        try:
            dropped = await workflow.execute_activity(
                PRUNE_GOLDEN.name,
                GoldenPruneInput(source_name=request.source_name,
                                 keep_generations=request.keep_generations),
                start_to_close_timeout=SHORT, heartbeat_timeout=HEARTBEAT, retry_policy=RETRY,
                result_type=PRUNE_GOLDEN.output,
            )
            workflow.logger.info("golden copy of %s is %s; dropped %s",
                                 request.source_name, generation, dropped)
        except ActivityError as error:
            workflow.logger.warning("pruning golden copies of %s failed (%s); %s is in service",
                                    request.source_name, error.cause or error, generation)
        return generation

    async def _call(self, activity: ActivityContract, arg: object, timeout: timedelta) -> None:
        await workflow.execute_activity(
            activity.name, arg, start_to_close_timeout=timeout, heartbeat_timeout=HEARTBEAT,
            retry_policy=RETRY,
        )


def refresh_workflow_id(source_name: str) -> str:
    return f"golden-refresh/{source_name}"
