"""The `preview` command: look at and steer preview environments.

    preview list [--state ready] [--repository owner/name]
    preview status owner/name 42          (live progress until it settles)
    preview deploy owner/name 42 SHA
    preview destroy owner/name 42 [--reason ...]
    preview extend owner/name 42 HOURS
    preview sleep|wake owner/name 42
    preview history owner/name 42         (the environment's events in plain words)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from domain.blueprint import DataPolicy
from domain.blueprint_file import parse_blueprint
from domain.masking import golden_dump_uri
from domain.naming import workflow_id
from domain.pull_request import PullRequest
from domain.resources import AwsTarget
from engine.client import connect
from engine.settings import Settings
from starter.cli_api import register
from starter.schedules import (
    SWEEPER_SCHEDULE_ID,
    ensure_golden_schedule,
    ensure_sweeper_schedule,
)
from workflows.golden import GoldenRefreshRequest, GoldenRefreshWorkflow, refresh_workflow_id
from workflows.preview import DestroyRequest, PreviewEnvironmentWorkflow, PreviewStatus
from workflows.sweeper import OrphanSweepWorkflow, SweepRequest

console = Console()
SETTLED = {"ready", "failed", "sleeping", "destroyed", "degraded"}


def _handle(client: Client, args: argparse.Namespace) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                          workflow_id(args.repository, args.number))


def _print_status(status: PreviewStatus) -> None:
    console.print(f"[bold]{status.environment_id}[/]  {status.state}  "
                  f"steps {status.steps_done}/{status.steps_total}  "
                  f"commit {(status.head_sha or '—')[:12]}")
    for app, url in status.urls.items():
        console.print(f"  {app:12} {url}")
    if status.expires_at:
        console.print(f"  expires  {status.expires_at:%Y-%m-%d %H:%M} UTC")
    if status.last_error:
        console.print(f"  [red]last error: {status.last_error}[/]")


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    clauses = ["WorkflowType = 'PreviewEnvironmentWorkflow'"]
    if args.state:
        clauses.append(f"PreviewState = '{args.state}'")
    if args.repository:
        clauses.append(f"PreviewRepository = '{args.repository.lower()}'")
    if not args.all:
        clauses.append("ExecutionStatus = 'Running'")
    table = Table("repository", "PR", "state", "commit", "workflow id")
    async for wf in client.list_workflows(" AND ".join(clauses), limit=args.limit):
        attrs = wf.search_attributes
        table.add_row(str(attrs.get("PreviewRepository", ["?"])[0]),
                      str(attrs.get("PreviewPullRequest", ["?"])[0]),
                      str(attrs.get("PreviewState", ["?"])[0]),
                      str(attrs.get("PreviewHeadSha", ["?"])[0])[:12], wf.id)
    console.print(table)
    return 0


async def cmd_status(client: Client, args: argparse.Namespace) -> int:
    handle = _handle(client, args)
    status = await handle.query(PreviewEnvironmentWorkflow.status)
    if not args.follow or status.state in SETTLED:
        _print_status(status)
        return 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console) as progress:
        task = progress.add_task(status.state, total=status.steps_total or None)
        while status.state not in SETTLED:
            await asyncio.sleep(0.5)
            status = await handle.query(PreviewEnvironmentWorkflow.status)
            progress.update(task, description=status.state, completed=status.steps_done,
                            total=status.steps_total or None)
    _print_status(status)
    return 0 if status.state != "failed" else 1


async def cmd_deploy(client: Client, args: argparse.Namespace) -> int:
    pr = PullRequest(repository=args.repository, number=args.number, head_sha=args.sha)
    for attempt in range(20):
        try:
            status = await _handle(client, args).execute_update(
                PreviewEnvironmentWorkflow.deploy_and_wait, pr)
            break
        except WorkflowUpdateFailedError as error:
            # Refused while the run continues as new: the next run takes it.
            if "continuing as new" not in str(error.cause) or attempt == 19:
                raise
            await asyncio.sleep(0.5)
    _print_status(status)
    # The same commit again (restoring a degraded preview) fails without changing it.
    return 0 if status.head_sha == args.sha and status.state == "ready" else 1


async def cmd_destroy(client: Client, args: argparse.Namespace) -> int:
    await _handle(client, args).signal(PreviewEnvironmentWorkflow.destroy,
                                       DestroyRequest(reason=args.reason))
    console.print(f"destroy requested for {args.repository}#{args.number}")
    return 0


async def cmd_extend(client: Client, args: argparse.Namespace) -> int:
    _print_status(await _handle(client, args).execute_update(
        PreviewEnvironmentWorkflow.extend, args.hours))
    return 0


async def cmd_sleep(client: Client, args: argparse.Namespace) -> int:
    await _handle(client, args).signal(PreviewEnvironmentWorkflow.sleep)
    console.print("sleep requested")
    return 0


async def cmd_wake(client: Client, args: argparse.Namespace) -> int:
    await _handle(client, args).signal(PreviewEnvironmentWorkflow.wake)
    console.print("wake requested")
    return 0


async def cmd_history(client: Client, args: argparse.Namespace) -> int:
    for line in await history_lines(client, _handle(client, args)):
        console.print(line)
    return 0


async def history_lines(client: Client, handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The environment's events in plain words, from the workflow's history.

    Summaries are payloads like any other, so they are decoded with the client's codec."""
    lines: list[str] = []
    summaries: dict[int, str] = {}
    async for event in handle.fetch_history_events():
        when = event.event_time.ToDatetime().strftime("%H:%M:%S")
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            lines.append(f"{when}  started")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signal = event.workflow_execution_signaled_event_attributes.signal_name
            lines.append(f"{when}  received {signal}")
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            summary = ""
            if event.user_metadata.HasField("summary"):
                [summary] = await client.data_converter.decode(
                    [event.user_metadata.summary], [str])
            summaries[event.event_id] = summary or (
                event.activity_task_scheduled_event_attributes.activity_type.name)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
            lines.append(f"{when}  done: {summaries.get(scheduled, '?')}")
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            attrs = event.activity_task_failed_event_attributes
            lines.append(f"{when}  FAILED: {summaries.get(attrs.scheduled_event_id, '?')}: "
                         f"{attrs.failure.message}")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            lines.append(f"{when}  finished")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            lines.append(f"{when}  continued as new (history kept short)")
    return lines


async def cmd_sweep(client: Client, args: argparse.Namespace) -> int:
    settings = Settings()
    # The shared clusters are the lifecycle worker's (PREVIEW_KUBE_CONTEXTS); tenants'
    # clusters and accounts are found in the projects' blueprints by the workflow.
    request = SweepRequest(dry_run=not args.apply,
                           clusters=["default", *settings.kube_contexts],
                           dedicated_clusters=args.dedicated_cluster or [],
                           aws_targets=[AwsTarget(region=settings.aws_region)],
                           max_removals=settings.sweep_max_removals,
                           max_removal_share=settings.sweep_max_removal_share,
                           force=args.force)
    if args.every_hours and args.force:
        console.print("[red]--force is for one sweep you have checked, never a schedule")
        return 2
    if args.every_hours:
        await ensure_sweeper_schedule(client, request, task_queue=settings.task_queue,
                                      every=timedelta(hours=args.every_hours))
        console.print(f"schedule {SWEEPER_SCHEDULE_ID}: every {args.every_hours} h, "
                      f"{'removing orphans' if args.apply else 'dry run'}")
        return 0
    report = await client.execute_workflow(
        OrphanSweepWorkflow.run, request, id=f"{SWEEPER_SCHEDULE_ID}-manual",
        task_queue=settings.task_queue)
    for system, found in report.found.items():
        for env, items in found.items():
            why = report.kept.get(system, {}).get(env)
            gone = "kept" if why else "removed" if env in report.removed.get(system, {}) else (
                "found")
            console.print(f"{gone:8} {system:28} {env}: {', '.join(items)}"
                          + (f" ({why})" if why else ""))
    for system, reason in report.failed.items():
        console.print(f"[red]not swept[/red] {system}: {reason}")
    if not any(report.found.values()):
        console.print("no orphans")
    return 1 if report.failed else 0


def golden_request(args: argparse.Namespace, settings: Settings) -> GoldenRefreshRequest:
    """The refresh of one database's golden copy, as its blueprint describes it."""
    path = Path(args.blueprint)
    blueprint = parse_blueprint(path.read_text(), str(path))
    database = next((d for d in blueprint.databases if d.name == args.database), None)
    if database is None:
        names = ", ".join(d.name for d in blueprint.databases) or "none"
        raise SystemExit(f"{path}: no database {args.database!r} (databases: {names})")
    if database.data_policy not in (DataPolicy.clone, DataPolicy.masked_clone):
        raise SystemExit(f"{path}: database {database.name!r} has data_policy "
                         f"{database.data_policy.value}: only clones have a golden copy")
    return GoldenRefreshRequest(
        source_url=args.source_url, source_name=database.source, masking=database.masking,
        keep_generations=args.keep, dump_bucket=settings.golden_dump_bucket)


async def cmd_golden(client: Client, args: argparse.Namespace) -> int:
    settings = Settings()
    request = golden_request(args, settings)
    if args.every_hours:
        handle = await ensure_golden_schedule(client, request, task_queue=settings.task_queue,
                                              every=timedelta(hours=args.every_hours))
        console.print(f"schedule {handle.id}: refresh of {request.source_name} every "
                      f"{args.every_hours} h")
        return 0
    with console.status(f"refreshing the golden copy of {request.source_name}"):
        generation = await client.execute_workflow(
            GoldenRefreshWorkflow.run, request, id=refresh_workflow_id(request.source_name),
            task_queue=settings.task_queue)
    published = ""
    if settings.golden_dump_bucket:
        uri = golden_dump_uri(settings.golden_dump_bucket, request.source_name)
        published = f", published to {uri}"
    console.print(f"golden copy of {request.source_name} is now {generation}{published}")
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
    "list": cmd_list, "status": cmd_status, "deploy": cmd_deploy, "destroy": cmd_destroy,
    "extend": cmd_extend, "sleep": cmd_sleep, "wake": cmd_wake, "history": cmd_history,
    "sweep": cmd_sweep, "golden": cmd_golden,
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="preview", description="Look at and steer previews")
    sub = root.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="previews from Temporal visibility")
    listing.add_argument("--state")
    listing.add_argument("--repository")
    listing.add_argument("--all", action="store_true", help="include finished ones")
    listing.add_argument("--limit", type=int, default=100)

    def one(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("repository", help="owner/name")
        p.add_argument("number", type=int, help="pull request number")
        return p

    one("status", "state, steps, URLs").add_argument("--follow", action="store_true")
    one("deploy", "deploy a commit and wait for it").add_argument("sha")
    one("destroy", "tear the preview down").add_argument("--reason", default="by hand")
    one("extend", "extend the time-to-live").add_argument("hours", type=int)
    one("sleep", "scale to zero")
    one("wake", "scale back up")
    one("history", "the environment's events in plain words")
    sweep = sub.add_parser("sweep", help="find (and with --apply remove) orphaned resources")
    sweep.add_argument("--apply", action="store_true", help="remove, not only report")
    sweep.add_argument("--force", action="store_true",
                       help="remove past the bounds (PREVIEW_SWEEP_MAX_REMOVALS, "
                            "PREVIEW_SWEEP_MAX_REMOVAL_SHARE) too: you checked what it holds back")
    sweep.add_argument("--every-hours", type=int, help="install it as a Temporal Schedule")
    sweep.add_argument("--dedicated-cluster", action="append", metavar="NAME",
                       help="also sweep this tenant cluster through its own worker (tenants "
                            "of registered projects are found without it)")
    golden = sub.add_parser("golden", help="refresh a database's masked golden copy (now, "
                                           "or on a schedule with --every-hours)")
    golden.add_argument("--blueprint", default="preview.yaml",
                        help="the blueprint whose database names the source and masking")
    golden.add_argument("--database", required=True, help="the database's name there")
    golden.add_argument("--source-url", required=True,
                        help="libpq URL of the source (prefer a PGPASSFILE to a password: "
                             "this value is kept in workflow history, encrypted)")
    golden.add_argument("--keep", type=int, default=3, help="generations to keep")
    golden.add_argument("--every-hours", type=int, help="install it as a Temporal Schedule")
    register(sub)
    return root


async def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command not in COMMANDS:  # the HTTP API's commands (starter/cli_api.py)
        return int(args.func(args))
    client = await connect(Settings())
    return await COMMANDS[args.command](client, args)


def main() -> None:
    status = asyncio.run(run(sys.argv[1:]))
    sys.stdout.flush()
    os._exit(status)  # skip finalisation: the SDK's threads can crash it (exit 139)
