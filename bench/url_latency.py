"""Webhook → the first 200 from a preview's URL, on a real node (`bench.latency`'s default).

The example blueprint (examples/preview.yaml: web → api → a masked clone of
`hello_production` and a Redis cache, plus a worker) on the stack `make run` starts:
a control plane with one real node (containerd, kubelet, Traefik on 127.0.0.1), the
registry it pulls from, PostgreSQL, Temporal, and `python -m worker` and
`python -m starter` as subprocesses. Runs are sequential; each one:

1. CI pushes the demo's images for a fresh commit (timed, not counted); a signed
   `pull_request.opened` goes to the starter over HTTP, and the web URL is requested
   every 50 ms through Traefik until a 200 shows that commit: webhook → first 200.
2. CI pushes a second commit; `pull_request.synchronize`; a client polling the api URL
   from before the push until the old pods are gone gives push → new commit served,
   and counts failed requests (non-200 or no answer).
3. Where the time went: per step from the workflow's history (latency.analyse), per
   pod from a watch on the API server and the kubelet's `Pulled` events.
4. `pull_request.closed`; nothing may be left (namespace, database, preview slot).
5. The baseline, in the same run: the same web and api Deployments applied straight to
   the API server (bench/observe.py's Baseline), apply → first 200, then a new commit
   → served. Ratios are preview ÷ baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from activities.control_plane.planning import plan_options
from bench.common import (
    BenchStack,
    event_seconds,
    history_events,
    leftovers,
    post_webhook,
    pull_request_payload,
    summary,
    wait_status,
)
from bench.latency import aggregate_analyses, analyse
from bench.observe import Baseline, PodWatch, UrlPoller, pod_facts, pulls
from domain.blueprint import Blueprint
from domain.naming import environment_id, workflow_id
from domain.plan import Plan, plan_preview
from domain.resources import ApplicationSpec
from engine.settings import Settings
from stack import demo, images
from stack.node import open_preview_url
from starter.events import github_pull_request
from workflows.preview import PreviewEnvironmentWorkflow

REPOSITORY = "Codertocat/Hello-World"  # the example blueprint's
SECRETS = {"SESSION_SECRET": "bench-session-secret"}  # the blueprint declares it
TARGET_P50_SECONDS = 5.0


@dataclass
class Context:
    client: Client
    http: httpx.AsyncClient
    settings: Settings
    blueprint: Blueprint
    registry_host: str
    kubeconfig: str
    pods: PodWatch
    interval: float
    timeout: float


def fresh_sha() -> str:
    return secrets.token_hex(20)


async def push_images(ctx: Context, sha: str, prefix: str = "hello") -> float:
    """CI: build the demo at `sha` and push its three images; seconds it took."""
    began = time.monotonic()
    await asyncio.to_thread(images.push_demo_images, ctx.registry_host, sha, prefix)
    return round(time.monotonic() - began, 3)


def payload(action: str, number: int, sha: str, second: int) -> dict[str, Any]:
    """A pull_request event; a later `second` is a later updated_at."""
    return pull_request_payload(action, REPOSITORY, number, sha,
                                updated_at=f"2030-01-01T00:00:{second:02d}Z")


def planned(ctx: Context, event: dict[str, Any]) -> Plan:
    """The plan the worker makes for this event (same blueprint, same options)."""
    return plan_preview(ctx.blueprint, github_pull_request(event), (),
                        plan_options(ctx.settings))


def since(events: list[HistoryEvent], at: float) -> list[HistoryEvent]:
    """The history from its first event at or after `at` (server clock, same machine)."""
    for i, event in enumerate(events):
        if event_seconds(event) >= at:
            return events[i:]
    raise RuntimeError("no event in the history after the webhook")


def path_to(history: dict[str, Any], plan: Plan, key: str) -> list[str]:
    """The steps that held `key` back: it, then the dependency that completed last, and
    so on (latency.analyse's critical path, ending at `key` instead of at Ready)."""
    steps, deps = history["steps"], {s.key: s.depends_on for s in plan.steps}
    path: list[str] = []
    at: str | None = key if key in steps else None
    while at is not None:
        path.append(at)
        done = [d for d in deps[at] if d in steps]
        at = max(done, key=lambda k: steps[k]["completed_at"]) if done else None
    return path[::-1]


def load_to_first_step(history: dict[str, Any]) -> float | None:
    """load_source_environment completed → first plan step scheduled: the plan (a local
    activity) and the workflow tasks around it."""
    loads = [o for o in history["other_activities"] if "load_source" in o["activity"]]
    if not loads:
        return None
    first = min(s["scheduled_at"] for s in history["steps"].values())
    return round(first - loads[0]["completed_at"], 4)


async def create(ctx: Context, number: int, sha: str) -> dict[str, Any]:
    opened = payload("opened", number, sha, 1)
    plan = planned(ctx, opened)
    handle = ctx.client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                                workflow_id(REPOSITORY, number))
    poller = UrlPoller(plan.urls["web"], "page", interval=ctx.interval, stop_at=sha)
    sent_at = time.time()
    poller.start()
    answer = await post_webhook(ctx.http, opened)
    answered_at = time.time()
    try:
        first_200 = await asyncio.to_thread(poller.wait_for, sha, ctx.timeout)
    finally:
        poller.finish()
    status = await wait_status(handle, lambda s: s.state in ("ready", "failed"), ctx.timeout)
    if status.state != "ready":
        raise RuntimeError(f"PR {number} failed: {status.last_error}")
    events = await history_events(ctx.client, handle.id)
    history = await analyse(ctx.client, events, plan, sent_at)
    return {
        "sha": sha, "outcome": answer["outcome"], "sent_at": sent_at, "urls": plan.urls,
        "webhook_to_first_200_seconds": round(first_200 - sent_at, 3),
        "webhook_to_ready_seconds": history["total_seconds"],
        "ready_to_first_200_seconds": round(first_200 - sent_at - history["total_seconds"], 3),
        "webhook_answer_seconds": round(answered_at - sent_at, 4),
        "requests": len(poller.answers), "answers": poller.outcomes(),
        # Whether the first page had the api's answer too (database and cache), or said
        # what failed.
        "first_200_api_ok": 'data-status="ok"' in poller.stop_text,
        "load_to_first_step_seconds": load_to_first_step(history),
        "path_to_web": path_to(history, plan, "ingress/web"),
        "history": history,
    }


async def redeploy(ctx: Context, number: int, old: str, new: str) -> dict[str, Any]:
    sync = payload("synchronize", number, new, 2)
    plan = planned(ctx, sync)
    env = plan.environment_id
    handle = ctx.client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                                workflow_id(REPOSITORY, number))
    poller = UrlPoller(plan.urls["api"], "json", interval=ctx.interval)
    poller.start()
    try:
        await asyncio.to_thread(poller.wait_for, old, 30)  # it polls before the push
        sent_at = time.time()
        await post_webhook(ctx.http, sync)
        served = await asyncio.to_thread(poller.wait_for, new, ctx.timeout)
        status = await wait_status(
            handle, lambda s: s.state == "failed" or (s.state == "ready" and s.head_sha == new),
            ctx.timeout)
        if status.state != "ready":
            raise RuntimeError(f"PR {number}: redeploy failed: {status.last_error}")
        # Polling goes on until the old pods have left: a request may fail as they stop.
        await asyncio.to_thread(ctx.pods.wait, env, old,
                                lambda pods: bool(pods) and all(p.deleted for p in pods),
                                ctx.timeout)
        old_gone = max(p.deleted or 0 for p in ctx.pods.of(env, old))
        await asyncio.sleep(0.5)
    finally:
        poller.finish()
    events = since(await history_events(ctx.client, handle.id), sent_at)
    history = await analyse(ctx.client, events, plan, sent_at)
    after = [a for a in poller.answers if a.sent >= sent_at]
    first_new = poller.seen[new]
    failed = [a for a in poller.answers if a.failed]
    return {
        "sha": new, "sent_at": sent_at,
        "push_to_served_seconds": round(served - sent_at, 3),
        "push_to_ready_seconds": history["total_seconds"],
        "push_to_old_pods_gone_seconds": round(old_gone - sent_at, 3),
        "requests": len(poller.answers), "requests_after_push": len(after),
        "failed_requests": len(failed),
        "failures": [f"{a.error or a.status} at +{a.sent - sent_at:.2f}s" for a in failed][:10],
        "old_commit_after_new_served": sum(1 for a in poller.answers
                                           if a.done > first_new and a.commit == old),
        "answers": poller.outcomes(),
        "history": history,
    }


async def close(ctx: Context, number: int, sha: str, web_url: str) -> dict[str, Any]:
    handle = ctx.client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                                workflow_id(REPOSITORY, number))
    began = time.monotonic()
    await post_webhook(ctx.http, payload("closed", number, sha, 3))
    final = await asyncio.wait_for(handle.result(), ctx.timeout)
    seconds = round(time.monotonic() - began, 3)
    if final.state != "destroyed":
        raise RuntimeError(f"PR {number} not destroyed: {final}")
    left = await leftovers(ctx.settings, [environment_id(REPOSITORY, number)])
    if any(left.values()):
        raise RuntimeError(f"PR {number} left {left}")
    gone = await asyncio.to_thread(open_preview_url, web_url)
    return {"destroy_seconds": seconds, "left": left, "url_after_close": gone.status_code,
            "history_events": len(await history_events(ctx.client, handle.id))}


async def baseline(ctx: Context, plan: Plan, number: int) -> dict[str, Any]:
    """Bare Kubernetes, same node, same images' size: apply → first 200, then a new
    commit → served, with the same polling; then the namespace deleted and gone."""
    bare = Baseline(ctx.kubeconfig, plan, number, ctx.settings.preview_url_port)
    first, second = fresh_sha(), fresh_sha()
    ci = [await push_images(ctx, first, "baseline")]
    poller = UrlPoller(bare.urls["web"], "page", interval=ctx.interval, stop_at=first)
    began = time.time()
    poller.start()
    try:
        await asyncio.to_thread(bare.apply, first)
        first_200 = await asyncio.to_thread(poller.wait_for, first, ctx.timeout)
    finally:
        poller.finish()
    replicas = 0
    for app in Baseline.APPS:
        spec = plan.step(f"app/{app}").spec
        replicas += spec.replicas if isinstance(spec, ApplicationSpec) else 1
    await asyncio.to_thread(ctx.pods.wait, bare.namespace, first,
                            lambda pods: sum(p.ready is not None for p in pods) >= replicas,
                            ctx.timeout)
    ci.append(await push_images(ctx, second, "baseline"))
    rollout = UrlPoller(bare.urls["api"], "json", interval=ctx.interval)
    rollout.start()
    try:
        await asyncio.to_thread(rollout.wait_for, first, 30)
        updated = time.time()
        await asyncio.to_thread(bare.apply, second)
        served = await asyncio.to_thread(rollout.wait_for, second, ctx.timeout)
        await asyncio.to_thread(ctx.pods.wait, bare.namespace, first,
                                lambda pods: bool(pods) and all(p.deleted for p in pods),
                                ctx.timeout)
        await asyncio.sleep(0.5)
    finally:
        rollout.finish()
    pulled = await asyncio.to_thread(pulls, ctx.kubeconfig, bare.namespace)
    pods = pod_facts(ctx.pods.of(bare.namespace, first), pulled, began)
    delete_seconds = await asyncio.to_thread(bare.delete)
    return {
        "apply_to_first_200_seconds": round(first_200 - began, 3),
        "apply_to_served_seconds": round(served - updated, 3),
        "requests": len(rollout.answers),
        "failed_requests": sum(a.failed for a in rollout.answers),
        "ci_seconds": ci, "pods": pods, "namespace_delete_seconds": delete_seconds,
    }


async def one_run(ctx: Context, number: int, with_baseline: bool) -> dict[str, Any]:
    first, second = fresh_sha(), fresh_sha()
    ci = [await push_images(ctx, first)]
    made = await create(ctx, number, first)
    ci.append(await push_images(ctx, second))
    moved = await redeploy(ctx, number, first, second)
    env = environment_id(REPOSITORY, number)
    pulled = await asyncio.to_thread(pulls, ctx.kubeconfig, env)
    kube = {"create": pod_facts(ctx.pods.of(env, first), pulled, made["sent_at"]),
            "redeploy": pod_facts(ctx.pods.of(env, second), pulled, moved["sent_at"])}
    closed = await close(ctx, number, second, made["urls"]["web"])
    run: dict[str, Any] = {"number": number, "ci_seconds": ci, "create": made,
                           "redeploy": moved, "kubernetes": kube, **closed}
    if with_baseline:
        run["baseline"] = await baseline(ctx, planned(ctx, payload("opened", number, first, 1)),
                                         number)
    return run


def pods_summary(runs: list[dict[str, Any]], pick: Any) -> dict[str, Any]:
    """Per application: percentiles of each pod's pull and start-up times."""
    out: dict[str, Any] = {}
    for app in Baseline.APPS:
        pods = [p for r in runs for p in pick(r) if p["app"] == app]
        out[app] = {key: summary([p[key] for p in pods if p.get(key) is not None], 3)
                    for key in ("pull_seconds", "created_at", "created_to_started",
                                "started_to_ready", "created_to_ready", "ready_at")}
        out[app]["already_present"] = sum(bool(p.get("already_present")) for p in pods)
        out[app]["failed_readiness_probes"] = sum(p.get("probe_failures", 0) for p in pods)
        out[app]["pods_with_a_failed_probe"] = sum(1 for p in pods if p.get("probe_failures"))
        out[app]["a_probe_failure"] = next((p["probe_failure"] for p in pods
                                            if p.get("probe_failure")), None)
    return out


def where_the_time_goes(phase: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The p50s that add up to a preview's time: engine steps by kind, in seconds."""
    steps = phase["steps"]

    def kind(prefix: str) -> dict[str, Any]:
        return {k: v["run_seconds_p50"] for k, v in steps.items() if k.startswith(prefix)}

    path = next(iter(phase["critical_paths"]), "")
    return {
        **{name: phase["phases"][name]["p50"] for name in phase["phases"]},
        **extra,
        "database_clone (database/main)": steps.get("database/main", {}).get("run_seconds_p50"),
        "image_checks": kind("image/"),
        "rollouts": kind("app/"),
        "cache": kind("cache/"),
        "ingress": kind("ingress/"),
        "critical_path_to_ready": {k: steps[k]["run_seconds_p50"] for k in path.split(" → ")
                                   if k},
    }


def path_breakdown(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Along the most frequent path to the web URL: per step, p50 of the wait before it
    (scheduled after the previous step completed: workflow tasks, for the first the
    webhook, load and plan) and of its run; then ingress/web done → first 200."""
    paths = collections.Counter(" → ".join(r["create"]["path_to_web"]) for r in runs)
    top, count = paths.most_common(1)[0]
    keys = top.split(" → ")
    same = [r["create"] for r in runs if r["create"]["path_to_web"] == keys]
    steps: dict[str, Any] = {}
    for i, key in enumerate(keys):
        waits, ran = [], []
        for made in same:
            at = made["history"]["steps"]
            before = at[keys[i - 1]]["completed_at"] if i else 0.0
            waits.append(at[key]["scheduled_at"] - before)
            ran.append(at[key]["run_seconds"])
        steps[key] = {"wait_p50": summary(waits, 3)["p50"], "run_p50": summary(ran, 3)["p50"]}
    tail = [m["webhook_to_first_200_seconds"] - m["history"]["steps"][keys[-1]]["completed_at"]
            for m in same]
    return {"path": top, "runs": count, "steps": steps,
            "last_step_done_to_first_200_p50": summary(tail, 3)["p50"],
            "other_paths": dict(paths.most_common()[1:])}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(*keys: str) -> list[Any]:
        values = []
        for run in runs:
            value: Any = run
            for key in keys:
                value = value[key]
            values.append(value)
        return values

    create = aggregate_analyses(col("create", "history"))
    moved = aggregate_analyses(col("redeploy", "history"))
    first_200 = summary(col("create", "webhook_to_first_200_seconds"), 3)
    served = summary(col("redeploy", "push_to_served_seconds"), 3)
    failed = sum(col("redeploy", "failed_requests"))
    figures: dict[str, Any] = {
        "webhook_to_first_200_seconds": first_200,
        "webhook_to_ready_seconds": summary(col("create", "webhook_to_ready_seconds"), 3),
        "ready_to_first_200_seconds": summary(col("create", "ready_to_first_200_seconds"), 3),
        "webhook_answer_seconds": summary(col("create", "webhook_answer_seconds"), 4),
        "push_to_served_seconds": served,
        "push_to_ready_seconds": summary(col("redeploy", "push_to_ready_seconds"), 3),
        "push_to_old_pods_gone_seconds": summary(
            col("redeploy", "push_to_old_pods_gone_seconds"), 3),
        "failed_requests_during_rollouts": {
            "failed": failed, "requests": sum(col("redeploy", "requests")),
            "runs_with_failures": sum(1 for v in col("redeploy", "failed_requests") if v),
            "old_commit_after_new_served": sum(col("redeploy", "old_commit_after_new_served")),
        },
        "first_200_with_the_api_answering": sum(col("create", "first_200_api_ok")),
        "target": {"p50_seconds": TARGET_P50_SECONDS,
                   "webhook_to_first_200_p50_met": first_200["p50"] <= TARGET_P50_SECONDS,
                   "failed_requests": 0, "failed_requests_met": failed == 0},
        "where_the_time_goes": {
            "path_to_first_200": path_breakdown(runs),
            "create": where_the_time_goes(create, {
                "plan (load_source completed → first step scheduled)": summary(
                    [v for v in col("create", "load_to_first_step_seconds") if v is not None],
                    4).get("p50"),
                "ready_to_first_200": summary(
                    col("create", "ready_to_first_200_seconds"), 3)["p50"]}),
            "redeploy": where_the_time_goes(moved, {}),
            "kubernetes_create": pods_summary(runs, lambda r: r["kubernetes"]["create"]),
            "kubernetes_redeploy": pods_summary(runs, lambda r: r["kubernetes"]["redeploy"]),
        },
        "create": create,
        "redeploy": moved,
        "ci_seconds_not_counted": summary([s for r in runs for s in r["ci_seconds"]], 2),
        "destroy_seconds": summary(col("destroy_seconds"), 3),
        "history_events_per_lifecycle": summary(col("history_events"), 1),
    }
    if all("baseline" in r for r in runs):
        base_first = summary(col("baseline", "apply_to_first_200_seconds"), 3)
        base_served = summary(col("baseline", "apply_to_served_seconds"), 3)
        figures["baseline"] = {
            "apply_to_first_200_seconds": base_first,
            "apply_to_served_seconds": base_served,
            "failed_requests": sum(col("baseline", "failed_requests")),
            "requests": sum(col("baseline", "requests")),
            "kubernetes": pods_summary(runs, lambda r: r["baseline"]["pods"]),
        }
        figures["ratio_to_baseline"] = {
            "webhook_to_first_200_p50": round(first_200["p50"] / base_first["p50"], 3),
            "webhook_to_first_200_per_run": summary(
                [a / b for a, b in zip(col("create", "webhook_to_first_200_seconds"),
                                       col("baseline", "apply_to_first_200_seconds"),
                                       strict=True)], 3),
            "push_to_served_p50": round(served["p50"] / base_served["p50"], 3),
            "push_to_served_per_run": summary(
                [a / b for a, b in zip(col("redeploy", "push_to_served_seconds"),
                                       col("baseline", "apply_to_served_seconds"),
                                       strict=True)], 3),
        }
    return figures


def line_of(run: dict[str, Any]) -> str:
    made, moved = run["create"], run["redeploy"]
    text = (f"first 200 {made['webhook_to_first_200_seconds']:.2f} s (Ready "
            f"{made['webhook_to_ready_seconds']:.2f} s), push → served "
            f"{moved['push_to_served_seconds']:.2f} s, {moved['failed_requests']} failed of "
            f"{moved['requests']}, destroyed in {run['destroy_seconds']:.1f} s")
    if "baseline" in run:
        base = run["baseline"]
        text += (f"; bare Kubernetes {base['apply_to_first_200_seconds']:.2f} s / "
                 f"{base['apply_to_served_seconds']:.2f} s")
    return text


async def bench(stack: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    settings = stack.settings
    assert stack.registry_host and stack.kubeconfig, "a stack with a real node"
    blueprint = await demo.import_example(settings, actor="bench", secrets=SECRETS)
    stack.start_worker()
    url = stack.start_starter()
    client = await stack.client()
    began = time.monotonic()
    golden = await demo.make_golden_copies(client, blueprint,
                                           settings.preview_database_url, settings.task_queue)
    golden_seconds = round(time.monotonic() - began, 2)
    print(f"golden copies {golden} in {golden_seconds} s", flush=True)
    pods = PodWatch(stack.kubeconfig)
    pods.start()
    runs: list[dict[str, Any]] = []
    warmups: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        ctx = Context(client, http, settings, blueprint, stack.registry_host, stack.kubeconfig,
                      pods, args.poll_interval, args.timeout)
        total = args.warmup + args.runs
        for i in range(total):
            run = await one_run(ctx, 1000 + i, not args.no_baseline)
            (warmups if i < args.warmup else runs).append(run)
            print(f"run {i + 1}/{total}{' (warm-up)' if i < args.warmup else ''}: "
                  f"{line_of(run)}", flush=True)
    pods.finish()
    return {
        "parameters": {"node": "real", "runs": args.runs, "warmup": args.warmup,
                       "poll_interval_seconds": args.poll_interval,
                       "baseline": not args.no_baseline, "repository": REPOSITORY},
        "blueprint": blueprint.model_dump(mode="json", exclude_defaults=True),
        "golden": {"generations": golden, "refresh_seconds": golden_seconds},
        "stack_startup_seconds": stack.startup_seconds,
        "node_start_seconds": stack.node.timings if stack.node else None,
        "pod_watch_errors": pods.errors[:10],
        "figures": aggregate(runs),
        "runs": runs,
        "warmup_runs": warmups,
    }


NOTES = [
    "webhook → first 200 = from just before the signed pull_request.opened POST to the "
    "starter (bench clock) to the first answer from the preview's web URL, through Traefik "
    "on 127.0.0.1, that is a 200 whose page shows the PR's commit (`id=\"commit\"`). The URL "
    "is requested every poll_interval_seconds (a new connection each time, as "
    "stack.node.open_preview_url makes it), so the figure is late by up to that much plus "
    "one request. webhook → Ready is the history's PreviewState=ready upsert (server clock, "
    "same machine).",
    "Until Traefik has a route for the web host, it sends the request to its default "
    "backend, the starter's wake route, which lists the PR's running previews in Temporal's "
    "visibility store and queries the workflow's status: while the preview is created its "
    "status has no URLs yet, so the answer is 404 'No preview here' (a URL enters the status "
    "only once it answers through Traefik: PREVIEW_PREVIEW_URL_CHECK). So "
    "every poll before the first 200 costs the starter, Temporal and the worker that work "
    "while the preview is being made, on the same cores. To see whether that slows what is "
    "measured, compare webhook → Ready (read from the history, so independent of the "
    "polling) with a run at --poll-interval 0.5. `answers` in each run counts what the "
    "polls got.",
    "push → served = from just before the pull_request.synchronize POST (CI has pushed the "
    "images; ci_seconds, not counted) to the first answer from the api URL with the new "
    "commit. A client polls the api URL from before the POST until the old pods are gone "
    "(+0.5 s); a failed request is any non-200 answer or no answer (connection error).",
    "Step times come from the workflow history (latency.analyse: run = ActivityTaskStarted "
    "→ Completed); the redeploy's from the history after the synchronize POST. plan = "
    "load_source_environment completed → first step scheduled: the plan (a local activity) "
    "and the workflow tasks around it. app/* include the engine's rollout wait (its polling: "
    "activities/kubernetes/api.py poll_delays) and the readiness probe's period "
    "(activities/kubernetes/workloads.py).",
    "Pod times come from a watch on the API server (this process's clock: created = first "
    "seen, started = container running, ready = Ready condition True), pull_seconds from the "
    "kubelet's Pulled event ('Successfully pulled image ... in X'), failed readiness probes "
    "from its Unhealthy events (a probe before the process listens is refused, and the next "
    "comes one probe period later).",
    "baseline = the same web and api Deployments and Services (KubernetesActivities' "
    "manifests: replicas, probes, preStop, hardened pods), images of their own freshly "
    "pushed, and one Ingress, applied straight to the API server in a namespace of their "
    "own after each run's preview is gone: apply → first 200 at web, then a new commit → "
    "served at api, polled the same way. ratio_to_baseline = preview ÷ baseline.",
    "Runs are sequential on one worker (`python -m worker`) and one starter (`python -m "
    "starter`); each preview is closed and checked gone (namespace, database, preview slot) "
    "and the baseline's namespace deleted before the next run. No GitHub token is set: "
    "publish_feedback runs but sends nothing.",
]


def run_real(args: argparse.Namespace) -> tuple[dict[str, Any], list[str], str]:
    """Start the stack, run the benchmark; the document, its notes and a summary line."""
    with BenchStack(kube=True, moto=False, node="real", keep_state=args.keep_state) as stack:
        document = asyncio.run(bench(stack, args))
    fig = document["figures"]
    first, served = fig["webhook_to_first_200_seconds"], fig["push_to_served_seconds"]
    failed = fig["failed_requests_during_rollouts"]
    line = (f"webhook → first 200 p50 {first['p50']} s, p95 {first['p95']} s; push → served "
            f"p50 {served['p50']} s, p95 {served['p95']} s; {failed['failed']} failed of "
            f"{failed['requests']} requests during rollouts")
    if "ratio_to_baseline" in fig:
        line += f"; x{fig['ratio_to_baseline']['webhook_to_first_200_p50']} of bare Kubernetes"
    return document, NOTES, line

