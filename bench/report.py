"""Writes bench/README.md: the latest figures of every benchmark in bench/results/.

    .venv/bin/python -m bench.report            # regenerate bench/README.md
    .venv/bin/python -m bench.report --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"

Rows = list[tuple[str, str]]

ABOUT = {
    "latency": ("bench/latency.py", "the example blueprint's preview on a real node: webhook "
                "→ first 200 from its URL, push → new commit served with the failed requests "
                "of the rollout, where the time goes, against bare Kubernetes (`--node fake`: "
                "webhook → Ready on kwok, critical path and orchestration overhead)"),
    "starter_throughput": ("bench/starter_throughput.py", "webhooks/s through `python -m "
                           "starter` vs raw `Client.start_workflow`, same concurrency"),
    "burst": ("bench/burst.py", "many PRs opened at once: time until all are Ready, worker "
              "peak RSS, clean teardown"),
    "history": ("bench/history.py", "workflow history events per lifecycle and after many "
                "redeploys (continue-as-new)"),
    "clone": ("bench/clone_bench.py", "preview database clone time: template clone vs "
              "dump/restore vs `cp`"),
    "crash_recovery": ("bench/crash_recovery.py", "a worker SIGKILLed at random moments of a "
                       "create: seconds until the step it ran runs again on another worker, "
                       "vs the old 60 s heartbeat timeout"),
    "migration_report": ("bench/migration_report.py", "what the migration report adds to a "
                         "migration (snapshots, lock sampling, settling) against the "
                         "migration alone: a rewrite of a ~140 MB table and an ADD COLUMN"),
}


def _s(value: Any, unit: str = " s") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"
        return f"{text}{unit}"
    return f"{value}{unit}"


def real_latency_rows(doc: dict[str, Any]) -> Rows:
    """bench/url_latency.py's document (`--node real`)."""
    fig = doc["figures"]
    first, served = fig["webhook_to_first_200_seconds"], fig["push_to_served_seconds"]
    failed = fig["failed_requests_during_rollouts"]
    ratio = fig.get("ratio_to_baseline", {})
    base = fig.get("baseline", {})
    times = fig["where_the_time_goes"]
    path = times["path_to_first_200"]
    kube = times["kubernetes_create"]
    rows = [
        (f"webhook → first 200 with the PR's commit through the ingress, p50 / p95 "
         f"({first['n']} runs, examples/preview.yaml)",
         f"{_s(first['p50'])} / {_s(first['p95'])}"),
        ("webhook → Ready (history) p50; push → Ready p50",
         f"{_s(fig['webhook_to_ready_seconds']['p50'])}; "
         f"{_s(fig['push_to_ready_seconds']['p50'])}"),
        ("push → new commit served (api URL), p50 / p95",
         f"{_s(served['p50'])} / {_s(served['p95'])}"),
        ("failed requests while rolling out (polled every "
         f"{doc.get('parameters', {}).get('poll_interval_seconds')} s)",
         f"{failed['failed']} of {failed['requests']}"),
    ]
    if ratio:
        rows.append(("bare Kubernetes (same Deployments, no engine): apply → first 200 p50; "
                     "new commit → served p50; ratio preview ÷ bare",
                     f"{_s(base['apply_to_first_200_seconds']['p50'])}; "
                     f"{_s(base['apply_to_served_seconds']['p50'])}; "
                     f"x{ratio['webhook_to_first_200_p50']} / x{ratio['push_to_served_p50']}"))
    rows.append((f"path to the first 200, p50 wait + run per step ({path['runs']}/{first['n']} "
                 "runs)", ", ".join(f"{k} {_s(v['wait_p50'])} + {_s(v['run_p50'])}"
                                    for k, v in path["steps"].items())))
    rows.append(("web / api pods: image pull, created → started, started → Ready p50",
                 "; ".join(f"{app} {_s(k['pull_seconds'].get('p50'))}, "
                           f"{_s(k['created_to_started'].get('p50'))}, "
                           f"{_s(k['started_to_ready'].get('p50'))}" for app, k in kube.items())))
    rows.append(("teardown (PR closed → workflow done, all gone) p50",
                 _s(fig["destroy_seconds"]["p50"])))
    return rows


def latency_rows(doc: dict[str, Any]) -> Rows:
    fig, params = doc["figures"], doc.get("parameters", {})
    if params.get("node") == "real":
        return real_latency_rows(doc)
    total = fig["total_seconds"]
    paths = fig.get("critical_paths", {})
    top = next(iter(paths), "")
    return [
        (f"webhook → Ready, p50 / p95 ({total['n']} runs, data_policy "
         f"{params.get('data_policy', '?')})", f"{_s(total['p50'])} / {_s(total['p95'])}"),
        ("orchestration overhead p50 / p95 (total ÷ critical path's step run times)",
         f"x{fig['orchestration_overhead']['p50']} / x{fig['orchestration_overhead']['p95']}"),
        ("critical path run time p50 (most frequent path)",
         f"{_s(fig['critical_path_run_seconds']['p50'])} "
         f"({top}; {paths.get(top, 0)}/{total['n']} runs)"),
        ("webhook answered (202) p50", _s(fig["webhook_answer_seconds"]["p50"])),
        ("teardown (PR closed → workflow done, all gone) p50",
         _s(fig["destroy_seconds"]["p50"])),
        ("history events per create + destroy (real activities) p50",
         _s(fig["history_events_create_and_destroy"]["p50"], "")),
    ]


def throughput_rows(doc: dict[str, Any]) -> Rows:
    fig, params = doc["figures"], doc.get("parameters", {})
    starter, base = fig["starter"], fig["baseline"]
    how = (f"{params.get('requests')} requests x {params.get('rounds')} rounds, "
           f"concurrency {params.get('concurrency')}")
    return [
        (f"starter webhooks/s, p99 latency ({how})",
         f"{starter['per_second']}/s, p99 {_s(starter['latency_seconds']['p99'])}"),
        ("baseline `start_workflow`/s (same signal-with-start), p99",
         f"{base['per_second']}/s, p99 {_s(base['latency_seconds']['p99'])}"),
        ("throughput ratio starter ÷ baseline (per round)",
         f"{fig['throughput_ratio']} ({', '.join(map(str, fig['throughput_ratio_per_round']))})"),
        ("p99 latency ratio starter ÷ baseline", str(fig["p99_latency_ratio"])),
    ]


def burst_rows(doc: dict[str, Any]) -> Rows:
    fig, params = doc["figures"], doc.get("parameters", {})
    left = fig.get("left_behind", {})
    left_text = "nothing" if not any(left.values()) else json.dumps(left)
    return [
        (f"{fig['previews']} PRs opened at once ({params.get('blueprint')} blueprint): all "
         "Ready after", f"{_s(fig['seconds_to_all_ready'])} ({fig['ready']} of "
         f"{fig['previews']} Ready)"),
        ("per-preview webhook → Ready p50 / p95",
         f"{_s(fig['seconds_to_ready'].get('p50'))} / {_s(fig['seconds_to_ready'].get('p95'))}"),
        ("worker peak RSS (VmHWM of the worker subprocess)",
         f"{fig['worker_peak_rss_mib']} MiB"),
        ("all closed at once → all destroyed", _s(fig["seconds_to_destroy_all"])),
        ("activity retries during the burst",
         ", ".join(f"{k} {v}" for k, v in fig.get("activity_retries", {}).items()) or "none"),
        ("left behind (namespaces, databases, slots)", left_text),
    ]


def history_rows(doc: dict[str, Any]) -> Rows:
    once, many = doc["figures"]["lifecycle"], doc["figures"]["many_redeploys"]
    rows = [
        ("events per lifecycle: create / + 1 redeploy / + destroy = total",
         f"{once['events_after_create']} / +{once['events_of_one_redeploy']} / "
         f"+{once['events_of_destroy']} = {once['events_total']}"),
        (f"after {many['redeploys']} redeploys: events in the current run, runs "
         f"(history_limit {many['history_limit']})",
         f"{many['events_of_current_run']} events, {many['runs']} run(s)"),
        ("largest run, all runs together",
         f"{many['max_events_in_one_run']} events, {many['events_all_runs']} events"),
        ("redeploy round trip p50 / p99 (recording activities)",
         f"{_s(many['redeploy_seconds']['p50'])} / {_s(many['redeploy_seconds']['p99'])}"),
    ]
    if slowest := many.get("slowest_redeploys"):
        rows.append(("slowest redeploys: seconds @ redeploy number",
                     ", ".join(f"{_s(sec)} @ {n}" for sec, n in slowest)))
    probe = doc["figures"].get("deploy_and_wait_across_continue_as_new")
    if probe and probe.get("probes"):
        stuck = [p["stuck"] for p in probe["probes"] if p.get("stuck")]
        where = ", ".join(f"redeploy {s['at_redeploy']} ({s['events_of_run']} events)"
                          for s in stuck)
        refused = [p.get("refused_while_continuing_as_new") for p in probe["probes"]]
        rows.append(("back-to-back `deploy_and_wait` updates across continue-as-new: stuck",
                     f"{len(stuck)} of {len(probe['probes'])} previews"
                     + (f" at {where}" if where else "")
                     + (f"; refused while continuing as new and sent again: "
                        f"{', '.join(map(str, refused))} times" if None not in refused
                        else "")))
    return rows


def clone_rows(doc: dict[str, Any]) -> Rows:
    rows: Rows = []
    for mode in doc.get("modes", []):
        durable = "fsync on" if mode.get("durable") else "fsync off"
        for size in mode.get("sizes", []):
            methods = size.get("methods", {})
            mb = size.get("database_bytes", size.get("target_bytes", 0)) / 1e6
            cache = f", {size['cache']} cache" if "cache" in size else ""
            parts = [f"{name} {_s(m.get('median_seconds'))} (x{m.get('ratio_to_floor')})"
                     for name, m in methods.items()]
            rows.append((f"{mb:.0f} MB database, {durable}{cache}: median (x cp floor)",
                         ", ".join(parts)))
    return rows


def crash_recovery_rows(doc: dict[str, Any]) -> Rows:
    fig, params = doc["figures"], doc.get("parameters", {})
    rec, ready = fig["recovery_seconds"], fig["kill_to_ready_seconds"]
    rows = [
        (f"kill → the killed step running again, median / max ({rec.get('n', 0)} steps, "
         f"{params.get('kills')} kills, {params.get('workers')} workers)",
         f"{_s(rec.get('median'))} / {_s(rec.get('max'))}"),
        ("by kind of step: median / max", ", ".join(
            f"{kind} {_s(v['median'])} / {_s(v['max'])}"
            for kind, v in fig.get("recovery_seconds_by_kind", {}).items()) or "—"),
    ]
    if (base := fig.get("baseline_60s_recovery_seconds", {})).get("n"):
        rows.append((f"baseline, one 60 s heartbeat timeout (same moments, {base['n']} steps): "
                     "median / max, median ratio", f"{_s(base.get('median'))} / "
                     f"{_s(base.get('max'))}, x{fig.get('median_ratio_to_baseline')}"))
    between = fig.get("between_steps_next_step_seconds", {})
    if between.get("n"):
        rows.append((f"kill between steps → next step started, median ({between['n']})",
                     _s(between.get("p50"))))
    rows.append(("kill → Ready, median / max (create without a kill: "
                 f"{_s(doc.get('create_without_kill_seconds', {}).get('median'))})",
                 f"{_s(ready.get('p50'))} / {_s(ready.get('max'))}"))
    return rows


def migration_report_rows(doc: dict[str, Any]) -> Rows:
    rows: Rows = []
    for name, figures in doc.get("scenarios", {}).items():
        alone, watched = figures["alone_seconds"], figures["watched_seconds"]
        rows.append((f"{name}: alone / watched, median of {alone['n']} (ratio, added)",
                     f"{_s(alone['p50'])} / {_s(watched['p50'])} "
                     f"(x{figures['ratio_watched_to_alone']}, "
                     f"+{_s(figures['overhead_seconds_median'])})"))
    return rows


EXTRACTORS: dict[str, Callable[[dict[str, Any]], Rows]] = {
    "latency": latency_rows,
    "starter_throughput": throughput_rows,
    "burst": burst_rows,
    "history": history_rows,
    "clone": clone_rows,
    "crash_recovery": crash_recovery_rows,
    "migration_report": migration_report_rows,
}


def machine_text(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    nproc = m.get("nproc", m.get("cpus", "?"))
    memory = f"{m['memory_gib']} GiB" if "memory_gib" in m else "?"
    load, end = m.get("load_average_at_start"), m.get("load_average_at_end")
    load_text = f", load {load[0]}" if load else ""
    load_text += f" → {end[0]}" if load and end else ""
    return f"{nproc} CPU, {memory}, {m.get('cpu_model', '?')}{load_text}"


def render(results: Path = RESULTS) -> str:
    docs = {}
    for path in sorted(results.glob("*.json")):
        try:
            docs[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"skipping {path}: {error}", file=sys.stderr)
    def kind(name: str) -> str:
        """`burst_full` is another run of `burst`: same summary."""
        return next((k for k in EXTRACTORS if name == k or name.startswith(k + "_")), name)

    order = sorted(docs, key=lambda n: (list(EXTRACTORS).index(kind(n))
                                        if kind(n) in EXTRACTORS else len(EXTRACTORS), n))
    lines = [
        "# Benchmarks",
        "",
        "Each benchmark writes `bench/results/<name>.json` with the exact command, the "
        "machine, the date and every figure; this page is generated from those files by "
        "`.venv/bin/python -m bench.report` (do not edit it by hand). Ratios are against a "
        "baseline measured in the same run.",
        "",
        "| benchmark | what it measures |",
        "|---|---|",
    ]
    lines += [f"| `{ABOUT[kind(k)][0]}` → `{k}.json` | {ABOUT[kind(k)][1]} |"
              for k in order if kind(k) in ABOUT]
    lines += ["", "## Latest figures", "", "| benchmark | figure | value |", "|---|---|---|"]
    for name in order:
        doc = docs[name]
        try:
            rows = EXTRACTORS[kind(name)](doc) if kind(name) in EXTRACTORS else []
        except (KeyError, TypeError, IndexError) as error:
            rows = [("(result file not understood)", f"{type(error).__name__}: {error}")]
        if not rows:
            rows = [("(no summary for this result)", "see the JSON file")]
        for i, (figure, value) in enumerate(rows):
            lines.append(f"| {name if i == 0 else ''} | {figure} | {value} |")
    lines += ["", "## Where and how they ran", "",
              "| benchmark | command | date | took | machine (1-min load average at start → end) |",
              "|---|---|---|---|---|"]
    for name in order:
        doc = docs[name]
        date = doc.get("date") or doc.get("finished_at") or "?"
        took = doc.get("total_seconds")
        lines.append(f"| {name} | `{doc.get('command', '?')}` | {date} | "
                     f"{_s(took)} | {machine_text(doc)} |")
    notes = [(name, note) for name in order for note in docs[name].get("notes", [])]
    if notes:
        lines += ["", "## Notes from the result files", ""]
        lines += [f"- **{name}**: {note}" for name, note in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when README.md differs from what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = README.read_text() if README.exists() else ""
        if current != text:
            print("bench/README.md is out of date: run `python -m bench.report`")
            raise SystemExit(1)
        return
    README.write_text(text)
    print(f"wrote {README}")


if __name__ == "__main__":
    main()
