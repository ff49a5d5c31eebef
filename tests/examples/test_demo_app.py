"""The demo application (examples/demo), built with a commit stamped and run as real
processes against a real PostgreSQL and a real Redis: the api reads the first customer
and counts visits, the web page shows what it runs and what the api said (and says so
when the api is down), the worker counts customers; SIGTERM stops each one cleanly, and
no password reaches an answer or a log line."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from stack import images
from stack.ports import free_port, stop_group
from stack.postgres import PostgresServer
from tests.examples.support import redis_call
from tests.polling import wait_until

COMMIT = "c0ffee0123456789abcdef0123456789abcdef01"
HEAD_SHA = "feedface0123456789abcdef0123456789abcdef"
DB_PASSWORD = f"db-{secrets.token_hex(12)}"
REDIS_PASSWORD = f"redis-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def demo_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        pytest.skip("no `go` to build examples/demo")
    return images.build_demo(COMMIT, tmp_path_factory.mktemp("demo-bin"))


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--requirepass", REDIS_PASSWORD],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        def pong() -> bool:
            assert process.poll() is None, f"redis-server exited: {log.read_text()}"
            try:
                return redis_call(port, REDIS_PASSWORD, "PING") == b"+OK\r\n+PONG\r\n"
            except OSError:
                return False
        wait_until("redis-server to answer PING", pong)
        yield port
    finally:
        stop_group(process)


@dataclass(frozen=True)
class Database:
    url: str  # as the application's role, with its password
    admin_url: str


@pytest.fixture(scope="module")
async def database(postgres_server: PostgresServer) -> AsyncIterator[Database]:
    """A database with `customers`, read by a role of its own that has a password."""
    admin_url = await postgres_server.new_database("demo")
    role = f"demo_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'")
        await conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL,"
                           " email text NOT NULL)")
        # Inserted out of order: the api must answer the first by id, not the first stored.
        await conn.execute("INSERT INTO customers VALUES (2, 'Bob Builder', 'bob@example.com'),"
                           " (1, 'Ada Lovelace', 'ada@example.com')")
        await conn.execute(f"GRANT SELECT ON customers TO {role}")
        database = admin_url.rsplit("/", 1)[1]
        yield Database(f"postgresql://{role}:{DB_PASSWORD}@127.0.0.1:{postgres_server.port}/"
                       f"{database}?sslmode=disable", admin_url)
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


@dataclass
class Demo:
    role: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends; the exit code (0: it shut down by itself)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop_group(self.process, signal.SIGKILL)
            raise AssertionError(f"demo {self.role} ignored SIGTERM") from None


@dataclass
class Demos:
    binary: Path
    folder: Path
    started: list[Demo] = field(default_factory=list)

    def start(self, role: str, env: dict[str, str]) -> Demo:
        port = free_port()
        log = self.folder / f"{role}-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(self.binary), role, "-host", "127.0.0.1", "-port", str(port)],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        demo = Demo(role, port, process, log)
        self.started.append(demo)

        def healthy() -> bool:
            assert process.poll() is None, f"demo {role} exited: {demo.output()}"
            try:
                return httpx.get(f"{demo.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(f"demo {role} to answer /healthz", healthy)
        return demo

    def outputs(self) -> str:
        return "\n".join(demo.output() for demo in self.started)


@pytest.fixture
def demos(demo_binary: Path, tmp_path: Path) -> Iterator[Demos]:
    started = Demos(demo_binary, tmp_path)
    yield started
    for demo in started.started:
        if demo.process.poll() is None:
            stop_group(demo.process)
    # Whatever a test did, no password went to a log line.
    for password in (DB_PASSWORD, REDIS_PASSWORD):
        assert password not in started.outputs()


@pytest.fixture
def api_env(database: Database, redis_port: int) -> dict[str, str]:
    """The api's environment, on a Redis database emptied for the test (visits from 1)."""
    assert redis_call(redis_port, REDIS_PASSWORD, "FLUSHALL") == b"+OK\r\n+OK\r\n"
    return {"DATABASE_URL": database.url, "HEAD_SHA": HEAD_SHA,
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0"}


class Ids(HTMLParser):
    """Text and attributes of every element of a page that has an id."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._open: list[str | None] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("id")
        if found:
            self.text[found], self.attrs[found] = "", dict(attrs)
        if tag not in ("meta", "br", "img", "link", "input"):
            self._open.append(found)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            if element:
                self.text[element] += data


def get_json(url: str) -> Any:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_api_answers_commit_first_customer_and_counts_visits(
        demos: Demos, api_env: dict[str, str]) -> None:
    api = demos.start("api", api_env)
    first, second = get_json(f"{api.url}/"), get_json(f"{api.url}/")
    assert first["commit"] == COMMIT and first["head_sha"] == HEAD_SHA
    # `plan` is the column the demo's migration adds: null before it ran.
    assert first["customer"] == {"name": "Ada Lovelace", "email": "ada@example.com",
                                 "plan": None}
    assert "customer_error" not in first and "visits_error" not in first
    assert (first["visits"], second["visits"]) == (1, 2)
    assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200
    assert api.stop() == 0, api.output()
    assert "stopped" in api.output()


def test_api_says_what_failed_and_keeps_running(demos: Demos, database: Database,
                                                redis_port: int) -> None:
    """PostgreSQL away, Redis refusing the password: 200, null parts, an error for each."""
    api = demos.start("api", {
        "DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@127.0.0.1:{free_port()}/x",
        "REDIS_URL": f"redis://:{DB_PASSWORD}@127.0.0.1:{redis_port}/0"})
    response = httpx.get(f"{api.url}/", timeout=20)
    assert response.status_code == 200
    answer = response.json()
    assert answer["customer"] is None and "connection refused" in answer["customer_error"]
    assert answer["visits"] is None and "WRONGPASS" in answer["visits_error"]
    assert DB_PASSWORD not in response.text
    assert api.process.poll() is None
    assert api.stop() == 0


def test_web_page_shows_commit_env_customer_and_visits(
        demos: Demos, api_env: dict[str, str]) -> None:
    api = demos.start("api", api_env)
    web = demos.start("web", {"API_URL": api.url, "NODE_ENV": "development",
                              "HEAD_SHA": HEAD_SHA})
    pages = []
    for _ in range(2):
        response = httpx.get(f"{web.url}/", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        pages.append(Ids(response.text))
    page = pages[0]
    assert page.text["commit"] == COMMIT and page.text["api-commit"] == COMMIT
    assert page.text["node-env"] == "development" and page.text["head-sha"] == HEAD_SHA
    assert page.attrs["api-status"]["data-status"] == "ok"
    assert page.text["customer-email"] == "ada@example.com"
    assert [p.text["visits"] for p in pages] == ["1", "2"]  # each page view asked the api
    assert "api-error" not in page.text


def test_web_says_the_api_failed_and_still_answers(
        demos: Demos, api_env: dict[str, str]) -> None:
    api = demos.start("api", api_env)
    web = demos.start("web", {"API_URL": api.url, "NODE_ENV": "production"})
    assert Ids(httpx.get(f"{web.url}/", timeout=10).text).attrs["api-status"][
        "data-status"] == "ok"
    assert api.stop() == 0
    response = httpx.get(f"{web.url}/", timeout=10)
    assert response.status_code == 200
    page = Ids(response.text)
    assert page.attrs["api-status"]["data-status"] == "failed"
    assert "connection refused" in page.text["api-error"]
    assert "visits" not in page.text and "customer-email" not in page.text
    assert page.text["commit"] == COMMIT and page.text["node-env"] == "production"
    assert httpx.get(f"{web.url}/healthz", timeout=5).status_code == 200
    assert web.stop() == 0


def test_sigterm_keeps_answering_for_the_shutdown_delay(demos: Demos) -> None:
    """SHUTDOWN_DELAY: after SIGTERM the listener stays open while endpoints drop the pod
    (without it, the next request would be refused at once), then the process exits 0."""
    web = demos.start("web", {"SHUTDOWN_DELAY": "3s"})
    web.process.send_signal(signal.SIGTERM)
    wait_until("web to take the SIGTERM", lambda: "stopping in 3s" in web.output())
    assert httpx.get(f"{web.url}/healthz", timeout=2).status_code == 200
    assert web.process.poll() is None
    assert web.stop() == 0


async def test_worker_counts_customers(demos: Demos, database: Database) -> None:
    worker = demos.start("worker", {"DATABASE_URL": database.url, "COUNT_INTERVAL": "100ms"})

    def reports(count: int) -> Callable[[], bool]:
        return lambda: get_json(f"{worker.url}/")["customers"] == count

    wait_until("the worker to count 2 customers", reports(2))
    conn = await asyncpg.connect(database.admin_url)
    try:
        await conn.execute("INSERT INTO customers VALUES (3, 'Cy', 'cy@example.com')")
        wait_until("the worker to count the new customer", reports(3))
    finally:
        await conn.execute("DELETE FROM customers WHERE id = 3")
        await conn.close()
    report = get_json(f"{worker.url}/")
    assert report["commit"] == COMMIT and report["checks"] >= 2 and "error" not in report
    assert worker.stop() == 0, worker.output()


async def test_the_lifecycle_jobs_migrate_seed_and_say_farewell(
        demo_binary: Path, postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The roles examples/preview.yaml's jobs run, against a database their role owns:
    the migration is idempotent and leaves its output, the seed records itself, the
    farewell notifies whoever listens, and MIGRATION_FAIL fails (printing its URL, as
    careless migrations do: the engine masks it in the excerpt it shows)."""
    admin_url = await postgres_server.new_database("demo_jobs")
    role = f"jobs_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'")
    await admin.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    await admin.execute("CREATE TABLE customers (id int PRIMARY KEY, name text, email text)")
    await admin.execute("INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com')")
    await admin.execute(f"ALTER TABLE customers OWNER TO {role}")
    url = (f"postgresql://{role}:{DB_PASSWORD}@127.0.0.1:{postgres_server.port}/"
           f"{admin_url.rsplit('/', 1)[1]}?sslmode=disable")
    outputs = tmp_path / "outputs"

    def job(name: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(demo_binary), name], capture_output=True, text=True, timeout=60,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": url,
                 "PREVIEW_OUTPUT": str(outputs), "HEAD_SHA": HEAD_SHA, **env})

    try:
        for _ in range(2):  # a migration may run again
            done = job("migrate")
            assert done.returncode == 0, done.stderr
            assert outputs.read_text() == "SCHEMA_VERSION=2\n"
        assert await admin.fetchval("SELECT plan FROM customers") == "free"
        assert await admin.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'customers_plan_idx'") == 1

        done = job("seed")
        assert done.returncode == 0, done.stderr
        key, _, value = outputs.read_text().strip().partition("=")
        assert key == "SEEDED_AT" and value.startswith(str(datetime.now(UTC).year))
        assert await admin.fetchval("SELECT count(*) FROM seed_runs") == 1

        heard: asyncio.Queue[str] = asyncio.Queue()
        await admin.add_listener("preview_farewell", lambda *args: heard.put_nowait(args[-1]))
        done = await asyncio.to_thread(job, "farewell")
        assert done.returncode == 0, done.stderr
        assert await asyncio.wait_for(heard.get(), 10) == HEAD_SHA

        failed = job("migrate", MIGRATION_FAIL="yes")
        assert failed.returncode == 1
        assert f"applying step 1 on {url}" in failed.stderr
        assert 'relation "customers_v3" does not exist' in failed.stderr
    finally:
        await admin.close()

