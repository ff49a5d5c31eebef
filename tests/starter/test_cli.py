"""The `preview` command against a real Temporal server and a running preview."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from temporalio.client import Client

from stack.temporal import TemporalDevServer
from starter import cli
from tests.workflows.harness import BLUEPRINT, Harness, pull_request
from workflows.preview import PreviewState


@pytest.fixture
def blueprint_dir(tmp_path: Path) -> Path:
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(BLUEPRINT))
    return tmp_path


async def test_status_extend_history_and_destroy(
    temporal_client: Client, temporal_server: TemporalDevServer, blueprint_dir: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PREVIEW_TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("COLUMNS", "200")
    harness = Harness(temporal_client, blueprint_dir)
    async with harness.worker():
        handle = await harness.deploy(pull_request(950))
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        capsys.readouterr()

        assert await cli.run(["status", "acme/shop", "950"]) == 0
        out = capsys.readouterr().out
        assert "ready" in out and "http://web-pr-950.preview.localhost" in out

        assert await cli.run(["extend", "acme/shop", "950", "24"]) == 0
        assert "expires" in capsys.readouterr().out

        assert await cli.run(["history", "acme/shop", "950"]) == 0
        history = capsys.readouterr().out
        assert "received deploy" in history
        assert "done: ensure namespace" in history
        assert "done: ensure application web at aaaaaaa" in history

        assert await cli.run(["destroy", "acme/shop", "950", "--reason", "cli test"]) == 0
        result = await handle.result()
    assert result.state == PreviewState.destroyed
    assert harness.inventory.present == {}


async def test_sweeper_schedule_is_installed_and_keeps_an_operators_pause(
    temporal_client: Client, temporal_server: TemporalDevServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starter.schedules import SWEEPER_SCHEDULE_ID

    monkeypatch.setenv("PREVIEW_TEMPORAL_ADDRESS", temporal_server.address)
    assert await cli.run(["sweep", "--every-hours", "6"]) == 0
    handle = temporal_client.get_schedule_handle(SWEEPER_SCHEDULE_ID)
    described = await handle.describe()
    assert described.schedule.spec.intervals[0].every.total_seconds() == 6 * 3600
    assert "dry run" in (described.schedule.state.note or "")
    await handle.pause(note="operator pause")
    assert await cli.run(["sweep", "--every-hours", "3", "--apply"]) == 0
    described = await handle.describe()
    assert described.schedule.spec.intervals[0].every.total_seconds() == 3 * 3600
    assert described.schedule.state.paused, "an update must not undo an operator's pause"
    await handle.delete()
