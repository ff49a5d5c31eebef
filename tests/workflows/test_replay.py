"""Recorded lifecycles replay against today's workflow code: a non-deterministic change
(one that would break running previews on deploy) fails here, not in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from engine.client import data_converter
from engine.settings import Settings
from workflows.preview import PreviewEnvironmentWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_recorded() -> None:
    names = {p.stem for p in HISTORIES}
    # Before and after the contract change (image waits, path filters, receipts).
    assert {"create_redeploy_destroy", "failed_create_compensated",
            "create_redeploy_destroy.v2", "failed_create_compensated.v2",
            "skipped_by_path_filters.v2",
            # Before caches slept with the applications (the `sleep-caches` patch).
            "sleep_wake_with_cache.v2",
            # A Compose file and a chart folder read from the PR's repository.
            "repository_files.v4"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=[PreviewEnvironmentWorkflow],
                        data_converter=data_converter(Settings()))
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer.replay_workflow(history)  # raises on non-determinism
