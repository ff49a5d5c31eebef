"""docker-compose.yml cannot run here (no Docker engine), so check it agrees with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.settings import Settings

ROOT = Path(__file__).parents[1]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_engine_variable_is_a_setting() -> None:
    fields = {f"PREVIEW_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "starter"):
        env = compose()["services"][name]["environment"]
        preview_vars = {k for k in env if k.startswith("PREVIEW_")}
        assert preview_vars, name
        assert preview_vars <= fields, f"{name}: unknown settings {preview_vars - fields}"


def test_services_and_ports_line_up() -> None:
    services = compose()["services"]
    assert {"postgres", "temporal", "temporal-ui", "moto", "worker", "starter"} <= set(services)
    env = services["starter"]["environment"]
    assert services["starter"]["ports"] == [f"127.0.0.1:{env['PREVIEW_LISTEN_PORT']}:"
                                            f"{env['PREVIEW_LISTEN_PORT']}"]
    host, port = env["PREVIEW_TEMPORAL_ADDRESS"].split(":")
    assert host == "temporal" and services["temporal"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert services["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"].endswith("/codec")
    # Every published port binds to loopback only.
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"
    for command in (services["worker"]["command"], services["starter"]["command"]):
        module = command[-1]
        assert (ROOT / f"{module}.py").exists() or (ROOT / module / "__main__.py").exists()
