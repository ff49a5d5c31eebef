"""The whole system on the embedded local stack, showing it do its job.

Starts PostgreSQL, Temporal's dev server (with the Web UI), moto, the Kubernetes
control plane, the worker and the starter, all on 127.0.0.1; imports the example
blueprint; sends a real GitHub `pull_request.opened` webhook, signed as GitHub signs
it; follows the preview to Ready; then waits for Ctrl-C and stops everything it began.

    python -m stack.run               # stay up until Ctrl-C
    python -m stack.run --exit-after  # also close the PR, follow teardown, and exit
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from temporalio.client import Client, WorkflowHandle

from domain.migration import summary_line
from domain.naming import workflow_id
from engine.client import connect
from engine.settings import Settings, generated_secrets
from stack import demo as demo_data
from stack import images
from stack.kube import ControlPlane
from stack.moto import MotoServer
from stack.node import open_preview_url
from stack.ports import PortBook, stop_group
from stack.postgres import PostgresServer, create_database
from stack.preview_node import start_preview_node
from stack.registry import Registry
from stack.temporal import TemporalDevServer, workflow_page
from workflows.preview import PreviewEnvironmentWorkflow, PreviewStatus

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "github-webhooks"
console = Console()


class Service:
    """A child process of ours, in its own process group so it stops with everything in it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )

    def stop(self) -> None:
        stop_group(self.process)


class LocalStack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.stoppers: list[Any] = []
        self.env: dict[str, str] = {}
        self.settings = Settings()
        self.starter_url = ""
        self.ui_url = ""
        self.pids: list[int] = []
        self.registry_host = ""
        self.postgres_admin_url = ""

    def _started(self, stopper: Any, pid: int | None = None) -> None:
        self.stoppers.append(stopper)
        if pid:
            self.pids.append(pid)

    def start(self) -> None:
        state = self.state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o755)
        # The same folder, the same addresses: an open preview's connection URLs and its URL
        # hold ports of these servers.
        book = PortBook(state / "ports.json")
        listen_port = book.port("starter")
        self.starter_url = f"http://127.0.0.1:{listen_port}"

        with console.status("starting PostgreSQL"):
            postgres = PostgresServer(state / "postgres", port=book.port("postgres")).start()
            self._started(postgres.stop, postgres._process.pid if postgres._process else None)
            asyncio.run(create_database(postgres.admin_url, "preview_control"))
        console.print(f"[green]✓[/] PostgreSQL      {postgres.admin_url}  ({postgres.storage})")
        self.postgres_admin_url = postgres.admin_url

        with console.status("starting Temporal"):
            temporal = TemporalDevServer(
                state / "temporal", port=book.port("temporal"), ui_port=book.port("temporal-ui"),
                codec_endpoint=f"{self.starter_url}/codec",
            ).start()
            self._started(temporal.stop, temporal._process.pid if temporal._process else None)
        self.ui_url = temporal.ui_url
        console.print(f"[green]✓[/] Temporal        {temporal.address}  Web UI {temporal.ui_url}")

        with console.status("starting moto (AWS)"):
            moto = MotoServer(state / "moto.log", port=book.port("moto")).start()
            self._started(moto.stop, moto._process.pid if moto._process else None)
        console.print(f"[green]✓[/] AWS (moto)      {moto.endpoint_url}")

        with console.status("starting the image registry"):
            registry = Registry(state / "registry", port=book.port("registry")).start()
            self._started(registry.stop, registry.pid)
        console.print(f"[green]✓[/] registry        {registry.url}  (registry.local)")

        with console.status("starting the Kubernetes control plane"):
            kube = ControlPlane(state / "kube", fake_nodes=0)
            kube.start()
            self._started(kube.stop)
        console.print(f"[green]✓[/] Kubernetes      {kube.server}  (KUBECONFIG={kube.kubeconfig})")

        with console.status("starting a real node (containerd, kubelet, DNS, ingress)"):
            node = start_preview_node(
                kube, registry, state / "node", pod_services={"postgres": postgres.port},
                default_backend=self.starter_url,  # wakes a sleeping preview
                ingress_port=book.port("ingress"), slot=book.preferred("node-slot"))
            self._started(node.stop)
        assert node.network is not None
        book.keep("node-slot", node.network.slot)
        console.print(f"[green]✓[/] node            {node.name}: pods run for real; "
                      f"ingress {node.ingress_url}")
        self.registry_host = registry.host

        # The worker and the starter get exactly these settings (and the demo uses them).
        self.settings = Settings(
            temporal_address=temporal.address,
            database_url=postgres.url("preview_control"),
            preview_database_url=postgres.admin_url,
            **node.engine_settings(registry.host, postgres.port),
            aws_endpoint_url=moto.endpoint_url,
            listen_port=listen_port,
            worker_metrics_address=f"127.0.0.1:{book.port('worker-metrics')}",
            codec_cors_origin=temporal.ui_url,
            # The Web UI sends no credential to /codec; loopback and CORS keep others out.
            profile="local",
            codec_auth="none",
        ).model_copy(update={  # random keys of this state folder, not the source's
            name: SecretStr(value) for name, value in generated_secrets(state).items()})
        self.env = {
            **os.environ,
            **self.settings.as_environment(),
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "local"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
        }
        for name, module in (("worker", "worker"), ("starter", "starter")):
            service = Service(name, [sys.executable, "-m", module], self.env, state / f"{name}.log")
            self._started(service.stop, service.process.pid)
        _wait_http(f"{self.starter_url}/healthz", self.stoppers)
        console.print(
            f"[green]✓[/] worker and starter  webhooks at {self.starter_url}/webhooks/github"
        )
        console.print(f"  logs in {state}/*.log")
        if book.unreadable:
            console.print(f"[yellow]! {book.path} was unreadable: every server has a new port; "
                          "previews left open from before need a redeploy (a push)")
        for name, (before, now) in book.moved.items():
            # What open previews hold led to the old one: a redeploy gives them the new.
            console.print(f"[yellow]! {name} moved from {before} to {now} (taken meanwhile): "
                          "previews left open from before need a redeploy (a push)")

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as error:  # keep stopping the rest
                console.print(f"[red]could not stop a part: {error}")
        self.stoppers.clear()


def _wait_http(url: str, _: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a condition with a deadline
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def signed(settings: Settings, body: bytes) -> str:
    secret = settings.github_webhook_secret.get_secret_value().encode()
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


async def send_webhook(stack: LocalStack, settings: Settings, fixture: str) -> dict[str, Any]:
    body = (FIXTURES / f"{fixture}.json").read_bytes()
    event = fixture.split(".")[0]
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{stack.starter_url}/webhooks/github",
            content=body,
            headers={
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": signed(settings, body),
                "Content-Type": "application/json",
            },
        )
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


async def follow(handle: WorkflowHandle[Any, Any], until: set[str], title: str) -> PreviewStatus:
    """A live progress bar from the workflow's status query."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(title, total=None)
        while True:
            status = await handle.query(PreviewEnvironmentWorkflow.status)
            progress.update(
                task,
                total=status.steps_total or None,
                completed=status.steps_done,
                description=f"{title}: {status.state}",
            )
            if status.state in until:
                return status
            await asyncio.sleep(0.25)


async def demo(stack: LocalStack, exit_after: bool) -> None:
    settings = stack.settings
    blueprint = await demo_data.import_example(settings, actor="local-stack")
    console.print(f"[green]✓[/] imported blueprint {demo_data.EXAMPLE.relative_to(ROOT)}")

    client: Client = await connect(settings)
    with console.status("making the masked golden copy of production"):
        generations = await demo_data.make_golden_copies(
            client, blueprint, stack.postgres_admin_url, settings.task_queue)
    for name, generation in generations.items():
        console.print(f"[green]✓[/] golden copy of {name}: {generation} (masked)")

    opened = json.loads((FIXTURES / "pull_request.opened.json").read_text())
    repo, number = opened["repository"]["full_name"], opened["number"]
    sha = opened["pull_request"]["head"]["sha"]
    with console.status(f"CI: building the demo at {sha[:7]}"):
        images.push_demo_images(stack.registry_host, sha)
    console.print(f"[green]✓[/] CI pushed registry.local/hello/{{web,api,worker}}:{sha[:12]}")
    answer = await send_webhook(stack, settings, "pull_request.opened")
    console.print(f"→ sent pull_request.opened for {repo}#{number}: {answer['outcome']}")

    handle = client.get_workflow_handle_for(
        PreviewEnvironmentWorkflow.run, workflow_id(repo, number)
    )
    status = await follow(handle, {"ready", "failed"}, f"preview {repo}#{number}")
    if status.state != "ready":
        console.print(f"[red]✗ create failed: {status.last_error}")
        raise SystemExit(1)
    console.print(f"[green]✓[/] preview ready: {status.environment_id}")
    for app, url in status.urls.items():
        console.print(f"    {app:10} {url}")
    web = status.urls.get("web")
    if web:
        page = await first_answer(web)
        console.print(f"  GET {web} → {page.status_code}: {page_summary(page.text)}")
    for report in status.migrations:  # also a section of the PR's comment
        console.print(f"  migration report: {summary_line(report)}")
        for change in report.schema_changes:
            console.print(f"    {change}", markup=False)
    console.print(f"  Web UI {workflow_page(stack.ui_url, settings.temporal_namespace, handle.id)}")
    console.print(
        f"  destroy it with:\n    temporal workflow signal "
        f"--address {settings.temporal_address} --workflow-id '{handle.id}' "
        f'--name destroy --input \'{{"reason": "by hand"}}\''
    )
    if exit_after:
        answer = await send_webhook(stack, settings, "pull_request.closed")
        console.print(f"→ sent pull_request.closed: {answer['outcome']}")
        await follow(handle, {"destroyed"}, "teardown")
        result = await handle.result()
        console.print(f"[green]✓[/] preview {result.state}: nothing left behind")


async def first_answer(url: str, timeout: float = 120) -> httpx.Response:
    """The URL's first 200 whose page shows its data (at once for a new preview; a preview
    left open when the stack stopped starts its pods again first), or the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            page = await asyncio.to_thread(open_preview_url, url)
            if (page.status_code == 200 and 'id="customer-email"' in page.text) or (
                    time.monotonic() > deadline):
                return page
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)  # polling a condition with a deadline


def page_summary(html: str) -> str:
    """What the demo page says, in one line (its fields carry ids; examples/demo)."""
    import re

    fields = {key: re.search(rf'id="{key}"[^>]*>([^<]*)<', html)
              for key in ("commit", "node-env", "customer-email", "visits")}
    return ", ".join(f"{key} {match.group(1).strip()}" for key, match in fields.items() if match)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".state")
    parser.add_argument(
        "--exit-after",
        action="store_true",
        help="close the PR after Ready, follow the teardown, then stop",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)

    stack = LocalStack(args.state_dir)
    status = 0
    try:
        stack.start()
        print(f"stack pids: {' '.join(map(str, stack.pids))}", flush=True)
        asyncio.run(demo(stack, args.exit_after))
        if not args.exit_after:
            console.print("[bold]running; Ctrl-C stops everything[/]")
            while True:
                signal.pause()
    except KeyboardInterrupt:
        pass
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    finally:
        with console.status("stopping"):
            stack.stop()
        console.print("stopped everything")
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
