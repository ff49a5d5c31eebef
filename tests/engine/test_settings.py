"""Settings travel to child processes (worker, starter) as PREVIEW_* variables."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from domain.blueprint import EgressRule
from engine.settings import Settings


def test_as_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(temporal_address="10.0.0.1:7233", temporal_tls=True,
                        kube_contexts={"hipaa": "/k/hipaa"},
                        github_token=SecretStr("t0ken"), webhook_max_bytes=1234,
                        registry_plain_http=["127.0.0.1:5000"],
                        preview_egress=[EgressRule(cidr="10.88.0.1/32", ports=[5432])],
                        preview_database_app_address="10.88.0.1:5432", preview_url_port=8443)
    for name, value in original.as_environment().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original
