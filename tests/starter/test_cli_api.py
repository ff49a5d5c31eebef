"""The `preview` commands over the HTTP API (starter.cli_api), against the app in a real
uvicorn server on 127.0.0.1, as the commands would reach it."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from domain.blueprint_file import parse_blueprint
from starter import cli_api
from tests.starter.api_support import ADMIN, EXAMPLE, SECRET


def run_cli(argv: list[str], url: str, token: str | None = ADMIN, stdin: str = "",
            monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    assert monkeypatch is not None
    if token is None:
        monkeypatch.delenv(cli_api.TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(cli_api.TOKEN_ENV, token)
    monkeypatch.setenv(cli_api.URL_ENV, url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    parser = argparse.ArgumentParser(prog="preview")
    cli_api.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


async def test_cli_commands(
    live_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"cli-{uuid.uuid4().hex[:6]}"
    source = tmp_path / "preview.yaml"
    source.write_text(EXAMPLE.read_text().replace("name: hello-world", f"name: {name}")
                      .replace("Codertocat/Hello-World", f"acme/{name}"))

    def cli(*argv: str, stdin: str = "", token: str | None = ADMIN) -> tuple[int, str, str]:
        status = run_cli(list(argv), live_api, token, stdin, monkeypatch)
        out, err = capsys.readouterr()
        return status, out, err

    # The CLI is synchronous (httpx.Client): run it off the event loop.
    async def acli(*argv: str, stdin: str = "", token: str | None = ADMIN
                   ) -> tuple[int, str, str]:
        return await asyncio.to_thread(cli, *argv, stdin=stdin, token=token)

    status, out, _ = await acli("blueprint", "import", str(source))
    assert status == 0 and "  worker: DATABASE_URL, DATABASE_URL_MAIN\n" in out
    status, out, _ = await acli("projects", "list")
    assert status == 0 and out.startswith("NAME") and name in out
    status, out, _ = await acli("projects", "list", "--json")
    assert status == 0 and name in [p["name"] for p in json.loads(out)]
    status, out, _ = await acli("vars", "set", name, "GREETING=hello world", "--applies-to",
                                "previews")
    assert (status, out.strip()) == (0, "variable GREETING created")
    status, out, _ = await acli("vars", "list", name, "--key", "GREETING")
    assert status == 0 and "hello world" in out and "previews" in out
    status, out, _ = await acli("secrets", "set", name, "API_KEY", stdin=SECRET + "\n")
    assert (status, out.strip()) == (0, "secret API_KEY created")
    status, out, _ = await acli("secrets", "set", name, "API_KEY", stdin=SECRET + "\n")
    assert (status, out.strip()) == (0, "secret API_KEY updated")
    status, out, err = await acli("secrets", "list", name)
    assert status == 0 and "API_KEY" in out and SECRET not in out + err
    status, out, _ = await acli("blueprint", "export", name)
    assert status == 0 and parse_blueprint(out).project.name == name
    assert "GREETING" in out and SECRET not in out
    exported = tmp_path / "out.json"
    assert (await acli("blueprint", "export", name, "--format", "json", "-o",
                       str(exported)))[0] == 0
    assert json.loads(exported.read_text())["project"]["name"] == name
    status, out, _ = await acli("tokens", "create", "ci", "--project", name)
    assert status == 0 and out.strip().startswith("pvt_")
    assert (await acli("projects", "list", "--json", token=out.strip()))[0] == 0

    # Failures: a message and exit 1, no traceback.
    status, _, err = await acli("secrets", "set", name, "EMPTY", stdin="")
    assert status == 1 and "no value given" in err
    status, _, err = await acli("projects", "list", token=None)
    assert status == 1 and cli_api.TOKEN_ENV in err
    status, _, err = await acli("projects", "list", token="wrong")
    assert status == 1 and "not valid" in err
    status, _, err = await acli("vars", "set", name, "NOEQUALS")
    assert status == 1 and "KEY=VALUE" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(source.read_text().replace("replicas: 2", "replicas: lots"))
    status, _, err = await acli("blueprint", "import", str(broken))
    assert status == 1 and f"{broken}:" in err and "applications[0].replicas" in err
    status, _, err = await acli("projects", "delete", name)
    assert status == 1 and "--yes" in err
    assert (await acli("projects", "delete", name, "--yes"))[0] == 0
    assert SECRET not in caplog.text


def test_cli_validate_and_schema(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser(prog="preview")
    cli_api.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["blueprint", "validate", str(EXAMPLE)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "valid blueprint" in out
    assert "  web: no connection URLs\n" in out
    assert "  api: DATABASE_URL, DATABASE_URL_MAIN, REDIS_URL, REDIS_URL_SESSIONS\n" in out
    target = tmp_path / "schema.json"
    args = parser.parse_args(["blueprint", "schema", "-o", str(target)])
    assert args.func(args) == 0
    committed = Path(__file__).parents[2] / "schema" / "preview.schema.json"
    assert target.read_text() == committed.read_text()
    assert yaml.safe_load(target.read_text())["title"] == "preview.yaml"
