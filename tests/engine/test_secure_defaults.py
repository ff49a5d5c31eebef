"""Outside the local profile, services refuse secrets that are written in the source."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from engine.settings import DEVELOPMENT_SECRETS, InsecureSettings, Settings, generated_secrets

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [["-m", "worker"], ["-m", "starter"]]


def strong(**overrides: str) -> dict[str, str]:
    """PREVIEW_* variables with every secret set to a value of its own."""
    env = {f"PREVIEW_{name.upper()}": value
           for name, value in generated_secrets_for_test().items()}
    env.update(overrides)
    return env


def generated_secrets_for_test() -> dict[str, str]:
    return {name: f"{value}-but-not-this-one" if not name.endswith("keys") else
            "k-1:" + "QUJD" * 10 + "QUJDRA==" for name, value in DEVELOPMENT_SECRETS.items()}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    # Temporal is unreachable on purpose: the check must come before any connection.
    clean.update({"PREVIEW_TEMPORAL_ADDRESS": "127.0.0.1:9", **env})
    return subprocess.run([sys.executable, *argv], env=clean, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("argv", SERVICES, ids=["worker", "starter"])
def test_a_service_on_built_in_secrets_exits_naming_every_variable(argv: list[str]) -> None:
    answer = run(argv, {})
    assert answer.returncode != 0
    for name in DEVELOPMENT_SECRETS:
        assert f"PREVIEW_{name.upper()}" in answer.stderr, answer.stderr
    for value in DEVELOPMENT_SECRETS.values():
        assert value not in answer.stderr  # names the variable, never echoes a value


@pytest.mark.parametrize("argv", SERVICES, ids=["worker", "starter"])
def test_one_built_in_secret_among_real_ones_is_named_alone(argv: list[str]) -> None:
    env = strong(PREVIEW_MASKING_KEY=DEVELOPMENT_SECRETS["masking_key"])
    answer = run(argv, env)
    assert answer.returncode != 0
    assert "PREVIEW_MASKING_KEY is unset or set to the development value" in answer.stderr
    assert "PREVIEW_CODEC_KEYS" not in answer.stderr


def test_the_local_profile_accepts_development_secrets_and_real_ones_pass() -> None:
    Settings(profile="local").require_secure("worker")
    real = Settings.model_validate({"profile": "production", **generated_secrets_for_test()})
    real.require_secure("worker")
    with pytest.raises(InsecureSettings, match="PREVIEW_MASTER_KEYS"):
        real.model_copy(update={"master_keys": SecretStr(DEVELOPMENT_SECRETS["master_keys"])}
                        ).require_secure("worker")
    # With KMS wrapping new values, the master keys only unwrap old ones: not required.
    real.model_copy(update={"master_keys": SecretStr(DEVELOPMENT_SECRETS["master_keys"]),
                            "kms_key_id": "alias/preview"}).require_secure("worker")


def test_the_local_stack_makes_random_secrets_once_per_state_folder(tmp_path: Path) -> None:
    first = generated_secrets(tmp_path)
    assert set(first) == set(DEVELOPMENT_SECRETS)
    assert not set(first.values()) & set(DEVELOPMENT_SECRETS.values())
    assert generated_secrets(tmp_path) == first  # kept, not remade
    assert generated_secrets(tmp_path / "other") != first
    mode = stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode)
    assert mode == 0o600
    settings = Settings.model_validate({"profile": "production", **first})
    settings.require_secure("starter")  # strong enough for production too
