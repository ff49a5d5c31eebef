"""Settings travel to child processes (worker, starter) as PREVIEW_* variables."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from engine.settings import Settings


def test_as_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(temporal_address="10.0.0.1:7233", temporal_tls=True,
                        kube_contexts={"hipaa": "/k/hipaa"},
                        github_token=SecretStr("t0ken"), webhook_max_bytes=1234)
    for name, value in original.as_environment().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original
