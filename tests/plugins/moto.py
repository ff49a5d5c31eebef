"""A real moto server for the test session, on a free loopback port.

Nothing global is set: tests build their boto3 clients explicitly from the fixture
(endpoint, region and fake credentials), so no environment variable leaks into other
tests or into the code under test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import stack.moto
from activities.aws import AwsClients
from stack.ports import free_port

REGION = "eu-west-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
# Seconds moto keeps an ACM certificate PENDING_VALIDATION before ISSUED: long enough
# that the activity has to poll, short enough to keep the tests quick.
ACM_VALIDATION_WAIT = 1


class MotoServer(stack.moto.MotoServer):
    """The local stack's moto server, plus boto3 clients for checks from outside."""

    def __init__(self, port: int, log_path: Path) -> None:
        super().__init__(log_path, port, env={"MOTO_ACM_VALIDATION_WAIT": str(ACM_VALIDATION_WAIT)})
        # One session for every test client: botocore loads each service model once.
        self.session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
        )
        self._clients: dict[tuple[str, str, str | None], Any] = {}

    def client(self, service: str, region: str = REGION, account_id: str | None = None) -> Any:
        """A boto3 client on the moto server; `account_id` reads another (moto) account."""
        key = (service, region, account_id)
        if key in self._clients:
            return self._clients[key]
        client = self.session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            region_name=region,
        )
        self._clients[key] = client
        if account_id is not None:
            # moto's documented header to act as another account.
            def add_account(request: Any, **_: Any) -> None:
                request.headers["x-moto-account-id"] = account_id

            client.meta.events.register("before-send", add_account)
        return client


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    log_dir = Path(tempfile.mkdtemp(prefix="preview-test-moto-"))
    server = MotoServer(free_port(), log_dir / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def moto_reset(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied so the test starts from nothing."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def aws_clients(moto_reset: MotoServer) -> AwsClients:
    """`AwsClients` on the emptied moto server with fake base credentials.

    Function-scoped on purpose: a reset forgets assumed-role keys, so cached role
    credentials must not outlive the test that obtained them.
    """
    return AwsClients(endpoint_url=moto_reset.endpoint_url, region=REGION,
                      session=moto_reset.session)
